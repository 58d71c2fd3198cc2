//! The ioctl interface of `/dev/vgpu0`: the Rust definition of
//! `guest-driver/include/vgpu_uapi.h`. The test at the bottom compiles the C header and
//! fails when a size, an offset or an ioctl number differs.

/// Use the module parameter `policy`.
pub const POLICY_DEFAULT: u32 = 0;
/// Every event drops the whole range.
pub const POLICY_NAIVE: u32 = 1;
/// Drop, downgrade or skip by event and vma.
pub const POLICY_EVENT_AWARE: u32 = 2;

/// `struct vgpu_bind`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VgpuBind {
    /// (in) one of the `POLICY_*` values.
    pub policy: u32,
    /// (out) the device address space of this process.
    pub pasid: u32,
}

/// `struct vgpu_job`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VgpuJob {
    /// (in) virtual address, page aligned.
    pub start: u64,
    /// (in) bytes, page aligned.
    pub length: u64,
    /// (in) FILL pattern or COPY source address.
    pub arg: u64,
    /// (in) one of the `JOB_*` values.
    pub op: u32,
    /// (out) the device's status (`STATUS_*`).
    pub status: u32,
    /// (out) CHECKSUM result.
    pub result: u64,
    /// (out) device faults the job took.
    pub faults: u64,
}

/// `struct vgpu_migrate`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VgpuMigrate {
    /// (in) virtual address, page aligned.
    pub start: u64,
    /// (in) bytes, page aligned.
    pub length: u64,
    /// (out) pages that moved.
    pub migrated: u64,
}

/// `struct vgpu_audit`, which `VGPU_IOC_AUDIT` fills.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VgpuAudit {
    /// (out) translations the device checked (ATC entries and page-table leaves).
    pub checked: u64,
    /// (out) those the CPU page table disagrees with.
    pub disagreements: u64,
}

/// Job op: write `arg ^ offset` at every 8-byte offset.
pub const JOB_FILL: u32 = 1;
/// Job op: FNV-1a-64 of the bytes.
pub const JOB_CHECKSUM: u32 = 2;
/// Job op: copy from `arg` to `start`.
pub const JOB_COPY: u32 = 3;

/// Device status: success.
pub const STATUS_OK: u32 = 0;
/// Device status: a fault the driver could not serve (no CPU mapping, or no permission).
pub const STATUS_FAULT: u32 = 5;

/// `struct vgpu_counters`, which `VGPU_IOC_COUNTERS` returns as the device wrote it.
pub use protocol::wire::Counters;

const IOC_MAGIC: u32 = b'V' as u32;
const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;

/// `_IOC(dir, 'V', nr, size)` as the kernel's asm-generic/ioctl.h encodes it.
const fn ioc(dir: u32, nr: u32, size: usize) -> u32 {
    (dir << 30) | ((size as u32) << 16) | (IOC_MAGIC << 8) | nr
}

/// `VGPU_IOC_BIND`.
pub const IOC_BIND: u32 = ioc(IOC_READ | IOC_WRITE, 1, std::mem::size_of::<VgpuBind>());
/// `VGPU_IOC_JOB`.
pub const IOC_JOB: u32 = ioc(IOC_READ | IOC_WRITE, 2, std::mem::size_of::<VgpuJob>());
/// `VGPU_IOC_COUNTERS`.
pub const IOC_COUNTERS: u32 = ioc(IOC_READ, 3, std::mem::size_of::<Counters>());
/// `VGPU_IOC_AUDIT`.
pub const IOC_AUDIT: u32 = ioc(IOC_READ, 4, std::mem::size_of::<VgpuAudit>());
/// `VGPU_IOC_MIGRATE`.
pub const IOC_MIGRATE: u32 = ioc(IOC_READ | IOC_WRITE, 5, std::mem::size_of::<VgpuMigrate>());

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};
    use std::path::Path;

    /// Compiles a C program that prints the header's layout, one `name value` per line.
    fn c_layout() -> Option<String> {
        let include = Path::new(env!("CARGO_MANIFEST_DIR")).join("../include");
        protocol::testing::run_c_program(
            "uapi_abi",
            r#"#include <stdio.h>
#include <stddef.h>
#include "vgpu_uapi.h"
#define S(t) printf(#t " %zu\n", sizeof(struct t))
#define O(t, f) printf(#t "." #f " %zu\n", offsetof(struct t, f))
int main(void)
{
	S(vgpu_bind); O(vgpu_bind, policy); O(vgpu_bind, pasid);
	S(vgpu_job); O(vgpu_job, start); O(vgpu_job, length); O(vgpu_job, arg);
	O(vgpu_job, op); O(vgpu_job, status); O(vgpu_job, result); O(vgpu_job, faults);
	S(vgpu_counters);
	S(vgpu_audit); O(vgpu_audit, checked); O(vgpu_audit, disagreements);
	S(vgpu_migrate); O(vgpu_migrate, start); O(vgpu_migrate, length);
	O(vgpu_migrate, migrated);
	printf("VGPU_IOC_MIGRATE %lu\n", (unsigned long)VGPU_IOC_MIGRATE);
	printf("VGPU_IOC_BIND %lu\n", (unsigned long)VGPU_IOC_BIND);
	printf("VGPU_IOC_JOB %lu\n", (unsigned long)VGPU_IOC_JOB);
	printf("VGPU_IOC_COUNTERS %lu\n", (unsigned long)VGPU_IOC_COUNTERS);
	printf("VGPU_IOC_AUDIT %lu\n", (unsigned long)VGPU_IOC_AUDIT);
	printf("VGPU_POLICY_NAIVE %d\nVGPU_POLICY_EVENT_AWARE %d\n",
	       VGPU_POLICY_NAIVE, VGPU_POLICY_EVENT_AWARE);
	printf("VGPU_JOB_FILL %d\nVGPU_JOB_CHECKSUM %d\nVGPU_JOB_COPY %d\n",
	       VGPU_JOB_FILL, VGPU_JOB_CHECKSUM, VGPU_JOB_COPY);
	printf("VGPU_S_FAULT %d\n", VGPU_S_FAULT);
	return 0;
}
"#,
            &include,
        )
    }

    #[test]
    fn rust_and_c_uapi_agree() {
        let Some(c) = c_layout() else { return };
        let rust = [
            ("vgpu_bind", size_of::<VgpuBind>()),
            ("vgpu_bind.policy", offset_of!(VgpuBind, policy)),
            ("vgpu_bind.pasid", offset_of!(VgpuBind, pasid)),
            ("vgpu_job", size_of::<VgpuJob>()),
            ("vgpu_job.start", offset_of!(VgpuJob, start)),
            ("vgpu_job.length", offset_of!(VgpuJob, length)),
            ("vgpu_job.arg", offset_of!(VgpuJob, arg)),
            ("vgpu_job.op", offset_of!(VgpuJob, op)),
            ("vgpu_job.status", offset_of!(VgpuJob, status)),
            ("vgpu_job.result", offset_of!(VgpuJob, result)),
            ("vgpu_job.faults", offset_of!(VgpuJob, faults)),
            ("vgpu_counters", size_of::<Counters>()),
            ("vgpu_audit", size_of::<VgpuAudit>()),
            ("vgpu_audit.checked", offset_of!(VgpuAudit, checked)),
            (
                "vgpu_audit.disagreements",
                offset_of!(VgpuAudit, disagreements),
            ),
            ("vgpu_migrate", size_of::<VgpuMigrate>()),
            ("vgpu_migrate.start", offset_of!(VgpuMigrate, start)),
            ("vgpu_migrate.length", offset_of!(VgpuMigrate, length)),
            ("vgpu_migrate.migrated", offset_of!(VgpuMigrate, migrated)),
            ("VGPU_IOC_MIGRATE", IOC_MIGRATE as usize),
            ("VGPU_IOC_BIND", IOC_BIND as usize),
            ("VGPU_IOC_JOB", IOC_JOB as usize),
            ("VGPU_IOC_COUNTERS", IOC_COUNTERS as usize),
            ("VGPU_IOC_AUDIT", IOC_AUDIT as usize),
            ("VGPU_POLICY_NAIVE", POLICY_NAIVE as usize),
            ("VGPU_POLICY_EVENT_AWARE", POLICY_EVENT_AWARE as usize),
            ("VGPU_JOB_FILL", JOB_FILL as usize),
            ("VGPU_JOB_CHECKSUM", JOB_CHECKSUM as usize),
            ("VGPU_JOB_COPY", JOB_COPY as usize),
            ("VGPU_S_FAULT", STATUS_FAULT as usize),
        ];
        let c: std::collections::HashMap<&str, usize> = c
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(' ')?;
                Some((k, v.parse().ok()?))
            })
            .collect();
        for (name, value) in rust {
            assert_eq!(c.get(name), Some(&value), "{name}: C and Rust disagree");
        }
    }
}
