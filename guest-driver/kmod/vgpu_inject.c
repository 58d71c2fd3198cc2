// SPDX-License-Identifier: GPL-2.0
/*
 * Bug injections (module parameter inject=, parsed in vgpu_main.c and fixed
 * at load): each one re-creates a classic mirroring mistake so that the
 * device's coherence oracle can be shown to catch it. The production paths
 * only call the hooks below, in the spirit of the kernel's should_fail():
 * with inject=none every hook answers "no injection" and the driver runs
 * its correct path.
 *
 *   skip-event:<EVENT>  vgpu_inject_skip_event(): the notifier ignores the
 *                       event entirely (no sequence bump, no INVALIDATE)
 *   thp-truncate        vgpu_inject_truncate(): an INVALIDATE covers only
 *                       the first 4 KiB of its range
 *   late-invalidate     vgpu_inject_send_invalidate(): the INVALIDATE goes
 *                       out from a work item after the callback returned
 *   early-complete      vgpu_inject_send_invalidate(): the callback returns
 *                       before the device answered the INVALIDATE
 *   no-seq-retry        vgpu_inject_skip_seq_retry(): a snapshot an
 *                       invalidation raced is used anyway
 */
#include <linux/jiffies.h>
#include <linux/lockdep.h>
#include <linux/mmu_notifier.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/string.h>
#include <linux/workqueue.h>

#include "vgpu.h"

/**
 * vgpu_inject_skip_event() - whether the notifier ignores an event
 * @event: the notifier range's event
 *
 * inject=skip-event:<EVENT>: the callback returns true at once for that
 * event, so neither the sequence nor the device hears of it.
 *
 * Return: true if the callback must ignore @event entirely.
 */
bool vgpu_inject_skip_event(enum mmu_notifier_event event)
{
	return vgpu_inject == VGPU_INJECT_SKIP_EVENT &&
	       (int)event == vgpu_inject_event;
}

/**
 * vgpu_inject_truncate() - the end of the range an INVALIDATE covers
 * @start: start of the range the policy chose
 * @end: its end
 *
 * inject=thp-truncate, the huge-page mistake: one small page per range.
 *
 * Return: @end, or with thp-truncate at most @start + PAGE_SIZE.
 */
unsigned long vgpu_inject_truncate(unsigned long start, unsigned long end)
{
	if (vgpu_inject == VGPU_INJECT_THP_TRUNCATE)
		return min(end, start + PAGE_SIZE);
	return end;
}

/*
 * inject=early-complete: sends INVALIDATE on a request of its own and
 * returns without waiting for the device's answer. The request is abandoned
 * at once, so the queue frees it whenever the device returns it; the
 * preallocated m->inv_req is never left in flight. Returns false (send it
 * the correct way) when no request can be had without sleeping.
 */
static bool vgpu_send_invalidate_early(struct vgpu_mirror *m, int event,
				       u32 prot, unsigned long start,
				       unsigned long end, u32 flags)
{
	struct vgpu_dev *vd = m->vdev;
	struct vgpu_req *req;
	int err;

	req = vgpu_req_alloc(0, false, GFP_NOWAIT | __GFP_NOWARN);
	if (!req)
		return false;
	vgpu_fill_invalidate(req, m, event, prot, start, end, flags);
	err = vgpu_submit(vd, req);
	if (err) {
		vgpu_req_free(req);
		if (err != -ENODEV)
			dev_err_ratelimited(&vd->vdev->dev,
					    "pasid %u: INVALIDATE event %d [%#lx, %#lx) failed: %d\n",
					    m->pasid, event, start, end, err);
		return true;
	}
	if (!vgpu_abandon(vd, req))
		vgpu_req_free(req);	/* already answered */
	return true;
}

/* Delay before held-back invalidations go out: long enough that the CPU
 * page-table change the callback announced has happened.
 */
#define VGPU_LATE_DELAY_MS	5

/*
 * inject=late-invalidate: queues the invalidation for the late work and
 * returns at once. When the queue is full everything is invalidated later
 * instead.
 */
static void vgpu_defer_invalidate(struct vgpu_mirror *m, int event, u32 prot,
				  unsigned long start, unsigned long end,
				  u32 flags)
{
	struct vgpu_late *late = &m->late;

	spin_lock(&late->lock);
	if (late->n < VGPU_LATE_MAX) {
		late->inv[late->n++] = (struct vgpu_late_inv){
			.start = start,
			.end = end,
			.flags = flags,
			.prot = prot,
			.event = event,
		};
	} else {
		late->overflow = true;
	}
	spin_unlock(&late->lock);
	queue_delayed_work(system_wq, &late->work,
			   msecs_to_jiffies(VGPU_LATE_DELAY_MS));
}

/**
 * vgpu_inject_send_invalidate() - send an INVALIDATE the injected way
 * @m: the mirror, with m->mutex held (the notifier callback)
 * @event: the notifier event
 * @prot: what the vma allows now (VGPU_PROT_*)
 * @start: start of the range to invalidate
 * @end: its end
 * @flags: VGPU_INV_F_*
 *
 * inject=late-invalidate queues the invalidation for a work item that sends
 * it VGPU_LATE_DELAY_MS later; inject=early-complete sends it and does not
 * wait for the device's answer.
 *
 * Return: true if an injection took the invalidation over, false if the
 * caller must send it with vgpu_send_invalidate().
 */
bool vgpu_inject_send_invalidate(struct vgpu_mirror *m, int event, u32 prot,
				 unsigned long start, unsigned long end,
				 u32 flags)
{
	lockdep_assert_held(&m->mutex);
	switch (vgpu_inject) {
	case VGPU_INJECT_LATE_INVALIDATE:
		vgpu_defer_invalidate(m, event, prot, start, end, flags);
		return true;
	case VGPU_INJECT_EARLY_COMPLETE:
		return vgpu_send_invalidate_early(m, event, prot, start, end,
						  flags);
	default:
		return false;
	}
}

/**
 * vgpu_inject_skip_seq_retry() - whether a raced snapshot is used anyway
 *
 * inject=no-seq-retry: vgpu_snapshot() commits its hmm_range_fault()
 * snapshot without asking mmu_interval_read_retry().
 *
 * Return: true if vgpu_snapshot() must not check the notifier sequence.
 */
bool vgpu_inject_skip_seq_retry(void)
{
	return vgpu_inject == VGPU_INJECT_NO_SEQ_RETRY;
}

/*
 * Sends the held-back invalidations. vgpu_inject_mirror_unbind() flushes
 * this work after the notifier is removed, so m, its pasid and user_end are
 * valid here; a work item never runs concurrently with itself, so the batch
 * is ours.
 */
static void vgpu_late_work(struct work_struct *work)
{
	struct vgpu_mirror *m = container_of(to_delayed_work(work),
					     struct vgpu_mirror, late.work);
	struct vgpu_late *late = &m->late;
	unsigned int i, n;
	bool overflow;

	spin_lock(&late->lock);
	n = late->n;
	memcpy(late->batch, late->inv, n * sizeof(late->inv[0]));
	overflow = late->overflow;
	late->n = 0;
	late->overflow = false;
	spin_unlock(&late->lock);

	mutex_lock(&m->mutex);
	if (READ_ONCE(m->vdev->removed)) {
		/* Nothing to tell a device that is gone. */
	} else if (overflow) {
		vgpu_send_invalidate(m, MMU_NOTIFY_CLEAR, 0, 0, m->user_end,
				     VGPU_INV_F_BLOCKABLE);
	} else {
		for (i = 0; i < n; i++) {
			const struct vgpu_late_inv *l = &late->batch[i];

			vgpu_send_invalidate(m, l->event, l->prot, l->start,
					     l->end, l->flags);
		}
	}
	mutex_unlock(&m->mutex);
}

/**
 * vgpu_inject_mirror_init() - set up a new mirror's injection state
 * @m: the mirror, not yet bound
 */
void vgpu_inject_mirror_init(struct vgpu_mirror *m)
{
	spin_lock_init(&m->late.lock);
	INIT_DELAYED_WORK(&m->late.work, vgpu_late_work);
}

/**
 * vgpu_inject_mirror_unbind() - finish what an injection held back
 * @m: the mirror being unbound, its notifier already removed
 *
 * No callback can queue more now: sends what late-invalidate held back, so
 * that its work never outlives the binding.
 */
void vgpu_inject_mirror_unbind(struct vgpu_mirror *m)
{
	flush_delayed_work(&m->late.work);
}
