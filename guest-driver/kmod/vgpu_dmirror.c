// SPDX-License-Identifier: GPL-2.0
/*
 * dmirror-compatible devices: /dev/hmm_dmirror0 and /dev/hmm_dmirror1 speak
 * the ioctls of the kernel's HMM test driver (lib/test_hmm_uapi.h of 6.1,
 * taken from the kernel source as it is, not redefined here), so that the
 * kernel's own selftest tools/testing/selftests/vm/hmm-tests.c runs against
 * the virtual GPU. Both are backed by the first vgpu device.
 *
 * Each open mirrors the opener's mm on a PASID of its own (the mirror of
 * vgpu_mm.c, with the module's default policy). READ and WRITE are device
 * jobs that copy between the mirrored range and a bounce buffer of driver
 * pages (COPY_TO_DMA / COPY_FROM_DMA): the range goes through the device's
 * ATC and page table, so faults, invalidations and the coherence oracle see
 * every page, and the CPU only copies the bounce buffer from or to the
 * caller's cmd.ptr, as test_hmm.c does.
 *
 * Faults are served the way test_hmm.c's dmirror_fault() serves a missing
 * entry: the whole rest of the command's range, [fault address, end), is
 * faulted in with hmm_range_fault() and mapped, and cmd.faults counts these
 * services, so a command on a range nothing invalidates takes exactly one.
 *
 * SNAPSHOT reports what hmm_range_fault() sees without faulting, in
 * dmirror's encoding, like dmirror_snapshot(). EXCLUSIVE needs
 * make_device_exclusive_range() and the migration ioctls need
 * DEVICE_PRIVATE memory; the Debian 6.1 kernels have neither (the symbol is
 * not exported without CONFIG_DEVICE_PRIVATE), so they fail with
 * -EOPNOTSUPP.
 */
#include <linux/fs.h>
#include <linux/hmm.h>
#include <linux/lockdep.h>
#include <linux/mm.h>
#include <linux/pgtable.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>
#include <linux/uaccess.h>

/* README.md: HMM_UAPI_DIR is the kernel source's lib/ (or a copy of it). */
#if !__has_include("test_hmm_uapi.h")
#error "test_hmm_uapi.h not found: build with HMM_UAPI_DIR=<dir of lib/test_hmm_uapi.h>"
#endif
#include "test_hmm_uapi.h"

#include "vgpu.h"

/* Largest READ, WRITE or SNAPSHOT in pages (the bounce buffer is whole). */
#define VGPU_DMIRROR_MAX_PAGES	(64UL << 10)

/* How the faults of one READ or WRITE are served and counted. */
struct vgpu_dmirror_ctx {
	unsigned long start;
	unsigned long end;
	bool write;
	/* Fault services so far: cmd.faults. */
	u64 services;
	/*
	 * The range the last service mapped and the notifier sequence from
	 * before it: a fault in that range with no invalidation since is
	 * another record of the batch that service answered (fault_batch > 1).
	 */
	bool mapped;
	unsigned long mapped_start;
	unsigned long mapped_seq;
};

/* End of the MAP window that starts at @addr: windows are aligned to their
 * size when it is a power of two, so a 2 MiB page is one window (one leaf).
 */
static unsigned long vgpu_window_end(unsigned long addr, unsigned long size)
{
	if (is_power_of_2(size))
		return round_down(addr, size) + size;
	return addr + size;
}

/*
 * Faults in and maps [addr, c->end) and answers fault @fault_id. The
 * window holding @addr goes last, with the fault reply: the job resumes
 * only when the whole rest of the range is mapped.
 */
static int vgpu_dmirror_service(struct vgpu_mirror *m,
				struct vgpu_dmirror_ctx *c, u64 fault_id,
				unsigned long addr)
{
	unsigned long size = (unsigned long)m->vdev->max_map_pages << PAGE_SHIFT;
	unsigned long flags = HMM_PFN_REQ_FAULT |
			      (c->write ? HMM_PFN_REQ_WRITE : 0);
	unsigned long first_end = min(vgpu_window_end(addr, size), c->end);
	unsigned long start, end;
	int err;

	for (start = first_end; start < c->end; start = end) {
		end = min(vgpu_window_end(start, size), c->end);
		err = vgpu_map_window(m, start, end, flags, 0, 0, 0, false);
		if (err)
			return err;
	}
	return vgpu_map_window(m, addr, first_end, flags, 0, 0, fault_id, true);
}

static void vgpu_dmirror_serve(struct vgpu_mirror *m,
			       const struct vgpu_fault *f, void *arg)
{
	struct vgpu_dmirror_ctx *c = arg;
	u64 fault_id = le64_to_cpu(f->fault_id);
	unsigned long addr = le64_to_cpu(f->address) & PAGE_MASK;
	unsigned long seq;
	int err;

	if (c->mapped && addr >= c->mapped_start && addr < c->end &&
	    !mmu_interval_read_retry(&m->notifier, c->mapped_seq)) {
		/* A later record of the batch just served: map it, no count. */
		vgpu_serve_fault(m, f, NULL);
		return;
	}
	c->mapped = false;
	if (addr < c->start || addr >= c->end) {
		/* The device faulted outside the command's range. */
		vgpu_fault_fail(m, fault_id, -EFAULT);
		return;
	}
	seq = mmu_interval_read_begin(&m->notifier);
	err = vgpu_dmirror_service(m, c, fault_id, addr);
	if (err) {
		dev_dbg(&m->vdev->vdev->dev,
			"pasid %u: dmirror fault at %#lx%s: %d\n", m->pasid,
			addr, c->write ? " (write)" : "", err);
		vgpu_fault_fail(m, fault_id, err);
		return;
	}
	c->services++;
	c->mapped = true;
	c->mapped_start = addr;
	c->mapped_seq = seq;
}

/* The errno of a job the device ended with @run->status. */
static int vgpu_dmirror_job_errno(const struct vgpu_job_run *run)
{
	if (run->status != VGPU_S_FAULT)
		return vgpu_status_errno(run->status);
	/* value0: the errno of the FAULT_FAIL (0 when the PASID went away). */
	if (run->value0 && run->value0 < MAX_ERRNO)
		return -(int)run->value0;
	return -EFAULT;
}

static void vgpu_dmirror_free_pages(struct vgpu_mirror *m, struct page **pages,
				    unsigned long npages, bool device_owned)
{
	unsigned long i;

	if (device_owned) {
		/* An abandoned job may still write them: never reuse them. */
		dev_warn_ratelimited(&m->vdev->vdev->dev,
				     "pasid %u: a DMA job was abandoned, %lu bounce pages leaked\n",
				     m->pasid, npages);
	} else {
		for (i = 0; i < npages && pages[i]; i++)
			__free_page(pages[i]);
	}
	kvfree(pages);
}

/* READ (@write false) and WRITE: device jobs between the range and pages. */
static int vgpu_dmirror_rw(struct vgpu_mirror *m, struct hmm_dmirror_cmd *cmd,
			   bool write)
{
	unsigned long npages = cmd->npages;
	unsigned long batch = m->vdev->max_map_pages;
	char __user *uptr = u64_to_user_ptr(cmd->ptr);
	struct vgpu_dmirror_ctx c = {
		.start = cmd->addr,
		.end = cmd->addr + (npages << PAGE_SHIFT),
		.write = write,
	};
	bool device_owned = false;
	struct page **pages;
	unsigned long i, done, n;
	__le64 *dma;
	int err = 0;

	pages = kvcalloc(npages, sizeof(*pages), GFP_KERNEL);
	dma = kcalloc(batch, sizeof(*dma), GFP_KERNEL);
	if (!pages || !dma) {
		kvfree(pages);
		kfree(dma);
		return -ENOMEM;
	}
	for (i = 0; i < npages; i++) {
		pages[i] = alloc_page(GFP_KERNEL);
		if (!pages[i]) {
			err = -ENOMEM;
			goto out;
		}
		if (write && copy_from_user(page_address(pages[i]),
					    uptr + (i << PAGE_SHIFT),
					    PAGE_SIZE)) {
			err = -EFAULT;
			goto out;
		}
	}

	for (done = 0; done < npages; done += n) {
		struct vgpu_job_run run = {
			.op = write ? VGPU_JOB_COPY_FROM_DMA :
				      VGPU_JOB_COPY_TO_DMA,
			.start = c.start + (done << PAGE_SHIFT),
			.dma = dma,
			.serve = vgpu_dmirror_serve,
			.ctx = &c,
		};

		n = min(npages - done, batch);
		for (i = 0; i < n; i++)
			dma[i] = cpu_to_le64(page_to_phys(pages[done + i]));
		run.length = n << PAGE_SHIFT;
		run.dma_pages = n;
		err = vgpu_run_job(m, &run);
		if (err) {
			device_owned = run.abandoned;
			goto out;
		}
		err = vgpu_dmirror_job_errno(&run);
		if (err)
			goto out;
	}

	if (!write) {
		for (i = 0; i < npages; i++) {
			if (copy_to_user(uptr + (i << PAGE_SHIFT),
					 page_address(pages[i]), PAGE_SIZE)) {
				err = -EFAULT;
				goto out;
			}
		}
	}
	cmd->cpages = npages;
	cmd->faults = c.services;
out:
	kfree(dma);
	vgpu_dmirror_free_pages(m, pages, npages, device_owned);
	return err;
}

/* dmirror's encoding of one hmm_range_fault() entry. */
static u8 vgpu_dmirror_prot(unsigned long entry)
{
	unsigned int shift;
	u8 perm;

	if (entry & HMM_PFN_ERROR)
		return HMM_DMIRROR_PROT_ERROR;
	if (!(entry & HMM_PFN_VALID))
		return HMM_DMIRROR_PROT_NONE;
	/* No device-private or -coherent pages exist on this kernel. */
	perm = is_zero_pfn(page_to_pfn(hmm_pfn_to_page(entry))) ?
		HMM_DMIRROR_PROT_ZERO : HMM_DMIRROR_PROT_NONE;
	perm |= (entry & HMM_PFN_WRITE) ? HMM_DMIRROR_PROT_WRITE :
					  HMM_DMIRROR_PROT_READ;
	shift = hmm_pfn_to_map_order(entry) + PAGE_SHIFT;
	if (shift == PMD_SHIFT)
		perm |= HMM_DMIRROR_PROT_PMD;
	else if (shift == PUD_SHIFT)
		perm |= HMM_DMIRROR_PROT_PUD;
	return perm;
}

/* Encodes the snapshot in @range into ctx->arg, under m->mutex. */
static int vgpu_dmirror_snapshot_commit(struct vgpu_mirror *m,
					struct hmm_range *range,
					struct vgpu_snapshot_ctx *ctx)
{
	unsigned long i, n = (range->end - range->start) >> PAGE_SHIFT;
	u8 *perm = ctx->arg;

	lockdep_assert_held(&m->mutex);
	for (i = 0; i < n; i++)
		perm[i] = vgpu_dmirror_prot(range->hmm_pfns[i]);
	return 0;
}

static int vgpu_dmirror_snapshot(struct vgpu_mirror *m,
				 struct hmm_dmirror_cmd *cmd)
{
	unsigned long batch = m->vdev->max_map_pages;
	unsigned long end = cmd->addr + (cmd->npages << PAGE_SHIFT);
	char __user *uptr = u64_to_user_ptr(cmd->ptr);
	struct vgpu_snapshot_ctx ctx = {
		.commit = vgpu_dmirror_snapshot_commit,
	};
	struct hmm_range range = {
		.default_flags = 0,
	};
	unsigned long addr, n;
	unsigned long *pfns;
	u8 *perm;
	int err = 0;

	pfns = kcalloc(batch, sizeof(*pfns), GFP_KERNEL);
	perm = kmalloc(batch, GFP_KERNEL);
	if (!pfns || !perm) {
		err = -ENOMEM;
		goto out_free;
	}
	range.hmm_pfns = pfns;
	ctx.arg = perm;
	if (!mmget_not_zero(m->mm)) {
		err = -EINVAL;
		goto out_free;
	}
	for (addr = cmd->addr; addr < end; addr = range.end) {
		range.start = addr;
		range.end = min(addr + (batch << PAGE_SHIFT), end);
		/* Under the mirror's notifier sequence, without faulting. */
		ctx.deadline = vgpu_snapshot_deadline();
		err = vgpu_snapshot(m, &range, &ctx);
		if (err)
			break;
		n = (range.end - range.start) >> PAGE_SHIFT;
		if (copy_to_user(uptr, perm, n)) {
			err = -EFAULT;
			break;
		}
		uptr += n;
		cmd->cpages += n;
	}
	mmput(m->mm);
out_free:
	kfree(perm);
	kfree(pfns);
	return err;
}

/* Checks a command's range as dmirror does, and against the mirror. */
static int vgpu_dmirror_check(const struct vgpu_mirror *m,
			      const struct hmm_dmirror_cmd *cmd)
{
	if (!PAGE_ALIGNED(cmd->addr) || !cmd->npages ||
	    cmd->npages > VGPU_DMIRROR_MAX_PAGES)
		return -EINVAL;
	/* npages is bounded, so the shift and the sum do not overflow. */
	if (cmd->addr >= m->user_end ||
	    cmd->npages > (m->user_end - cmd->addr) >> PAGE_SHIFT)
		return -EFAULT;
	return 0;
}

static long vgpu_dmirror_ioctl(struct file *file, unsigned int command,
			       unsigned long arg)
{
	struct vgpu_mirror *m = file->private_data;
	struct device *dev = &m->vdev->vdev->dev;
	void __user *uarg = (void __user *)arg;
	struct hmm_dmirror_cmd cmd;
	int err;

	switch (command) {
	case HMM_DMIRROR_READ:
	case HMM_DMIRROR_WRITE:
	case HMM_DMIRROR_SNAPSHOT:
		break;
	case HMM_DMIRROR_EXCLUSIVE:
	case HMM_DMIRROR_CHECK_EXCLUSIVE:
		dev_info_once(dev,
			      "hmm_dmirror: EXCLUSIVE needs make_device_exclusive_range(), which this kernel does not have (CONFIG_DEVICE_PRIVATE is not set): -EOPNOTSUPP\n");
		return -EOPNOTSUPP;
	case HMM_DMIRROR_MIGRATE_TO_DEV:
	case HMM_DMIRROR_MIGRATE_TO_SYS:
	case HMM_DMIRROR_RELEASE:
		dev_info_once(dev,
			      "hmm_dmirror: migration needs device-private memory, which this kernel does not have (CONFIG_DEVICE_PRIVATE is not set): -EOPNOTSUPP\n");
		return -EOPNOTSUPP;
	default:
		return -ENOTTY;
	}

	if (copy_from_user(&cmd, uarg, sizeof(cmd)))
		return -EFAULT;
	err = vgpu_dmirror_check(m, &cmd);
	if (err)
		return err;
	cmd.cpages = 0;
	cmd.faults = 0;

	switch (command) {
	case HMM_DMIRROR_READ:
		err = vgpu_dmirror_rw(m, &cmd, false);
		break;
	case HMM_DMIRROR_WRITE:
		err = vgpu_dmirror_rw(m, &cmd, true);
		break;
	default:
		err = vgpu_dmirror_snapshot(m, &cmd);
		break;
	}
	if (err)
		return err;
	if (copy_to_user(uarg, &cmd, sizeof(cmd)))
		return -EFAULT;
	return 0;
}

/* As dmirror: the vma gets zeroed pages of its own (VM_MIXEDMAP). */
static int vgpu_dmirror_mmap(struct file *file, struct vm_area_struct *vma)
{
	unsigned long addr;
	struct page *page;
	int err;

	for (addr = vma->vm_start; addr < vma->vm_end; addr += PAGE_SIZE) {
		page = alloc_page(GFP_KERNEL | __GFP_ZERO);
		if (!page)
			return -ENOMEM;
		err = vm_insert_page(vma, addr, page);
		/* The mapping holds its own reference now. */
		put_page(page);
		if (err)
			return err;
	}
	return 0;
}

static int vgpu_dmirror_open(struct inode *inode, struct file *file)
{
	/* misc_open() holds misc_mtx: remove() cannot run concurrently. */
	struct vgpu_dmirror_node *node =
		container_of(file->private_data, struct vgpu_dmirror_node, misc);
	struct vgpu_bind bind = { .policy = VGPU_POLICY_DEFAULT };
	struct vgpu_mirror *m;
	int err;

	m = vgpu_mirror_alloc(node->vd);
	if (!m)
		return -ENOMEM;
	err = vgpu_mirror_bind(m, &bind);
	if (err) {
		vgpu_mirror_free(m);
		return err;
	}
	file->private_data = m;
	return 0;
}

static int vgpu_dmirror_release(struct inode *inode, struct file *file)
{
	vgpu_mirror_free(file->private_data);
	return 0;
}

static const struct file_operations vgpu_dmirror_fops = {
	.owner = THIS_MODULE,
	.open = vgpu_dmirror_open,
	.release = vgpu_dmirror_release,
	.mmap = vgpu_dmirror_mmap,
	.unlocked_ioctl = vgpu_dmirror_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.llseek = default_llseek,
};

/**
 * vgpu_dmirror_register() - register /dev/hmm_dmirror0 and 1 on a device
 * @vd: the device (the first one)
 *
 * A node that fails to register is logged, not fatal.
 */
void vgpu_dmirror_register(struct vgpu_dev *vd)
{
	int i, err;

	for (i = 0; i < VGPU_DMIRROR_UNITS; i++) {
		struct vgpu_dmirror_node *node = &vd->dmirror[i];

		node->vd = vd;
		snprintf(node->name, sizeof(node->name), "hmm_dmirror%d", i);
		node->misc.minor = MISC_DYNAMIC_MINOR;
		node->misc.name = node->name;
		node->misc.fops = &vgpu_dmirror_fops;
		node->misc.parent = &vd->vdev->dev;
		node->misc.mode = 0666;
		err = misc_register(&node->misc);
		if (err) {
			dev_warn(&vd->vdev->dev, "/dev/%s: %d\n", node->name,
				 err);
			continue;
		}
		node->registered = true;
	}
	dev_info(&vd->vdev->dev,
		 "/dev/hmm_dmirror0..%d: dmirror ioctls on /dev/%s\n",
		 VGPU_DMIRROR_UNITS - 1, vd->name);
}

/**
 * vgpu_dmirror_unregister() - remove the dmirror nodes of a device
 * @vd: the device
 */
void vgpu_dmirror_unregister(struct vgpu_dev *vd)
{
	int i;

	for (i = 0; i < VGPU_DMIRROR_UNITS; i++) {
		if (vd->dmirror[i].registered)
			misc_deregister(&vd->dmirror[i].misc);
		vd->dmirror[i].registered = false;
	}
}
