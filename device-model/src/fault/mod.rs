//! Device page faults: a job whose translation misses both the ATC and the page table
//! raises a `vgpu_fault` record on the fault queue and stalls. The driver answers with a MAP
//! carrying `MAP_F_FAULT_REPLY` and the fault id (the job resumes) or with FAULT_FAIL (the
//! job fails).
//!
//! - [`FaultQueue`]: the records wait here until the driver posts a fault buffer.
//! - [`StalledJobs`]: the jobs waiting for their faults to be answered, with their
//!   response buffers; stalling a job (one fault, or a batch of `fault_batch`), answering a
//!   fault (the job resumes when its whole batch is answered), failing one, and failing every
//!   job of a PASID that goes away.
//! - [`RefaultLog`]: which invalidation last removed each page's translation, so a fault on
//!   it counts as a refault of that event.

mod queue;
mod refault;
mod stall;

pub use queue::FaultQueue;
pub use refault::RefaultLog;
pub use stall::{Answer, Stalled, StalledJobs};

/// A fault's id, nonzero, unique while the device runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FaultId(pub u64);
