//! `vgpu-abuse`: a hostile process against `/dev/vgpu0`.
//!
//! Every misuse must end in a clear error (an errno from the driver or an error status from
//! the device), and afterwards the device must still work for a well-behaved job. Prints
//! `check <name>: ok|FAIL <why>` per case and exits 1 if any failed. A kernel oops would end
//! the run with the guest's panic report (`panic_on_oops` is not needed: init dies with us).

use std::fs::OpenOptions;
use std::io;
use std::process::ExitCode;

use guest_programs::device::{ioctl, Vgpu, DEVICE_PATH};
use guest_programs::uapi::{self, VgpuBind, VgpuJob, JOB_CHECKSUM, JOB_FILL, STATUS_OK};

const PAGE: u64 = 4096;

/// A job request that the caller then spoils.
fn job(op: u32, start: u64, length: u64) -> VgpuJob {
    VgpuJob {
        start,
        length,
        op,
        ..Default::default()
    }
}

/// Ok when the driver refused the job or the device answered with an error status.
fn refused(r: io::Result<()>, j: &VgpuJob) -> Result<(), String> {
    match r {
        Err(e) => {
            let _ = e; // any errno is a clear refusal
            Ok(())
        }
        Ok(()) if j.status != STATUS_OK => Ok(()),
        Ok(()) => Err("accepted".into()),
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(0) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("vgpu-abuse: {e}");
            ExitCode::from(2)
        }
    }
}

fn run() -> io::Result<u32> {
    let mut checks: Vec<(&str, Result<(), String>)> = Vec::new();

    // An unbound file: jobs are refused.
    let unbound = OpenOptions::new()
        .read(true)
        .write(true)
        .open(DEVICE_PATH)?;
    let mut j = job(JOB_CHECKSUM, 0x10_0000, PAGE);
    checks.push((
        "job before bind",
        refused(ioctl(&unbound, uapi::IOC_JOB, &mut j), &j),
    ));
    let mut a = uapi::VgpuAudit::default();
    checks.push((
        "audit before bind",
        match ioctl(&unbound, uapi::IOC_AUDIT, &mut a) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
            other => Err(format!("{other:?}, expected EINVAL")),
        },
    ));
    let mut b = VgpuBind {
        policy: 77,
        pasid: 0,
    };
    checks.push((
        "bind with an unknown policy",
        match ioctl(&unbound, uapi::IOC_BIND, &mut b) {
            Err(_) => Ok(()),
            Ok(()) => Err("accepted".into()),
        },
    ));
    drop(unbound);

    let vgpu = Vgpu::bind(uapi::POLICY_DEFAULT)?;
    let f = vgpu.file();
    let mut b = VgpuBind::default();
    checks.push((
        "second bind",
        match ioctl(f, uapi::IOC_BIND, &mut b) {
            Err(_) => Ok(()),
            Ok(()) => Err("bound twice".into()),
        },
    ));

    // The device writes into this buffer behind the compiler's back: read it volatile.
    let mut buf = vec![0u8; 8 * PAGE as usize];
    let base = (buf.as_mut_ptr() as u64 + PAGE - 1) & !(PAGE - 1);
    let cases: [(&str, VgpuJob); 8] = [
        ("unaligned start", job(JOB_CHECKSUM, base + 8, PAGE)),
        ("unaligned length", job(JOB_CHECKSUM, base, 100)),
        ("empty range", job(JOB_CHECKSUM, base, 0)),
        (
            "kernel address",
            job(JOB_CHECKSUM, 0xffff_8880_0000_0000, PAGE),
        ),
        ("wrapping range", job(JOB_CHECKSUM, !(PAGE - 1), 2 * PAGE)),
        ("huge range", job(JOB_CHECKSUM, base, 1 << 40)),
        ("unknown op", job(99, base, PAGE)),
        ("unmapped page", job(JOB_FILL, PAGE, PAGE)),
    ];
    for (name, mut j) in cases {
        checks.push((name, refused(ioctl(f, uapi::IOC_JOB, &mut j), &j)));
    }
    let mut j = VgpuJob {
        arg: 0x2000, // an unmapped COPY source
        ..job(uapi::JOB_COPY, base, PAGE)
    };
    checks.push((
        "copy from unmapped",
        refused(ioctl(f, uapi::IOC_JOB, &mut j), &j),
    ));
    checks.push((
        "unknown ioctl",
        match ioctl(f, uapi::IOC_JOB + 0x40, &mut j) {
            Err(e) if e.raw_os_error() == Some(libc::ENOTTY) => Ok(()),
            other => Err(format!("{other:?}, expected ENOTTY")),
        },
    ));

    // A child shares the file but not the address space: its jobs are refused.
    // SAFETY: fork in a single-threaded program; the child only makes syscalls and exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let mut j = job(JOB_CHECKSUM, base, PAGE);
        let code = i32::from(refused(ioctl(f, uapi::IOC_JOB, &mut j), &j).is_err());
        // SAFETY: leave the child at once, without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for the child forked above.
    let waited = pid > 0 && unsafe { libc::waitpid(pid, &mut status, 0) } == pid;
    checks.push((
        "job from a forked child",
        if waited && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
            Ok(())
        } else {
            Err(format!("child status {status:#x}"))
        },
    ));

    // After all that, a good job still works and its data is right.
    let r = vgpu.job(JOB_FILL, base as usize, PAGE as usize, 0xabcd)?;
    // SAFETY: `base` lies inside `buf` (aligned up by less than a page into 8 pages).
    let first = unsafe { std::ptr::read_volatile(base as *const u64) };
    checks.push((
        "device still works",
        if r.status == STATUS_OK && first == 0xabcd {
            Ok(())
        } else {
            Err(format!("status {} first word {first:#x}", r.status))
        },
    ));

    Ok(guest_programs::print_checks(&checks))
}
