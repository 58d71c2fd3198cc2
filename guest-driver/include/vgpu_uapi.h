/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * The ioctl interface of /dev/vgpu0, the guest driver's character device.
 * guest-driver/programs/src/uapi.rs is the Rust definition; its tests check
 * that both agree. A process opens the device, binds its address space with
 * VGPU_IOC_BIND, then submits device jobs on its own virtual addresses.
 * Closing the file (or exiting) unbinds.
 */
#ifndef VGPU_UAPI_H
#define VGPU_UAPI_H

#include <linux/ioctl.h>
#include <linux/types.h>

#include "vgpu_wire.h"

enum vgpu_policy {
	VGPU_POLICY_DEFAULT = 0,	/* the module parameter "policy" */
	VGPU_POLICY_NAIVE = 1,
	VGPU_POLICY_EVENT_AWARE = 2,
};

struct vgpu_bind {
	__u32 policy;		/* in: enum vgpu_policy */
	__u32 pasid;		/* out: the device address space */
};

struct vgpu_job {
	__u64 start;		/* in: virtual address, page aligned */
	__u64 length;		/* in: bytes, page aligned */
	__u64 arg;		/* in: FILL pattern or COPY source address */
	__u32 op;		/* in: enum vgpu_job_op */
	__u32 status;		/* out: enum vgpu_status */
	__u64 result;		/* out: CHECKSUM result */
	__u64 faults;		/* out: device faults the job took */
};

/*
 * Moves the pages of [start, start + length) of the caller's anonymous memory
 * to new frames with migrate_vma (the kernel sends MMU_NOTIFY_MIGRATE), as a
 * driver does when it moves pages into its own memory; here the destination
 * is system RAM, since the guest kernel has no DEVICE_PRIVATE.
 */
struct vgpu_migrate {
	__u64 start;		/* in: virtual address, page aligned */
	__u64 length;		/* in: bytes, page aligned */
	__u64 migrated;		/* out: pages that moved */
};

/*
 * VGPU_IOC_AUDIT: the device checks every translation it holds for the
 * caller's address space against the CPU page table (the AUDIT command).
 */
struct vgpu_audit {
	__u64 checked;		/* out: translations checked */
	__u64 disagreements;	/* out: those the CPU page table disagrees with */
};

#define VGPU_IOC_MAGIC		'V'
#define VGPU_IOC_BIND		_IOWR(VGPU_IOC_MAGIC, 1, struct vgpu_bind)
#define VGPU_IOC_JOB		_IOWR(VGPU_IOC_MAGIC, 2, struct vgpu_job)
/* Reads the device's struct vgpu_counters (vgpu_wire.h). */
#define VGPU_IOC_COUNTERS	_IOR(VGPU_IOC_MAGIC, 3, struct vgpu_counters)
#define VGPU_IOC_AUDIT		_IOR(VGPU_IOC_MAGIC, 4, struct vgpu_audit)
#define VGPU_IOC_MIGRATE	_IOWR(VGPU_IOC_MAGIC, 5, struct vgpu_migrate)

#endif /* VGPU_UAPI_H */
