//! A bound handle on `/dev/vgpu0`: open, bind this process, submit jobs, read counters,
//! audit the device's translations.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;

use crate::uapi::{self, Counters, VgpuAudit, VgpuBind, VgpuJob, VgpuMigrate};

/// The device file.
pub const DEVICE_PATH: &str = "/dev/vgpu0";

/// This process, bound to the virtual GPU. Dropping it unbinds.
pub struct Vgpu {
    file: File,
    pasid: u32,
}

/// What a finished job returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobResult {
    /// The device's status (`uapi::STATUS_*`).
    pub status: u32,
    /// CHECKSUM's result.
    pub result: u64,
    /// Device faults the job took.
    pub faults: u64,
}

impl Vgpu {
    /// Opens the device and binds this process's address space with `policy`.
    pub fn bind(policy: u32) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(DEVICE_PATH)
            .map_err(|e| io::Error::new(e.kind(), format!("opening {DEVICE_PATH}: {e}")))?;
        let mut b = VgpuBind { policy, pasid: 0 };
        ioctl(&file, uapi::IOC_BIND, &mut b).map_err(|e| annotate(e, "VGPU_IOC_BIND"))?;
        Ok(Vgpu {
            file,
            pasid: b.pasid,
        })
    }

    /// The device address space of this process.
    pub fn pasid(&self) -> u32 {
        self.pasid
    }

    /// Runs one device job on `[start, start + length)` of this process and waits for it.
    pub fn job(&self, op: u32, start: usize, length: usize, arg: u64) -> io::Result<JobResult> {
        let mut j = VgpuJob {
            start: start as u64,
            length: length as u64,
            arg,
            op,
            ..Default::default()
        };
        ioctl(&self.file, uapi::IOC_JOB, &mut j).map_err(|e| annotate(e, "VGPU_IOC_JOB"))?;
        Ok(JobResult {
            status: j.status,
            result: j.result,
            faults: j.faults,
        })
    }

    /// Has the driver move the pages of `[start, start + length)` to new frames
    /// (`migrate_vma`, a MIGRATE notification); returns how many moved.
    pub fn migrate(&self, start: usize, length: usize) -> io::Result<u64> {
        let mut m = VgpuMigrate {
            start: start as u64,
            length: length as u64,
            migrated: 0,
        };
        ioctl(&self.file, uapi::IOC_MIGRATE, &mut m)
            .map_err(|e| annotate(e, "VGPU_IOC_MIGRATE"))?;
        Ok(m.migrated)
    }

    /// The open device file (for callers that want to misuse it on purpose).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The device's counters now.
    pub fn counters(&self) -> io::Result<Counters> {
        let mut c = Counters::default();
        ioctl(&self.file, uapi::IOC_COUNTERS, &mut c)
            .map_err(|e| annotate(e, "VGPU_IOC_COUNTERS"))?;
        Ok(c)
    }

    /// Asks the device to check every translation it holds for this process against the
    /// CPU page table, now.
    pub fn audit(&self) -> io::Result<VgpuAudit> {
        let mut a = VgpuAudit::default();
        ioctl(&self.file, uapi::IOC_AUDIT, &mut a).map_err(|e| annotate(e, "VGPU_IOC_AUDIT"))?;
        Ok(a)
    }
}

fn annotate(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Issues `request` on `file` with `arg`; `request` must be one of the `uapi::IOC_*` values,
/// whose encoded size is that of `T`.
pub fn ioctl<T>(file: &File, request: u32, arg: &mut T) -> io::Result<()> {
    // SAFETY: `request` encodes the size of `T` (see uapi), so the driver reads and writes
    // at most `size_of::<T>()` bytes of `arg`, which is a valid, exclusive reference.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), libc::Ioctl::from(request), arg as *mut T) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
