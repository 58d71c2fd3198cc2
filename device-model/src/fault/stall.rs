//! Stalled jobs: a job whose translation faulted waits here, with its response buffers,
//! until the driver has answered every fault of its batch. A stalled job never blocks the
//! command queue.

use std::collections::{BTreeMap, BTreeSet};

use super::{FaultId, FaultQueue, RefaultLog};
use crate::address::{Iova, Pasid};
use crate::chain::Reply;
use crate::counters::Counters;
use crate::engine::Job;
use crate::mmu::Mmu;

/// A job waiting for the driver to answer its faults: one, or up to `fault_batch`.
#[derive(Debug)]
pub struct Stalled {
    /// The job, with its progress.
    pub job: Job,
    /// Where its response goes.
    pub reply: Reply,
    /// The faults of the batch not yet answered; the job resumes when none is left.
    pending: BTreeSet<FaultId>,
}

/// What answering a fault with a MAP did.
#[derive(Debug)]
pub enum Answer {
    /// No stalled job of the PASID waits for that fault (already answered, or its job
    /// ended): the MAP still maps, but resumes nothing.
    Unknown,
    /// The job still waits for other faults of its batch.
    Waiting,
    /// That was the batch's last fault: the job may run again.
    Resume(Stalled),
}

/// The stalled jobs, keyed by the first (smallest) fault id of their batch.
#[derive(Debug)]
pub struct StalledJobs {
    jobs: BTreeMap<FaultId, Stalled>,
    max_jobs: usize,
    batch: u32,
}

impl StalledJobs {
    /// Room for `max_jobs` stalled jobs, each posting up to `batch` fault records at once
    /// (at least 1).
    pub fn new(max_jobs: usize, batch: u32) -> Self {
        StalledJobs {
            jobs: BTreeMap::new(),
            max_jobs,
            batch: batch.max(1),
        }
    }

    /// Jobs stalled.
    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    /// Whether no job is stalled.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// Whether another job can stall (else it gets BUSY).
    pub fn has_room(&self) -> bool {
        self.jobs.len() < self.max_jobs
    }

    /// Forgets every stalled job (device reset: they are never answered).
    pub fn clear(&mut self) {
        self.jobs.clear();
    }

    /// Stalls `job`, which faulted on `address` (a write if `write`): raises that fault and,
    /// with a batch above 1, one for each next page of the job's range that would fault too
    /// (up to the batch). Without room the job comes back, for a BUSY answer.
    #[allow(clippy::too_many_arguments)]
    pub fn stall(
        &mut self,
        mut job: Job,
        reply: Reply,
        address: Iova,
        write: bool,
        mmu: &Mmu,
        queue: &mut FaultQueue,
        counters: &mut Counters,
        log: &mut RefaultLog,
    ) -> Result<(), Box<(Job, Reply)>> {
        if !self.has_room() {
            return Err(Box::new((job, reply)));
        }
        let ahead = (self.batch - 1) as usize;
        let more = job.missing_ahead(mmu, address, ahead);
        let batch = std::iter::once((address, write))
            .chain(more.into_iter().map(|a| (a, job.op.writes_range())));
        let mut pending = BTreeSet::new();
        for (address, write) in batch {
            job.faults += 1;
            pending.insert(queue.raise(job.pasid, job.id, address, write, counters, log));
        }
        // The batch is keyed by its first fault, which is the smallest id.
        if let Some(&key) = pending.first() {
            self.jobs.insert(
                key,
                Stalled {
                    job,
                    reply,
                    pending,
                },
            );
        }
        Ok(())
    }

    /// The key of the stalled job on `pasid` still waiting for fault `id`. The search is
    /// bounded: at most max_stalled_jobs jobs with at most fault_batch faults each.
    fn batch_of(&self, id: FaultId, pasid: Pasid) -> Option<FaultId> {
        self.jobs
            .iter()
            .find(|(_, s)| s.job.pasid == pasid && s.pending.contains(&id))
            .map(|(key, _)| *key)
    }

    /// The driver answered fault `id` of `pasid` with a MAP.
    pub fn answer(&mut self, id: FaultId, pasid: Pasid, queue: &mut FaultQueue) -> Answer {
        let Some(key) = self.batch_of(id, pasid) else {
            return Answer::Unknown;
        };
        queue.answered(id);
        let done = self.jobs.get_mut(&key).is_some_and(|s| {
            s.pending.remove(&id);
            s.pending.is_empty()
        });
        match done.then(|| self.jobs.remove(&key)).flatten() {
            Some(s) => Answer::Resume(s),
            None => Answer::Waiting,
        }
    }

    /// The driver answered fault `id` of `pasid` with FAULT_FAIL: its job leaves, for a
    /// FAULT answer, and the other faults of its batch are withdrawn. `None` if no job waits
    /// for that fault.
    pub fn fail(&mut self, id: FaultId, pasid: Pasid, queue: &mut FaultQueue) -> Option<Stalled> {
        let s = self.jobs.remove(&self.batch_of(id, pasid)?)?;
        queue.answered(id);
        // The rest of the batch no longer has a job to resume.
        for f in &s.pending {
            queue.withdraw(*f);
        }
        Some(s)
    }

    /// `pasid` went away: its stalled jobs leave, oldest first, for FAULT answers, and their
    /// faults are withdrawn.
    pub fn fail_pasid(&mut self, pasid: Pasid, queue: &mut FaultQueue) -> Vec<Stalled> {
        let keys: Vec<FaultId> = self
            .jobs
            .iter()
            .filter(|(_, s)| s.job.pasid == pasid)
            .map(|(id, _)| *id)
            .collect();
        let gone: Vec<Stalled> = keys.iter().filter_map(|k| self.jobs.remove(k)).collect();
        for f in gone.iter().flat_map(|s| &s.pending) {
            queue.withdraw(*f);
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::GuestAddress;

    use super::*;
    use crate::mmu::page_table::LeafSize;
    use crate::mmu::test_mmu;
    use crate::wire::{self, job_op};

    struct Rig {
        mmu: Mmu,
        queue: FaultQueue,
        counters: Counters,
        log: RefaultLog,
    }

    fn rig() -> Rig {
        Rig {
            mmu: test_mmu(&[1, 2]),
            queue: FaultQueue::default(),
            counters: Counters::default(),
            log: RefaultLog::new(16),
        }
    }

    /// A FILL of `pages` pages from 0 on `pasid`.
    fn fill(pasid: u32, pages: u64) -> Job {
        let cmd = wire::Cmd {
            opcode: wire::opcode::JOB,
            pasid,
            length: pages * 0x1000,
            flags: job_op::FILL,
            arg1: 7,
            ..Default::default()
        };
        Job::from_cmd(&cmd, &[], 1 << 20, 0).unwrap()
    }

    fn reply(head: u16) -> Reply {
        Reply {
            head,
            writable: Vec::new(),
        }
    }

    impl Rig {
        fn stall(&mut self, jobs: &mut StalledJobs, job: Job, head: u16) -> Result<(), u16> {
            jobs.stall(
                job,
                reply(head),
                Iova(0),
                true,
                &self.mmu,
                &mut self.queue,
                &mut self.counters,
                &mut self.log,
            )
            .map_err(|refused| refused.1.head)
        }
    }

    #[test]
    fn a_batch_resumes_when_its_last_fault_is_answered() {
        let mut r = rig();
        // Page 1 is mapped: a batch of 3 asks for pages 0, 2 and 3.
        r.mmu
            .map(
                Pasid(1),
                Iova(0x1000),
                GuestAddress(0x1000),
                true,
                LeafSize::Small,
            )
            .unwrap();
        let mut jobs = StalledJobs::new(4, 3);
        r.stall(&mut jobs, fill(1, 8), 5).unwrap();
        assert_eq!((jobs.len(), r.queue.undelivered()), (1, 3));
        assert_eq!(r.counters.global.device_faults, 3);
        let (a, b, c) = (FaultId(1), FaultId(2), FaultId(3));
        // Another PASID's answer, or an unknown id, resumes nothing.
        assert!(matches!(
            jobs.answer(b, Pasid(2), &mut r.queue),
            Answer::Unknown
        ));
        assert!(matches!(
            jobs.answer(FaultId(9), Pasid(1), &mut r.queue),
            Answer::Unknown
        ));
        assert!(matches!(
            jobs.answer(c, Pasid(1), &mut r.queue),
            Answer::Waiting
        ));
        assert!(matches!(
            jobs.answer(a, Pasid(1), &mut r.queue),
            Answer::Waiting
        ));
        // Answering the same fault again is not the last answer.
        assert!(matches!(
            jobs.answer(a, Pasid(1), &mut r.queue),
            Answer::Unknown
        ));
        let Answer::Resume(s) = jobs.answer(b, Pasid(1), &mut r.queue) else {
            panic!("the last answer resumes");
        };
        assert_eq!((s.reply.head, s.job.faults), (5, 3));
        assert!(jobs.is_empty());
        assert_eq!(r.queue.latency().count(), 3);
    }

    #[test]
    fn failing_withdraws_the_batch_and_a_full_table_refuses() {
        let mut r = rig();
        let mut jobs = StalledJobs::new(2, 2);
        r.stall(&mut jobs, fill(1, 4), 1).unwrap();
        r.stall(&mut jobs, fill(2, 1), 2).unwrap();
        assert!(!jobs.has_room());
        assert_eq!(r.stall(&mut jobs, fill(1, 1), 3), Err(3));
        assert_eq!(
            r.queue.undelivered(),
            3,
            "two for PASID 1's batch, one for PASID 2"
        );
        // FAULT_FAIL of the second fault of PASID 1's batch: its first goes too.
        assert!(jobs.fail(FaultId(3), Pasid(1), &mut r.queue).is_none());
        let s = jobs.fail(FaultId(2), Pasid(1), &mut r.queue).unwrap();
        assert_eq!(s.reply.head, 1);
        assert_eq!(r.queue.undelivered(), 1);
        assert!(jobs.fail(FaultId(1), Pasid(1), &mut r.queue).is_none());
        // UNBIND of PASID 2.
        assert!(jobs.fail_pasid(Pasid(1), &mut r.queue).is_empty());
        let gone = jobs.fail_pasid(Pasid(2), &mut r.queue);
        assert_eq!(gone.iter().map(|s| s.reply.head).collect::<Vec<_>>(), [2]);
        assert_eq!((jobs.len(), r.queue.undelivered()), (0, 0));
        r.stall(&mut jobs, fill(1, 1), 4).unwrap();
        jobs.clear();
        assert!(jobs.is_empty());
    }
}
