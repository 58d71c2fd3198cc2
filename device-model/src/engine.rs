//! The engines: jobs that move data through guest memory at device virtual addresses,
//! page by page through the device's translation. A job that misses a translation returns
//! [`Step::Fault`] with its progress kept; running it again resumes where it stopped.
//!
//! The DMA copies move data between a translated range and driver buffers named by their
//! guest-physical pages (the JOB payload): only the translated side goes through the ATC,
//! the page table and the oracle, as a real device's DMA to its driver's buffers would.

use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::address::{Iova, IovaRange, Pasid, RangeError, PAGE_SIZE};
use crate::counters::GlobalCounters;
use crate::mmu::{Miss, Mmu};
use crate::oracle::{Access, DeviceTranslation, Oracle};
use crate::wire::{self, job_op, status};

/// FNV-1a-64 of `bytes`, continuing from `hash` (CHECKSUM; the one implementation is
/// `protocol::fnv`, which the guest programs check against).
pub use protocol::fnv::update as fnv1a64;
/// Where an FNV-1a-64 hash starts (what CHECKSUM of nothing returns).
pub use protocol::fnv::OFFSET_BASIS as FNV_OFFSET_BASIS;

/// Why a JOB command was refused; [`JobError::status`] is the response status.
#[derive(Clone, Copy, Debug, thiserror::Error, PartialEq, Eq)]
pub enum JobError {
    /// The job's range is not a page-aligned range of the address space.
    #[error("job range: {0}")]
    Range(#[source] RangeError),
    /// The job's range is longer than the device runs in one go.
    #[error("job of {length:#x} bytes is longer than {max:#x}")]
    TooLong {
        /// Bytes asked for.
        length: u64,
        /// The device's `max_job_bytes`.
        max: u64,
    },
    /// A COPY source that leaves the address space.
    #[error("copy source: {0}")]
    Source(#[source] RangeError),
    /// The job op is none of SPEC.md's.
    #[error("unknown job op {0}")]
    UnknownOp(u32),
    /// A DMA copy's payload names fewer pages than the range has, or more pages than the
    /// device takes.
    #[error("DMA copy of {pages} pages with {entries} page addresses (at most {max})")]
    DmaPages {
        /// Pages in the range.
        pages: u64,
        /// Page addresses in the payload.
        entries: u64,
        /// The most the device takes (`max_map_pages`).
        max: u64,
    },
    /// A DMA page address that is not page aligned.
    #[error("DMA page {0:#x} is not page aligned")]
    UnalignedDmaPage(u64),
}

impl JobError {
    /// The response status SPEC.md gives the refusal.
    pub fn status(self) -> u32 {
        match self {
            JobError::Range(_)
            | JobError::TooLong { .. }
            | JobError::Source(_)
            | JobError::DmaPages { .. } => status::BAD_RANGE,
            JobError::UnknownOp(_) | JobError::UnalignedDmaPage(_) => status::BAD_JOB,
        }
    }
}

/// What a job does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobOp {
    /// Write `pattern ^ offset` at every 8-byte offset.
    Fill {
        /// The pattern.
        pattern: u64,
    },
    /// FNV-1a-64 over the range.
    Checksum,
    /// Copy from `source` to the range.
    Copy {
        /// First source address.
        source: Iova,
    },
    /// Copy the range into the job's DMA pages.
    CopyToDma,
    /// Copy the job's DMA pages into the range.
    CopyFromDma,
}

impl JobOp {
    /// Whether the job writes its range (else it only reads it).
    pub fn writes_range(self) -> bool {
        !matches!(self, JobOp::Checksum | JobOp::CopyToDma)
    }
}

/// One job and its progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    /// The address space it runs in.
    pub pasid: Pasid,
    /// The driver's job id (`arg1`), echoed in faults.
    pub id: u64,
    /// What it does.
    pub op: JobOp,
    /// The range it writes (FILL, COPY) or reads (CHECKSUM).
    pub range: IovaRange,
    /// Bytes done.
    pub done: u64,
    /// Running checksum.
    hash: u64,
    /// Device faults taken so far.
    pub faults: u64,
    /// The driver's buffer of a DMA copy: one guest-physical page per page of the range.
    dma: Vec<GuestAddress>,
}

/// Where a job stands after running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Finished; the response's `value0`.
    Done(u64),
    /// Stalled on a missing or read-only translation of `address`.
    Fault {
        /// The faulting address.
        address: Iova,
        /// Whether the access was a write.
        write: bool,
    },
    /// Ended with this status.
    Failed(u32),
}

impl Job {
    /// Builds a job from a JOB command and its payload (the DMA pages of a DMA copy, at
    /// most `max_dma_pages`).
    pub fn from_cmd(
        cmd: &wire::Cmd,
        payload: &[u8],
        max_bytes: u64,
        max_dma_pages: u64,
    ) -> Result<Job, JobError> {
        let range = IovaRange::pages(cmd.start, cmd.length).map_err(JobError::Range)?;
        if range.len() > max_bytes {
            return Err(JobError::TooLong {
                length: range.len(),
                max: max_bytes,
            });
        }
        let mut dma = Vec::new();
        let op = match cmd.flags {
            job_op::FILL => JobOp::Fill { pattern: cmd.arg0 },
            job_op::CHECKSUM => JobOp::Checksum,
            job_op::COPY => {
                // The source may have any alignment, but must lie in the address space.
                IovaRange::new(cmd.arg0, cmd.length).map_err(JobError::Source)?;
                JobOp::Copy {
                    source: Iova(cmd.arg0),
                }
            }
            job_op::COPY_TO_DMA | job_op::COPY_FROM_DMA => {
                dma = dma_pages(payload, range.len() / PAGE_SIZE, max_dma_pages)?;
                if cmd.flags == job_op::COPY_TO_DMA {
                    JobOp::CopyToDma
                } else {
                    JobOp::CopyFromDma
                }
            }
            op => return Err(JobError::UnknownOp(op)),
        };
        Ok(Job {
            pasid: Pasid(cmd.pasid),
            id: cmd.arg1,
            op,
            range,
            done: 0,
            hash: FNV_OFFSET_BASIS,
            faults: 0,
            dma,
        })
    }

    /// Runs until the job ends or faults, without the coherence oracle.
    pub fn run<M: GuestMemory>(
        &mut self,
        mmu: &mut Mmu,
        mem: &M,
        counters: &mut GlobalCounters,
    ) -> Step {
        self.run_checked(mmu, mem, counters, None)
    }

    /// Runs until the job ends or faults; `oracle` (when given) sees every translation the
    /// job uses, before the job uses it.
    pub fn run_checked<M: GuestMemory>(
        &mut self,
        mmu: &mut Mmu,
        mem: &M,
        counters: &mut GlobalCounters,
        mut oracle: Option<&mut Oracle>,
    ) -> Step {
        let mut buf = [0u8; PAGE_SIZE as usize];
        while self.done < self.range.len() {
            let dst = Iova(self.range.start + self.done);
            let mut chunk = (PAGE_SIZE - dst.page_offset()).min(self.range.len() - self.done);
            // Translate everything a chunk needs before touching memory, so a fault leaves
            // the chunk undone and the job resumes at its start.
            let src = match self.op {
                JobOp::Copy { source } => {
                    let src = Iova(source.0 + self.done);
                    chunk = chunk.min(PAGE_SIZE - src.page_offset());
                    match self.translate(mmu, mem, src, false, counters, oracle.as_deref_mut()) {
                        Ok(gpa) => Some(gpa),
                        Err(step) => return step,
                    }
                }
                _ => None,
            };
            let write = self.op.writes_range();
            let gpa = match self.translate(mmu, mem, dst, write, counters, oracle.as_deref_mut()) {
                Ok(gpa) => gpa,
                Err(step) => return step,
            };
            let data = &mut buf[..chunk as usize];
            let moved = match self.op {
                JobOp::Fill { pattern } => {
                    for (i, word) in data.chunks_exact_mut(8).enumerate() {
                        let offset = self.done + i as u64 * 8;
                        word.copy_from_slice(&(pattern ^ offset).to_le_bytes());
                    }
                    mem.write_slice(data, gpa)
                        .map(|_| counters.bytes_written += chunk)
                }
                JobOp::Checksum => mem.read_slice(data, gpa).map(|_| {
                    self.hash = fnv1a64(self.hash, data);
                    counters.bytes_read += chunk;
                }),
                JobOp::Copy { .. } => src
                    .map_or(Ok(()), |s| mem.read_slice(data, s))
                    .and_then(|_| mem.write_slice(data, gpa))
                    .map(|_| {
                        counters.bytes_read += chunk;
                        counters.bytes_written += chunk;
                    }),
                // The range is page aligned, so a chunk is one whole DMA page.
                JobOp::CopyToDma => mem
                    .read_slice(data, gpa)
                    .and_then(|_| mem.write_slice(data, self.dma_page()))
                    .map(|_| {
                        counters.bytes_read += chunk;
                        counters.bytes_written += chunk;
                    }),
                JobOp::CopyFromDma => mem
                    .read_slice(data, self.dma_page())
                    .and_then(|_| mem.write_slice(data, gpa))
                    .map(|_| {
                        counters.bytes_read += chunk;
                        counters.bytes_written += chunk;
                    }),
            };
            if let Err(e) = moved {
                // The driver mapped a frame that is not guest RAM.
                log::warn!("vgpu: job {} at {dst}: guest memory: {e}", self.id);
                return Step::Failed(status::FAULT);
            }
            self.done += chunk;
        }
        Step::Done(match self.op {
            JobOp::Checksum => self.hash,
            _ => 0,
        })
    }

    /// Up to `limit` more pages after the faulting page `after` that this job will access
    /// and that would fault too (no translation, or read-only for a write), so one stall can
    /// ask for a batch of pages. Only the range the job writes (or, for CHECKSUM, reads) is
    /// looked at; a COPY's source faults one page at a time. The page table is read
    /// directly: a lookahead is not an access, so no ATC or walk counter moves.
    pub fn missing_ahead(&self, mmu: &Mmu, after: Iova, limit: usize) -> Vec<Iova> {
        let write = self.op.writes_range();
        let Some(table) = mmu.table(self.pasid) else {
            return Vec::new();
        };
        let mut missing = Vec::new();
        let mut page = after.page_base().0;
        while missing.len() < limit {
            page += PAGE_SIZE;
            if page >= self.range.end {
                break;
            }
            let usable = table
                .translate(Iova(page))
                .is_some_and(|t| t.writable || !write);
            if !usable {
                missing.push(Iova(page));
            }
        }
        missing
    }

    /// The DMA page of the chunk at `done` (`from_cmd` checked there is one per page).
    fn dma_page(&self) -> GuestAddress {
        let index = usize::try_from(self.done / PAGE_SIZE).unwrap_or(usize::MAX);
        // A missing page cannot happen; an address beyond guest RAM fails the access.
        self.dma
            .get(index)
            .copied()
            .unwrap_or(GuestAddress(u64::MAX))
    }

    fn translate<M: GuestMemory>(
        &self,
        mmu: &mut Mmu,
        mem: &M,
        iova: Iova,
        write: bool,
        counters: &mut GlobalCounters,
        oracle: Option<&mut Oracle>,
    ) -> Result<vm_memory::GuestAddress, Step> {
        let t = mmu
            .translate_leaf(self.pasid, iova, write, counters)
            .map_err(|miss| match miss {
                Miss::Fault => Step::Fault {
                    address: iova.page_base(),
                    write,
                },
                Miss::Unbound => Step::Failed(status::FAULT),
            })?;
        let gpa = t.gpa(iova);
        if let (Some(oracle), Some(root)) = (oracle, mmu.process_root(self.pasid)) {
            let device = DeviceTranslation {
                gpa,
                writable: t.writable,
            };
            let access = if write { Access::Write } else { Access::Read };
            oracle.observe(mem, root, self.pasid, iova, device, access, counters);
        }
        Ok(gpa)
    }
}

/// The `pages` guest-physical page addresses of a DMA copy's payload: at most `max_pages`,
/// each page aligned.
fn dma_pages(payload: &[u8], pages: u64, max_pages: u64) -> Result<Vec<GuestAddress>, JobError> {
    const ENTRY: usize = std::mem::size_of::<u64>();
    let entries = (payload.len() / ENTRY) as u64;
    let too_many = JobError::DmaPages {
        pages,
        entries,
        max: max_pages,
    };
    let n = usize::try_from(pages).map_err(|_| too_many)?;
    if pages > max_pages || entries < pages {
        return Err(too_many);
    }
    payload
        .chunks_exact(ENTRY)
        .take(n)
        .map(|e| {
            let gpa = u64::from_le_bytes(e.try_into().unwrap_or_default());
            if gpa % PAGE_SIZE == 0 {
                Ok(GuestAddress(gpa))
            } else {
                Err(JobError::UnalignedDmaPage(gpa))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    use super::*;
    use crate::mmu::page_table::LeafSize;
    use crate::mmu::test_mmu;

    const RAM: u64 = 0x40_0000;

    struct Rig {
        mmu: Mmu,
        mem: GuestMemoryMmap,
        c: GlobalCounters,
    }

    fn rig() -> Rig {
        Rig {
            mmu: test_mmu(&[1]),
            mem: GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap(),
            c: GlobalCounters::default(),
        }
    }

    impl Rig {
        /// Maps virtual page `va` to guest frame `gpa`.
        fn map(&mut self, va: u64, gpa: u64, writable: bool) {
            self.mmu
                .map(
                    Pasid(1),
                    Iova(va),
                    GuestAddress(gpa),
                    writable,
                    LeafSize::Small,
                )
                .unwrap();
        }
    }

    fn cmd(op: u32, start: u64, length: u64, arg0: u64) -> wire::Cmd {
        wire::Cmd {
            opcode: wire::opcode::JOB,
            pasid: 1,
            start,
            length,
            arg0,
            arg1: 77,
            flags: op,
            ..Default::default()
        }
    }

    /// A job without payload, at most 512 DMA pages; the error is the response status.
    fn job_of(c: &wire::Cmd, max_bytes: u64) -> Result<Job, u32> {
        Job::from_cmd(c, &[], max_bytes, 512).map_err(JobError::status)
    }

    /// [`Job::from_cmd`], the error as the response status.
    fn status_of(c: &wire::Cmd, payload: &[u8], max_bytes: u64, max_dma: u64) -> Result<Job, u32> {
        Job::from_cmd(c, payload, max_bytes, max_dma).map_err(JobError::status)
    }

    /// The payload of a DMA copy.
    fn payload(pages: &[u64]) -> Vec<u8> {
        pages.iter().flat_map(|p| p.to_le_bytes()).collect()
    }

    #[test]
    fn commands_are_validated() {
        let max = 1 << 20;
        assert_eq!(job_of(&cmd(9, 0, 0x1000, 0), max), Err(status::BAD_JOB));
        assert_eq!(
            job_of(&cmd(job_op::FILL, 0x10, 0x1000, 0), max),
            Err(status::BAD_RANGE)
        );
        assert_eq!(
            job_of(&cmd(job_op::FILL, 0, 0, 0), max),
            Err(status::BAD_RANGE)
        );
        assert_eq!(
            job_of(&cmd(job_op::FILL, 0, 2 << 20, 0), max),
            Err(status::BAD_RANGE)
        );
        assert_eq!(
            job_of(&cmd(job_op::COPY, 0, 0x1000, (1 << 47) - 0x800), max),
            Err(status::BAD_RANGE)
        );
        let j = job_of(&cmd(job_op::COPY, 0x1000, 0x1000, 0x123), max).unwrap();
        assert_eq!(
            j.op,
            JobOp::Copy {
                source: Iova(0x123)
            }
        );
        assert_eq!(j.id, 77);
    }

    #[test]
    fn refusals_say_why() {
        let max = 1 << 20;
        let refuse = |c: &wire::Cmd, payload: &[u8], max_dma| {
            Job::from_cmd(c, payload, max, max_dma).unwrap_err()
        };
        assert_eq!(
            refuse(&cmd(9, 0, 0x1000, 0), &[], 0),
            JobError::UnknownOp(9)
        );
        assert!(matches!(
            refuse(&cmd(job_op::FILL, 0x10, 0x1000, 0), &[], 0),
            JobError::Range(RangeError::Unaligned { .. })
        ));
        assert_eq!(
            refuse(&cmd(job_op::FILL, 0, 2 << 20, 0), &[], 0),
            JobError::TooLong {
                length: 2 << 20,
                max
            }
        );
        assert!(matches!(
            refuse(&cmd(job_op::COPY, 0, 0x1000, u64::MAX), &[], 0),
            JobError::Source(RangeError::OutOfSpace { .. })
        ));
        let e = refuse(&cmd(job_op::COPY_TO_DMA, 0, 0x3000, 0), &payload(&[0]), 2);
        assert_eq!(
            e,
            JobError::DmaPages {
                pages: 3,
                entries: 1,
                max: 2
            }
        );
        assert!(e.to_string().contains("3 pages"), "{e}");
        let e = refuse(
            &cmd(job_op::COPY_FROM_DMA, 0, 0x1000, 0),
            &payload(&[0x10]),
            2,
        );
        assert_eq!(e, JobError::UnalignedDmaPage(0x10));
        assert_eq!(e.status(), status::BAD_JOB);
    }

    #[test]
    fn fill_then_checksum_through_guest_memory() {
        let mut r = rig();
        // Two virtual pages on two non-adjacent frames.
        r.map(0x10_0000, 0x5000, true);
        r.map(0x10_1000, 0x2000, true);
        let mut fill = job_of(&cmd(job_op::FILL, 0x10_0000, 0x2000, 0xabcd), 1 << 20).unwrap();
        assert_eq!(fill.run(&mut r.mmu, &r.mem, &mut r.c), Step::Done(0));
        assert_eq!(r.mem.read_obj::<u64>(GuestAddress(0x5000)).unwrap(), 0xabcd);
        assert_eq!(
            r.mem.read_obj::<u64>(GuestAddress(0x5008)).unwrap(),
            0xabcd ^ 8
        );
        assert_eq!(
            r.mem.read_obj::<u64>(GuestAddress(0x2000)).unwrap(),
            0xabcd ^ 0x1000
        );
        let mut expect = vec![0u8; 0x2000];
        r.mem
            .read_slice(&mut expect[..0x1000], GuestAddress(0x5000))
            .unwrap();
        r.mem
            .read_slice(&mut expect[0x1000..], GuestAddress(0x2000))
            .unwrap();
        let mut sum = job_of(&cmd(job_op::CHECKSUM, 0x10_0000, 0x2000, 0), 1 << 20).unwrap();
        assert_eq!(
            sum.run(&mut r.mmu, &r.mem, &mut r.c),
            Step::Done(fnv1a64(FNV_OFFSET_BASIS, &expect))
        );
        assert_eq!((r.c.bytes_written, r.c.bytes_read), (0x2000, 0x2000));
    }

    #[test]
    fn copy_with_unaligned_source() {
        let mut r = rig();
        r.mem
            .write_slice(&[7u8; 0x2000], GuestAddress(0x8000))
            .unwrap();
        r.mem.write_obj(0x1122u16, GuestAddress(0x8800)).unwrap();
        r.map(0x1000, 0x8000, false);
        r.map(0x2000, 0x9000, false);
        r.map(0x4000, 0xc000, true);
        let mut copy = job_of(&cmd(job_op::COPY, 0x4000, 0x1000, 0x1800), 1 << 20).unwrap();
        assert_eq!(copy.run(&mut r.mmu, &r.mem, &mut r.c), Step::Done(0));
        assert_eq!(r.mem.read_obj::<u16>(GuestAddress(0xc000)).unwrap(), 0x1122);
        assert_eq!(r.mem.read_obj::<u8>(GuestAddress(0xcfff)).unwrap(), 7);
    }

    #[test]
    fn dma_payload_is_validated() {
        let to_dma = cmd(job_op::COPY_TO_DMA, 0x1000, 0x2000, 0);
        let two = payload(&[0x5000, 0x9000]);
        let j = Job::from_cmd(&to_dma, &two, 1 << 20, 512).unwrap();
        assert_eq!(j.op, JobOp::CopyToDma);
        assert!(!j.op.writes_range());
        assert!(JobOp::CopyFromDma.writes_range());
        // One page short, more pages than the device takes, an unaligned page.
        assert_eq!(
            status_of(&to_dma, &two[..8], 1 << 20, 512),
            Err(status::BAD_RANGE)
        );
        assert_eq!(status_of(&to_dma, &two, 1 << 20, 1), Err(status::BAD_RANGE));
        assert_eq!(
            status_of(&to_dma, &payload(&[0x5000, 0x9008]), 1 << 20, 512),
            Err(status::BAD_JOB)
        );
        // Extra payload bytes are ignored.
        let from_dma = cmd(job_op::COPY_FROM_DMA, 0x1000, 0x1000, 0);
        assert_eq!(
            Job::from_cmd(&from_dma, &two, 1 << 20, 512).map(|j| j.op),
            Ok(JobOp::CopyFromDma)
        );
    }

    #[test]
    fn dma_copies_move_data_between_the_range_and_the_pages() {
        let mut r = rig();
        // The range: two virtual pages, the first read-only.
        r.map(0x10_0000, 0x5000, false);
        r.map(0x10_1000, 0x2000, true);
        r.mem
            .write_slice(&[0x11; 0x1000], GuestAddress(0x5000))
            .unwrap();
        r.mem
            .write_slice(&[0x22; 0x1000], GuestAddress(0x2000))
            .unwrap();
        // Reading the range needs no write permission; the DMA pages are out of order.
        let dma = payload(&[0x9000, 0x8000]);
        let c = cmd(job_op::COPY_TO_DMA, 0x10_0000, 0x2000, 0);
        let mut to = Job::from_cmd(&c, &dma, 1 << 20, 512).unwrap();
        assert_eq!(to.run(&mut r.mmu, &r.mem, &mut r.c), Step::Done(0));
        assert_eq!(r.mem.read_obj::<u8>(GuestAddress(0x9fff)).unwrap(), 0x11);
        assert_eq!(r.mem.read_obj::<u8>(GuestAddress(0x8000)).unwrap(), 0x22);
        // Writing it faults on the read-only page, and nothing moved before it.
        r.mem
            .write_slice(&[0x33; 0x2000], GuestAddress(0xa000))
            .unwrap();
        let c = cmd(job_op::COPY_FROM_DMA, 0x10_0000, 0x2000, 0);
        let mut from = Job::from_cmd(&c, &payload(&[0xa000, 0xb000]), 1 << 20, 512).unwrap();
        assert_eq!(
            from.run(&mut r.mmu, &r.mem, &mut r.c),
            Step::Fault {
                address: Iova(0x10_0000),
                write: true
            }
        );
        assert_eq!(r.mem.read_obj::<u8>(GuestAddress(0x5000)).unwrap(), 0x11);
        r.map(0x10_0000, 0x5000, true);
        assert_eq!(from.run(&mut r.mmu, &r.mem, &mut r.c), Step::Done(0));
        assert_eq!(r.mem.read_obj::<u8>(GuestAddress(0x5000)).unwrap(), 0x33);
        assert_eq!(r.mem.read_obj::<u8>(GuestAddress(0x2fff)).unwrap(), 0x33);
        assert_eq!((r.c.bytes_read, r.c.bytes_written), (0x4000, 0x4000));
        // A DMA page outside guest RAM fails the job.
        let c = cmd(job_op::COPY_TO_DMA, 0x10_0000, 0x1000, 0);
        let mut bad = Job::from_cmd(&c, &payload(&[RAM]), 1 << 20, 512).unwrap();
        assert_eq!(
            bad.run(&mut r.mmu, &r.mem, &mut r.c),
            Step::Failed(status::FAULT)
        );
    }

    #[test]
    fn fault_then_resume_keeps_progress() {
        let mut r = rig();
        r.map(0, 0x1000, true);
        let mut fill = job_of(&cmd(job_op::FILL, 0, 0x3000, 1), 1 << 20).unwrap();
        assert_eq!(
            fill.run(&mut r.mmu, &r.mem, &mut r.c),
            Step::Fault {
                address: Iova(0x1000),
                write: true
            }
        );
        assert_eq!(fill.done, 0x1000);
        // Read-only is not enough for a write.
        r.map(0x1000, 0x2000, false);
        assert_eq!(
            fill.run(&mut r.mmu, &r.mem, &mut r.c),
            Step::Fault {
                address: Iova(0x1000),
                write: true
            }
        );
        r.map(0x1000, 0x2000, true);
        r.map(0x2000, 0x3000, true);
        assert_eq!(fill.run(&mut r.mmu, &r.mem, &mut r.c), Step::Done(0));
        assert_eq!(
            r.mem.read_obj::<u64>(GuestAddress(0x3ff8)).unwrap(),
            1 ^ 0x2ff8
        );
        assert_eq!(r.c.bytes_written, 0x3000);
    }

    #[test]
    fn lookahead_finds_the_next_missing_pages_within_the_range() {
        let mut r = rig();
        r.map(0x1000, 0x1000, true);
        r.map(0x3000, 0x3000, false);
        let fill = job_of(&cmd(job_op::FILL, 0, 0x5000, 1), 1 << 20).unwrap();
        // Page 1 is writable; page 3 is read-only, so a FILL needs it too.
        assert_eq!(
            fill.missing_ahead(&r.mmu, Iova(0), 8),
            [Iova(0x2000), Iova(0x3000), Iova(0x4000)]
        );
        assert_eq!(fill.missing_ahead(&r.mmu, Iova(0), 1), [Iova(0x2000)]);
        let sum = job_of(&cmd(job_op::CHECKSUM, 0, 0x5000, 0), 1 << 20).unwrap();
        assert_eq!(
            sum.missing_ahead(&r.mmu, Iova(0), 8),
            [Iova(0x2000), Iova(0x4000)]
        );
        assert!(fill.missing_ahead(&r.mmu, Iova(0x4000), 8).is_empty());
        assert_eq!((r.c.atc_hits, r.c.atc_misses, r.c.page_walks), (0, 0, 0));
    }

    #[test]
    fn bad_frame_or_lost_pasid_fails() {
        let mut r = rig();
        r.map(0, RAM + 0x1000, true);
        let mut fill = job_of(&cmd(job_op::FILL, 0, 0x1000, 1), 1 << 20).unwrap();
        assert_eq!(
            fill.run(&mut r.mmu, &r.mem, &mut r.c),
            Step::Failed(status::FAULT)
        );
        r.mmu.unbind(Pasid(1)).unwrap();
        let mut sum = job_of(&cmd(job_op::CHECKSUM, 0, 0x1000, 0), 1 << 20).unwrap();
        assert_eq!(
            sum.run(&mut r.mmu, &r.mem, &mut r.c),
            Step::Failed(status::FAULT)
        );
    }
}
