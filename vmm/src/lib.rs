//! `vmm`: a rust-vmm based VMM that hosts the virtual GPU of `device-model` on a PCI bus.
//!
//! The library holds everything the `vmm` binary does; `main.rs` is only the command line.
//! See ARCHITECTURE.md for how the parts fit together.

pub mod boot;
pub mod bus;
pub mod devices;
pub mod interrupt;
pub mod pci;
pub mod virtio_pci;
