//! The virtual GPU's device model. It knows nothing of KVM: the VMM adapts it to its PCI bus.
//!
//! SPEC.md is the device interface. The parts, in the order a job meets them:
//! [`device`] takes commands off the virtio queues ([`chain`] parses the descriptor chains),
//! [`engine`] runs jobs page by page through [`mmu`], which asks the [`atc`] and then walks the
//! [`page_table`] of the job's PASID; a miss becomes a device fault ([`fault`]) and the job
//! stalls until the driver answers. [`invalidate`] applies the driver's invalidations,
//! [`oracle`] checks every translation an engine uses against the guest's CPU page table,
//! and [`counters`] counts everything. [`guest_tables`] writes x86-64 page tables into guest
//! memory for tests and benchmarks that need a CPU page table without a guest.

pub mod address;
#[cfg(feature = "bench")]
pub mod bench;
pub mod chain;
pub mod config;
pub mod counters;
pub mod device;
pub mod engine;
pub mod fault;
pub mod invalidate;
pub mod mmu;
pub mod oracle;
#[cfg(any(test, feature = "test-utils"))]
pub mod testing;
pub mod wire;
pub mod x86;

// The ATC and the page table live under the MMU that alone changes them; their old paths
// stay for the VMM's `bench oracle`.
pub use mmu::{atc, page_table};

/// The x86-64 table writer under its old name, which the VMM's `bench oracle` imports; new
/// code uses [`x86::TableWriter`].
pub mod guest_tables {
    pub use crate::x86::{TableWriter as GuestTables, WriterError as GuestTablesError};
}

pub use config::{ConfigError, OptionError, VgpuConfig};
pub use counters::Counters;
pub use device::{UsedQueues, VgpuDevice};
