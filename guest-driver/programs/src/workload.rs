//! What the workloads share: an anonymous buffer whose mappings they change under the
//! device, the data checks, and the device's checksum computed on the CPU.

use std::io;
use std::ptr::NonNull;

use protocol::console::ConsoleLine;
use protocol::workload::{AuditSums, WorkloadRecord};
use protocol::{Counters, Event};

use crate::device::Vgpu;

/// A `vgpu_mirror` module parameter changed for as long as the guard lives; dropping it puts
/// the old value back (workloads use the driver's test aids this way).
pub struct DriverParam {
    path: String,
    old: String,
}

impl DriverParam {
    /// Sets parameter `name` to `value`.
    pub fn set(name: &str, value: &str) -> io::Result<Self> {
        let path = format!("/sys/module/vgpu_mirror/parameters/{name}");
        let annotate = |e: io::Error| io::Error::new(e.kind(), format!("{path}: {e}"));
        let old = std::fs::read_to_string(&path).map_err(annotate)?;
        std::fs::write(&path, value).map_err(annotate)?;
        Ok(DriverParam {
            path,
            old: old.trim().to_string(),
        })
    }
}

impl Drop for DriverParam {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(&self.path, &self.old) {
            eprintln!("cannot restore {}: {e}", self.path);
        }
    }
}

/// FNV-1a-64, the device's CHECKSUM.
pub use protocol::fnv::hash as fnv1a64;

/// The driver's current default policy, as its module parameter says.
pub fn policy_name() -> String {
    std::fs::read_to_string("/sys/module/vgpu_mirror/parameters/policy")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Forks, runs `child` in the child and leaves it with `_exit` and `child`'s exit code
/// (destructors of the parent's copies never run there); the parent waits and gets the
/// child's wait status. Call it while the process is single-threaded, or with a `child`
/// that neither allocates nor takes a lock (another thread may have held one at the fork).
pub fn run_in_child(child: impl FnOnce() -> i32) -> io::Result<i32> {
    // SAFETY: the caller's promise above; the child runs `child` and _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        let code = child();
        // SAFETY: leave the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for the child forked above.
    if unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
        return Err(io::Error::last_os_error());
    }
    Ok(status)
}

/// An anonymous private mapping that we unmap piecewise ourselves.
pub struct Buffer {
    base: NonNull<u8>,
    len: usize,
}

impl Buffer {
    /// Maps `len` bytes, readable and writable.
    pub fn new(len: usize) -> io::Result<Self> {
        // SAFETY: a fresh anonymous mapping; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Buffer {
            base: NonNull::new(p.cast()).expect("mmap never returns NULL on success"),
            len,
        })
    }

    /// The virtual address at `offset`.
    pub fn addr(&self, offset: usize) -> usize {
        self.base.as_ptr() as usize + offset
    }

    /// The bytes at `[offset, offset + len)`, which must still be mapped readable.
    pub fn bytes(&self, offset: usize, len: usize) -> &[u8] {
        assert!(offset + len <= self.len);
        // SAFETY: in bounds of our mapping; callers only ask for ranges still mapped.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(offset), len) }
    }

    /// The bytes at `[offset, offset + len)`, which must still be mapped writable.
    pub fn bytes_mut(&mut self, offset: usize, len: usize) -> &mut [u8] {
        assert!(offset + len <= self.len);
        // SAFETY: as in `bytes`, and `&mut self` makes the slice exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().add(offset), len) }
    }

    fn syscall(r: libc::c_int) -> io::Result<()> {
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Unmaps part of the buffer (an UNMAP notification).
    pub fn munmap(&mut self, offset: usize, len: usize) -> io::Result<()> {
        // SAFETY: the range lies in our mapping and nothing borrows it (&mut self).
        Self::syscall(unsafe { libc::munmap(self.addr(offset) as *mut _, len) })
    }

    /// Drops the pages of a range (a CLEAR notification); they read as zero after.
    pub fn dontneed(&mut self, offset: usize, len: usize) -> io::Result<()> {
        // SAFETY: as for munmap; DONTNEED keeps the mapping, the pages read as zero after.
        Self::syscall(unsafe {
            libc::madvise(self.addr(offset) as *mut _, len, libc::MADV_DONTNEED)
        })
    }

    /// Makes a range read-only (a PROTECTION_VMA notification).
    pub fn protect_read_only(&mut self, offset: usize, len: usize) -> io::Result<()> {
        // SAFETY: as for munmap; afterwards we only read this range.
        Self::syscall(unsafe { libc::mprotect(self.addr(offset) as *mut _, len, libc::PROT_READ) })
    }
}

/// The data checks of one workload and what failed.
pub struct Checks {
    /// The workload, for the failure lines.
    name: &'static str,
    /// What failed, in order.
    pub failures: Vec<String>,
    /// The device audits so far, summed.
    pub audits: AuditSums,
}

impl Checks {
    /// No checks yet, for the workload called `name`.
    pub fn new(name: &'static str) -> Self {
        Checks {
            name,
            failures: Vec::new(),
            audits: AuditSums::default(),
        }
    }

    /// Records `what` as a failure unless `cond` holds.
    pub fn check(&mut self, cond: bool, what: impl FnOnce() -> String) {
        if !cond {
            let w = what();
            println!("{}: FAIL {w}", self.name);
            self.failures.push(w);
        }
    }

    /// A FILL of `pattern` is in `data` (which starts at the job's start).
    pub fn filled(&mut self, step: &str, data: &[u8], pattern: u64) {
        let bad = data.chunks_exact(8).enumerate().find(|(i, w)| {
            u64::from_ne_bytes((*w).try_into().unwrap()) != pattern ^ (*i as u64 * 8)
        });
        self.check(bad.is_none(), || {
            format!(
                "{step}: device data wrong at offset {:#x}",
                bad.unwrap().0 * 8
            )
        });
    }

    /// Ends `phase` with a device audit: every translation the device still holds must
    /// agree with the CPU page table, or the phase fails.
    pub fn audit(&mut self, vgpu: &Vgpu, phase: &str) -> io::Result<()> {
        let a = vgpu.audit()?;
        println!(
            "audit after {phase}: checked {}, disagreements {}",
            a.checked, a.disagreements
        );
        self.audits.checked += a.checked;
        self.audits.disagreements += a.disagreements;
        self.check(a.disagreements == 0, || {
            format!(
                "{phase}: the device holds {} translations the CPU page table disagrees with",
                a.disagreements
            )
        });
        Ok(())
    }

    /// The device answered `want`.
    pub fn status(&mut self, step: &str, got: u32, want: u32) {
        self.check(got == want, || {
            format!("{step}: device status {got}, expected {want}")
        });
    }
}

impl Checks {
    /// Fails unless each of `events` reached the device during the workload.
    pub fn notified(&mut self, delta: &Counters, events: &[Event]) {
        for event in events {
            let heard = delta.of(*event).notifications;
            self.check(heard > 0, || {
                format!("no {event} notification reached the device")
            });
        }
    }

    /// Prints the workload's `VGPU-WORKLOAD` line (its counters moved by `delta`) and
    /// returns whether every check passed.
    pub fn report(&self, name: &str, delta: &Counters) -> bool {
        let record = WorkloadRecord::new(
            name,
            &policy_name(),
            self.failures.clone(),
            delta,
            self.audits,
        );
        let ok = record.ok;
        println!("{}", ConsoleLine::Workload(Box::new(record)));
        ok
    }
}
