//! The virtual GPU's device model. It knows nothing of KVM: the VMM adapts it to its PCI bus.
//!
//! SPEC.md is the device interface. The parts, in the order a job meets them:
//!
//! - [`device`] takes commands off the virtio queues and dispatches them ([`chain`] checks
//!   the descriptor chains first; [`config`] is how the device is built and its
//!   configuration space).
//! - [`engine`] runs jobs page by page through the [`mmu`]: the ATC ([`mmu::atc`]) first,
//!   then a walk of the job's PASID's IOMMU page table ([`mmu::page_table`]). The `Mmu` is
//!   also the only owner of the rule that a translation restricted or removed is
//!   invalidated in the ATC (MAP replacing a leaf, INVALIDATE, leaf splits, UNBIND).
//! - A translation that misses both becomes a device fault ([`fault`]: the fault queue, the
//!   stalled jobs and how they are answered and resumed, the refault log).
//! - [`invalidate`] parses the driver's invalidations, holds them in flight for the
//!   configured latency and applies them through the `Mmu`.
//! - [`oracle`] checks every translation an engine uses, and AUDIT every translation held,
//!   against the guest's CPU page table, which it walks with [`x86`] (the one x86-64 paging
//!   module: entry bits, walker, and the writer tests, benchmarks and boot code use).
//! - [`counters`] counts everything; [`wire`] is the wire format; [`address`] keeps PASIDs,
//!   device virtual addresses and guest-physical addresses apart.
//!
//! Around the device: `testing` (feature `test-utils`, and in this crate's tests) is the
//! driver-side rig every device test shares, and `bench` (feature `bench`, on by default)
//! measures what the oracle costs a job (`vmm bench oracle`).

#![deny(missing_docs)]

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
pub mod x86;

/// The wire structs and constants, defined in the `protocol` crate.
pub use protocol::wire;

pub use config::{ConfigError, OptionError, VgpuConfig};
pub use counters::Counters;
pub use device::{UsedQueues, VgpuDevice};
