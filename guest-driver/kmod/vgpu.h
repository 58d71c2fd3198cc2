/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Internal interfaces of the vgpu_mirror module.
 *
 * vgpu_main.c  module parameters, module init/exit, virtio probe/remove,
 *              /dev/vgpuN and its ioctls
 * vgpu_queue.c the command queue (requests matched by token), the fault
 *              queue (posted buffers, dispatched to the job they belong to)
 *              and the device fence
 * vgpu_mm.c    a mirror's lifetime, bind/unbind, the interval notifier and
 *              the invalidation policies
 * vgpu_fault.c the one hmm_range_fault() snapshot helper, the MAP window,
 *              jobs and the device faults they raise
 * vgpu_migrate.c VGPU_IOC_MIGRATE (migrate_vma)
 * vgpu_dmirror.c /dev/hmm_dmirror0 and 1: the ioctls of the kernel's HMM
 *              test driver (lib/test_hmm_uapi.h) on the same mirrors
 * vgpu_inject.c the inject= bugs, behind hooks the production paths call
 *
 * The wire structs come from vgpu_wire.h, the ioctl structs from vgpu_uapi.h
 * (guest-driver/include); device-model/SPEC.md describes both.
 */

/**
 * DOC: Overview
 *
 * The virtual GPU is a virtio device with its own IOMMU page tables and
 * translation cache (ATC) that mirrors process address spaces. Each process
 * that opens /dev/vgpuN (or /dev/hmm_dmirrorN) gets a &struct vgpu_mirror.
 * Binding it (VGPU_IOC_BIND, or the open of a dmirror node) gives it a PASID,
 * sends BIND with the page-table root and inserts one mmu_interval_notifier
 * over the user address space [0, user_end).
 *
 * Device to driver: a job (VGPU_IOC_JOB, dmirror READ/WRITE) runs in the
 * device; a page it cannot translate becomes a fault record on the fault
 * queue, and the job stalls. The submitting process serves its job's faults
 * itself (vgpu_run_job()): vgpu_snapshot() takes a snapshot of the CPU page
 * table with hmm_range_fault() under the notifier sequence and, under the
 * mirror mutex with the sequence still valid, vgpu_map_window() sends it as
 * one MAP that also answers the fault. A fault that cannot be served gets
 * FAULT_FAIL.
 *
 * Kernel to device: before the kernel changes a page table of the process it
 * calls the interval notifier (vgpu_mm.c), which takes the mirror mutex, bumps
 * the sequence and, as the policy decides from the event and the vma, sends
 * INVALIDATE (drop, downgrade to read-only, or nothing) and waits for the
 * device to complete it. The callback never returns while the device can
 * still use the old pages: a device that does not answer within timeout_ms
 * is stopped (virtio reset) first.
 *
 * Every command waits at most timeout_ms; a waiter that gives up abandons
 * its request, which the queue frees when the device returns it. A device
 * that goes away fails every waiter with -ENODEV while the files stay valid
 * until closed. The inject= bugs (vgpu_inject.c) break one of these rules
 * each, for testing the device's coherence oracle.
 */

/**
 * DOC: Locking
 *
 * Locks of the driver, outermost first:
 *
 * - &vgpu_mirror.bind_lock (mutex): bound, pasid, policy, mm, user_end and
 *   inv_req while they are set up and torn down, and the notifier's insertion
 *   and removal. Held across BIND and UNBIND, their allocations,
 *   mmu_interval_notifier_insert() (which may take mmap_lock) and
 *   mmu_interval_notifier_remove() (which waits for running callbacks, and
 *   so for the mirror mutex). Ioctls read the bound fields without it: their
 *   smp_load_acquire() of bound pairs with the smp_store_release() of bind.
 * - mmap_lock (the kernel's): read-held by vgpu_snapshot() around
 *   hmm_range_fault() only, and dropped before the mirror mutex is taken; the
 *   kernel holds it around most notifier calls.
 * - &vgpu_mirror.mutex: the driver's page-table lock, ordering device
 *   updates against invalidations (test_hmm.c's dmirror->mutex). The
 *   notifier callback holds it from mmu_interval_set_seq() until the device
 *   completed the INVALIDATE; vgpu_snapshot() holds it from
 *   mmu_interval_read_retry() until its commit (a MAP and its answer)
 *   is done. It also guards &vgpu_mirror.inv_req. The callback may run from
 *   reclaim: nothing under the mutex may allocate with a gfp that can
 *   reclaim (GFP_KERNEL), take mmap_lock or take bind_lock. vgpu_mirror_bind()
 *   primes lockdep with fs_reclaim -> mutex, so such an allocation is a
 *   lockdep report, not a deadlock under memory pressure.
 * - &vgpu_dev.stop_lock (mutex): serializes vgpu_queues_stop(), which the
 *   INVALIDATE fence runs under the mirror mutex; the same reclaim rule
 *   applies and is primed the same way.
 * - &vgpu_late.lock (spinlock, inject=late-invalidate only): the queue of
 *   held-back invalidations, taken under the mirror mutex by the callback
 *   and alone by the work item.
 * - &vgpu_dev.cmd_lock (spinlock, irqsave: the command queue's callback
 *   takes it): cmd_vq, each request's completed and abandoned flags (and
 *   the freeing of an abandoned request), and the writing of removed.
 * - &vgpu_dev.fault_lock (spinlock, irqsave): fault_vq.
 * - &vgpu_dev.job_lock (spinlock, irqsave): the running jobs, the faults
 *   queued for each, and the orphan faults.
 *
 * Order: bind_lock -> mmap_lock -> mutex -> stop_lock -> {cmd_lock,
 * fault_lock, job_lock}, and mutex -> late.lock. The four spinlocks are
 * leaves: none of them is taken while another is held (vgpu_queues_stop()
 * takes cmd_lock, fault_lock and job_lock one after the other). Functions
 * that need a lock held say so with lockdep_assert_held(); vgpu_snapshot(),
 * which takes the mirror mutex itself, asserts that it is not held.
 *
 * &vgpu_dev.removed is set once, by vgpu_queues_stop() under stop_lock and
 * cmd_lock, which then takes fault_lock once so that vgpu_fault_repost()
 * (which reads it under fault_lock) posts nothing after the stop; the
 * command queue reads it under cmd_lock, everything else with READ_ONCE().
 *
 * Without a lock: a request belongs to its submitter until it is abandoned
 * (vgpu_abandon()), then to the queue. A job's wait queue lives on the job's
 * stack, so the job leaves only after vgpu_req_completed() saw its request
 * completed under cmd_lock.
 */
#ifndef VGPU_H
#define VGPU_H

#include <linux/bits.h>
#include <linux/completion.h>
#include <linux/kref.h>
#include <linux/list.h>
#include <linux/miscdevice.h>
#include <linux/mmu_notifier.h>
#include <linux/mutex.h>
#include <linux/spinlock.h>
#include <linux/types.h>
#include <linux/virtio.h>
#include <linux/wait.h>
#include <linux/workqueue.h>

#include "vgpu_uapi.h"
#include "vgpu_wire.h"

#define VGPU_NAME		"vgpu_mirror"

/* Fault buffers kept posted (the fault queue has 64 entries). */
#define VGPU_FAULT_BUFS		64
/* Upper bounds on what the device reports in its config space. */
#define VGPU_MAX_PASIDS		BIT(20)
#define VGPU_MAX_MAP_PAGES	512U
/* Largest job the driver submits (bytes). */
#define VGPU_MAX_JOB_BYTES	BIT_ULL(32)
/* The device's address limit (SPEC.md: ranges beyond 2^47 are BAD_RANGE). */
#define VGPU_VA_LIMIT		BIT_ULL(47)

extern unsigned int vgpu_timeout_ms;
extern int vgpu_default_policy;

/*
 * Test aid (module parameter fault_delay_us, 0 by default): vgpu_snapshot()
 * sleeps this long between hmm_range_fault() and taking the mirror mutex, so
 * that an invalidation racing the snapshot is likely instead of rare. A
 * correct driver retries; inject=no-seq-retry maps the stale snapshot.
 */
extern unsigned int vgpu_fault_delay_us;
#define VGPU_FAULT_DELAY_MAX_US	100000

/*
 * Bug injections (module parameter inject=, set at load only, parsed in
 * vgpu_main.c): each one re-creates a classic mirroring mistake so that the
 * device's coherence oracle can be shown to catch it; the production paths
 * reach them only through the vgpu_inject_*() hooks (vgpu_inject.c).
 * vmm/src/injections.rs lists the names.
 */
enum vgpu_inject {
	VGPU_INJECT_NONE,
	VGPU_INJECT_SKIP_EVENT,		/* ignore one notifier event entirely */
	VGPU_INJECT_THP_TRUNCATE,	/* invalidate only the first 4 KiB */
	VGPU_INJECT_LATE_INVALIDATE,	/* invalidate after the PTE changed */
	VGPU_INJECT_NO_SEQ_RETRY,	/* map a stale hmm_range_fault snapshot */
	VGPU_INJECT_EARLY_COMPLETE,	/* do not wait for the device's ack */
};

extern int vgpu_inject;
/* The event skipped by VGPU_INJECT_SKIP_EVENT (enum mmu_notifier_event). */
extern int vgpu_inject_event;

/* Invalidations a late-invalidate mirror holds back before it gives up and
 * invalidates everything at once.
 */
#define VGPU_LATE_MAX		16

/* One held-back invalidation, with what the callback knew then. */
struct vgpu_late_inv {
	unsigned long start;
	unsigned long end;
	u32 flags;
	u32 prot;
	int event;
};

/*
 * inject=late-invalidate: invalidations queued by the callback and sent by
 * the work item after it returned. batch belongs to the work item.
 */
struct vgpu_late {
	spinlock_t lock;		/* inv, n, overflow (DOC: Locking) */
	struct vgpu_late_inv inv[VGPU_LATE_MAX];
	unsigned int n;
	bool overflow;
	struct vgpu_late_inv batch[VGPU_LATE_MAX];
	struct delayed_work work;
};

/* One request on the command queue; its address is the token. */
struct vgpu_req {
	struct vgpu_cmd cmd;
	struct vgpu_resp resp;
	/* MAP payload (device-readable) or COUNTERS data (device-writable). */
	void *data;
	size_t data_len;
	bool data_in;
	/* Bytes the device wrote (used.len), valid once completed. */
	u32 used_len;
	/* -ENODEV when the device went away before answering. */
	int err;
	/* Both under vgpu_dev.cmd_lock (DOC: Locking). */
	bool completed;
	bool abandoned;
	struct completion done;
	/* Also woken on completion (a job's waiter); may be NULL. */
	wait_queue_head_t *wq;
};

/* A fault buffer; posted on the fault queue or held by whoever serves it. */
struct vgpu_fault_buf {
	struct vgpu_fault f;
	struct list_head node;
};

/* dmirror-compatible device nodes (vgpu_dmirror.c), on the first device. */
#define VGPU_DMIRROR_UNITS	2

struct vgpu_dmirror_node {
	struct miscdevice misc;
	struct vgpu_dev *vd;
	char name[16];
	bool registered;
};

struct vgpu_dev {
	struct kref ref;
	struct virtio_device *vdev;
	struct miscdevice misc;
	char name[16];
	int index;

	/* From the config space, clamped. */
	u32 max_pasids;
	u32 max_map_pages;
	u32 fault_ahead;

	/* The locks and what they guard: DOC: Locking. */
	struct virtqueue *cmd_vq;
	spinlock_t cmd_lock;		/* cmd_vq, vgpu_req flags, removed */
	wait_queue_head_t cmd_space;	/* waiters for ring space */
	struct virtqueue *fault_vq;
	spinlock_t fault_lock;		/* fault_vq */
	/* Set once, by vgpu_queues_stop() under stop_lock and cmd_lock,
	 * when the device goes away or is fenced.
	 */
	bool removed;
	struct mutex stop_lock;		/* serializes vgpu_queues_stop() */

	struct vgpu_fault_buf *fault_bufs;

	/* Running jobs (struct vgpu_job_wait) and unclaimed faults. */
	spinlock_t job_lock;		/* jobs, their faults, orphans */
	struct list_head jobs;
	struct list_head orphans;
	struct work_struct orphan_work;
	atomic64_t next_job_id;

	struct ida pasids;

	struct vgpu_dmirror_node dmirror[VGPU_DMIRROR_UNITS];
};

/*
 * One open file of /dev/vgpuN or /dev/hmm_dmirrorN, and the address space it
 * binds. The locks and what they guard: DOC: Locking.
 */
struct vgpu_mirror {
	struct vgpu_dev *vdev;
	struct mutex bind_lock;		/* bound..user_end, inv_req, notifier */
	bool bound;
	u32 pasid;
	int policy;			/* VGPU_POLICY_NAIVE or _EVENT_AWARE */
	struct mm_struct *mm;		/* valid while bound (notifier's mmgrab) */
	unsigned long user_end;		/* mirrored range is [0, user_end) */
	struct mmu_interval_notifier notifier;
	/* The driver's page-table lock: device updates vs. invalidations;
	 * taken by the notifier, so no reclaiming allocation under it.
	 */
	struct mutex mutex;
	/* Preallocated INVALIDATE request (used under mutex). */
	struct vgpu_req *inv_req;

	/* inject=late-invalidate only (vgpu_inject.c). */
	struct vgpu_late late;
};

/* A job being waited for; the fault callback hands it faults by job id. */
struct vgpu_job_wait {
	u64 id;
	u32 pasid;
	struct list_head node;		/* vgpu_dev.jobs */
	struct list_head faults;	/* vgpu_fault_buf, under job_lock */
	wait_queue_head_t wq;
};

/* One job to run on a mirror, and the device's answer. */
struct vgpu_job_run {
	u32 op;				/* enum vgpu_job_op */
	u64 start;
	u64 length;
	u64 arg;
	/* COPY_TO_DMA / COPY_FROM_DMA: the driver pages, one per page. */
	const __le64 *dma;
	unsigned int dma_pages;
	/* Answers one fault of the job (MAP or FAULT_FAIL). */
	void (*serve)(struct vgpu_mirror *m, const struct vgpu_fault *f,
		      void *ctx);
	void *ctx;
	/* Out: the response. */
	u32 status;
	u64 value0;
	u64 faults;
	/*
	 * Out: the driver gave up waiting; the device may still use the DMA
	 * pages, so their owner must not free them.
	 */
	bool abandoned;
};

struct hmm_range;

/**
 * struct vgpu_snapshot_ctx - how vgpu_snapshot() takes a snapshot
 * @deadline: in: give up with -EBUSY after this (jiffies), from
 *	      vgpu_snapshot_deadline(): the one deadline policy
 * @fault_addr: in: a page that asks for @fault_flags on top of the range's
 *		default_flags (ignored if outside the range)
 * @fault_flags: in: HMM_PFN_REQ_FAULT and HMM_PFN_REQ_WRITE, or 0
 * @commit: in: uses a snapshot that is still valid, with the mirror mutex
 *	    held; NULL when nothing is made of the snapshot (faulting in)
 * @arg: in: for @commit
 * @retries: out: attempts an invalidation (-EBUSY, or a sequence that moved)
 *	     spoiled before the one that held
 */
struct vgpu_snapshot_ctx {
	unsigned long deadline;
	unsigned long fault_addr;
	unsigned long fault_flags;
	int (*commit)(struct vgpu_mirror *m, struct hmm_range *range,
		      struct vgpu_snapshot_ctx *ctx);
	void *arg;
	unsigned long retries;
};

/* Functions shared between the files, each documented where it is defined. */

/* vgpu_queue.c */
void vgpu_dev_put(struct vgpu_dev *vd);
int vgpu_status_errno(u32 status);
struct vgpu_req *vgpu_req_alloc(size_t data_len, bool data_in, gfp_t gfp);
void vgpu_req_free(struct vgpu_req *req);
void vgpu_req_reset(struct vgpu_req *req);
int vgpu_submit(struct vgpu_dev *vd, struct vgpu_req *req);
int vgpu_req_result(struct vgpu_req *req);
bool vgpu_abandon(struct vgpu_dev *vd, struct vgpu_req *req);
bool vgpu_req_completed(struct vgpu_dev *vd, struct vgpu_req *req);
int vgpu_cmd_sync(struct vgpu_dev *vd, struct vgpu_req *req);
int vgpu_cmd_sync_or_fence(struct vgpu_dev *vd, struct vgpu_req *req);
int vgpu_cmd_simple(struct vgpu_dev *vd, u32 opcode, u32 pasid, u64 arg0,
		    u64 arg1, u64 *value0);
void vgpu_cmd_done(struct virtqueue *vq);
void vgpu_fault_done(struct virtqueue *vq);
int vgpu_fault_post_all(struct vgpu_dev *vd);
void vgpu_fault_repost(struct vgpu_dev *vd, struct vgpu_fault_buf *fb);
void vgpu_orphan_work(struct work_struct *work);
void vgpu_queues_shutdown(struct vgpu_dev *vd);
void vgpu_job_register(struct vgpu_dev *vd, struct vgpu_job_wait *job);
void vgpu_job_unregister(struct vgpu_dev *vd, struct vgpu_job_wait *job);
struct vgpu_fault_buf *vgpu_job_next_fault(struct vgpu_dev *vd,
					   struct vgpu_job_wait *job);
void vgpu_fill_invalidate(struct vgpu_req *req, const struct vgpu_mirror *m,
			  int event, u32 prot, unsigned long start,
			  unsigned long end, u32 flags);
void vgpu_send_invalidate(struct vgpu_mirror *m, int event, u32 prot,
			  unsigned long start, unsigned long end, u32 flags);

/* vgpu_mm.c */
struct vgpu_mirror *vgpu_mirror_alloc(struct vgpu_dev *vd);
void vgpu_mirror_free(struct vgpu_mirror *m);
int vgpu_mirror_bind(struct vgpu_mirror *m, struct vgpu_bind *bind);
const char *vgpu_policy_name(int policy);

/* vgpu_fault.c */
unsigned long vgpu_snapshot_deadline(void);
int vgpu_snapshot(struct vgpu_mirror *m, struct hmm_range *range,
		  struct vgpu_snapshot_ctx *ctx);
int vgpu_mirror_job(struct vgpu_mirror *m, struct vgpu_job *uj);
int vgpu_run_job(struct vgpu_mirror *m, struct vgpu_job_run *run);
int vgpu_map_window(struct vgpu_mirror *m, unsigned long start,
		    unsigned long end, unsigned long flags, unsigned long addr,
		    unsigned long addr_flags, u64 fault_id, bool fault_reply);
void vgpu_fault_fail(struct vgpu_mirror *m, u64 fault_id, int err);
void vgpu_serve_fault(struct vgpu_mirror *m, const struct vgpu_fault *f,
		      void *ctx);

/* vgpu_migrate.c */
int vgpu_mirror_migrate(struct vgpu_mirror *m, struct vgpu_migrate *mig);

/* vgpu_dmirror.c */
void vgpu_dmirror_register(struct vgpu_dev *vd);
void vgpu_dmirror_unregister(struct vgpu_dev *vd);

/* vgpu_inject.c */
bool vgpu_inject_skip_event(enum mmu_notifier_event event);
unsigned long vgpu_inject_truncate(unsigned long start, unsigned long end);
bool vgpu_inject_send_invalidate(struct vgpu_mirror *m, int event, u32 prot,
				 unsigned long start, unsigned long end,
				 u32 flags);
bool vgpu_inject_skip_seq_retry(void);
void vgpu_inject_mirror_init(struct vgpu_mirror *m);
void vgpu_inject_mirror_unbind(struct vgpu_mirror *m);

#endif /* VGPU_H */
