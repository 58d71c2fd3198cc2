//! `vgpu-touch`: the device touches a buffer while the CPU changes its mappings.
//!
//! The device fills a fresh buffer (device faults), the CPU verifies it; the CPU writes it and
//! the device checksums it. Then the workload changes the mappings under the device and checks
//! that the device follows: after `munmap` the device cannot reach the range (UNMAP); after
//! `madvise(MADV_DONTNEED)` it sees the new zero pages, not the old data (CLEAR); after
//! `mprotect(PROT_READ)` it can still read but no longer write (PROTECTION_VMA); after the
//! driver moves pages with `migrate_vma` it reads and writes the new frames (MIGRATE); and a
//! child that exits while the device maps its pages leaves nothing behind (RELEASE). A stale
//! device translation shows up as a wrong checksum, a write that lands, an access that
//! should have failed, or in the coherence oracle's count. Each phase ends with a device
//! audit (every translation the device still holds must agree with the CPU page table).
//! Prints one `VGPU-WORKLOAD {json}` line; exits 1 if a check failed.

use std::io;
use std::process::ExitCode;

use guest_programs::device::Vgpu;
use guest_programs::protocol::{Counters, Event};
use guest_programs::uapi::{self, JOB_CHECKSUM, JOB_FILL, STATUS_FAULT, STATUS_OK};
use guest_programs::workload::{fnv1a64, run_in_child, Buffer, Checks};

const PAGE: usize = 4096;
/// Pages per quarter of the buffer; each quarter gets a different mapping change.
const QUARTER_PAGES: usize = 16;
const QUARTER: usize = QUARTER_PAGES * PAGE;

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("vgpu-touch: {e}");
            ExitCode::from(2)
        }
    }
}

/// Forks a child that binds, has the device fill a buffer and exits without unmapping it
/// or closing the device: the kernel tears the address space down (RELEASE, then the
/// exit's UNMAPs) while the device still maps it, and the file is closed (UNBIND) after.
fn exit_while_mapped() -> io::Result<()> {
    let status = run_in_child(|| {
        (|| -> io::Result<i32> {
            let vgpu = Vgpu::bind(uapi::POLICY_DEFAULT)?;
            let buf = Buffer::new(QUARTER)?;
            let r = vgpu.job(JOB_FILL, buf.addr(0), QUARTER, 0xe817)?;
            // Keep both alive until _exit: no munmap, no close.
            std::mem::forget((vgpu, buf));
            Ok(if r.status == STATUS_OK { 0 } else { 1 })
        })()
        .unwrap_or(2)
    })?;
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        return Err(io::Error::other(format!(
            "the exiting child failed (wait status {status:#x})"
        )));
    }
    Ok(())
}

fn run() -> io::Result<bool> {
    let vgpu = Vgpu::bind(uapi::POLICY_DEFAULT)?;
    let before = vgpu.counters()?;
    let mut buf = Buffer::new(4 * QUARTER)?;
    let mut c = Checks::new("touch");
    let (q0, q1, q2, q3) = (0, QUARTER, 2 * QUARTER, 3 * QUARTER);

    // 1. The device writes a fresh buffer: every page is a device fault.
    let p1 = 0x5eed_0000_0000_0001;
    let r = vgpu.job(JOB_FILL, buf.addr(0), 4 * QUARTER, p1)?;
    c.status("fill fresh buffer", r.status, STATUS_OK);
    c.check(r.faults > 0, || {
        "fill fresh buffer: no device faults".into()
    });
    c.filled("fill fresh buffer", buf.bytes(0, 4 * QUARTER), p1);
    c.audit(&vgpu, "fill fresh buffer")?;

    // 2. The CPU writes, the device reads the same bytes.
    for (i, b) in buf.bytes_mut(0, 4 * QUARTER).iter_mut().enumerate() {
        *b = (i * 7 + 3) as u8;
    }
    let r = vgpu.job(JOB_CHECKSUM, buf.addr(0), 4 * QUARTER, 0)?;
    c.status("checksum CPU data", r.status, STATUS_OK);
    let want = fnv1a64(buf.bytes(0, 4 * QUARTER));
    c.check(r.result == want, || {
        format!("checksum CPU data: device {:#x}, CPU {want:#x}", r.result)
    });
    c.audit(&vgpu, "checksum CPU data")?;

    // 3. munmap (UNMAP): the device must not reach the range any more.
    buf.munmap(q3, QUARTER)?;
    let r = vgpu.job(JOB_CHECKSUM, buf.addr(q3), QUARTER, 0)?;
    c.status("checksum after munmap", r.status, STATUS_FAULT);
    let r = vgpu.job(JOB_CHECKSUM, buf.addr(0), 3 * QUARTER, 0)?;
    let want = fnv1a64(buf.bytes(0, 3 * QUARTER));
    c.status("checksum beside munmap", r.status, STATUS_OK);
    c.check(r.result == want, || {
        "checksum beside munmap: mismatch".into()
    });
    c.audit(&vgpu, "munmap")?;

    // 4. madvise(DONTNEED) (CLEAR): the device sees the new zero pages, then writes them.
    buf.dontneed(q1, QUARTER)?;
    let r = vgpu.job(JOB_CHECKSUM, buf.addr(q1), QUARTER, 0)?;
    c.status("checksum after DONTNEED", r.status, STATUS_OK);
    c.check(r.result == fnv1a64(&[0; QUARTER]), || {
        "checksum after DONTNEED: device still sees the old data".into()
    });
    let p2 = 0xc1ea_0000_0000_0002;
    let r = vgpu.job(JOB_FILL, buf.addr(q1), QUARTER, p2)?;
    c.status("fill after DONTNEED", r.status, STATUS_OK);
    c.filled("fill after DONTNEED", buf.bytes(q1, QUARTER), p2);
    c.audit(&vgpu, "DONTNEED")?;

    // 5. mprotect(PROT_READ) (PROTECTION_VMA): reads still work, writes must fail.
    buf.protect_read_only(q0, QUARTER)?;
    let before_write = fnv1a64(buf.bytes(q0, QUARTER));
    let r = vgpu.job(JOB_CHECKSUM, buf.addr(q0), QUARTER, 0)?;
    c.status("checksum read-only", r.status, STATUS_OK);
    c.check(r.result == before_write, || {
        "checksum read-only: mismatch".into()
    });
    let r = vgpu.job(JOB_FILL, buf.addr(q0), QUARTER, 0xbad)?;
    c.status("fill read-only", r.status, STATUS_FAULT);
    c.check(fnv1a64(buf.bytes(q0, QUARTER)) == before_write, || {
        "fill read-only: the device wrote to a read-only page".into()
    });
    c.audit(&vgpu, "mprotect")?;

    // 6. The untouched quarter still works both ways.
    let p3 = 0x7a11_0000_0000_0003;
    let r = vgpu.job(JOB_FILL, buf.addr(q2), QUARTER, p3)?;
    c.status("fill untouched quarter", r.status, STATUS_OK);
    c.filled("fill untouched quarter", buf.bytes(q2, QUARTER), p3);
    c.audit(&vgpu, "untouched quarter")?;

    // 7. migrate_vma (MIGRATE): the pages move to new frames; the device must follow.
    let moved = vgpu.migrate(buf.addr(q2), QUARTER)?;
    c.check(moved > 0, || "migrate: no page moved".into());
    let r = vgpu.job(JOB_CHECKSUM, buf.addr(q2), QUARTER, 0)?;
    c.status("checksum after migrate", r.status, STATUS_OK);
    c.check(r.result == fnv1a64(buf.bytes(q2, QUARTER)), || {
        "checksum after migrate: mismatch".into()
    });
    let p4 = 0x3160_0000_0000_0004;
    let r = vgpu.job(JOB_FILL, buf.addr(q2), QUARTER, p4)?;
    c.status("fill after migrate", r.status, STATUS_OK);
    c.filled("fill after migrate", buf.bytes(q2, QUARTER), p4);
    c.audit(&vgpu, "migrate")?;

    // 8. A child exits while the device maps its pages (RELEASE): nothing may stay.
    exit_while_mapped()?;
    c.audit(&vgpu, "exit while mapped")?;

    let delta = Counters::movement(&before, &vgpu.counters()?);
    c.notified(
        &delta,
        &[
            Event::Unmap,
            Event::Clear,
            Event::ProtectionVma,
            Event::Migrate,
            Event::Release,
        ],
    );
    buf.munmap(q0, 3 * QUARTER)?;

    Ok(c.report("touch", &delta))
}
