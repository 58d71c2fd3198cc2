//! `vmm`: the application around the VM. The `vm` crate is the VM itself (KVM, boot, buses,
//! PCI, virtio-pci, the devices); `image-builder` builds the images; `protocol` holds every
//! record that crosses a boundary. This crate is what a user runs: the command line
//! ([`cli`], [`commands`]), the value types of a run ([`spec`]), the run on a host
//! ([`run`]), the guest console ([`console`]), the report's making and rendering
//! ([`report`]), the judging of kernel selftests ([`selftest`]) and the detection matrix
//! ([`matrix`]). See ARCHITECTURE.md for how the parts fit together.

#![deny(missing_docs)]

pub mod cli;
pub mod commands;
pub mod console;
pub mod injections;
pub mod logger;
pub mod matrix;
pub mod report;
pub mod run;
pub mod selftest;
pub mod spec;
