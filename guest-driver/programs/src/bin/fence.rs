//! `vgpu-fence`: a device that does not answer an INVALIDATE in time is stopped, never
//! outrun.
//!
//! An mmu notifier that returns before the device completed its invalidation lets the kernel
//! reuse pages the device may still write. So when INVALIDATE is not answered within the
//! driver's `timeout_ms`, the driver resets the device (no DMA after that) before the
//! notifier returns, and every later command fails with ENODEV.
//!
//! Run it alone, on a device whose invalidations take longer than 10 ms:
//! `vmm run --run fence --device inval_latency_us=100000`. It leaves the device stopped.
//! Prints `check <name>: ok|FAIL <why>` per step and exits 1 if any failed.

use std::io;
use std::process::ExitCode;

use guest_programs::device::{ioctl, Vgpu};
use guest_programs::uapi::{self, VgpuJob, JOB_CHECKSUM, JOB_FILL, STATUS_OK};
use guest_programs::workload::{Buffer, DriverParam};

const PAGE: usize = 4096;
const LEN: usize = 16 * PAGE;
/// The driver's timeout while the INVALIDATE is sent: far below the device's latency.
const SHORT_TIMEOUT_MS: &str = "10";

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("vgpu-fence: {e}");
            ExitCode::from(2)
        }
    }
}

fn run() -> io::Result<bool> {
    let mut checks: Vec<(&str, Result<(), String>)> = Vec::new();
    let vgpu = Vgpu::bind(uapi::POLICY_DEFAULT)?;
    let mut buf = Buffer::new(LEN)?;

    // The device maps the whole buffer (with the normal timeout).
    let fill = vgpu.job(JOB_FILL, buf.addr(0), LEN, 0x5a)?;
    checks.push((
        "device fills the buffer",
        if fill.status == STATUS_OK {
            Ok(())
        } else {
            Err(format!("status {}", fill.status))
        },
    ));

    // The unmap's INVALIDATE outlives the short timeout: the driver must fence the device
    // before munmap returns.
    let timeout = DriverParam::set("timeout_ms", SHORT_TIMEOUT_MS)?;
    checks.push((
        "munmap returns",
        buf.munmap(0, LEN / 2).map_err(|e| e.to_string()),
    ));
    drop(timeout);

    let mut checksum = VgpuJob {
        start: buf.addr(LEN / 2) as u64,
        length: (LEN / 2) as u64,
        op: JOB_CHECKSUM,
        ..Default::default()
    };
    checks.push((
        "the device is stopped after the unanswered INVALIDATE",
        match ioctl(vgpu.file(), uapi::IOC_JOB, &mut checksum) {
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(()),
            Err(e) => Err(format!("{e}, expected ENODEV")),
            Ok(()) => Err(format!(
                "job ran (status {}): the device still works after an INVALIDATE it did not \
                 answer in {SHORT_TIMEOUT_MS} ms (is inval_latency_us above that?)",
                checksum.status
            )),
        },
    ));

    Ok(guest_programs::print_checks(&checks) == 0)
}
