//! End-to-end tests of [`super::VgpuDevice`]: a driver built from raw descriptors and rings in
//! real guest memory.

use virtio_bindings::virtio_ring::{
    VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::Bytes;

use std::time::{Duration, Instant};

use super::*;
use crate::address::{HUGE_PAGE_SIZE, VA_LIMIT};
use crate::engine::fnv1a64;
use crate::oracle::Access;
use crate::wire::{event, job_op};
use crate::x86::{CpuLeaf, TableWriter};

const CMDQ: u64 = 0;
const FAULTQ: u64 = 0x8000;
const BUFS: u64 = 0x10_0000;
const FRAMES: u64 = 0x40_0000;
const RAM: usize = 0x100_0000;
const R: u16 = 0;
const W: u16 = VRING_DESC_F_WRITE as u16;
const N: u16 = VRING_DESC_F_NEXT as u16;
const MB2: u64 = HUGE_PAGE_SIZE;

/// A driver's view of the device: it builds chains in guest memory and reads the used
/// rings, exactly as the guest does.
struct Rig {
    dev: VgpuDevice,
    mem: Arc<GuestMemoryMmap>,
    cmd_avail: GuestAddress,
    cmd_used: GuestAddress,
    fault_avail: GuestAddress,
    fault_used: GuestAddress,
    cmd_desc: u16,
    fault_desc: u16,
    cmd_seen: u16,
    fault_seen: u16,
    next_buf: u64,
}

/// A submitted command.
struct Sent {
    head: u16,
    resp: u64,
    data: u64,
}

fn rig_with(config: VgpuConfig) -> Rig {
    let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM)]).unwrap());
    let cq = MockSplitQueue::create(mem.as_ref(), GuestAddress(CMDQ), 128);
    let fq = MockSplitQueue::create(mem.as_ref(), GuestAddress(FAULTQ), 64);
    let mut dev = VgpuDevice::new(config).unwrap();
    dev.activate(
        mem.clone(),
        cq.create_queue().unwrap(),
        fq.create_queue().unwrap(),
    );
    Rig {
        cmd_avail: cq.avail_addr(),
        cmd_used: cq.used_addr(),
        fault_avail: fq.avail_addr(),
        fault_used: fq.used_addr(),
        dev,
        mem,
        cmd_desc: 0,
        fault_desc: 0,
        cmd_seen: 0,
        fault_seen: 0,
        next_buf: BUFS,
    }
}

/// The default device, but invalidations complete at once (most tests are about what
/// they do, not when).
fn rig() -> Rig {
    rig_with(VgpuConfig {
        inval_latency_us: 0,
        ..VgpuConfig::default()
    })
}

fn cmd(opcode: u32, pasid: u32, start: u64, length: u64) -> wire::Cmd {
    wire::Cmd {
        opcode,
        pasid,
        start,
        length,
        ..Default::default()
    }
}

fn entry(gpa: u64, writable: bool) -> u64 {
    gpa | wire::MAP_VALID | if writable { wire::MAP_WRITE } else { 0 }
}

impl Rig {
    fn alloc(&mut self, len: u64) -> u64 {
        let at = self.next_buf;
        self.next_buf += len.next_multiple_of(64).max(64);
        at
    }

    /// Puts a chain of `(addr, len, flags)` on a queue; NEXT links are added here.
    fn chain(&mut self, fault_queue: bool, bufs: &[(u64, u32, u16)]) -> u16 {
        let head = if fault_queue {
            self.fault_desc
        } else {
            self.cmd_desc
        };
        let descs: Vec<(u64, u32, u16, u16)> = bufs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, flags))| {
                let last = i + 1 == bufs.len();
                let flags = if last { flags } else { flags | N };
                (addr, len, flags, head + i as u16 + 1)
            })
            .collect();
        self.raw_chain(fault_queue, &descs);
        head
    }

    /// Writes descriptors `(addr, len, flags, next)` as they are and offers the first.
    fn raw_chain(&mut self, fault_queue: bool, descs: &[(u64, u32, u16, u16)]) {
        let (table, avail, size, next) = if fault_queue {
            (FAULTQ, self.fault_avail, 64, &mut self.fault_desc)
        } else {
            (CMDQ, self.cmd_avail, 128, &mut self.cmd_desc)
        };
        let head = *next;
        for (i, &(addr, len, flags, nxt)) in descs.iter().enumerate() {
            let d = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, nxt));
            let at = table + (u64::from(head) + i as u64) * 16;
            self.mem.write_obj(d, GuestAddress(at)).unwrap();
        }
        *next += descs.len() as u16;
        let idx: u16 = self.mem.read_obj(GuestAddress(avail.0 + 2)).unwrap();
        let slot = avail.0 + 4 + u64::from(idx % size) * 2;
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.mem
            .write_obj(idx.wrapping_add(1), GuestAddress(avail.0 + 2))
            .unwrap();
    }

    fn send_with(&mut self, c: &wire::Cmd, payload: &[u64], data_len: u32) -> Sent {
        let cmd_at = self.alloc(48);
        self.mem.write_obj(*c, GuestAddress(cmd_at)).unwrap();
        let mut bufs = vec![(cmd_at, 48, R)];
        if !payload.is_empty() {
            let at = self.alloc(payload.len() as u64 * 8);
            for (i, e) in payload.iter().enumerate() {
                self.mem
                    .write_obj(*e, GuestAddress(at + i as u64 * 8))
                    .unwrap();
            }
            bufs.push((at, payload.len() as u32 * 8, R));
        }
        let resp = self.alloc(24);
        bufs.push((resp, 24, W));
        let data = self.alloc(u64::from(data_len));
        if data_len > 0 {
            bufs.push((data, data_len, W));
        }
        let head = self.chain(false, &bufs);
        Sent { head, resp, data }
    }

    fn send(&mut self, c: &wire::Cmd) -> Sent {
        self.send_with(c, &[], 0)
    }

    fn resp(&self, s: &Sent) -> wire::Resp {
        self.mem.read_obj(GuestAddress(s.resp)).unwrap()
    }

    /// New entries on the command queue's used ring: (head, len).
    fn used(&mut self) -> Vec<(u16, u32)> {
        used_since(&self.mem, self.cmd_used, &mut self.cmd_seen)
    }

    /// Sends one command, runs the device, expects it to complete at once.
    fn run(&mut self, c: &wire::Cmd, payload: &[u64]) -> wire::Resp {
        let s = self.send_with(c, payload, 0);
        self.dev.process_command_queue();
        assert_eq!(self.used(), vec![(s.head, 24)]);
        self.resp(&s)
    }

    fn bind(&mut self, pasid: u32) {
        assert_eq!(
            self.run(&cmd(opcode::BIND, pasid, 0, 0), &[]).status,
            status::OK
        );
    }

    fn map(&mut self, pasid: u32, start: u64, entries: &[u64]) -> wire::Resp {
        self.run(
            &cmd(opcode::MAP, pasid, start, entries.len() as u64 * PAGE_SIZE),
            entries,
        )
    }

    fn job(&mut self, pasid: u32, op: u32, start: u64, length: u64, arg0: u64) -> Sent {
        let mut c = cmd(opcode::JOB, pasid, start, length);
        c.flags = op;
        c.arg0 = arg0;
        c.arg1 = 0x10b;
        self.send(&c)
    }

    fn invalidate(&mut self, pasid: u32, start: u64, len: u64, ev: u32, flags: u32) -> wire::Resp {
        let mut c = cmd(opcode::INVALIDATE, pasid, start, len);
        c.event = ev;
        c.flags = flags;
        self.run(&c, &[])
    }

    fn post_fault_buffers(&mut self, n: usize) -> Vec<u64> {
        (0..n)
            .map(|_| {
                let at = self.alloc(32);
                self.chain(true, &[(at, 32, W)]);
                at
            })
            .collect()
    }

    /// The fault records the device returned since the last call, read from the buffers
    /// their used-ring heads point at; every one must be in `bufs`.
    fn faults(&mut self, bufs: &[u64]) -> Vec<wire::Fault> {
        used_since(&self.mem, self.fault_used, &mut self.fault_seen)
            .into_iter()
            .map(|(head, len)| {
                assert_eq!(len, 32);
                assert!(bufs.contains(&self.fault_buf_of(head)));
                self.mem
                    .read_obj(GuestAddress(self.fault_buf_of(head)))
                    .unwrap()
            })
            .collect()
    }

    fn fault_buf_of(&self, head: u16) -> u64 {
        let desc: [u8; 16] = self
            .mem
            .read_obj(GuestAddress(FAULTQ + u64::from(head) * 16))
            .unwrap();
        u64::from_le_bytes(desc[..8].try_into().unwrap())
    }

    fn counters(&self) -> Counters {
        self.dev.counters()
    }

    /// COUNTERS through the queue for `pasid` (0 = the whole device).
    fn read_counters_of(&mut self, pasid: u32) -> Counters {
        let size = std::mem::size_of::<wire::Counters>() as u32;
        let s = self.send_with(&cmd(opcode::COUNTERS, pasid, 0, 0), &[], size);
        self.dev.process_command_queue();
        assert!(self.used().contains(&(s.head, 24 + size)));
        self.mem.read_obj(GuestAddress(s.data)).unwrap()
    }
}

fn used_since(mem: &GuestMemoryMmap, used: GuestAddress, seen: &mut u16) -> Vec<(u16, u32)> {
    let idx: u16 = mem.read_obj(GuestAddress(used.0 + 2)).unwrap();
    let mut out = Vec::new();
    while *seen != idx {
        let at = used.0 + 4 + u64::from(*seen) * 8;
        let id: u32 = mem.read_obj(GuestAddress(at)).unwrap();
        let len: u32 = mem.read_obj(GuestAddress(at + 4)).unwrap();
        out.push((id as u16, len));
        *seen = seen.wrapping_add(1);
    }
    out
}

#[test]
fn config_space_reads() {
    let dev = VgpuDevice::<GuestMemoryMmap>::new(VgpuConfig::default()).unwrap();
    let mut b = [0xffu8; 8];
    dev.read_config(0, &mut b);
    assert_eq!(b, [64, 0, 0, 0, 0, 2, 0, 0]);
    dev.read_config(8, &mut b);
    assert_eq!(b, [0, 2, 0, 0, 8, 0, 0, 0]);
    dev.read_config(28, &mut b);
    assert_eq!(b, [0; 8]);
    dev.read_config(u64::MAX, &mut b);
    assert_eq!(b, [0; 8]);
    let bad = VgpuConfig {
        atc_ways: 7,
        ..Default::default()
    };
    assert!(VgpuDevice::<GuestMemoryMmap>::new(bad).is_err());
}

#[test]
fn fill_and_checksum_end_to_end() {
    let mut r = rig();
    r.bind(1);
    let entries: Vec<u64> = (0..4)
        .map(|i| entry(FRAMES + (3 - i) * PAGE_SIZE, true))
        .collect();
    let m = r.map(1, 0x7000_0000, &entries);
    assert_eq!((m.status, m.value0), (status::OK, 4));
    let s = r.job(1, job_op::FILL, 0x7000_0000, 0x4000, 0x55);
    let used = r.dev.process_command_queue();
    assert!(used.command && !used.fault);
    assert_eq!(r.used(), vec![(s.head, 24)]);
    assert_eq!(r.resp(&s), resp(status::OK, 0, 0));
    // The last virtual page went to the first frame.
    let w: u64 = r.mem.read_obj(GuestAddress(FRAMES)).unwrap();
    assert_eq!(w, 0x55 ^ 0x3000);
    let mut expect = Vec::new();
    for i in 0..0x800u64 {
        expect.extend_from_slice(&(0x55 ^ (i * 8)).to_le_bytes());
    }
    let s = r.job(1, job_op::CHECKSUM, 0x7000_0000, 0x4000, 0);
    r.dev.process_command_queue();
    r.used();
    let done = r.resp(&s);
    assert_eq!(done.value0, fnv1a64(0xcbf2_9ce4_8422_2325, &expect));
    // COUNTERS through the queue, with reset.
    let mut c = cmd(opcode::COUNTERS, 0, 0, 0);
    c.flags = wire::COUNTERS_F_RESET;
    let size = std::mem::size_of::<wire::Counters>() as u32;
    let s = r.send_with(&c, &[], size);
    r.dev.process_command_queue();
    assert_eq!(r.used(), vec![(s.head, 24 + size)]);
    let got: wire::Counters = r.mem.read_obj(GuestAddress(s.data)).unwrap();
    assert_eq!(got.global.jobs_completed, 2);
    assert_eq!(got.global.pages_mapped, 4);
    assert_eq!(got.global.bytes_written, 0x4000);
    assert_eq!(got.global.page_walks, 4);
    assert_eq!(got.global.atc_hits, 4);
    assert_eq!(r.counters(), Counters::default());
}

#[test]
fn fault_reply_resumes_and_invalidate_passes_a_stalled_job() {
    let mut r = rig();
    r.bind(2);
    r.map(2, 0, &[entry(FRAMES, true)]);
    let job = r.job(2, job_op::FILL, 0, 0x2000, 9);
    let used = r.dev.process_command_queue();
    assert_eq!(used, UsedQueues::default());
    assert!(r.used().is_empty());
    assert_eq!(r.dev.stalled_jobs(), 1);
    // No fault buffer yet: the fault waits.
    let bufs = r.post_fault_buffers(2);
    let used = r.dev.process_fault_queue();
    assert!(used.fault);
    let f = r.faults(&bufs);
    assert_eq!(f.len(), 1);
    assert_eq!(
        (f[0].address, f[0].pasid, f[0].job_id, f[0].flags),
        (0x1000, 2, 0x10b, wire::FAULT_F_WRITE)
    );
    // The driver's notifier invalidates while the job is stalled: it completes first.
    let inv = r.invalidate(2, 0, 0x1000, event::CLEAR, wire::INV_F_BLOCKABLE);
    assert_eq!((inv.status, inv.value0, inv.value1), (status::OK, 1, 1));
    // The fault reply maps the page and resumes the job, which faults again on page 0.
    let mut m = cmd(opcode::MAP, 2, 0x1000, 0x1000);
    m.flags = wire::MAP_F_FAULT_REPLY;
    m.arg0 = f[0].fault_id;
    let s = r.send_with(&m, &[entry(FRAMES + 0x1000, true)], 0);
    r.dev.process_command_queue();
    // Page 0 was done before the invalidation, so the resumed job completes, ahead of
    // the MAP that resumed it.
    assert_eq!(r.used(), vec![(job.head, 24), (s.head, 24)]);
    assert_eq!(r.resp(&s), resp(status::OK, 1, 1));
    assert_eq!(r.resp(&job), resp(status::OK, 0, 1));
    assert_eq!(r.dev.stalled_jobs(), 0);
    assert_eq!(
        r.mem
            .read_obj::<u64>(GuestAddress(FRAMES + 0x1008))
            .unwrap(),
        9 ^ 0x1008
    );
    let c = r.counters();
    assert_eq!(c.global.device_faults, 1);
    assert_eq!(c.global.jobs_completed, 1);
}

#[test]
fn dma_copy_job_reads_its_payload_faults_and_resumes() {
    let mut r = rig();
    r.bind(3);
    let bufs = r.post_fault_buffers(2);
    // A driver buffer of two pages; the range's first page is mapped, the second not.
    let dma = [FRAMES + 0x8000, FRAMES + 0x5000];
    r.mem
        .write_slice(&[0xaa; 0x1000], GuestAddress(FRAMES))
        .unwrap();
    r.mem
        .write_slice(&[0xbb; 0x1000], GuestAddress(FRAMES + 0x1000))
        .unwrap();
    r.map(3, 0x40_0000, &[entry(FRAMES, false)]);
    let mut c = cmd(opcode::JOB, 3, 0x40_0000, 0x2000);
    c.flags = job_op::COPY_TO_DMA;
    c.arg1 = 0x10c;
    let job = r.send_with(&c, &dma, 0);
    r.dev.process_command_queue();
    let f = r.faults(&bufs);
    // Reading the range is a read access.
    assert_eq!((f.len(), f[0].address, f[0].flags), (1, 0x40_1000, 0));
    let mut m = cmd(opcode::MAP, 3, 0x40_1000, 0x1000);
    m.flags = wire::MAP_F_FAULT_REPLY;
    m.arg0 = f[0].fault_id;
    let s = r.send_with(&m, &[entry(FRAMES + 0x1000, false)], 0);
    r.dev.process_command_queue();
    assert_eq!(r.used(), vec![(job.head, 24), (s.head, 24)]);
    assert_eq!(r.resp(&job), resp(status::OK, 0, 1));
    let first: u8 = r.mem.read_obj(GuestAddress(FRAMES + 0x8fff)).unwrap();
    let second: u8 = r.mem.read_obj(GuestAddress(FRAMES + 0x5000)).unwrap();
    assert_eq!((first, second), (0xaa, 0xbb));
    // A payload one page short of the range is refused.
    c.flags = job_op::COPY_FROM_DMA;
    assert_eq!(r.run(&c, &dma[..1]).status, status::BAD_RANGE);
}

#[test]
fn refault_after_invalidation_is_attributed() {
    let mut r = rig();
    r.bind(1);
    let bufs = r.post_fault_buffers(4);
    r.map(1, 0x4000, &[entry(FRAMES, true)]);
    let s = r.job(1, job_op::CHECKSUM, 0x4000, 0x1000, 0);
    r.dev.process_command_queue();
    assert_eq!(r.used(), vec![(s.head, 24)]);
    r.invalidate(1, 0x4000, 0x1000, event::PROTECTION_PAGE, 0);
    let s = r.job(1, job_op::CHECKSUM, 0x4000, 0x1000, 0);
    let used = r.dev.process_command_queue();
    assert!(used.fault && !used.command);
    let f = r.faults(&bufs);
    assert_eq!(f[0].flags, 0);
    let c = r.counters();
    assert_eq!(c.events[event::PROTECTION_PAGE as usize].refaults, 1);
    assert_eq!(
        c.events[event::PROTECTION_PAGE as usize].atc_entries_dropped,
        1
    );
    // FAULT_FAIL ends it with FAULT and the errno; an unknown fault id is BAD_JOB.
    let mut ff = cmd(opcode::FAULT_FAIL, 1, 0, 0);
    ff.arg0 = f[0].fault_id;
    ff.arg1 = 14;
    let fs = r.send(&ff);
    r.dev.process_command_queue();
    let used = r.used();
    assert_eq!(used.len(), 2);
    assert!(used.contains(&(s.head, 24)) && used.contains(&(fs.head, 24)));
    assert_eq!(r.resp(&s), resp(status::FAULT, 14, 1));
    assert_eq!(r.resp(&fs).status, status::OK);
    assert_eq!(r.run(&ff, &[]).status, status::BAD_JOB);
    assert_eq!(r.counters().global.jobs_failed, 1);
}

#[test]
fn unbind_fails_stalled_jobs_and_drops_their_faults() {
    let mut r = rig();
    r.bind(3);
    r.map(3, 0, &[entry(FRAMES, true), entry(FRAMES + 0x1000, true)]);
    let s = r.job(3, job_op::FILL, 0, 0x3000, 1);
    r.dev.process_command_queue();
    let us = r.send(&cmd(opcode::UNBIND, 3, 0, 0));
    r.dev.process_command_queue();
    assert_eq!(r.used(), vec![(s.head, 24), (us.head, 24)]);
    let u = r.resp(&us);
    assert_eq!(r.resp(&s), resp(status::FAULT, 0, 1));
    assert_eq!((u.status, u.value0), (status::OK, 2));
    // The fault was never delivered and is gone.
    let bufs = r.post_fault_buffers(1);
    r.dev.process_fault_queue();
    assert!(r.faults(&bufs).is_empty());
    assert_eq!(
        r.run(&cmd(opcode::UNBIND, 3, 0, 0), &[]).status,
        status::BAD_PASID
    );
}

#[test]
fn aligned_2mib_run_is_one_leaf_and_partial_invalidation_splits_it() {
    let mut r = rig();
    r.bind(1);
    let entries: Vec<u64> = (0..512)
        .map(|i| entry(FRAMES + i * PAGE_SIZE, true))
        .collect();
    assert_eq!(r.map(1, MB2, &entries).value0, 512);
    assert_eq!(r.dev.mmu.table(Pasid(1)).unwrap().leaf_counts(), (0, 1));
    // A hole or a different permission keeps 4 KiB leaves.
    let mut holey = entries.clone();
    holey[7] = 0;
    assert_eq!(r.map(1, 2 * MB2, &holey).value0, 511);
    assert_eq!(r.dev.mmu.table(Pasid(1)).unwrap().leaf_counts(), (511, 1));
    r.invalidate(1, MB2 + 0x1000, 0x1000, event::UNMAP, 0);
    let e = r.counters().events[event::UNMAP as usize];
    assert_eq!(e.leaf_splits, 1);
    assert_eq!(
        r.dev.mmu.table(Pasid(1)).unwrap().leaf_counts(),
        (511 + 511, 0)
    );
}

/// A MAP of a whole 2 MiB run over 4 KiB pages the ATC holds (the run's first page had no
/// translation) leaves none of their old frames usable: the next job writes the new frame.
#[test]
fn a_2mib_map_over_cached_4k_pages_leaves_no_stale_copy() {
    let mut r = rig();
    r.bind(1);
    r.map(1, MB2 + 0x1000, &[entry(FRAMES, true)]);
    let s = r.job(1, job_op::FILL, MB2 + 0x1000, 0x1000, 1);
    r.dev.process_command_queue();
    assert_eq!(r.used(), vec![(s.head, 24)]);
    let entries: Vec<u64> = (0..512)
        .map(|i| entry(FRAMES + MB2 + i * PAGE_SIZE, true))
        .collect();
    assert_eq!(r.map(1, MB2, &entries).value0, 512);
    let s = r.job(1, job_op::FILL, MB2 + 0x1000, 0x1000, 2);
    r.dev.process_command_queue();
    assert_eq!(r.used(), vec![(s.head, 24)]);
    let word = |at: u64| r.mem.read_obj::<u64>(GuestAddress(at)).unwrap();
    assert_eq!(word(FRAMES + MB2 + 0x1000), 2, "the new frame");
    assert_eq!(word(FRAMES), 1, "the old frame is left alone");
}

#[test]
fn too_many_stalled_jobs_is_busy() {
    let mut r = rig_with(VgpuConfig {
        max_stalled_jobs: 1,
        inval_latency_us: 0,
        ..Default::default()
    });
    r.bind(1);
    let first = r.job(1, job_op::FILL, 0, 0x1000, 0);
    let second = r.job(1, job_op::FILL, 0x1000, 0x1000, 0);
    r.dev.process_command_queue();
    assert_eq!(r.used(), vec![(second.head, 24)]);
    assert_eq!(r.resp(&second).status, status::BUSY);
    assert_eq!(r.dev.stalled_jobs(), 1);
    let _ = first;
}

/// The requirement: unknown PASIDs, malformed ranges and bad descriptors get an
/// error status (or used len 0 without a response buffer), are counted, and the device
/// keeps working.
#[test]
fn unknown_pasid_gets_bad_pasid_for_every_opcode() {
    let mut r = rig();
    for op in [
        opcode::UNBIND,
        opcode::MAP,
        opcode::INVALIDATE,
        opcode::JOB,
        opcode::FAULT_FAIL,
        opcode::AUDIT,
    ] {
        for pasid in [0, 9, 65, u32::MAX] {
            let mut c = cmd(op, pasid, 0, 0x1000);
            c.flags = job_op::FILL;
            let payload = if op == opcode::MAP {
                vec![entry(FRAMES, true)]
            } else {
                vec![]
            };
            assert_eq!(
                r.run(&c, &payload).status,
                status::BAD_PASID,
                "op {op} pasid {pasid}"
            );
        }
    }
    assert_eq!(
        r.run(&cmd(opcode::BIND, 0, 0, 0), &[]).status,
        status::BAD_PASID
    );
    assert_eq!(
        r.run(&cmd(opcode::BIND, 65, 0, 0), &[]).status,
        status::BAD_PASID
    );
    r.bind(64);
    assert_eq!(
        r.run(&cmd(opcode::BIND, 64, 0, 0), &[]).status,
        status::BAD_PASID
    );
    assert_eq!(r.counters().global.command_errors, 27);
}

#[test]
fn malformed_ranges_get_bad_range() {
    let mut r = rig();
    r.bind(1);
    let bad = [
        (0x1001, 0x1000),
        (0x1000, 0x800),
        (0x1000, 0),
        (!0xfff, 0x2000),
        (VA_LIMIT, 0x1000),
        (VA_LIMIT - 0x1000, 0x2000),
    ];
    for (start, len) in bad {
        assert_eq!(r.invalidate(1, start, len, 0, 0).status, status::BAD_RANGE);
        let mut j = cmd(opcode::JOB, 1, start, len);
        j.flags = job_op::CHECKSUM;
        assert_eq!(r.run(&j, &[]).status, status::BAD_RANGE);
        let m = cmd(opcode::MAP, 1, start, len);
        assert_eq!(
            r.run(&m, &[entry(FRAMES, true); 2]).status,
            status::BAD_RANGE
        );
    }
    // Payload shorter than the range, and more pages than max_map_pages.
    assert_eq!(
        r.run(&cmd(opcode::MAP, 1, 0, 0x3000), &[entry(FRAMES, true); 2])
            .status,
        status::BAD_RANGE
    );
    let many = vec![entry(FRAMES, true); 513];
    assert_eq!(
        r.run(&cmd(opcode::MAP, 1, 0, 513 * PAGE_SIZE), &many)
            .status,
        status::BAD_RANGE
    );
    // Unknown event, unknown job op, bad opcode, a job above max_job_bytes.
    assert_eq!(r.invalidate(1, 0, 0x1000, 8, 0).status, status::BAD_RANGE);
    let mut j = cmd(opcode::JOB, 1, 0, 0x1000);
    j.flags = 99;
    assert_eq!(r.run(&j, &[]).status, status::BAD_JOB);
    assert_eq!(r.run(&cmd(99, 1, 0, 0), &[]).status, status::BAD_OPCODE);
    j.flags = job_op::FILL;
    j.length = 512 << 20;
    assert_eq!(r.run(&j, &[]).status, status::BAD_RANGE);
    assert_eq!(r.counters().global.command_errors, 6 * 3 + 6);
    assert_eq!(r.counters().global.maps, 0);
}

#[test]
fn bad_descriptors_get_bad_chain_or_nothing() {
    let mut r = rig();
    r.bind(1);
    let c = cmd(opcode::BIND, 2, 0, 0);
    let cmd_at = r.alloc(48);
    r.mem.write_obj(c, GuestAddress(cmd_at)).unwrap();
    let resp_at = r.alloc(24);
    let outside = RAM as u64 + 0x1000;
    let chains: [&[(u64, u32, u16)]; 4] = [
        // Command buffer outside guest memory.
        &[(outside, 48, R), (resp_at, 24, W)],
        // Command shorter than struct vgpu_cmd.
        &[(cmd_at, 40, R), (resp_at, 24, W)],
        // Readable after writable.
        &[(cmd_at, 48, R), (resp_at, 24, W), (cmd_at, 48, R)],
        // No readable part at all.
        &[(resp_at, 24, W)],
    ];
    for bufs in chains {
        let h = r.chain(false, bufs);
        r.mem.write_obj(0xffu32, GuestAddress(resp_at)).unwrap();
        r.dev.process_command_queue();
        assert_eq!(r.used(), vec![(h, 24)], "chain {h}");
        let got: wire::Resp = r.mem.read_obj(GuestAddress(resp_at)).unwrap();
        assert_eq!(got.status, status::BAD_CHAIN, "chain {h}");
    }
    // No response buffer, a response buffer outside memory, a short one: used len 0.
    let none = r.chain(false, &[(cmd_at, 48, R)]);
    let unmapped = r.chain(false, &[(cmd_at, 48, R), (outside, 24, W)]);
    let short = r.chain(false, &[(cmd_at, 48, R), (resp_at, 16, W)]);
    r.dev.process_command_queue();
    assert_eq!(r.used(), vec![(none, 0), (unmapped, 0), (short, 0)]);
    // A chain whose NEXT points back at itself, and one pointing outside the table.
    let head = r.cmd_desc;
    r.raw_chain(
        false,
        &[(cmd_at, 48, N, head + 1), (resp_at, 24, W | N, head + 1)],
    );
    let head2 = r.cmd_desc;
    r.raw_chain(false, &[(cmd_at, 48, N, 500)]);
    r.mem.write_obj(0xffu32, GuestAddress(resp_at)).unwrap();
    r.dev.process_command_queue();
    assert_eq!(r.used(), vec![(head, 24), (head2, 0)]);
    let got: wire::Resp = r.mem.read_obj(GuestAddress(resp_at)).unwrap();
    assert_eq!(got.status, status::BAD_CHAIN);
    // PASID 2 was never bound by any of them; the device still works.
    assert!(!r.dev.mmu.is_bound(Pasid(2)));
    assert_eq!(r.counters().global.command_errors, 4 + 3 + 2);
    r.bind(2);
    // COUNTERS without room for the data.
    assert_eq!(
        r.run(&cmd(opcode::COUNTERS, 0, 0, 0), &[]).status,
        status::BAD_CHAIN
    );
}

#[test]
fn malformed_fault_buffer_is_returned_and_fault_waits() {
    let mut r = rig();
    r.bind(1);
    let ro = r.alloc(32);
    r.chain(true, &[(ro, 32, R)]);
    let small = r.alloc(16);
    r.chain(true, &[(small, 16, W)]);
    r.job(1, job_op::FILL, 0, 0x1000, 0);
    r.dev.process_command_queue();
    assert_eq!(
        used_since(&r.mem, r.fault_used, &mut r.fault_seen),
        vec![(0, 0), (1, 0)]
    );
    assert_eq!(r.counters().global.command_errors, 2);
    let bufs = r.post_fault_buffers(1);
    r.dev.process_fault_queue();
    assert_eq!(r.faults(&bufs).len(), 1);
}

#[test]
fn no_interrupt_flag_and_reset() {
    let mut r = rig();
    let avail = r.cmd_avail;
    r.mem
        .write_obj(VRING_AVAIL_F_NO_INTERRUPT as u16, avail)
        .unwrap();
    r.send(&cmd(opcode::BIND, 1, 0, 0));
    assert_eq!(r.dev.process_command_queue(), UsedQueues::default());
    assert_eq!(r.used().len(), 1);
    assert_eq!(
        UsedQueues {
            command: true,
            fault: true
        }
        .queues()
        .collect::<Vec<_>>(),
        vec![0, 1]
    );
    r.dev.reset();
    assert!(!r.dev.is_active());
    assert!(!r.dev.mmu.is_bound(Pasid(1)));
    assert_eq!(r.dev.process_command_queue(), UsedQueues::default());
    assert_eq!(r.dev.process_fault_queue(), UsedQueues::default());
    // Counters survive a reset for the host's report.
    assert_eq!(r.counters().global.command_errors, 0);
}

/// Writes a 4-level CPU page table at `root` (tables in the 15 pages after it) mapping
/// each `(va, frame, writable)` with a 4 KiB leaf.
fn cpu_tables(mem: &GuestMemoryMmap, root: u64, pages: &[(u64, u64, bool)]) -> TableWriter {
    let limit = GuestAddress(root + 16 * PAGE_SIZE);
    let mut t = TableWriter::new(mem, GuestAddress(root), limit).unwrap();
    for &(va, frame, writable) in pages {
        t.map(mem, va, frame, CpuLeaf::Small, writable).unwrap();
    }
    t
}

#[test]
fn oracle_counts_a_translation_the_cpu_does_not_have() {
    let mut r = rig();
    let root = 0x80_0000;
    let va = 0x7000_0000;
    // The CPU maps page 0 to FRAMES and page 1 to FRAMES + 2 pages.
    cpu_tables(
        &r.mem,
        root,
        &[
            (va, FRAMES, true),
            (va + PAGE_SIZE, FRAMES + 2 * PAGE_SIZE, true),
        ],
    );
    let mut b = cmd(opcode::BIND, 1, 0, 0);
    b.arg0 = root;
    assert_eq!(r.run(&b, &[]).status, status::OK);
    // The device agrees on page 0 and holds a stale frame for page 1.
    r.map(
        1,
        va,
        &[entry(FRAMES, true), entry(FRAMES + PAGE_SIZE, true)],
    );
    let s = r.job(1, job_op::FILL, va, PAGE_SIZE, 1);
    r.dev.process_command_queue();
    assert_eq!(r.used(), vec![(s.head, 24)]);
    assert_eq!(r.resp(&s).status, status::OK);
    assert_eq!(r.counters().global.violations, 0);
    r.invalidate(1, va, 2 * PAGE_SIZE, event::CLEAR, 0);
    r.map(
        1,
        va,
        &[entry(FRAMES, true), entry(FRAMES + PAGE_SIZE, true)],
    );
    let s = r.job(1, job_op::FILL, va, 2 * PAGE_SIZE, 1);
    r.dev.process_command_queue();
    assert_eq!(r.used(), vec![(s.head, 24)]);
    // The oracle only observes: the job still completes, through the stale frame.
    assert_eq!(r.resp(&s).status, status::OK);
    assert_eq!(r.counters().global.violations, 1);
    let v = &r.dev.violations()[0];
    assert_eq!(v.violation.va, Iova(va + PAGE_SIZE));
    assert_eq!(v.violation.device.gpa, GuestAddress(FRAMES + PAGE_SIZE));
    assert_eq!(
        v.violation.cpu.map(|c| c.gpa),
        Some(GuestAddress(FRAMES + 2 * PAGE_SIZE))
    );
    assert_eq!(v.history.len(), 1);
    assert_eq!(v.history[0].event, event::CLEAR);
    // Off: the same stale use is not counted.
    r.dev.set_oracle_mode(crate::oracle::OracleMode::Off);
    let s = r.job(1, job_op::FILL, va, 2 * PAGE_SIZE, 1);
    r.dev.process_command_queue();
    assert_eq!(r.used(), vec![(s.head, 24)]);
    assert_eq!(r.resp(&s).status, status::OK);
    assert_eq!(r.counters().global.violations, 1);
}

#[test]
fn audit_and_unbind_check_every_held_translation() {
    let mut r = rig();
    let root = 0x80_0000;
    let va = 0x7000_0000;
    let tables = cpu_tables(
        &r.mem,
        root,
        &[
            (va, FRAMES, true),
            (va + PAGE_SIZE, FRAMES + PAGE_SIZE, true),
        ],
    );
    let bind = |r: &mut Rig| {
        let mut b = cmd(opcode::BIND, 1, 0, 0);
        b.arg0 = root;
        assert_eq!(r.run(&b, &[]).status, status::OK);
        r.map(
            1,
            va,
            &[entry(FRAMES, true), entry(FRAMES + PAGE_SIZE, true)],
        );
    };
    let audit = |r: &mut Rig, pasid: u32| {
        let a = r.run(&cmd(opcode::AUDIT, pasid, 0, 0), &[]);
        (a.status, a.value0, a.value1)
    };
    bind(&mut r);
    // Two page-table leaves; after a job, their two ATC copies too.
    assert_eq!(audit(&mut r, 1), (status::OK, 2, 0));
    let s = r.job(1, job_op::FILL, va, 2 * PAGE_SIZE, 1);
    r.dev.process_command_queue();
    assert_eq!(r.used(), vec![(s.head, 24)]);
    assert_eq!(audit(&mut r, 1), (status::OK, 4, 0));
    assert_eq!(r.counters().global.violations, 0);
    // The CPU unmaps page 1 and nobody tells the device: both copies are stale.
    tables.unmap_page(r.mem.as_ref(), va + PAGE_SIZE).unwrap();
    assert_eq!(audit(&mut r, 1), (status::OK, 4, 2));
    assert_eq!(r.counters().global.violations, 2);
    assert_eq!(
        r.read_counters_of(1).global.violations,
        2,
        "charged to the PASID"
    );
    let v = &r.dev.violations()[0].violation;
    assert_eq!(
        (v.va, v.access, v.cpu),
        (Iova(va + PAGE_SIZE), Access::Audit, None)
    );
    assert_eq!(audit(&mut r, 2).0, status::BAD_PASID);
    // UNBIND audits before it drops: value0 dropped, value1 stale.
    let u = r.run(&cmd(opcode::UNBIND, 1, 0, 0), &[]);
    assert_eq!((u.status, u.value0, u.value1), (status::OK, 2, 2));
    assert_eq!(r.counters().global.violations, 4);
    // With the oracle off UNBIND does not audit; AUDIT still does when asked.
    r.dev.set_oracle_mode(crate::oracle::OracleMode::Off);
    bind(&mut r);
    assert_eq!(audit(&mut r, 1), (status::OK, 2, 1));
    let u = r.run(&cmd(opcode::UNBIND, 1, 0, 0), &[]);
    assert_eq!((u.status, u.value0, u.value1), (status::OK, 2, 0));
    assert_eq!(r.counters().global.violations, 5);
}

#[test]
fn a_fault_batch_posts_one_record_per_page_and_resumes_when_all_are_answered() {
    let mut r = rig_with(VgpuConfig {
        fault_batch: 3,
        inval_latency_us: 0,
        ..VgpuConfig::default()
    });
    r.bind(1);
    // Page 1 is mapped; pages 0, 2, 3 and 4 are not. A batch of 3: pages 0, 2, 3.
    r.map(1, 0x1000, &[entry(FRAMES + 0x1000, true)]);
    let job = r.job(1, job_op::FILL, 0, 0x5000, 5);
    let bufs = r.post_fault_buffers(8);
    r.dev.process_command_queue();
    let f = r.faults(&bufs);
    let addrs: Vec<u64> = f.iter().map(|f| f.address).collect();
    assert_eq!(addrs, [0, 0x2000, 0x3000]);
    assert!(f
        .iter()
        .all(|f| f.flags == wire::FAULT_F_WRITE && f.job_id == 0x10b));
    assert_eq!(r.dev.stalled_jobs(), 1);
    // Answer all but one, out of order: the job stays stalled.
    let reply = |r: &mut Rig, f: &wire::Fault| {
        let mut m = cmd(opcode::MAP, 1, f.address, 0x1000);
        m.flags = wire::MAP_F_FAULT_REPLY;
        m.arg0 = f.fault_id;
        send_and_drain(r, &m, &[entry(FRAMES + f.address, true)])
    };
    assert_eq!(reply(&mut r, &f[2]), resp(status::OK, 1, 0));
    assert_eq!(reply(&mut r, &f[0]), resp(status::OK, 1, 0));
    assert_eq!(r.dev.stalled_jobs(), 1);
    // The last answer resumes it; page 4 then faults as a batch of one.
    assert_eq!(reply(&mut r, &f[1]), resp(status::OK, 1, 1));
    let g = r.faults(&bufs);
    assert_eq!(g.len(), 1);
    assert_eq!(g[0].address, 0x4000);
    // FAULT_FAIL of that one fails the job with all four faults counted.
    let mut ff = cmd(opcode::FAULT_FAIL, 1, 0, 0);
    ff.arg0 = g[0].fault_id;
    ff.arg1 = 14;
    assert_eq!(send_and_drain(&mut r, &ff, &[]).status, status::OK);
    assert_eq!(r.resp(&job), resp(status::FAULT, 14, 4));
    assert_eq!(r.counters().global.device_faults, 4);
    assert_eq!(r.dev.fault_latency().count(), 4);
}

#[test]
fn failing_one_fault_of_a_batch_withdraws_the_rest() {
    let mut r = rig_with(VgpuConfig {
        fault_batch: 4,
        inval_latency_us: 0,
        ..VgpuConfig::default()
    });
    r.bind(1);
    let job = r.job(1, job_op::CHECKSUM, 0, 0x4000, 0);
    r.dev.process_command_queue();
    // Only two buffers: two records wait in the device.
    let bufs = r.post_fault_buffers(2);
    r.dev.process_fault_queue();
    let f = r.faults(&bufs);
    assert_eq!(f.len(), 2);
    assert!(f.iter().all(|f| f.flags == 0), "a CHECKSUM reads");
    let mut ff = cmd(opcode::FAULT_FAIL, 1, 0, 0);
    ff.arg0 = f[1].fault_id;
    assert_eq!(send_and_drain(&mut r, &ff, &[]).status, status::OK);
    assert_eq!(r.resp(&job).status, status::FAULT);
    // The undelivered records of the failed batch never reach the driver.
    let more = r.post_fault_buffers(2);
    r.dev.process_fault_queue();
    assert!(r.faults(&more).is_empty());
    // Its other ids are unknown now.
    ff.arg0 = f[0].fault_id;
    assert_eq!(r.run(&ff, &[]).status, status::BAD_JOB);
}

/// Sends one command and runs the device; other chains (resumed jobs) may complete too.
fn send_and_drain(r: &mut Rig, c: &wire::Cmd, payload: &[u64]) -> wire::Resp {
    let s = r.send_with(c, payload, 0);
    r.dev.process_command_queue();
    assert!(r.used().contains(&(s.head, 24)));
    r.resp(&s)
}

#[test]
fn counters_are_split_by_pasid_and_bogus_pasids_add_no_entry() {
    let mut r = rig();
    r.bind(1);
    r.bind(2);
    // Each PASID's job faults once on its first page.
    let _ = r.job(1, job_op::FILL, 0, 0x2000, 1);
    r.dev.process_command_queue();
    let _ = r.job(2, job_op::FILL, 0, 0x1000, 2);
    r.dev.process_command_queue();
    r.invalidate(2, 0, 0x1000, event::CLEAR, 0);
    // A command for a PASID that can never exist is counted globally only.
    assert_eq!(
        r.run(&cmd(opcode::UNBIND, 999, 0, 0), &[]).status,
        status::BAD_PASID
    );
    let per = r.dev.pasid_counters();
    assert_eq!(per.keys().copied().collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(per[&1].global.device_faults, 1);
    assert_eq!(per[&2].global.device_faults, 1);
    assert_eq!(per[&1].events[event::CLEAR as usize].notifications, 0);
    assert_eq!(per[&2].events[event::CLEAR as usize].notifications, 1);
    let total = r.counters();
    assert_eq!(total.global.device_faults, 2);
    assert_eq!(total.global.command_errors, 1);
    assert_eq!(
        per[&1].global.command_errors + per[&2].global.command_errors,
        0
    );
    // The guest reads one PASID's share with COUNTERS on that PASID.
    let mine = r.read_counters_of(2);
    assert_eq!(mine.global.device_faults, 1);
    assert_eq!(mine.events[event::CLEAR as usize].notifications, 1);
    assert_eq!(r.read_counters_of(5), Counters::default());
}

#[test]
fn an_invalidation_in_flight_leaves_the_old_translation_usable_until_it_completes() {
    let mut r = rig_with(VgpuConfig {
        inval_latency_us: 1_000,
        ..VgpuConfig::default()
    });
    let root = 0x80_0000;
    let va = 0x7000_0000;
    cpu_tables(&r.mem, root, &[(va, FRAMES, true)]);
    let mut b = cmd(opcode::BIND, 1, 0, 0);
    b.arg0 = root;
    assert_eq!(r.run(&b, &[]).status, status::OK);
    r.map(1, va, &[entry(FRAMES, true)]);
    assert!(r.dev.next_deadline().is_none());

    let mut c = cmd(opcode::INVALIDATE, 1, va, PAGE_SIZE);
    c.event = event::UNMAP;
    let inv = r.send(&c);
    let sent_at = Instant::now();
    r.dev.process_command_queue();
    assert!(r.used().is_empty(), "completed before its latency");
    let due = r.dev.next_deadline().expect("in flight");
    assert!(due >= sent_at + Duration::from_micros(1_000) - Duration::from_millis(1));
    // Not due yet: nothing happens.
    assert_eq!(r.dev.complete_due(sent_at), UsedQueues::default());

    // A driver that let the CPU unmap the page before the completion: a job in the
    // window still translates through the device's old entry, and the oracle sees it.
    r.mem
        .write_obj(0u64, GuestAddress(root + 3 * PAGE_SIZE))
        .unwrap();
    let job = r.job(1, job_op::CHECKSUM, va, PAGE_SIZE, 0);
    r.dev.process_command_queue();
    assert_eq!(r.used(), vec![(job.head, 24)]);
    assert_eq!(r.resp(&job).status, status::OK);
    assert_eq!(r.counters().global.violations, 1);

    let used = r.dev.complete_due(due);
    assert!(used.command);
    assert_eq!(r.used(), vec![(inv.head, 24)]);
    assert_eq!(r.resp(&inv).status, status::OK);
    assert!(r.dev.next_deadline().is_none());
    assert_eq!(r.counters().events[event::UNMAP as usize].notifications, 1);
    assert_eq!(
        r.dev.pasid_counters()[&1].events[event::UNMAP as usize].notifications,
        1
    );
    // After the completion the page faults instead.
    r.post_fault_buffers(1);
    r.job(1, job_op::CHECKSUM, va, PAGE_SIZE, 0);
    r.dev.process_command_queue();
    assert_eq!(r.counters().global.device_faults, 1);
}

#[test]
fn unbind_completes_its_invalidations_in_flight_and_reset_drops_them() {
    let mut r = rig_with(VgpuConfig {
        inval_latency_us: 100_000,
        ..VgpuConfig::default()
    });
    r.bind(1);
    r.bind(2);
    r.map(1, 0, &[entry(FRAMES, true)]);
    let mut c = cmd(opcode::INVALIDATE, 1, 0, PAGE_SIZE);
    c.event = event::CLEAR;
    let one = r.send(&c);
    c.pasid = 2;
    let two = r.send(&c);
    r.mem.write_obj(u32::MAX, GuestAddress(two.resp)).unwrap();
    // Unbound PASIDs are refused at once, not after the latency.
    c.pasid = 9;
    let bad = r.send(&c);
    r.dev.process_command_queue();
    assert_eq!(r.used(), vec![(bad.head, 24)]);
    assert_eq!(r.resp(&bad).status, status::BAD_PASID);

    let unbind = r.send(&cmd(opcode::UNBIND, 1, 0, 0));
    r.dev.process_command_queue();
    assert_eq!(r.used(), vec![(one.head, 24), (unbind.head, 24)]);
    assert_eq!(r.resp(&one).status, status::OK);
    // The invalidation went first, so UNBIND found nothing left to drop.
    assert_eq!(r.resp(&unbind), resp(status::OK, 0, 0));
    assert!(
        r.dev.next_deadline().is_some(),
        "PASID 2's is still in flight"
    );
    r.dev.reset();
    assert!(r.dev.next_deadline().is_none());
    assert_eq!(r.resp(&two).status, u32::MAX, "never answered");
}
