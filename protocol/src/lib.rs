//! Every record that crosses a boundary of the project, defined once.
//!
//! - [`wire`]: the structs and constants on the virtio queues between the guest driver and
//!   the device (the C header `guest-driver/include/vgpu_wire.h` is checked against them in
//!   full by `tests/wire_abi.rs`);
//! - [`counters`]: the device's counters, per mmu-notifier [`counters::Event`] and global; the
//!   field names are the JSON keys;
//! - [`console`]: the `VGPU-*` lines the guest and the virtual host print on their serial
//!   consoles, parsed and printed by the same types;
//! - [`workload`]: what a guest workload reports (the `VGPU-WORKLOAD` line);
//! - [`report`]: the run report the VMM writes and the virtual host relays;
//! - [`fnv`]: FNV-1a-64, the device's CHECKSUM and the image cache's content hash;
//! - [`testing`]: how a test that cannot run says so (`SKIP`, a failure in CI), and the C
//!   compiler runs of the ABI tests.
//!
//! The guest programs, the device model, the VMM, its tests and its scripts all use these
//! types, so a new counter or report field is one edit here (plus the C header).

#![deny(missing_docs)]

pub mod console;
pub mod counters;
pub mod fnv;
pub mod report;
pub mod testing;
pub mod wire;
pub mod workload;

pub use counters::{Counters, Event, EventCounters, GlobalCounters};
pub use report::{ExitReason, HostKind, Report, Verdict};
pub use workload::WorkloadRecord;
