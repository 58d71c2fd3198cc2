//! `vmm`: a rust-vmm based VMM that hosts the virtual GPU of `device-model` on a PCI bus.
//!
//! The library holds everything the `vmm` binary does; `main.rs` is only the command line.
//! The VM itself (KVM, boot, buses, PCI, virtio-pci, devices) is the `vm` crate.
//! See ARCHITECTURE.md for how the parts fit together.

pub mod bench;
pub mod cli;
pub mod console;
pub mod host;
pub mod injections;
pub mod logger;
pub mod matrix;
pub mod nested;
pub mod report;
pub mod run;
pub mod selftest;
