// SPDX-License-Identifier: GPL-2.0
/*
 * VGPU_IOC_MIGRATE: move a range of the caller's anonymous pages to new
 * frames with migrate_vma, the path a GPU driver uses to move pages into its
 * own memory. The guest kernel has no DEVICE_PRIVATE, so the destination is
 * ordinary system RAM; what matters here is that the kernel unmaps the source
 * pages under MMU_NOTIFY_MIGRATE, and the device must follow to the new
 * frames like for any other event.
 *
 * pgmap_owner stays NULL: a driver tags its own migrations so that its
 * notifier can skip them, which only pays when it also remaps the device to
 * the destination itself. This one does not, so the device learns of the
 * move through the notifier, as it would of a migration anyone else started.
 */
#include <linux/highmem.h>
#include <linux/migrate.h>
#include <linux/mm.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>

#include "vgpu.h"

/* Pages per migrate_vma call (bounds the pfn arrays). */
#define VGPU_MIGRATE_CHUNK	64

/*
 * Allocates and fills a destination for every source page migrate_vma
 * collected. Pages without a destination stay where they are.
 */
static void vgpu_migrate_copy(struct migrate_vma *args)
{
	unsigned long i, n = (args->end - args->start) >> PAGE_SHIFT;

	for (i = 0; i < n; i++) {
		struct page *spage = migrate_pfn_to_page(args->src[i]);
		struct page *dpage;

		args->dst[i] = 0;
		if (!spage || !(args->src[i] & MIGRATE_PFN_MIGRATE))
			continue;
		dpage = alloc_page(GFP_HIGHUSER_MOVABLE);
		if (!dpage)
			continue;
		lock_page(dpage);
		copy_highpage(dpage, spage);
		args->dst[i] = migrate_pfn(page_to_pfn(dpage));
		if (args->src[i] & MIGRATE_PFN_WRITE)
			args->dst[i] |= MIGRATE_PFN_WRITE;
	}
}

/* Pages migrate_vma_pages() moved: it clears MIGRATE on those it could not. */
static unsigned long vgpu_migrate_count(const struct migrate_vma *args)
{
	unsigned long i, n = (args->end - args->start) >> PAGE_SHIFT;
	unsigned long moved = 0;

	for (i = 0; i < n; i++)
		if (args->dst[i] && (args->src[i] & MIGRATE_PFN_MIGRATE))
			moved++;
	return moved;
}

/**
 * vgpu_mirror_migrate() - VGPU_IOC_MIGRATE: move pages with migrate_vma
 * @m: the mirror of the file
 * @mig: the range, copied in; migrated counts the pages moved
 *
 * Every page of the range must be in an anonymous vma; pages migrate_vma
 * cannot move stay where they are.
 *
 * Context: process context, in the mirrored mm; takes mmap_lock (read).
 * Return: 0, -EINVAL before bind or for a bad range, -EPERM from another mm,
 * -ENOMEM, or an error of migrate_vma_setup().
 */
int vgpu_mirror_migrate(struct vgpu_mirror *m, struct vgpu_migrate *mig)
{
	struct mm_struct *mm = current->mm;
	unsigned long addr, end, *src, *dst;
	int err = 0;

	/* Pairs with smp_store_release() in vgpu_mirror_bind(). */
	if (!smp_load_acquire(&m->bound))
		return -EINVAL;
	if (mm != m->mm)
		return -EPERM;
	if (!mig->length || !PAGE_ALIGNED(mig->start) ||
	    !PAGE_ALIGNED(mig->length) ||
	    check_add_overflow(mig->start, mig->length, &end) ||
	    end > m->user_end)
		return -EINVAL;

	src = kcalloc(VGPU_MIGRATE_CHUNK, sizeof(*src), GFP_KERNEL);
	dst = kcalloc(VGPU_MIGRATE_CHUNK, sizeof(*dst), GFP_KERNEL);
	if (!src || !dst) {
		err = -ENOMEM;
		goto out_free;
	}

	mmap_read_lock(mm);
	for (addr = mig->start; addr < end;) {
		struct vm_area_struct *vma = vma_lookup(mm, addr);
		struct migrate_vma args = {
			.src = src,
			.dst = dst,
			.start = addr,
			.flags = MIGRATE_VMA_SELECT_SYSTEM,
		};

		if (!vma || !vma_is_anonymous(vma)) {
			err = -EINVAL;
			break;
		}
		args.vma = vma;
		args.end = min3(end, vma->vm_end,
				addr + VGPU_MIGRATE_CHUNK * PAGE_SIZE);
		err = migrate_vma_setup(&args);
		if (err)
			break;
		if (args.cpages) {
			vgpu_migrate_copy(&args);
			migrate_vma_pages(&args);
			mig->migrated += vgpu_migrate_count(&args);
			migrate_vma_finalize(&args);
		}
		addr = args.end;
	}
	mmap_read_unlock(mm);

out_free:
	kfree(dst);
	kfree(src);
	return err;
}
