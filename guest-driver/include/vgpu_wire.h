/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * The virtual GPU's device interface: the structs that cross the virtio
 * queues. device-model/SPEC.md describes them; protocol/src/wire.rs is the
 * Rust definition, and protocol/tests/wire_abi.rs checks that both agree in
 * full (every struct, field and constant). All fields are little-endian.
 */
#ifndef VGPU_WIRE_H
#define VGPU_WIRE_H

#include <linux/types.h>

#define VIRTIO_ID_VGPU			63

#define VGPU_QUEUE_COMMAND		0
#define VGPU_QUEUE_FAULT		1

#define VGPU_COMMAND_QUEUE_SIZE		128
#define VGPU_FAULT_QUEUE_SIZE		64

#define VGPU_PAGE_SIZE			4096ULL

enum vgpu_opcode {
	VGPU_CMD_BIND = 1,
	VGPU_CMD_UNBIND = 2,
	VGPU_CMD_MAP = 3,
	VGPU_CMD_INVALIDATE = 4,
	VGPU_CMD_JOB = 5,
	VGPU_CMD_FAULT_FAIL = 6,
	VGPU_CMD_COUNTERS = 7,
	VGPU_CMD_AUDIT = 8,
};

enum vgpu_status {
	VGPU_S_OK = 0,
	VGPU_S_BAD_OPCODE = 1,
	VGPU_S_BAD_PASID = 2,
	VGPU_S_BAD_RANGE = 3,
	VGPU_S_BAD_CHAIN = 4,
	VGPU_S_FAULT = 5,
	VGPU_S_BAD_JOB = 6,
	VGPU_S_BUSY = 7,
};

/* Index of the per-event counters: the kernel's enum mmu_notifier_event. */
enum vgpu_event {
	VGPU_EV_UNMAP = 0,
	VGPU_EV_CLEAR = 1,
	VGPU_EV_PROTECTION_VMA = 2,
	VGPU_EV_PROTECTION_PAGE = 3,
	VGPU_EV_SOFT_DIRTY = 4,
	VGPU_EV_RELEASE = 5,
	VGPU_EV_MIGRATE = 6,
	VGPU_EV_EXCLUSIVE = 7,
	VGPU_EV_COUNT = 8,
};

#define VGPU_MAP_F_FAULT_REPLY		(1U << 0)

#define VGPU_INV_F_BLOCKABLE		(1U << 0)
#define VGPU_INV_F_OWNER_MATCH		(1U << 1)
#define VGPU_INV_F_DOWNGRADE		(1U << 2)
#define VGPU_INV_F_RELEASE_TRACKING	(1U << 3)

#define VGPU_PROT_READ			(1U << 0)
#define VGPU_PROT_WRITE			(1U << 1)

#define VGPU_COUNTERS_F_RESET		(1U << 0)

enum vgpu_job_op {
	VGPU_JOB_FILL = 1,
	VGPU_JOB_CHECKSUM = 2,
	VGPU_JOB_COPY = 3,
	VGPU_JOB_COPY_TO_DMA = 4,
	VGPU_JOB_COPY_FROM_DMA = 5,
};

#define VGPU_MAP_VALID			(1ULL << 0)
#define VGPU_MAP_WRITE			(1ULL << 1)
#define VGPU_MAP_GPA_MASK		(~0xfffULL)

#define VGPU_FAULT_F_WRITE		(1U << 0)

struct vgpu_config {
	__le32 max_pasids;
	__le32 max_map_pages;
	__le32 atc_entries;
	__le32 atc_ways;
	__le32 fault_ahead;
	__le32 reserved[3];
};

struct vgpu_cmd {
	__le32 opcode;
	__le32 pasid;
	__le64 start;
	__le64 length;
	__le64 arg0;
	__le64 arg1;
	__le32 event;
	__le32 flags;
};

struct vgpu_resp {
	__le32 status;
	__le32 reserved;
	__le64 value0;
	__le64 value1;
};

struct vgpu_map_entry {
	__le64 gpa_flags;
};

struct vgpu_fault {
	__le64 fault_id;
	__le64 job_id;
	__le64 address;
	__le32 pasid;
	__le32 flags;
};

struct vgpu_event_counters {
	__le64 notifications;
	__le64 ats_invalidations;
	__le64 pasid_invalidations;
	__le64 pages_invalidated;
	__le64 atc_entries_dropped;
	__le64 useless_invalidations;
	__le64 refaults;
	__le64 downgrades;
	__le64 leaf_splits;
	__le64 reserved[7];
};

struct vgpu_global_counters {
	__le64 device_faults;
	__le64 jobs_completed;
	__le64 jobs_failed;
	__le64 maps;
	__le64 pages_mapped;
	__le64 command_errors;
	__le64 atc_hits;
	__le64 atc_misses;
	__le64 page_walks;
	__le64 violations;
	__le64 bytes_read;
	__le64 bytes_written;
	__le64 permission_faults;
	__le64 fault_retries;
	__le64 reserved[18];
};

struct vgpu_counters {
	struct vgpu_event_counters events[VGPU_EV_COUNT];
	struct vgpu_global_counters global;
};

#endif /* VGPU_WIRE_H */
