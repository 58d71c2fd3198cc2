//! The fault queue: records of faults raised and not yet written to a fault buffer the
//! driver posted, and when each unanswered fault was raised (its service latency).

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemory;

use super::{FaultId, RefaultLog};
use crate::address::{Iova, Pasid};
use crate::chain::{ChainError, Request};
use crate::counters::{Counters, FaultLatency};
use crate::wire;

/// Faults raised and not yet written to a fault buffer.
#[derive(Debug)]
pub struct FaultQueue {
    next_id: u64,
    undelivered: VecDeque<wire::Fault>,
    /// When each unanswered fault was raised. One entry per stalled job, which the device
    /// bounds (max_stalled_jobs); entries leave on answer, withdrawal or reset.
    raised_at: HashMap<FaultId, Instant>,
    latency: FaultLatency,
}

impl Default for FaultQueue {
    fn default() -> Self {
        FaultQueue {
            next_id: 1,
            undelivered: VecDeque::new(),
            raised_at: HashMap::new(),
            latency: FaultLatency::default(),
        }
    }
}

impl FaultQueue {
    /// Raises a fault of job `job_id` at `address` and counts it; a fault on a page whose
    /// translation an invalidation removed is also a refault of that invalidation's event.
    pub fn raise(
        &mut self,
        pasid: Pasid,
        job_id: u64,
        address: Iova,
        write: bool,
        counters: &mut Counters,
        log: &mut RefaultLog,
    ) -> FaultId {
        let id = FaultId(self.next_id);
        // Ids stay nonzero even if the counter wraps (it will not in practice).
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        counters.global.device_faults += 1;
        self.raised_at.insert(id, Instant::now());
        if let Some(event) = log.take(pasid, address.page_base()) {
            counters.event(event).refaults += 1;
        }
        self.undelivered.push_back(wire::Fault {
            fault_id: id.0,
            job_id,
            address: address.page_base().0,
            pasid: pasid.0,
            flags: if write { wire::FAULT_F_WRITE } else { 0 },
        });
        id
    }

    /// Faults waiting for a buffer.
    pub fn undelivered(&self) -> usize {
        self.undelivered.len()
    }

    /// Drops the undelivered fault `id` (its job went away before the driver saw it).
    pub fn withdraw(&mut self, id: FaultId) {
        self.undelivered.retain(|f| f.fault_id != id.0);
        self.raised_at.remove(&id);
    }

    /// The driver answered fault `id` (MAP or FAULT_FAIL): its service latency counts.
    pub fn answered(&mut self, id: FaultId) {
        if let Some(t) = self.raised_at.remove(&id) {
            self.latency.record(t.elapsed());
        }
    }

    /// The service latencies of the faults answered so far (they survive resets, like the
    /// counters).
    pub fn latency(&self) -> FaultLatency {
        self.latency
    }

    /// Forgets every pending fault (device reset).
    pub fn clear(&mut self) {
        self.undelivered.clear();
        self.raised_at.clear();
    }

    /// Writes waiting faults into the fault buffers the driver posted. Returns whether any
    /// buffer was used. A malformed buffer is returned empty and the fault waits for the next.
    pub fn deliver<M: GuestMemory>(
        &mut self,
        queue: &mut Queue,
        mem: &M,
        counters: &mut Counters,
    ) -> bool {
        let mut used = false;
        while let Some(fault) = self.undelivered.front() {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            let req = Request::parse(chain);
            let reply = req.reply_to();
            let written = match req.defect {
                None if req.readable.is_empty() => reply.write(mem, &[wire_bytes(fault)]),
                Some(e) => {
                    log::warn!("vgpu: fault buffer {}: {e}", req.head);
                    None
                }
                None => {
                    log::warn!(
                        "vgpu: fault buffer {}: {}",
                        req.head,
                        ChainError::WrongDirection
                    );
                    None
                }
            };
            match written {
                Some(len) => {
                    self.undelivered.pop_front();
                    reply.complete(queue, mem, len);
                }
                None => {
                    counters.global.command_errors += 1;
                    reply.complete(queue, mem, 0);
                }
            }
            used = true;
        }
        used
    }
}

fn wire_bytes(f: &wire::Fault) -> &[u8] {
    vm_memory::ByteValued::as_slice(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::IovaRange;
    use crate::invalidate::{apply, Invalidation};
    use crate::mmu::test_mmu;
    use vm_memory::GuestAddress;

    #[test]
    fn answers_time_their_fault_once_and_withdrawn_faults_not_at_all() {
        let mut faults = FaultQueue::default();
        let mut c = Counters::default();
        let mut log = RefaultLog::new(16);
        let a = faults.raise(Pasid(1), 1, Iova(0x1000), false, &mut c, &mut log);
        let b = faults.raise(Pasid(1), 2, Iova(0x2000), false, &mut c, &mut log);
        faults.answered(a);
        faults.answered(a);
        faults.withdraw(b);
        faults.answered(b);
        assert_eq!(faults.latency().count(), 1);
        // An unknown id (never raised) is ignored.
        faults.answered(FaultId(99));
        assert_eq!(faults.latency().count(), 1);
        let d = faults.raise(Pasid(1), 3, Iova(0x3000), false, &mut c, &mut log);
        faults.clear();
        faults.answered(d);
        assert_eq!(faults.latency().count(), 1, "reset forgets pending faults");
    }

    #[test]
    fn ids_are_unique_and_refaults_are_attributed() {
        let mut faults = FaultQueue::default();
        let mut c = Counters::default();
        let mut log = RefaultLog::new(16);
        let mut mmu = test_mmu(&[1]);
        mmu.space(Pasid(1))
            .unwrap()
            .table
            .map_page(Iova(0x3000), GuestAddress(0x3000), true)
            .unwrap();
        let inv = Invalidation {
            pasid: Pasid(1),
            range: IovaRange::pages(0x3000, 0x1000).unwrap(),
            event: wire::event::MIGRATE,
            downgrade: false,
            whole_pasid: false,
        };
        apply(&mut mmu, &mut log, &mut c, &inv).unwrap();
        let a = faults.raise(Pasid(1), 9, Iova(0x3123), true, &mut c, &mut log);
        let b = faults.raise(Pasid(1), 9, Iova(0x3000), false, &mut c, &mut log);
        assert_ne!(a, b);
        assert_ne!(a.0, 0);
        assert_eq!(c.global.device_faults, 2);
        // Only the first fault on the page is a refault.
        assert_eq!(c.events[wire::event::MIGRATE as usize].refaults, 1);
        assert_eq!(faults.undelivered(), 2);
        assert_eq!(faults.undelivered[0].address, 0x3000);
        assert_eq!(faults.undelivered[0].flags, wire::FAULT_F_WRITE);
        faults.withdraw(a);
        assert_eq!(faults.undelivered(), 1);
    }
}
