//! Virtio devices hosted by the virtio-pci transport ([`crate::virtio_pci`]).

pub mod power;
pub mod serial;
pub mod vgpu;
pub mod virtio_rng;

pub use vgpu::{VgpuHandle, VirtioVgpu};
pub use virtio_rng::{RngCounters, VirtioRng};
