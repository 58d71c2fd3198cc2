//! `vgpu-protect`: the kernel write-protects pages under the device without a vma change.
//!
//! The device fills a buffer (its translations are writable), then the kernel write-protects
//! the pages twice in ways the process does not ask for through mprotect: `fork` marks the
//! parent's anonymous pages copy-on-write (PROTECTION_PAGE) and writing `4` to
//! `/proc/self/clear_refs` clears the soft-dirty bits (SOFT_DIRTY). After each, the device
//! writes the buffer again: it must take a write fault and get the page the CPU now maps
//! (the COW copy), never write through its old writable translation. The coherence oracle
//! counts such a write as a violation, and the device audit that ends each phase finds a
//! writable translation of a write-protected page; the CPU verifies the data. Prints one
//! `VGPU-WORKLOAD {json}` line; exits 1 if a check failed.

use std::io;
use std::process::ExitCode;

use guest_programs::device::Vgpu;
use guest_programs::protocol::{Counters, Event};
use guest_programs::uapi::{self, JOB_FILL, STATUS_OK};
use guest_programs::workload::{run_in_child, Buffer, Checks};

const PAGES: usize = 16;
const LEN: usize = PAGES * 4096;

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("vgpu-protect: {e}");
            ExitCode::from(2)
        }
    }
}

fn run() -> io::Result<bool> {
    let vgpu = Vgpu::bind(uapi::POLICY_DEFAULT)?;
    let before = vgpu.counters()?;
    let mut buf = Buffer::new(LEN)?;
    let mut c = Checks::new("protect");

    // Each phase ends with its fill and a device audit.
    let fill = |c: &mut Checks, buf: &Buffer, step: &str, pattern: u64| -> io::Result<()> {
        let r = vgpu.job(JOB_FILL, buf.addr(0), LEN, pattern)?;
        c.status(step, r.status, STATUS_OK);
        c.filled(step, buf.bytes(0, LEN), pattern);
        c.audit(&vgpu, step)
    };

    // The CPU touches the pages first, so fork has present anonymous pages to protect.
    buf.bytes_mut(0, LEN).fill(1);
    fill(&mut c, &buf, "fill before fork", 0xf00d_0000_0000_0001)?;

    run_in_child(|| 0)?;
    fill(&mut c, &buf, "fill after fork", 0xf00d_0000_0000_0002)?;

    std::fs::write("/proc/self/clear_refs", "4")
        .map_err(|e| io::Error::new(e.kind(), format!("clear_refs: {e}")))?;
    fill(&mut c, &buf, "fill after clear_refs", 0xf00d_0000_0000_0003)?;

    let delta = Counters::movement(&before, &vgpu.counters()?);
    c.notified(&delta, &[Event::ProtectionPage, Event::SoftDirty]);
    Ok(c.report("protect", &delta))
}
