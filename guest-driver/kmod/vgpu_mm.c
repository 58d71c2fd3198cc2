// SPDX-License-Identifier: GPL-2.0
/*
 * A mirror of one process's address space in the virtual GPU: its lifetime
 * (one per open file of /dev/vgpuN or /dev/hmm_dmirrorN), binding and
 * unbinding, and the interval notifier that turns the kernel's mmu-notifier
 * events into device invalidations by the policy.
 *
 * A bound mirror owns one PASID and one mmu_interval_notifier over the whole
 * user address space [0, user_end). The invalidate callback takes the
 * mirror mutex, bumps the sequence, sends INVALIDATE and returns only when
 * the device completed it, so the device never holds a translation the CPU
 * page table no longer has; device faults are answered in vgpu_fault.c
 * under the same mutex and sequence.
 */
#include <linux/idr.h>
#include <linux/lockdep.h>
#include <linux/mm.h>
#include <linux/mmu_notifier.h>
#include <linux/sched.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>

#include "vgpu.h"

/**
 * vgpu_policy_name() - the name of a policy, as the module parameter spells it
 * @policy: VGPU_POLICY_NAIVE or VGPU_POLICY_EVENT_AWARE
 *
 * Return: "naive", "event-aware", or "?" for anything else.
 */
const char *vgpu_policy_name(int policy)
{
	switch (policy) {
	case VGPU_POLICY_NAIVE:
		return "naive";
	case VGPU_POLICY_EVENT_AWARE:
		return "event-aware";
	default:
		return "?";
	}
}

/* What the vma allows now, as INVALIDATE's arg0. */
static u32 vgpu_vma_prot(const struct vm_area_struct *vma)
{
	u32 prot = 0;

	if (!vma)
		return 0;
	if (vma->vm_flags & VM_READ)
		prot |= VGPU_PROT_READ;
	if (vma->vm_flags & VM_WRITE)
		prot |= VGPU_PROT_WRITE;
	return prot;
}

/*
 * The policy: whether to tell the device at all, over which range, and with
 * which flags. Returns false when the event is skipped.
 *
 * naive:       every event is an unmap of its range (drop, release tracking);
 *              what drivers did before notifier events existed.
 * event-aware: UNMAP drops and releases tracking; CLEAR drops;
 *              PROTECTION_VMA that leaves the vma readable but not writable,
 *              PROTECTION_PAGE (fork, page_mkclean) and SOFT_DIRTY (it only
 *              write-protects; clear_refs passes no vma) downgrade;
 *              MIGRATE/EXCLUSIVE caused by this driver are skipped;
 *              RELEASE drops the whole address space, and the invalidations
 *              that follow it while the mm is torn down (exit_mmap's UNMAPs,
 *              when mm_users is already 0) are skipped: RELEASE left nothing
 *              to drop. GPU drivers skip these the same way, which is what
 *              makes a lost RELEASE a stale device mapping.
 */
static bool vgpu_plan(const struct vgpu_mirror *m,
		      const struct mmu_notifier_range *range,
		      unsigned long *start, unsigned long *end, u32 *flags)
{
	const struct vm_area_struct *vma = range->vma;
	bool owner = range->owner && range->owner == m->vdev;
	u32 prot = vgpu_vma_prot(vma);

	*start = range->start & PAGE_MASK;
	/*
	 * Clip before aligning: clear_refs (SOFT_DIRTY) passes end = ULONG_MAX,
	 * which PAGE_ALIGN() would wrap to 0 and turn into an empty range.
	 */
	*end = range->end >= m->user_end ? m->user_end : PAGE_ALIGN(range->end);
	*flags = VGPU_INV_F_BLOCKABLE;
	if (owner)
		*flags |= VGPU_INV_F_OWNER_MATCH;

	if (m->policy == VGPU_POLICY_NAIVE) {
		*flags |= VGPU_INV_F_RELEASE_TRACKING;
		return *start < *end;
	}

	/* Monotonic: once 0 it stays 0, and RELEASE came first. */
	if (range->event != MMU_NOTIFY_RELEASE &&
	    !atomic_read(&range->mm->mm_users))
		return false;

	switch (range->event) {
	case MMU_NOTIFY_UNMAP:
		*flags |= VGPU_INV_F_RELEASE_TRACKING;
		break;
	case MMU_NOTIFY_CLEAR:
		break;
	case MMU_NOTIFY_PROTECTION_VMA:
		if ((prot & VGPU_PROT_READ) && !(prot & VGPU_PROT_WRITE))
			*flags |= VGPU_INV_F_DOWNGRADE;
		break;
	case MMU_NOTIFY_PROTECTION_PAGE:
		*flags |= VGPU_INV_F_DOWNGRADE;
		break;
	case MMU_NOTIFY_SOFT_DIRTY:
		if (!vma || (prot & VGPU_PROT_READ))
			*flags |= VGPU_INV_F_DOWNGRADE;
		break;
	case MMU_NOTIFY_RELEASE:
		*start = 0;
		*end = m->user_end;
		*flags |= VGPU_INV_F_RELEASE_TRACKING;
		break;
	case MMU_NOTIFY_MIGRATE:
	case MMU_NOTIFY_EXCLUSIVE:
		if (owner)
			return false;
		break;
	default:
		break;
	}
	return *start < *end;
}

static bool vgpu_invalidate(struct mmu_interval_notifier *sub,
			    const struct mmu_notifier_range *range,
			    unsigned long cur_seq)
{
	struct vgpu_mirror *m = container_of(sub, struct vgpu_mirror, notifier);
	u32 prot = vgpu_vma_prot(range->vma);
	unsigned long start, end;
	u32 flags;

	if (vgpu_inject_skip_event(range->event))
		return true;

	/* Waiting for the device needs to sleep. */
	if (!mmu_notifier_range_blockable(range))
		return false;

	mutex_lock(&m->mutex);
	mmu_interval_set_seq(sub, cur_seq);
	if (READ_ONCE(m->vdev->removed) ||
	    !vgpu_plan(m, range, &start, &end, &flags))
		goto out;

	end = vgpu_inject_truncate(start, end);
	if (!vgpu_inject_send_invalidate(m, range->event, prot, start, end,
					 flags))
		vgpu_send_invalidate(m, range->event, prot, start, end, flags);
out:
	mutex_unlock(&m->mutex);
	return true;
}

static const struct mmu_interval_notifier_ops vgpu_notifier_ops = {
	.invalidate = vgpu_invalidate,
};

/*
 * Gives @pasid back after the BIND or UNBIND that ended its use returned
 * @err. A command that timed out may still be carried out by the device, and
 * a BIND of a PASID it still holds fails (BAD_PASID), so such a PASID is
 * never reused.
 */
static void vgpu_pasid_put(struct vgpu_dev *vd, u32 pasid, int err)
{
	if (err == -ETIMEDOUT) {
		dev_warn(&vd->vdev->dev,
			 "pasid %u retired: the device did not answer in time\n",
			 pasid);
		return;
	}
	ida_free(&vd->pasids, pasid);
}

/*
 * The notifier takes m->mutex, and the kernel calls it from reclaim; the
 * fence takes vd->stop_lock beneath it. Tell lockdep once, at bind, as
 * drm_gpusvm_init() does: then an allocation that can reclaim under either
 * lock is a lockdep report on the first run, not a deadlock under memory
 * pressure.
 */
static void vgpu_mirror_prime_reclaim(struct vgpu_mirror *m)
{
	if (!IS_ENABLED(CONFIG_LOCKDEP))
		return;
	fs_reclaim_acquire(GFP_KERNEL);
	might_lock(&m->mutex);
	might_lock(&m->vdev->stop_lock);
	fs_reclaim_release(GFP_KERNEL);
}

/**
 * vgpu_mirror_bind() - mirror the calling process's address space
 * @m: the mirror
 * @bind: in: the policy (VGPU_POLICY_DEFAULT for the module's); out: the
 *	  PASID
 *
 * Allocates a PASID and the INVALIDATE request, sends BIND with the
 * page-table root and inserts the interval notifier over [0, user_end):
 * nothing is mapped before this returns. Primes lockdep's reclaim tracking
 * for the mirror mutex (DOC: Locking).
 *
 * Context: process context; takes bind_lock, may take mmap_lock.
 * Return: 0, -EINVAL (bad policy, no mm), -EBUSY (already bound, or no PASID
 * left), -ENOMEM, or the error of BIND or of the notifier's insertion.
 */
int vgpu_mirror_bind(struct vgpu_mirror *m, struct vgpu_bind *bind)
{
	struct vgpu_dev *vd = m->vdev;
	struct mm_struct *mm = current->mm;
	int policy = bind->policy;
	int pasid, err, err2;

	if (policy == VGPU_POLICY_DEFAULT)
		policy = READ_ONCE(vgpu_default_policy);
	if (policy != VGPU_POLICY_NAIVE && policy != VGPU_POLICY_EVENT_AWARE)
		return -EINVAL;
	if (!mm)
		return -EINVAL;

	vgpu_mirror_prime_reclaim(m);
	mutex_lock(&m->bind_lock);
	if (m->bound) {
		err = -EBUSY;
		goto out_unlock;
	}
	m->inv_req = vgpu_req_alloc(0, false, GFP_KERNEL);
	if (!m->inv_req) {
		err = -ENOMEM;
		goto out_unlock;
	}
	pasid = ida_alloc_range(&vd->pasids, 1, vd->max_pasids, GFP_KERNEL);
	if (pasid < 0) {
		err = pasid == -ENOSPC ? -EBUSY : pasid;
		goto out_free_req;
	}
	m->pasid = pasid;
	m->policy = policy;
	m->mm = mm;
	m->user_end = min_t(u64, mm->task_size, VGPU_VA_LIMIT) & PAGE_MASK;

	/* arg0: the page-table root, for the device's coherence oracle. */
	err = vgpu_cmd_simple(vd, VGPU_CMD_BIND, pasid, __pa(mm->pgd), 0, NULL);
	if (err)
		goto out_free_pasid;

	/* Nothing is mapped before this returns: faults need the binding. */
	err = mmu_interval_notifier_insert(&m->notifier, mm, 0, m->user_end,
					   &vgpu_notifier_ops);
	if (err)
		goto out_unbind;

	/* Publishes pasid, policy, mm and user_end to vgpu_mirror_job(). */
	smp_store_release(&m->bound, true);
	bind->pasid = pasid;
	mutex_unlock(&m->bind_lock);
	dev_dbg(&vd->vdev->dev, "pid %d bound as pasid %d (%s)\n",
		task_pid_nr(current), pasid, vgpu_policy_name(policy));
	return 0;

out_unbind:
	err2 = vgpu_cmd_simple(vd, VGPU_CMD_UNBIND, pasid, 0, 0, NULL);
	vgpu_pasid_put(vd, pasid, err2);
	goto out_clear_mm;
out_free_pasid:
	vgpu_pasid_put(vd, pasid, err);
out_clear_mm:
	m->mm = NULL;
out_free_req:
	vgpu_req_free(m->inv_req);
	m->inv_req = NULL;
out_unlock:
	mutex_unlock(&m->bind_lock);
	return err;
}

/* close() or process exit: no more notifier calls, then UNBIND. */
static void vgpu_mirror_unbind(struct vgpu_mirror *m)
{
	struct vgpu_dev *vd = m->vdev;
	int err;

	mutex_lock(&m->bind_lock);
	if (!m->bound) {
		mutex_unlock(&m->bind_lock);
		return;
	}
	/* Waits for running callbacks; drops the notifier's mm reference. */
	mmu_interval_notifier_remove(&m->notifier);
	vgpu_inject_mirror_unbind(m);
	err = 0;
	if (!READ_ONCE(vd->removed)) {
		err = vgpu_cmd_simple(vd, VGPU_CMD_UNBIND, m->pasid, 0, 0,
				      NULL);
		if (err && err != -ENODEV)
			dev_warn(&vd->vdev->dev, "UNBIND pasid %u: %d\n",
				 m->pasid, err);
	}
	vgpu_pasid_put(vd, m->pasid, err);
	vgpu_req_free(m->inv_req);
	m->inv_req = NULL;
	m->mm = NULL;
	m->bound = false;
	mutex_unlock(&m->bind_lock);
}

/**
 * vgpu_mirror_alloc() - a new, unbound mirror on a device
 * @vd: the device; the mirror holds a reference to it
 *
 * Return: the mirror, or NULL without memory.
 */
struct vgpu_mirror *vgpu_mirror_alloc(struct vgpu_dev *vd)
{
	struct vgpu_mirror *m;

	m = kzalloc(sizeof(*m), GFP_KERNEL);
	if (!m)
		return NULL;
	kref_get(&vd->ref);
	m->vdev = vd;
	mutex_init(&m->bind_lock);
	mutex_init(&m->mutex);
	vgpu_inject_mirror_init(m);
	return m;
}

/**
 * vgpu_mirror_free() - unbind (if bound) and free a mirror
 * @m: the mirror
 *
 * Unbinding removes the notifier (waiting for running callbacks), sends
 * what an injection held back, sends UNBIND unless the device is gone and
 * gives the PASID back (or retires it after a timeout). Then the mirror's
 * device reference is dropped.
 *
 * Context: process context; takes bind_lock.
 */
void vgpu_mirror_free(struct vgpu_mirror *m)
{
	struct vgpu_dev *vd = m->vdev;

	vgpu_mirror_unbind(m);
	mutex_destroy(&m->mutex);
	mutex_destroy(&m->bind_lock);
	kfree(m);
	vgpu_dev_put(vd);
}
