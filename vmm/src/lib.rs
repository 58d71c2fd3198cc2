//! `vmm`: a rust-vmm based VMM that hosts the virtual GPU of `device-model` on a PCI bus.
//!
//! The library holds everything the `vmm` binary does; `main.rs` is only the command line.
//! See ARCHITECTURE.md for how the parts fit together.

pub mod bench;
pub mod boot;
pub mod bus;
pub mod cli;
pub mod console;
pub mod control;
pub mod devices;
pub mod host;
pub mod images;
pub mod injections;
pub mod interrupt;
pub mod irq_routing;
pub mod logger;
pub mod matrix;
pub mod memory;
pub mod nested;
pub mod pci;
pub mod report;
pub mod run;
pub mod selftest;
pub mod vcpu;
pub mod virtio_pci;
pub mod vm;
