//! End-to-end tests of [`super::VgpuDevice`], through the shared driver rig
//! ([`crate::testing`]): commands and fault buffers built in real guest memory as the guest
//! driver builds them.

use std::time::{Duration, Instant};

use virtio_bindings::virtio_ring::{
    VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use vm_memory::Bytes;

use super::*;
use crate::address::{HUGE_PAGE_SIZE, VA_LIMIT};
use crate::engine::fnv1a64;
use crate::oracle::Access;
use crate::testing::layout::{CPU_TABLES, FRAMES, RAM_SIZE};
use crate::testing::{self, cmd, entry, readable, writable, Next, RawDesc, Rig, JOB_ID};
use crate::wire::{event, job_op};

const MB2: u64 = HUGE_PAGE_SIZE;
const W: u16 = VRING_DESC_F_WRITE as u16;
const N: u16 = VRING_DESC_F_NEXT as u16;

fn rig_with(config: VgpuConfig) -> Rig {
    Rig::new(config)
}

/// The default device, but invalidations complete at once (most tests are about what
/// they do, not when).
fn rig() -> Rig {
    rig_with(VgpuConfig {
        inval_latency_us: 0,
        ..VgpuConfig::default()
    })
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
    let done = r.run_job(1, job_op::CHECKSUM, 0x7000_0000, 0x4000, 0);
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
    assert_eq!(r.dev.counters(), Counters::default());
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
    r.post_fault_buffers(2);
    let used = r.dev.process_fault_queue();
    assert!(used.fault);
    let f = r.faults();
    assert_eq!(f.len(), 1);
    assert_eq!(
        (f[0].address, f[0].pasid, f[0].job_id, f[0].flags),
        (0x1000, 2, JOB_ID, wire::FAULT_F_WRITE)
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
    let c = r.dev.counters();
    assert_eq!(c.global.device_faults, 1);
    assert_eq!(c.global.jobs_completed, 1);
}

#[test]
fn dma_copy_job_reads_its_payload_faults_and_resumes() {
    let mut r = rig();
    r.bind(3);
    r.post_fault_buffers(2);
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
    let f = r.faults();
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
    r.post_fault_buffers(4);
    r.map(1, 0x4000, &[entry(FRAMES, true)]);
    r.run_job(1, job_op::CHECKSUM, 0x4000, 0x1000, 0);
    r.invalidate(1, 0x4000, 0x1000, event::PROTECTION_PAGE, 0);
    let s = r.job(1, job_op::CHECKSUM, 0x4000, 0x1000, 0);
    let used = r.dev.process_command_queue();
    assert!(used.fault && !used.command);
    let f = r.faults();
    assert_eq!(f[0].flags, 0);
    let c = r.dev.counters();
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
    assert_eq!(r.dev.counters().global.jobs_failed, 1);
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
    r.post_fault_buffers(1);
    r.dev.process_fault_queue();
    assert!(r.faults().is_empty());
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
    let e = r.dev.counters().events[event::UNMAP as usize];
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
    r.run_job(1, job_op::FILL, MB2 + 0x1000, 0x1000, 1);
    let entries: Vec<u64> = (0..512)
        .map(|i| entry(FRAMES + MB2 + i * PAGE_SIZE, true))
        .collect();
    assert_eq!(r.map(1, MB2, &entries).value0, 512);
    r.run_job(1, job_op::FILL, MB2 + 0x1000, 0x1000, 2);
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
    assert_eq!(r.dev.counters().global.command_errors, 27);
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
    assert_eq!(r.dev.counters().global.command_errors, 6 * 3 + 6);
    assert_eq!(r.dev.counters().global.maps, 0);
}

#[test]
fn bad_descriptors_get_bad_chain_or_nothing() {
    let mut r = rig();
    r.bind(1);
    let c = cmd(opcode::BIND, 2, 0, 0);
    let cmd_at = r.alloc(48);
    r.mem.write_obj(c, GuestAddress(cmd_at)).unwrap();
    let resp_at = r.alloc(24);
    let outside = RAM_SIZE + 0x1000;
    let chains: [&[testing::Buffer]; 4] = [
        // Command buffer outside guest memory.
        &[readable(outside, 48), writable(resp_at, 24)],
        // Command shorter than struct vgpu_cmd.
        &[readable(cmd_at, 40), writable(resp_at, 24)],
        // Readable after writable.
        &[
            readable(cmd_at, 48),
            writable(resp_at, 24),
            readable(cmd_at, 48),
        ],
        // No readable part at all.
        &[writable(resp_at, 24)],
    ];
    for bufs in chains {
        let h = r.command_queue.add_chain(bufs);
        r.mem.write_obj(0xffu32, GuestAddress(resp_at)).unwrap();
        r.dev.process_command_queue();
        assert_eq!(r.used(), vec![(h, 24)], "chain {h}");
        let got: wire::Resp = r.mem.read_obj(GuestAddress(resp_at)).unwrap();
        assert_eq!(got.status, status::BAD_CHAIN, "chain {h}");
    }
    // No response buffer, a response buffer outside memory, a short one: used len 0.
    let q = &mut r.driver.command_queue;
    let none = q.add_chain(&[readable(cmd_at, 48)]);
    let unmapped = q.add_chain(&[readable(cmd_at, 48), writable(outside, 24)]);
    let short = q.add_chain(&[readable(cmd_at, 48), writable(resp_at, 16)]);
    r.dev.process_command_queue();
    assert_eq!(r.used(), vec![(none, 0), (unmapped, 0), (short, 0)]);
    // A chain whose NEXT points back at itself, and one pointing outside the table.
    let raw = RawDesc::new;
    let head = r.command_queue.add_raw_chain(&[
        raw(cmd_at, 48, N, Next::Slot(1)),
        raw(resp_at, 24, W | N, Next::Slot(1)),
    ]);
    let head2 = r
        .command_queue
        .add_raw_chain(&[raw(cmd_at, 48, N, Next::Index(500))]);
    r.mem.write_obj(0xffu32, GuestAddress(resp_at)).unwrap();
    r.dev.process_command_queue();
    assert_eq!(r.used(), vec![(head, 24), (head2, 0)]);
    let got: wire::Resp = r.mem.read_obj(GuestAddress(resp_at)).unwrap();
    assert_eq!(got.status, status::BAD_CHAIN);
    // PASID 2 was never bound by any of them; the device still works.
    assert!(!r.dev.mmu.is_bound(Pasid(2)));
    assert_eq!(r.dev.counters().global.command_errors, 4 + 3 + 2);
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
    r.fault_queue.add_chain(&[readable(ro, 32)]);
    let small = r.alloc(16);
    r.fault_queue.add_chain(&[writable(small, 16)]);
    r.job(1, job_op::FILL, 0, 0x1000, 0);
    r.dev.process_command_queue();
    assert_eq!(r.fault_queue.used(), vec![(0, 0), (1, 0)]);
    assert_eq!(r.dev.counters().global.command_errors, 2);
    r.post_fault_buffers(1);
    r.dev.process_fault_queue();
    assert_eq!(r.faults().len(), 1);
}

#[test]
fn no_interrupt_flag_and_reset() {
    let mut r = rig();
    r.command_queue
        .set_avail_flags(VRING_AVAIL_F_NO_INTERRUPT as u16);
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
    assert_eq!(r.dev.counters().global.command_errors, 0);
}

#[test]
fn oracle_counts_a_translation_the_cpu_does_not_have() {
    let mut r = rig();
    let va = 0x7000_0000;
    // The CPU maps page 0 to FRAMES and page 1 to FRAMES + 2 pages.
    r.bind_with_tables(
        1,
        &[
            (va, FRAMES, true),
            (va + PAGE_SIZE, FRAMES + 2 * PAGE_SIZE, true),
        ],
    );
    // The device agrees on page 0 and holds a stale frame for page 1.
    r.map(
        1,
        va,
        &[entry(FRAMES, true), entry(FRAMES + PAGE_SIZE, true)],
    );
    assert_eq!(
        r.run_job(1, job_op::FILL, va, PAGE_SIZE, 1).status,
        status::OK
    );
    assert_eq!(r.dev.counters().global.violations, 0);
    r.invalidate(1, va, 2 * PAGE_SIZE, event::CLEAR, 0);
    r.map(
        1,
        va,
        &[entry(FRAMES, true), entry(FRAMES + PAGE_SIZE, true)],
    );
    // The oracle only observes: the job still completes, through the stale frame.
    assert_eq!(
        r.run_job(1, job_op::FILL, va, 2 * PAGE_SIZE, 1).status,
        status::OK
    );
    assert_eq!(r.dev.counters().global.violations, 1);
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
    assert_eq!(
        r.run_job(1, job_op::FILL, va, 2 * PAGE_SIZE, 1).status,
        status::OK
    );
    assert_eq!(r.dev.counters().global.violations, 1);
}

#[test]
fn audit_and_unbind_check_every_held_translation() {
    let mut r = rig();
    let va = 0x7000_0000;
    let tables = r.cpu_tables(&[
        (va, FRAMES, true),
        (va + PAGE_SIZE, FRAMES + PAGE_SIZE, true),
    ]);
    let root = tables.root().0;
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
    r.run_job(1, job_op::FILL, va, 2 * PAGE_SIZE, 1);
    assert_eq!(audit(&mut r, 1), (status::OK, 4, 0));
    assert_eq!(r.dev.counters().global.violations, 0);
    // The CPU unmaps page 1 and nobody tells the device: both copies are stale.
    tables.unmap_page(r.mem.as_ref(), va + PAGE_SIZE).unwrap();
    assert_eq!(audit(&mut r, 1), (status::OK, 4, 2));
    assert_eq!(r.dev.counters().global.violations, 2);
    assert_eq!(
        r.read_counters(1).global.violations,
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
    assert_eq!(r.dev.counters().global.violations, 4);
    // With the oracle off UNBIND does not audit; AUDIT still does when asked.
    r.dev.set_oracle_mode(crate::oracle::OracleMode::Off);
    bind(&mut r);
    assert_eq!(audit(&mut r, 1), (status::OK, 2, 1));
    let u = r.run(&cmd(opcode::UNBIND, 1, 0, 0), &[]);
    assert_eq!((u.status, u.value0, u.value1), (status::OK, 2, 0));
    assert_eq!(r.dev.counters().global.violations, 5);
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
    r.post_fault_buffers(8);
    r.dev.process_command_queue();
    let f = r.faults();
    let addrs: Vec<u64> = f.iter().map(|f| f.address).collect();
    assert_eq!(addrs, [0, 0x2000, 0x3000]);
    assert!(f
        .iter()
        .all(|f| f.flags == wire::FAULT_F_WRITE && f.job_id == JOB_ID));
    assert_eq!(r.dev.stalled_jobs(), 1);
    // Answer all but one, out of order: the job stays stalled.
    let reply =
        |r: &mut Rig, f: &wire::Fault| r.answer_fault(f, &[entry(FRAMES + f.address, true)]);
    assert_eq!(reply(&mut r, &f[2]), resp(status::OK, 1, 0));
    assert_eq!(reply(&mut r, &f[0]), resp(status::OK, 1, 0));
    assert_eq!(r.dev.stalled_jobs(), 1);
    // The last answer resumes it; page 4 then faults as a batch of one.
    assert_eq!(reply(&mut r, &f[1]), resp(status::OK, 1, 1));
    let g = r.faults();
    assert_eq!(g.len(), 1);
    assert_eq!(g[0].address, 0x4000);
    // FAULT_FAIL of that one fails the job with all four faults counted.
    assert_eq!(r.fail_fault(&g[0], 14).status, status::OK);
    assert_eq!(r.resp(&job), resp(status::FAULT, 14, 4));
    assert_eq!(r.dev.counters().global.device_faults, 4);
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
    r.post_fault_buffers(2);
    r.dev.process_fault_queue();
    let f = r.faults();
    assert_eq!(f.len(), 2);
    assert!(f.iter().all(|f| f.flags == 0), "a CHECKSUM reads");
    assert_eq!(r.fail_fault(&f[1], 0).status, status::OK);
    assert_eq!(r.resp(&job).status, status::FAULT);
    // The undelivered records of the failed batch never reach the driver.
    r.post_fault_buffers(2);
    r.dev.process_fault_queue();
    assert!(r.faults().is_empty());
    // Its other ids are unknown now.
    let mut ff = cmd(opcode::FAULT_FAIL, 1, 0, 0);
    ff.arg0 = f[0].fault_id;
    assert_eq!(r.run(&ff, &[]).status, status::BAD_JOB);
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
    let total = r.dev.counters();
    assert_eq!(total.global.device_faults, 2);
    assert_eq!(total.global.command_errors, 1);
    assert_eq!(
        per[&1].global.command_errors + per[&2].global.command_errors,
        0
    );
    // The guest reads one PASID's share with COUNTERS on that PASID.
    let mine = r.read_counters(2);
    assert_eq!(mine.global.device_faults, 1);
    assert_eq!(mine.events[event::CLEAR as usize].notifications, 1);
    assert_eq!(r.read_counters(5), Counters::default());
}

#[test]
fn an_invalidation_in_flight_leaves_the_old_translation_usable_until_it_completes() {
    let mut r = rig_with(VgpuConfig {
        inval_latency_us: 1_000,
        ..VgpuConfig::default()
    });
    let va = 0x7000_0000;
    r.bind_with_tables(1, &[(va, FRAMES, true)]);
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
        .write_obj(0u64, GuestAddress(CPU_TABLES + 3 * PAGE_SIZE))
        .unwrap();
    let job = r.job(1, job_op::CHECKSUM, va, PAGE_SIZE, 0);
    r.dev.process_command_queue();
    assert_eq!(r.used(), vec![(job.head, 24)]);
    assert_eq!(r.resp(&job).status, status::OK);
    assert_eq!(r.dev.counters().global.violations, 1);

    let used = r.dev.complete_due(due);
    assert!(used.command);
    assert_eq!(r.used(), vec![(inv.head, 24)]);
    assert_eq!(r.resp(&inv).status, status::OK);
    assert!(r.dev.next_deadline().is_none());
    assert_eq!(
        r.dev.counters().events[event::UNMAP as usize].notifications,
        1
    );
    assert_eq!(
        r.dev.pasid_counters()[&1].events[event::UNMAP as usize].notifications,
        1
    );
    // After the completion the page faults instead.
    r.post_fault_buffers(1);
    r.job(1, job_op::CHECKSUM, va, PAGE_SIZE, 0);
    r.dev.process_command_queue();
    assert_eq!(r.dev.counters().global.device_faults, 1);
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
