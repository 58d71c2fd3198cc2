// SPDX-License-Identifier: GPL-2.0
/*
 * vgpu_mirror: the guest driver of the project's virtual GPU, a virtio
 * device (id 63) with its own IOMMU page tables and translation cache that
 * mirrors process address spaces (device-model/SPEC.md).
 *
 * Each device gets a character device /dev/vgpuN (vgpu_uapi.h): a process
 * opens it, binds its mm (VGPU_IOC_BIND), submits jobs on its own virtual
 * addresses (VGPU_IOC_JOB) and reads the device counters
 * (VGPU_IOC_COUNTERS), asks the device to audit its translations against the
 * CPU page table (VGPU_IOC_AUDIT) and moves pages (VGPU_IOC_MIGRATE). Closing
 * the file unbinds. The first device also gets /dev/hmm_dmirror0 and 1, the
 * kernel HMM test driver's interface on the same mirrors (vgpu_dmirror.c).
 *
 * Module parameters:
 *   policy=naive|event-aware  how notifier events become device
 *                             invalidations (default event-aware; a bind may
 *                             override it)
 *   timeout_ms=N              how long to wait for the device (default 5000)
 *   inject=NAME               a deliberate bug, for testing the device's
 *                             coherence oracle (default none; load only):
 *                             skip-event:<EVENT>, thp-truncate,
 *                             late-invalidate, no-seq-retry, early-complete
 */
#include <linux/fs.h>
#include <linux/idr.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/virtio.h>
#include <linux/virtio_config.h>

#include "vgpu.h"

int vgpu_default_policy = VGPU_POLICY_EVENT_AWARE;
unsigned int vgpu_timeout_ms = 5000;

static int vgpu_policy_set(const char *val, const struct kernel_param *kp)
{
	if (sysfs_streq(val, "naive"))
		WRITE_ONCE(vgpu_default_policy, VGPU_POLICY_NAIVE);
	else if (sysfs_streq(val, "event-aware"))
		WRITE_ONCE(vgpu_default_policy, VGPU_POLICY_EVENT_AWARE);
	else
		return -EINVAL;
	return 0;
}

static int vgpu_policy_get(char *buf, const struct kernel_param *kp)
{
	return scnprintf(buf, PAGE_SIZE, "%s\n",
			 vgpu_policy_name(READ_ONCE(vgpu_default_policy)));
}

static const struct kernel_param_ops vgpu_policy_ops = {
	.set = vgpu_policy_set,
	.get = vgpu_policy_get,
};

module_param_cb(policy, &vgpu_policy_ops, NULL, 0644);
MODULE_PARM_DESC(policy,
		 "invalidation policy: naive or event-aware (default)");

static int vgpu_timeout_set(const char *val, const struct kernel_param *kp)
{
	unsigned int ms;
	int err = kstrtouint(val, 0, &ms);

	if (err)
		return err;
	if (ms < 10 || ms > 600000)
		return -ERANGE;
	WRITE_ONCE(vgpu_timeout_ms, ms);
	return 0;
}

static const struct kernel_param_ops vgpu_timeout_ops = {
	.set = vgpu_timeout_set,
	.get = param_get_uint,
};

module_param_cb(timeout_ms, &vgpu_timeout_ops, &vgpu_timeout_ms, 0644);
MODULE_PARM_DESC(timeout_ms,
		 "milliseconds to wait for the device (10..600000, default 5000)");

unsigned int vgpu_fault_delay_us;

static int vgpu_fault_delay_set(const char *val, const struct kernel_param *kp)
{
	unsigned int us;
	int err = kstrtouint(val, 0, &us);

	if (err)
		return err;
	if (us > VGPU_FAULT_DELAY_MAX_US)
		return -ERANGE;
	WRITE_ONCE(vgpu_fault_delay_us, us);
	return 0;
}

static const struct kernel_param_ops vgpu_fault_delay_ops = {
	.set = vgpu_fault_delay_set,
	.get = param_get_uint,
};

module_param_cb(fault_delay_us, &vgpu_fault_delay_ops, &vgpu_fault_delay_us,
		0644);
MODULE_PARM_DESC(fault_delay_us,
		 "test aid: microseconds between a fault's CPU snapshot and its device update, to widen the race the sequence check guards (0..100000, default 0)");

int vgpu_inject = VGPU_INJECT_NONE;
int vgpu_inject_event = -1;

/* Names of enum vgpu_event, as skip-event:<EVENT> spells them. */
static const char *const vgpu_event_names[VGPU_EV_COUNT] = {
	[VGPU_EV_UNMAP] = "UNMAP",
	[VGPU_EV_CLEAR] = "CLEAR",
	[VGPU_EV_PROTECTION_VMA] = "PROTECTION_VMA",
	[VGPU_EV_PROTECTION_PAGE] = "PROTECTION_PAGE",
	[VGPU_EV_SOFT_DIRTY] = "SOFT_DIRTY",
	[VGPU_EV_RELEASE] = "RELEASE",
	[VGPU_EV_MIGRATE] = "MIGRATE",
	[VGPU_EV_EXCLUSIVE] = "EXCLUSIVE",
};

/* The injections that take no argument. */
static const struct {
	const char *name;
	int inject;
} vgpu_injections[] = {
	{ "none", VGPU_INJECT_NONE },
	{ "thp-truncate", VGPU_INJECT_THP_TRUNCATE },
	{ "late-invalidate", VGPU_INJECT_LATE_INVALIDATE },
	{ "no-seq-retry", VGPU_INJECT_NO_SEQ_RETRY },
	{ "early-complete", VGPU_INJECT_EARLY_COMPLETE },
};

#define VGPU_SKIP_EVENT "skip-event:"

static int vgpu_inject_set(const char *val, const struct kernel_param *kp)
{
	const char *ev;
	int i;

	for (i = 0; i < ARRAY_SIZE(vgpu_injections); i++) {
		if (sysfs_streq(val, vgpu_injections[i].name)) {
			vgpu_inject = vgpu_injections[i].inject;
			vgpu_inject_event = -1;
			return 0;
		}
	}
	if (strncmp(val, VGPU_SKIP_EVENT, strlen(VGPU_SKIP_EVENT)))
		return -EINVAL;
	ev = val + strlen(VGPU_SKIP_EVENT);
	for (i = 0; i < VGPU_EV_COUNT; i++) {
		if (sysfs_streq(ev, vgpu_event_names[i])) {
			vgpu_inject = VGPU_INJECT_SKIP_EVENT;
			vgpu_inject_event = i;
			return 0;
		}
	}
	return -EINVAL;
}

/* Writes the injection's name and a newline into @buf of @size bytes. */
static int vgpu_inject_print(char *buf, size_t size)
{
	int i;

	if (vgpu_inject == VGPU_INJECT_SKIP_EVENT &&
	    vgpu_inject_event >= 0 && vgpu_inject_event < VGPU_EV_COUNT)
		return scnprintf(buf, size, VGPU_SKIP_EVENT "%s\n",
				 vgpu_event_names[vgpu_inject_event]);
	for (i = 0; i < ARRAY_SIZE(vgpu_injections); i++)
		if (vgpu_injections[i].inject == vgpu_inject)
			return scnprintf(buf, size, "%s\n",
					 vgpu_injections[i].name);
	return scnprintf(buf, size, "?\n");
}

static int vgpu_inject_get(char *buf, const struct kernel_param *kp)
{
	return vgpu_inject_print(buf, PAGE_SIZE);
}

static const struct kernel_param_ops vgpu_inject_ops = {
	.set = vgpu_inject_set,
	.get = vgpu_inject_get,
};

/* Read-only after load: the deferred work of late-invalidate relies on it. */
module_param_cb(inject, &vgpu_inject_ops, NULL, 0444);
MODULE_PARM_DESC(inject,
		 "deliberate bug: none (default), skip-event:<EVENT>, thp-truncate, late-invalidate, no-seq-retry, early-complete");

static DEFINE_IDA(vgpu_index_ida);

/* ------------------------------------------------------------------------ */
/* /dev/vgpuN */

static int vgpu_open(struct inode *inode, struct file *file)
{
	/* misc_open() holds misc_mtx: remove() cannot run concurrently. */
	struct vgpu_dev *vd = container_of(file->private_data,
					   struct vgpu_dev, misc);
	struct vgpu_mirror *m = vgpu_mirror_alloc(vd);

	if (!m)
		return -ENOMEM;
	file->private_data = m;
	return 0;
}

static int vgpu_release(struct inode *inode, struct file *file)
{
	vgpu_mirror_free(file->private_data);
	return 0;
}

static long vgpu_ioctl_bind(struct vgpu_mirror *m, void __user *uarg)
{
	struct vgpu_bind bind;
	int err;

	if (copy_from_user(&bind, uarg, sizeof(bind)))
		return -EFAULT;
	bind.pasid = 0;
	err = vgpu_mirror_bind(m, &bind);
	if (err)
		return err;
	if (copy_to_user(uarg, &bind, sizeof(bind)))
		return -EFAULT;	/* stays bound until close() */
	return 0;
}

static long vgpu_ioctl_job(struct vgpu_mirror *m, void __user *uarg)
{
	struct vgpu_job job;
	int err;

	if (copy_from_user(&job, uarg, sizeof(job)))
		return -EFAULT;
	job.status = 0;
	job.result = 0;
	job.faults = 0;
	err = vgpu_mirror_job(m, &job);
	if (err)
		return err;
	if (copy_to_user(uarg, &job, sizeof(job)))
		return -EFAULT;
	return 0;
}

static long vgpu_ioctl_counters(struct vgpu_mirror *m, void __user *uarg)
{
	struct vgpu_dev *vd = m->vdev;
	struct vgpu_req *req;
	int err;

	req = vgpu_req_alloc(sizeof(struct vgpu_counters), true, GFP_KERNEL);
	if (!req)
		return -ENOMEM;
	req->cmd.opcode = cpu_to_le32(VGPU_CMD_COUNTERS);
	err = vgpu_cmd_sync(vd, req);
	if (err == -ETIMEDOUT)
		return err;	/* abandoned: the queue frees it */
	/* A short answer leaves the rest zero (req->data is zeroed). */
	if (!err && copy_to_user(uarg, req->data, req->data_len))
		err = -EFAULT;
	vgpu_req_free(req);
	return err;
}

static long vgpu_ioctl_migrate(struct vgpu_mirror *m, void __user *uarg)
{
	struct vgpu_migrate mig;
	int err;

	if (copy_from_user(&mig, uarg, sizeof(mig)))
		return -EFAULT;
	mig.migrated = 0;
	err = vgpu_mirror_migrate(m, &mig);
	if (err)
		return err;
	if (copy_to_user(uarg, &mig, sizeof(mig)))
		return -EFAULT;
	return 0;
}

/* AUDIT of the address space this file bound; -EINVAL before VGPU_IOC_BIND. */
static long vgpu_ioctl_audit(struct vgpu_mirror *m, void __user *uarg)
{
	struct vgpu_dev *vd = m->vdev;
	struct vgpu_audit audit = {};
	struct vgpu_req *req;
	int err;

	/* Pairs with smp_store_release() in vgpu_mirror_bind(). */
	if (!smp_load_acquire(&m->bound))
		return -EINVAL;
	req = vgpu_req_alloc(0, false, GFP_KERNEL);
	if (!req)
		return -ENOMEM;
	req->cmd.opcode = cpu_to_le32(VGPU_CMD_AUDIT);
	req->cmd.pasid = cpu_to_le32(m->pasid);
	err = vgpu_cmd_sync(vd, req);
	if (err == -ETIMEDOUT)
		return err;	/* abandoned: the queue frees it */
	if (!err) {
		audit.checked = le64_to_cpu(req->resp.value0);
		/* A device cannot find more disagreements than it checked. */
		audit.disagreements = min(le64_to_cpu(req->resp.value1),
					  audit.checked);
	}
	vgpu_req_free(req);
	if (err)
		return err;
	if (copy_to_user(uarg, &audit, sizeof(audit)))
		return -EFAULT;
	return 0;
}

static long vgpu_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	struct vgpu_mirror *m = file->private_data;
	void __user *uarg = (void __user *)arg;

	switch (cmd) {
	case VGPU_IOC_BIND:
		return vgpu_ioctl_bind(m, uarg);
	case VGPU_IOC_JOB:
		return vgpu_ioctl_job(m, uarg);
	case VGPU_IOC_COUNTERS:
		return vgpu_ioctl_counters(m, uarg);
	case VGPU_IOC_AUDIT:
		return vgpu_ioctl_audit(m, uarg);
	case VGPU_IOC_MIGRATE:
		return vgpu_ioctl_migrate(m, uarg);
	default:
		return -ENOTTY;
	}
}

static const struct file_operations vgpu_fops = {
	.owner = THIS_MODULE,
	.open = vgpu_open,
	.release = vgpu_release,
	.unlocked_ioctl = vgpu_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.llseek = noop_llseek,
};

/* ------------------------------------------------------------------------ */
/* virtio */

/* Reads and clamps the config space: every value the device gives is bounded. */
static int vgpu_read_config(struct vgpu_dev *vd)
{
	struct virtio_device *vdev = vd->vdev;
	u32 max_pasids, max_map_pages, fault_ahead;

	virtio_cread_le(vdev, struct vgpu_config, max_pasids, &max_pasids);
	virtio_cread_le(vdev, struct vgpu_config, max_map_pages,
			&max_map_pages);
	virtio_cread_le(vdev, struct vgpu_config, fault_ahead, &fault_ahead);
	if (!max_pasids) {
		dev_err(&vdev->dev, "device offers no PASIDs\n");
		return -ENODEV;
	}
	vd->max_pasids = min(max_pasids, VGPU_MAX_PASIDS);
	vd->max_map_pages = clamp(max_map_pages, 1U, VGPU_MAX_MAP_PAGES);
	vd->fault_ahead = min_t(u64, fault_ahead,
				(u64)vd->max_map_pages * PAGE_SIZE);
	return 0;
}

static int vgpu_probe(struct virtio_device *vdev)
{
	static const char * const names[] = { "command", "fault" };
	vq_callback_t *callbacks[] = { vgpu_cmd_done, vgpu_fault_done };
	struct virtqueue *vqs[2];
	struct vgpu_dev *vd;
	int err;

	vd = kzalloc(sizeof(*vd), GFP_KERNEL);
	if (!vd)
		return -ENOMEM;
	kref_init(&vd->ref);
	vd->vdev = vdev;
	get_device(&vdev->dev);
	spin_lock_init(&vd->cmd_lock);
	mutex_init(&vd->stop_lock);
	init_waitqueue_head(&vd->cmd_space);
	spin_lock_init(&vd->fault_lock);
	spin_lock_init(&vd->job_lock);
	INIT_LIST_HEAD(&vd->jobs);
	INIT_LIST_HEAD(&vd->orphans);
	INIT_WORK(&vd->orphan_work, vgpu_orphan_work);
	atomic64_set(&vd->next_job_id, 0);
	ida_init(&vd->pasids);
	vdev->priv = vd;

	err = vgpu_read_config(vd);
	if (err)
		goto err_put;
	vd->fault_bufs = kcalloc(VGPU_FAULT_BUFS, sizeof(*vd->fault_bufs),
				 GFP_KERNEL);
	if (!vd->fault_bufs) {
		err = -ENOMEM;
		goto err_put;
	}

	err = virtio_find_vqs(vdev, 2, vqs, callbacks, names, NULL);
	if (err)
		goto err_put;
	vd->cmd_vq = vqs[VGPU_QUEUE_COMMAND];
	vd->fault_vq = vqs[VGPU_QUEUE_FAULT];

	virtio_device_ready(vdev);
	err = vgpu_fault_post_all(vd);
	if (err)
		goto err_reset;

	vd->index = ida_alloc(&vgpu_index_ida, GFP_KERNEL);
	if (vd->index < 0) {
		err = vd->index;
		goto err_reset;
	}
	snprintf(vd->name, sizeof(vd->name), "vgpu%d", vd->index);
	vd->misc.minor = MISC_DYNAMIC_MINOR;
	vd->misc.name = vd->name;
	vd->misc.fops = &vgpu_fops;
	vd->misc.parent = &vdev->dev;
	vd->misc.mode = 0666;
	err = misc_register(&vd->misc);
	if (err)
		goto err_index;

	dev_info(&vdev->dev,
		 "/dev/%s: %u PASIDs, %u pages per map, fault-ahead %u bytes, policy %s\n",
		 vd->name, vd->max_pasids, vd->max_map_pages, vd->fault_ahead,
		 vgpu_policy_name(READ_ONCE(vgpu_default_policy)));
	/* The kernel's HMM selftest opens /dev/hmm_dmirror0 and 1. */
	if (vd->index == 0)
		vgpu_dmirror_register(vd);
	return 0;

err_index:
	ida_free(&vgpu_index_ida, vd->index);
err_reset:
	vgpu_queues_shutdown(vd);
err_put:
	vdev->priv = NULL;
	vgpu_dev_put(vd);
	return err;
}

/*
 * The device goes away, possibly with processes still bound: no new opens,
 * every waiter gets -ENODEV, notifiers stop talking to the device. The
 * files keep their reference until they are closed.
 */
static void vgpu_remove(struct virtio_device *vdev)
{
	struct vgpu_dev *vd = vdev->priv;

	vgpu_dmirror_unregister(vd);
	misc_deregister(&vd->misc);
	vgpu_queues_shutdown(vd);
	ida_free(&vgpu_index_ida, vd->index);
	vdev->priv = NULL;
	dev_info(&vdev->dev, "/dev/%s removed\n", vd->name);
	vgpu_dev_put(vd);
}

static const struct virtio_device_id vgpu_id_table[] = {
	{ VIRTIO_ID_VGPU, VIRTIO_DEV_ANY_ID },
	{ 0 },
};
MODULE_DEVICE_TABLE(virtio, vgpu_id_table);

static struct virtio_driver vgpu_driver = {
	.driver.name = KBUILD_MODNAME,
	.driver.owner = THIS_MODULE,
	.id_table = vgpu_id_table,
	.probe = vgpu_probe,
	.remove = vgpu_remove,
};

static int __init vgpu_init(void)
{
	int err = register_virtio_driver(&vgpu_driver);

	if (err)
		return err;
	pr_info(VGPU_NAME ": loaded, policy %s\n",
		vgpu_policy_name(READ_ONCE(vgpu_default_policy)));
	if (vgpu_inject != VGPU_INJECT_NONE) {
		char name[40];

		vgpu_inject_print(name, sizeof(name));
		pr_warn(VGPU_NAME ": bug injection on: %s", name);
	}
	return 0;
}

static void __exit vgpu_exit(void)
{
	unregister_virtio_driver(&vgpu_driver);
	ida_destroy(&vgpu_index_ida);
}

module_init(vgpu_init);
module_exit(vgpu_exit);

MODULE_DESCRIPTION("Virtual GPU address-space mirror (virtio, HMM, mmu notifiers)");
MODULE_LICENSE("GPL");
