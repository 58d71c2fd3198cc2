//! [`VgpuDevice`]: the virtio device logic of the virtual GPU, a single-threaded state
//! machine driven by queue notifications.
//!
//! Commands are taken off the command queue in order but may complete out of order: a JOB
//! that faults is parked with its response buffers and completes when the driver's MAP
//! (with `MAP_F_FAULT_REPLY`) lets it finish, or FAULT_FAIL or UNBIND ends it. A stalled job
//! never blocks later commands, which is what lets the driver's mmu-notifier invalidate a
//! range while a job waits for its fault to be served.
//!
//! INVALIDATE completes `inval_latency_us` after it is taken off the queue, like an ATS
//! invalidation in flight on a real link: until then engines still use the old
//! translations. The host calls [`VgpuDevice::complete_due`] when
//! [`VgpuDevice::next_deadline`] passes.
//!
//! This module only takes commands off the queues, dispatches them and writes responses:
//! translations are the [`Mmu`]'s, jobs the [`engine`](crate::engine)'s, stalls and
//! answers [`fault`](crate::fault)'s, invalidations (and their time in flight)
//! [`invalidate`]'s, checks the [`oracle`](crate::oracle)'s.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use virtio_queue::{Queue, QueueT};
use vm_memory::{ByteValued, GuestAddress, GuestMemory, GuestMemoryMmap};

use crate::address::{Iova, IovaRange, Pasid, PAGE_SIZE};
use crate::chain::{needs_interrupt, Reply, Request};
use crate::config::{ConfigError, VgpuConfig};
use crate::counters::{Counters, FaultLatency};
use crate::engine::{Job, Step};
use crate::fault::{Answer, FaultId, FaultQueue, RefaultLog, StalledJobs};
use crate::invalidate::{self, InFlight, Pending};
use crate::mmu::atc::Atc;
use crate::mmu::{Mmu, PageMapping};
use crate::oracle::{Oracle, OracleMode, ViolationSample};
use crate::wire::{self, opcode, status};

/// Which queues got used buffers the driver wants an interrupt for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsedQueues {
    /// The command queue (0).
    pub command: bool,
    /// The fault queue (1).
    pub fault: bool,
}

impl UsedQueues {
    /// The indices of the queues to interrupt.
    pub fn queues(self) -> impl Iterator<Item = u16> {
        [
            (self.command, wire::QUEUE_COMMAND),
            (self.fault, wire::QUEUE_FAULT),
        ]
        .into_iter()
        .filter_map(|(used, q)| used.then_some(q))
    }
}

/// A response ready to go on the command queue.
#[derive(Debug)]
struct Completion {
    reply: Reply,
    resp: wire::Resp,
    data: Vec<u8>,
}

struct Active<M> {
    mem: Arc<M>,
    command: Queue,
    fault: Queue,
}

/// The virtual GPU.
pub struct VgpuDevice<M: GuestMemory = GuestMemoryMmap> {
    config: VgpuConfig,
    mmu: Mmu,
    refaults: RefaultLog,
    fault_queue: FaultQueue,
    stalled: StalledJobs,
    counters: Counters,
    /// The same counters split by the PASID of the command that moved them (host side).
    pasid_counters: BTreeMap<u32, Counters>,
    /// The PASID of the command being handled, once its head is parsed.
    current_pasid: Option<Pasid>,
    oracle: Oracle,
    completions: Vec<Completion>,
    /// INVALIDATEs in flight.
    in_flight: InFlight,
    active: Option<Active<M>>,
}

fn resp(status: u32, value0: u64, value1: u64) -> wire::Resp {
    wire::Resp {
        status,
        reserved: 0,
        value0,
        value1,
    }
}

/// Bytes of a command head.
const CMD_SIZE: usize = std::mem::size_of::<wire::Cmd>();
/// Bytes of a response.
const RESP_SIZE: u64 = std::mem::size_of::<wire::Resp>() as u64;
/// Bytes of a map entry.
const ENTRY_SIZE: usize = std::mem::size_of::<wire::MapEntry>();

impl<M: GuestMemory> VgpuDevice<M> {
    /// A device built as `config` says, not yet activated.
    pub fn new(config: VgpuConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let atc = Atc::new(config.atc_entries, config.atc_ways)?;
        Ok(VgpuDevice {
            mmu: Mmu::new(atc, config.max_pasids, config.max_table_nodes),
            refaults: RefaultLog::new(config.max_removal_records),
            fault_queue: FaultQueue::default(),
            stalled: StalledJobs::new(config.max_stalled_jobs, config.fault_batch),
            counters: Counters::default(),
            pasid_counters: BTreeMap::new(),
            current_pasid: None,
            oracle: Oracle::new(config.oracle),
            completions: Vec::new(),
            in_flight: InFlight::new(config.inval_latency_us),
            active: None,
            config,
        })
    }

    /// How the device was built.
    pub fn config(&self) -> &VgpuConfig {
        &self.config
    }

    /// Reads the configuration space; bytes past its end read zero.
    pub fn read_config(&self, offset: u64, data: &mut [u8]) {
        let space = self.config.to_wire();
        let bytes = space.as_slice();
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|o| bytes.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    /// Starts the device on the driver's queues.
    pub fn activate(&mut self, mem: Arc<M>, command: Queue, fault: Queue) {
        self.active = Some(Active {
            mem,
            command,
            fault,
        });
    }

    /// Whether the device has queues.
    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    /// Back to the state before activation: address spaces, stalled jobs and undelivered
    /// faults are gone. The counters stay (the host reports them at the end of a run).
    pub fn reset(&mut self) {
        self.active = None;
        self.mmu.clear();
        self.refaults = RefaultLog::new(self.config.max_removal_records);
        self.fault_queue.clear();
        self.stalled.clear();
        self.completions.clear();
        self.in_flight.clear();
        self.oracle.clear_history();
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// The counters by PASID: what each address space's commands (and the jobs and faults
    /// they resumed) caused. Only valid PASIDs appear, so the map is bounded by `max_pasids`.
    pub fn pasid_counters(&self) -> &BTreeMap<u32, Counters> {
        &self.pasid_counters
    }

    /// The coherence oracle's first violations (host side; the count is the global
    /// `violations` counter). They survive reset, like the counters.
    pub fn violations(&self) -> &[ViolationSample] {
        self.oracle.samples()
    }

    /// How often the coherence oracle checks a translation.
    pub fn oracle_mode(&self) -> OracleMode {
        self.oracle.mode()
    }

    /// Sets how often the coherence oracle checks a translation (the `oracle` device
    /// option sets it when the device is built).
    pub fn set_oracle_mode(&mut self, mode: OracleMode) {
        self.oracle.set_mode(mode);
    }

    /// How long the driver took to answer faults (host-only, not on the wire).
    pub fn fault_latency(&self) -> FaultLatency {
        self.fault_queue.latency()
    }

    /// Jobs waiting for a fault answer.
    pub fn stalled_jobs(&self) -> usize {
        self.stalled.len()
    }

    /// Serves every available command, then posts waiting faults.
    pub fn process_command_queue(&mut self) -> UsedQueues {
        let Some(mut a) = self.active.take() else {
            return UsedQueues::default();
        };
        let mut used = UsedQueues::default();
        while let Some(chain) = a.command.pop_descriptor_chain(a.mem.as_ref()) {
            let req = Request::parse(chain);
            let before = self.counters;
            self.current_pasid = None;
            self.handle(a.mem.as_ref(), &req);
            self.attribute(&before);
            used.command |= self.flush(&mut a);
        }
        used.fault = self
            .fault_queue
            .deliver(&mut a.fault, a.mem.as_ref(), &mut self.counters);
        let used = Self::interrupts(&mut a, used);
        self.active = Some(a);
        used
    }

    /// When the oldest INVALIDATE in flight is due, if one is.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.in_flight.next_deadline()
    }

    /// Applies and completes every INVALIDATE due by `now`.
    pub fn complete_due(&mut self, now: Instant) -> UsedQueues {
        let Some(mut a) = self.active.take() else {
            return UsedQueues::default();
        };
        while let Some(f) = self.in_flight.pop_due(now) {
            // Counted for its PASID, as if it completed with the command.
            let before = self.counters;
            self.current_pasid = Some(f.inv.pasid);
            self.complete_invalidation(f);
            self.attribute(&before);
        }
        let used = UsedQueues {
            command: self.flush(&mut a),
            fault: false,
        };
        let used = Self::interrupts(&mut a, used);
        self.active = Some(a);
        used
    }

    /// Posts waiting faults into the buffers the driver added to the fault queue.
    pub fn process_fault_queue(&mut self) -> UsedQueues {
        let Some(mut a) = self.active.take() else {
            return UsedQueues::default();
        };
        let used = UsedQueues {
            command: false,
            fault: self
                .fault_queue
                .deliver(&mut a.fault, a.mem.as_ref(), &mut self.counters),
        };
        let used = Self::interrupts(&mut a, used);
        self.active = Some(a);
        used
    }

    fn interrupts(a: &mut Active<M>, used: UsedQueues) -> UsedQueues {
        UsedQueues {
            command: used.command && needs_interrupt(&mut a.command, a.mem.as_ref()),
            fault: used.fault && needs_interrupt(&mut a.fault, a.mem.as_ref()),
        }
    }

    /// Writes the ready responses and returns their chains.
    fn flush(&mut self, a: &mut Active<M>) -> bool {
        let any = !self.completions.is_empty();
        for c in self.completions.drain(..) {
            let written = if c.reply.writable.is_empty() {
                Some(0)
            } else {
                c.reply.write(a.mem.as_ref(), &[c.resp.as_slice(), &c.data])
            };
            let len = written.unwrap_or_else(|| {
                log::warn!("vgpu: response of chain {} does not fit", c.reply.head);
                // Malformed commands were counted when they were refused.
                if !is_command_error(c.resp.status) {
                    self.counters.global.command_errors += 1;
                }
                0
            });
            c.reply.complete(&mut a.command, a.mem.as_ref(), len);
        }
        any
    }

    fn respond(&mut self, reply: Reply, resp: wire::Resp) {
        if is_command_error(resp.status) {
            self.counters.global.command_errors += 1;
        }
        self.completions.push(Completion {
            reply,
            resp,
            data: Vec::new(),
        });
    }

    /// Adds the counter movement since `before` to the current command's PASID, if it is
    /// one the device could have bound (a bogus PASID must not grow the map).
    fn attribute(&mut self, before: &Counters) {
        let Some(Pasid(p)) = self.current_pasid else {
            return;
        };
        if p == 0 || p > self.config.max_pasids {
            return;
        }
        self.pasid_counters
            .entry(p)
            .or_default()
            .add_movement(before, &self.counters);
    }

    fn handle(&mut self, mem: &M, req: &Request) {
        let reply = req.reply_to();
        if let Some(defect) = req.defect {
            log::warn!("vgpu: command chain {}: {defect}", req.head);
            return self.respond(reply, resp(status::BAD_CHAIN, 0, 0));
        }
        if !req.can_write(mem, RESP_SIZE) {
            // Nowhere to put a status: the chain goes back with nothing written.
            log::warn!("vgpu: command chain {} has no response buffer", req.head);
            self.counters.global.command_errors += 1;
            self.completions.push(Completion {
                reply: Reply {
                    head: req.head,
                    writable: Vec::new(),
                },
                resp: wire::Resp::default(),
                data: Vec::new(),
            });
            return;
        }
        let max_payload = self.config.max_map_pages as usize * ENTRY_SIZE;
        let bytes = match req.read(mem, CMD_SIZE + max_payload) {
            Ok(b) if b.len() >= CMD_SIZE => b,
            Ok(_) => return self.respond(reply, resp(status::BAD_CHAIN, 0, 0)),
            Err(e) => {
                log::warn!("vgpu: command chain {}: {e}", req.head);
                return self.respond(reply, resp(status::BAD_CHAIN, 0, 0));
            }
        };
        let mut cmd = wire::Cmd::default();
        cmd.as_mut_slice().copy_from_slice(&bytes[..CMD_SIZE]);
        let payload = &bytes[CMD_SIZE..];
        let pasid = Pasid(cmd.pasid);
        self.current_pasid = Some(pasid);
        let r = match cmd.opcode {
            opcode::BIND => match self.mmu.bind(pasid, GuestAddress(cmd.arg0)) {
                Ok(()) => resp(status::OK, 0, 0),
                Err(_) => resp(status::BAD_PASID, 0, 0),
            },
            opcode::UNBIND => self.unbind(mem, pasid),
            opcode::MAP => self.map(mem, &cmd, payload),
            opcode::INVALIDATE => return self.start_invalidation(&cmd, reply),
            opcode::JOB => return self.submit(mem, &cmd, payload, reply),
            opcode::FAULT_FAIL => self.fault_fail(pasid, FaultId(cmd.arg0), cmd.arg1),
            opcode::COUNTERS => return self.read_counters(&cmd, req, reply),
            opcode::AUDIT => self.audit(mem, pasid),
            other => {
                log::warn!("vgpu: unknown opcode {other}");
                resp(status::BAD_OPCODE, 0, 0)
            }
        };
        self.respond(reply, r);
    }

    /// AUDIT: every translation `pasid` holds against the CPU page table.
    fn audit(&mut self, mem: &M, pasid: Pasid) -> wire::Resp {
        if !self.mmu.is_bound(pasid) {
            return resp(status::BAD_PASID, 0, 0);
        }
        let r = self
            .oracle
            .audit(mem, &self.mmu, pasid, &mut self.counters.global);
        resp(status::OK, r.checked, r.disagreements)
    }

    fn unbind(&mut self, mem: &M, pasid: Pasid) -> wire::Resp {
        if !self.mmu.is_bound(pasid) {
            return resp(status::BAD_PASID, 0, 0);
        }
        // Invalidations of this space still in flight complete first, in order.
        for f in self.in_flight.take_pasid(pasid) {
            self.complete_invalidation(f);
        }
        // A translation still held now is stale if the process's mappings are gone (UNBIND
        // at exit comes after the mm's teardown): audit before dropping them, unless the
        // oracle is off.
        let stale = match self.oracle.mode() {
            OracleMode::Off => 0,
            _ => {
                self.oracle
                    .audit(mem, &self.mmu, pasid, &mut self.counters.global)
                    .disagreements
            }
        };
        let Ok(dropped) = self.mmu.unbind(pasid) else {
            return resp(status::BAD_PASID, 0, 0);
        };
        self.refaults.forget_pasid(pasid);
        self.oracle.forget_pasid(pasid);
        for s in self.stalled.fail_pasid(pasid, &mut self.fault_queue) {
            self.counters.global.jobs_failed += 1;
            self.respond(s.reply, resp(status::FAULT, 0, s.job.faults));
        }
        resp(status::OK, dropped, stale)
    }

    /// Checks an INVALIDATE and puts it in flight (or applies it now with no latency).
    fn start_invalidation(&mut self, cmd: &wire::Cmd, reply: Reply) {
        let inv = match invalidate::parse(cmd, self.config.pasid_inval_threshold) {
            Ok(inv) => inv,
            Err(e) => {
                log::debug!("vgpu: INVALIDATE on pasid {}: {e}", cmd.pasid);
                return self.respond(reply, resp(e.status(), 0, 0));
            }
        };
        if !self.mmu.is_bound(inv.pasid) {
            return self.respond(reply, resp(status::BAD_PASID, 0, 0));
        }
        if let Some(due_now) = self.in_flight.start(inv, reply, Instant::now()) {
            self.complete_invalidation(due_now);
        }
    }

    /// Applies an invalidation to the page table and the ATC and queues its completion.
    fn complete_invalidation(&mut self, f: Pending) {
        let r = match invalidate::apply(
            &mut self.mmu,
            &mut self.refaults,
            &mut self.counters,
            &f.inv,
        ) {
            Ok(done) => {
                self.oracle.record_invalidation(
                    f.inv.pasid,
                    f.inv.event,
                    f.inv.range,
                    f.inv.downgrade,
                );
                resp(status::OK, done.ats_requests, done.pages)
            }
            // Only an unbound PASID fails an invalidation.
            Err(_) => resp(status::BAD_PASID, 0, 0),
        };
        self.respond(f.reply, r);
    }

    fn map(&mut self, mem: &M, cmd: &wire::Cmd, payload: &[u8]) -> wire::Resp {
        let pasid = Pasid(cmd.pasid);
        if !self.mmu.is_bound(pasid) {
            return resp(status::BAD_PASID, 0, 0);
        }
        let Ok(range) = IovaRange::pages(cmd.start, cmd.length) else {
            return resp(status::BAD_RANGE, 0, 0);
        };
        let pages = range.len() / PAGE_SIZE;
        if pages > u64::from(self.config.max_map_pages)
            || payload.len() < pages as usize * ENTRY_SIZE
        {
            return resp(status::BAD_RANGE, 0, 0);
        }
        let entries: Vec<Option<PageMapping>> = payload
            .chunks_exact(ENTRY_SIZE)
            .take(pages as usize)
            .map(|e| map_entry(u64::from_le_bytes(e.try_into().unwrap_or_default())))
            .collect();
        let log = &mut self.refaults;
        let (mapped, result) =
            self.mmu
                .map_pages(pasid, Iova(range.start), &entries, &mut |page| {
                    log.forget(pasid, page)
                });
        self.counters.global.maps += 1;
        if cmd.flags & wire::MAP_F_FAULT_REPLY != 0 {
            // The driver's own count; guest-controlled, so it only ever adds up.
            self.counters.global.fault_retries =
                self.counters.global.fault_retries.saturating_add(cmd.arg1);
        }
        self.counters.global.pages_mapped += mapped;
        if let Err(e) = result {
            log::warn!("vgpu: MAP on {pasid}: {e}");
            return resp(status::BUSY, mapped, 0);
        }
        let mut resumed = 0;
        if cmd.flags & wire::MAP_F_FAULT_REPLY != 0 {
            let id = FaultId(cmd.arg0);
            match self.stalled.answer(id, pasid, &mut self.fault_queue) {
                Answer::Resume(s) => {
                    resumed = 1;
                    self.run_job(mem, s.job, s.reply);
                }
                Answer::Waiting => {}
                Answer::Unknown => {
                    log::debug!("vgpu: MAP answers unknown fault {} on {pasid}", id.0);
                }
            }
        }
        resp(status::OK, mapped, resumed)
    }

    fn submit(&mut self, mem: &M, cmd: &wire::Cmd, payload: &[u8], reply: Reply) {
        if !self.mmu.is_bound(Pasid(cmd.pasid)) {
            return self.respond(reply, resp(status::BAD_PASID, 0, 0));
        }
        let max_dma_pages = u64::from(self.config.max_map_pages);
        let job = match Job::from_cmd(cmd, payload, self.config.max_job_bytes, max_dma_pages) {
            Ok(job) => job,
            Err(e) => {
                log::debug!("vgpu: JOB on pasid {}: {e}", cmd.pasid);
                return self.respond(reply, resp(e.status(), 0, 0));
            }
        };
        if !self.stalled.has_room() {
            self.counters.global.jobs_failed += 1;
            return self.respond(reply, resp(status::BUSY, 0, 0));
        }
        self.run_job(mem, job, reply);
    }

    fn run_job(&mut self, mem: &M, mut job: Job, reply: Reply) {
        let step = job.run_checked(
            &mut self.mmu,
            mem,
            &mut self.counters.global,
            Some(&mut self.oracle),
        );
        match step {
            Step::Done(value) => {
                self.counters.global.jobs_completed += 1;
                self.respond(reply, resp(status::OK, value, job.faults));
            }
            Step::Failed(st) => {
                self.counters.global.jobs_failed += 1;
                self.respond(reply, resp(st, 0, job.faults));
            }
            Step::Fault { address, write } => {
                let stalled = self.stalled.stall(
                    job,
                    reply,
                    address,
                    write,
                    &self.mmu,
                    &mut self.fault_queue,
                    &mut self.counters,
                    &mut self.refaults,
                );
                if let Err(refused) = stalled {
                    let (job, reply) = *refused;
                    self.counters.global.jobs_failed += 1;
                    self.respond(reply, resp(status::BUSY, 0, job.faults));
                }
            }
        }
    }

    fn fault_fail(&mut self, pasid: Pasid, id: FaultId, errno: u64) -> wire::Resp {
        if !self.mmu.is_bound(pasid) {
            return resp(status::BAD_PASID, 0, 0);
        }
        let Some(s) = self.stalled.fail(id, pasid, &mut self.fault_queue) else {
            return resp(status::BAD_JOB, 0, 0);
        };
        self.counters.global.jobs_failed += 1;
        self.respond(s.reply, resp(status::FAULT, errno, s.job.faults));
        resp(status::OK, 0, 0)
    }

    fn read_counters(&mut self, cmd: &wire::Cmd, req: &Request, reply: Reply) {
        let size = std::mem::size_of::<wire::Counters>() as u64;
        if req.writable_len() < RESP_SIZE + size {
            return self.respond(reply, resp(status::BAD_CHAIN, 0, 0));
        }
        // PASID 0: the whole device; otherwise that address space's share (zero if it
        // never did anything). Reset only applies to the whole-device set.
        let data = match cmd.pasid {
            0 => self.counters,
            p => self.pasid_counters.get(&p).copied().unwrap_or_default(),
        }
        .as_slice()
        .to_vec();
        if cmd.pasid == 0 && cmd.flags & wire::COUNTERS_F_RESET != 0 {
            self.counters = Counters::default();
        }
        self.completions.push(Completion {
            reply,
            resp: resp(status::OK, 0, 0),
            data,
        });
    }
}

/// Whether `status` refuses a malformed command (rather than reporting how a job ended).
fn is_command_error(status: u32) -> bool {
    matches!(
        status,
        status::BAD_OPCODE
            | status::BAD_PASID
            | status::BAD_RANGE
            | status::BAD_CHAIN
            | status::BAD_JOB
    )
}

/// What a MAP payload entry asks for (`None`: the page stays as it is).
fn map_entry(e: u64) -> Option<PageMapping> {
    (e & wire::MAP_VALID != 0).then_some(PageMapping {
        frame: GuestAddress(e & wire::MAP_GPA_MASK),
        writable: e & wire::MAP_WRITE != 0,
    })
}

// The end-to-end tests drive the queues the way the guest driver does; they are long
// enough to live in their own file.
#[cfg(test)]
mod tests;
