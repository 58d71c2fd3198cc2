// SPDX-License-Identifier: GPL-2.0
/*
 * Device faults, answered in the context of the process that submitted the
 * job: the driver's one hmm_range_fault() loop (vgpu_snapshot()), the MAP
 * window built from its snapshot, and the job loop that serves a job's
 * faults until the device completes it.
 *
 *   seq = mmu_interval_read_begin()
 *   mmap_read_lock(); hmm_range_fault(); mmap_read_unlock()
 *   mutex_lock(&m->mutex)
 *   if (mmu_interval_read_retry(seq)) unlock and start again
 *   MAP (and wait for the device) ; mutex_unlock(&m->mutex)
 */
#include <linux/delay.h>
#include <linux/hmm.h>
#include <linux/lockdep.h>
#include <linux/mm.h>
#include <linux/mmu_notifier.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>

#include "vgpu.h"

/**
 * vgpu_snapshot_deadline() - when a snapshot started now gives up
 *
 * timeout_ms from now, at least HMM's usual second
 * (HMM_RANGE_DEFAULT_TIMEOUT). Every COW or invalidation a fault causes
 * waits for the device's completion (5 ms by default); on a loaded host the
 * plain second ran out during a ten-minute stress run and during hmm-tests'
 * COW writes.
 *
 * Return: the deadline in jiffies, for &vgpu_snapshot_ctx.deadline.
 */
unsigned long vgpu_snapshot_deadline(void)
{
	return jiffies +
	       msecs_to_jiffies(max_t(unsigned int, HMM_RANGE_DEFAULT_TIMEOUT,
				      READ_ONCE(vgpu_timeout_ms)));
}

/**
 * vgpu_snapshot() - the driver's one hmm_range_fault() loop
 * @m: the bound mirror
 * @range: in: start, end, hmm_pfns and default_flags; the rest is set here
 * @ctx: what to do with the snapshot, and the deadline
 *
 * As test_hmm.c's dmirror_range_fault() writes it:
 *
 *   seq = mmu_interval_read_begin()
 *   mmap_read_lock(); hmm_range_fault(); mmap_read_unlock()  (-EBUSY: again)
 *   lock m->mutex
 *   mmu_interval_read_retry(seq): unlock and again
 *   ctx->commit(); unlock m->mutex
 *
 * Before every attempt the request flags are reset: every page asks for
 * range->default_flags, the page at ctx->fault_addr (if inside) for
 * ctx->fault_flags on top. Without a commit nothing is made of the
 * snapshot, so there is nothing to retry: the loop ends once
 * hmm_range_fault() succeeded (faulting pages in). The fault_delay_us test
 * aid sleeps between hmm_range_fault() and the mutex.
 *
 * Context: process context with a reference on m->mm, the mirror mutex
 * not held; takes mmap_lock (read), then the mutex, never both.
 * Return: the commit's result; -EBUSY once ctx->deadline has passed; or the
 * error of hmm_range_fault() (-EFAULT, -EPERM, ...).
 */
int vgpu_snapshot(struct vgpu_mirror *m, struct hmm_range *range,
		  struct vgpu_snapshot_ctx *ctx)
{
	unsigned long npages = (range->end - range->start) >> PAGE_SHIFT;
	unsigned int delay;
	int err;

	lockdep_assert_not_held(&m->mutex);
	range->notifier = &m->notifier;
	range->pfn_flags_mask = HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE;
	range->dev_private_owner = m->vdev;
	ctx->retries = 0;
	for (;; ctx->retries++) {
		if (time_after(jiffies, ctx->deadline))
			return -EBUSY;
		memset(range->hmm_pfns, 0, npages * sizeof(*range->hmm_pfns));
		if (ctx->fault_flags && ctx->fault_addr >= range->start &&
		    ctx->fault_addr < range->end)
			range->hmm_pfns[(ctx->fault_addr - range->start) >>
					PAGE_SHIFT] = ctx->fault_flags;
		range->notifier_seq = mmu_interval_read_begin(range->notifier);
		mmap_read_lock(m->mm);
		err = hmm_range_fault(range);
		mmap_read_unlock(m->mm);
		if (err == -EBUSY)
			continue;
		if (err)
			return err;
		if (!ctx->commit)
			return 0;
		delay = READ_ONCE(vgpu_fault_delay_us);
		if (delay)
			fsleep(delay);
		mutex_lock(&m->mutex);
		if (vgpu_inject_skip_seq_retry() ||
		    !mmu_interval_read_retry(range->notifier,
					     range->notifier_seq))
			break;
		mutex_unlock(&m->mutex);
	}
	err = ctx->commit(m, range, ctx);
	mutex_unlock(&m->mutex);
	return err;
}

/* Pages per snapshot deadline when faulting a window in. */
#define VGPU_PREFAULT_PAGES	64

/*
 * Faults [start, end) in with @flags, VGPU_PREFAULT_PAGES at a time, each
 * step with a deadline of its own (as test_hmm.c's dmirror_fault() does):
 * faults that cause invalidations of their own (COW after fork, THP splits)
 * restart hmm_range_fault() after every batch, and over a whole window of
 * such progress one deadline can run out. Called with an mm reference.
 */
static int vgpu_prefault(struct vgpu_mirror *m, unsigned long start,
			 unsigned long end, unsigned long flags)
{
	unsigned long pfns[VGPU_PREFAULT_PAGES];
	struct hmm_range range = {
		.hmm_pfns = pfns,
		.default_flags = flags,
	};
	struct vgpu_snapshot_ctx ctx = {};
	unsigned long addr;
	int err;

	for (addr = start; addr < end; addr = range.end) {
		range.start = addr;
		range.end = min(addr + (VGPU_PREFAULT_PAGES << PAGE_SHIFT), end);
		ctx.deadline = vgpu_snapshot_deadline();
		err = vgpu_snapshot(m, &range, &ctx);
		if (err)
			return err;
	}
	return 0;
}

/* What vgpu_map_commit() sends: a MAP, maybe answering a fault. */
struct vgpu_map_args {
	struct vgpu_req *req;	/* NULL after the MAP was abandoned */
	u64 fault_id;
	bool fault_reply;
};

/* Sends the snapshot in @range as one MAP and waits for it, under m->mutex. */
static int vgpu_map_commit(struct vgpu_mirror *m, struct hmm_range *range,
			   struct vgpu_snapshot_ctx *ctx)
{
	struct vgpu_map_args *args = ctx->arg;
	struct vgpu_req *req = args->req;
	unsigned long npages = (range->end - range->start) >> PAGE_SHIFT;
	struct vgpu_map_entry *entries = req->data;
	unsigned long i;
	int err;

	lockdep_assert_held(&m->mutex);
	for (i = 0; i < npages; i++) {
		unsigned long pfn = range->hmm_pfns[i];
		u64 e;

		if (!(pfn & HMM_PFN_VALID) || (pfn & HMM_PFN_ERROR))
			continue;
		e = page_to_phys(hmm_pfn_to_page(pfn)) | VGPU_MAP_VALID;
		if (pfn & HMM_PFN_WRITE)
			e |= VGPU_MAP_WRITE;
		entries[i].gpa_flags = cpu_to_le64(e);
	}
	req->cmd.opcode = cpu_to_le32(VGPU_CMD_MAP);
	req->cmd.pasid = cpu_to_le32(m->pasid);
	req->cmd.start = cpu_to_le64(range->start);
	req->cmd.length = cpu_to_le64((u64)npages << PAGE_SHIFT);
	if (args->fault_reply) {
		req->cmd.arg0 = cpu_to_le64(args->fault_id);
		req->cmd.arg1 = cpu_to_le64(ctx->retries);
		req->cmd.flags = cpu_to_le32(VGPU_MAP_F_FAULT_REPLY);
	}
	err = vgpu_cmd_sync(m->vdev, req);
	if (err == -ETIMEDOUT)
		args->req = NULL;	/* abandoned: the queue frees it */
	return err;
}

/**
 * vgpu_map_window() - snapshot a window and send it as one MAP
 * @m: the bound mirror
 * @start: start of the window, page aligned
 * @end: its end, page aligned; at most max_map_pages pages
 * @flags: what every page asks for: HMM_PFN_REQ_FAULT, HMM_PFN_REQ_WRITE or 0
 * @addr: a page that asks for @addr_flags on top (ignored if outside)
 * @addr_flags: HMM_PFN_REQ_* for @addr
 * @fault_id: the fault the MAP answers, if @fault_reply
 * @fault_reply: whether the MAP answers @fault_id (and reports how many
 *		 snapshots were spoiled before one held)
 *
 * Pages that need nothing and are absent stay unmapped (holes). With
 * HMM_PFN_REQ_FAULT in @flags the window is faulted in first, 64 pages at a
 * time, each step with a deadline of its own. The MAP goes out under
 * m->mutex after mmu_interval_read_retry() (vgpu_snapshot()), so an
 * invalidation either precedes the snapshot or follows the MAP.
 *
 * Context: process context; must not hold the mirror mutex (allocates).
 * Return: 0 once the device accepted the MAP, -EINVAL for a bad window,
 * -ENOMEM, -ESRCH if the mm is gone, or an error of vgpu_snapshot() or of
 * the MAP.
 */
int vgpu_map_window(struct vgpu_mirror *m, unsigned long start,
		    unsigned long end, unsigned long flags, unsigned long addr,
		    unsigned long addr_flags, u64 fault_id, bool fault_reply)
{
	struct vgpu_dev *vd = m->vdev;
	struct mm_struct *mm = m->mm;
	unsigned long npages = (end - start) >> PAGE_SHIFT;
	struct vgpu_map_args args = {
		.fault_id = fault_id,
		.fault_reply = fault_reply,
	};
	struct vgpu_snapshot_ctx ctx = {
		.fault_addr = addr,
		.fault_flags = addr_flags,
		.commit = vgpu_map_commit,
		.arg = &args,
	};
	struct hmm_range range = {
		.start = start,
		.end = end,
		.default_flags = flags,
	};
	unsigned long *pfns;
	int err;

	if (start >= end || npages > vd->max_map_pages)
		return -EINVAL;
	pfns = kcalloc(npages, sizeof(*pfns), GFP_KERNEL);
	/* Allocate before taking m->mutex: reclaim may call vgpu_invalidate. */
	args.req = vgpu_req_alloc(npages * sizeof(struct vgpu_map_entry),
				  false, GFP_KERNEL);
	if (!pfns || !args.req) {
		err = -ENOMEM;
		goto out_free;
	}
	range.hmm_pfns = pfns;

	if (!mmget_not_zero(mm)) {
		err = -ESRCH;
		goto out_free;
	}
	/* Faulting every page: fault them in first, in steps. */
	if (flags & HMM_PFN_REQ_FAULT) {
		err = vgpu_prefault(m, start, end, flags);
		if (err)
			goto out_mmput;
	}
	ctx.deadline = vgpu_snapshot_deadline();
	err = vgpu_snapshot(m, &range, &ctx);

out_mmput:
	mmput(mm);
out_free:
	vgpu_req_free(args.req);
	kfree(pfns);
	return err;
}

/*
 * Maps the fault-ahead window around @addr and answers fault @fault_id.
 * The faulting page must be present (writable for a write); the rest of the
 * window is a snapshot of what the CPU has mapped now, holes stay unmapped.
 */
static int vgpu_fault_map(struct vgpu_mirror *m, u64 fault_id,
			  unsigned long addr, bool write)
{
	unsigned long win = max_t(unsigned long,
				  m->vdev->fault_ahead & PAGE_MASK, PAGE_SIZE);
	unsigned long start = addr - addr % win;
	unsigned long end = min(start + win, m->user_end);

	return vgpu_map_window(m, start, end, 0, addr,
			       HMM_PFN_REQ_FAULT |
			       (write ? HMM_PFN_REQ_WRITE : 0),
			       fault_id, true);
}

/**
 * vgpu_fault_fail() - tell the device a fault cannot be served
 * @m: the bound mirror
 * @fault_id: the fault
 * @err: why (a negative errno; -ENODEV sends nothing)
 *
 * Context: may sleep; allocates, so not under the mirror mutex.
 */
void vgpu_fault_fail(struct vgpu_mirror *m, u64 fault_id, int err)
{
	struct vgpu_dev *vd = m->vdev;

	if (err == -ENODEV)
		return;
	err = vgpu_cmd_simple(vd, VGPU_CMD_FAULT_FAIL, m->pasid, fault_id,
			      -err, NULL);
	if (err && err != -ENODEV)
		dev_err_ratelimited(&vd->vdev->dev,
				    "pasid %u: FAULT_FAIL %llu: %d\n",
				    m->pasid, fault_id, err);
}

/**
 * vgpu_serve_fault() - answer one device fault of a VGPU_IOC_JOB job
 * @m: the bound mirror
 * @f: the fault record
 * @ctx: unused (&vgpu_job_run.serve's context)
 *
 * Maps the fault-ahead window around the faulting page (which must be
 * present, and writable for a write) with the fault reply, or sends
 * FAULT_FAIL with the errno.
 */
void vgpu_serve_fault(struct vgpu_mirror *m, const struct vgpu_fault *f,
		      void *ctx)
{
	struct vgpu_dev *vd = m->vdev;
	u64 fault_id = le64_to_cpu(f->fault_id);
	u64 addr = le64_to_cpu(f->address) & PAGE_MASK;
	bool write = le32_to_cpu(f->flags) & VGPU_FAULT_F_WRITE;
	int err;

	if (addr >= m->user_end)
		err = -EFAULT;
	else
		err = vgpu_fault_map(m, fault_id, addr, write);
	if (!err)
		return;
	dev_dbg(&vd->vdev->dev, "pasid %u: fault %llu at %#llx%s: %d\n",
		m->pasid, fault_id, addr, write ? " (write)" : "", err);
	vgpu_fault_fail(m, fault_id, err);
}

static bool vgpu_job_ready(struct vgpu_req *req, struct vgpu_job_wait *job)
{
	return completion_done(&req->done) || !list_empty_careful(&job->faults);
}

static int vgpu_job_check(const struct vgpu_mirror *m,
			  const struct vgpu_job *uj)
{
	u64 end;

	switch (uj->op) {
	case VGPU_JOB_FILL:
	case VGPU_JOB_CHECKSUM:
	case VGPU_JOB_COPY:
		break;
	default:
		return -EINVAL;
	}
	if (!uj->length || uj->length > VGPU_MAX_JOB_BYTES ||
	    !PAGE_ALIGNED(uj->start) || !PAGE_ALIGNED(uj->length))
		return -EINVAL;
	if (check_add_overflow(uj->start, uj->length, &end) ||
	    end > m->user_end)
		return -EINVAL;
	if (uj->op == VGPU_JOB_COPY &&
	    (check_add_overflow(uj->arg, uj->length, &end) ||
	     end > m->user_end))
		return -EINVAL;
	return 0;
}

/**
 * vgpu_run_job() - run one job on a mirror and serve its faults
 * @m: the bound mirror
 * @run: the job, and where its answer goes
 *
 * Submits JOB (with run->dma as its payload, if any), then serves the job's
 * faults here, in the caller's context, with run->serve until the device
 * completes it. The timeout (timeout_ms) counts from the last fault.
 *
 * Context: process context (any process holding the file: the snapshots
 * take their own reference on m->mm).
 * Return: 0 when the device answered (its status in run->status, also for a
 * failed job); -ENOMEM; an error of vgpu_submit(); -ENODEV or -EIO when the
 * device went away or answered short; or -ETIMEDOUT (no progress for
 * timeout_ms) and -EINTR (fatal signal), which set run->abandoned: the
 * device may still use the job's DMA pages.
 */
int vgpu_run_job(struct vgpu_mirror *m, struct vgpu_job_run *run)
{
	struct vgpu_dev *vd = m->vdev;
	unsigned long t = msecs_to_jiffies(vgpu_timeout_ms);
	size_t dma_len = run->dma_pages * sizeof(__le64);
	struct vgpu_job_wait job;
	struct vgpu_fault_buf *fb;
	struct vgpu_req *req;
	long left;
	int err;

	req = vgpu_req_alloc(dma_len, false, GFP_KERNEL);
	if (!req)
		return -ENOMEM;
	if (dma_len)
		memcpy(req->data, run->dma, dma_len);
	job.pasid = m->pasid;
	vgpu_job_register(vd, &job);
	req->wq = &job.wq;
	req->cmd.opcode = cpu_to_le32(VGPU_CMD_JOB);
	req->cmd.pasid = cpu_to_le32(m->pasid);
	req->cmd.start = cpu_to_le64(run->start);
	req->cmd.length = cpu_to_le64(run->length);
	req->cmd.arg0 = cpu_to_le64(run->arg);
	req->cmd.arg1 = cpu_to_le64(job.id);
	req->cmd.flags = cpu_to_le32(run->op);
	err = vgpu_submit(vd, req);
	if (err)
		goto out;

	/* The timeout counts from the last sign of progress. */
	for (;;) {
		while ((fb = vgpu_job_next_fault(vd, &job))) {
			run->serve(m, &fb->f, run->ctx);
			vgpu_fault_repost(vd, fb);
		}
		/* Not completion_done(): job.wq must outlive the wake_up. */
		if (vgpu_req_completed(vd, req))
			break;
		left = wait_event_killable_timeout(job.wq,
						   vgpu_job_ready(req, &job),
						   t);
		if (left > 0)
			continue;
		if (!vgpu_abandon(vd, req))
			continue;	/* completed meanwhile */
		req = NULL;
		run->abandoned = true;
		err = left ? -EINTR : -ETIMEDOUT;
		if (!left)
			dev_err_ratelimited(&vd->vdev->dev,
					    "pasid %u: job %llu made no progress for %u ms\n",
					    m->pasid, job.id, vgpu_timeout_ms);
		goto out;
	}

	err = vgpu_req_result(req);
	if (!err || req->used_len >= sizeof(req->resp)) {
		run->status = le32_to_cpu(req->resp.status);
		run->value0 = le64_to_cpu(req->resp.value0);
		run->faults = le64_to_cpu(req->resp.value1);
		err = 0;
	}
out:
	vgpu_job_unregister(vd, &job);
	vgpu_req_free(req);
	return err;
}

/**
 * vgpu_mirror_job() - VGPU_IOC_JOB: a job on the caller's own address space
 * @m: the mirror of the file
 * @uj: the job, copied in; status, result and faults are filled in
 *
 * Return: 0 when the device answered, -EINVAL before bind or for a bad job,
 * -EPERM from another mm, or an error of vgpu_run_job().
 */
int vgpu_mirror_job(struct vgpu_mirror *m, struct vgpu_job *uj)
{
	struct vgpu_job_run run = {
		.op = uj->op,
		.start = uj->start,
		.length = uj->length,
		.arg = uj->arg,
		.serve = vgpu_serve_fault,
	};
	int err;

	/* Pairs with smp_store_release() in vgpu_mirror_bind(). */
	if (!smp_load_acquire(&m->bound))
		return -EINVAL;
	if (current->mm != m->mm)
		return -EPERM;
	err = vgpu_job_check(m, uj);
	if (err)
		return err;
	err = vgpu_run_job(m, &run);
	if (err)
		return err;
	uj->status = run.status;
	uj->result = run.value0;
	uj->faults = run.faults;
	return 0;
}
