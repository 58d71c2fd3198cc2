// SPDX-License-Identifier: GPL-2.0
/*
 * The two virtqueues of the virtual GPU (device-model/SPEC.md).
 *
 * Command queue: every request is one chain
 *   [vgpu_cmd (R)] [MAP payload (R)] [vgpu_resp (W)] [COUNTERS data (W)]
 * and its token is the struct vgpu_req. The device may complete requests in
 * any order; the callback matches them by token and completes the waiter. A
 * waiter that gives up (timeout, signal) marks its request abandoned and the
 * callback frees it when the device finally returns it, so the device never
 * writes into freed memory.
 *
 * Fault queue: VGPU_FAULT_BUFS device-writable buffers stay posted. The
 * callback hands each written buffer to the job it names; the job's waiter
 * answers the fault in its own context and reposts the buffer. Faults of
 * unknown jobs are failed from a work item.
 */
#include <linux/errno.h>
#include <linux/idr.h>
#include <linux/jiffies.h>
#include <linux/lockdep.h>
#include <linux/scatterlist.h>
#include <linux/slab.h>
#include <linux/virtio.h>
#include <linux/virtio_config.h>

#include "vgpu.h"

int vgpu_status_errno(u32 status)
{
	switch (status) {
	case VGPU_S_OK:
		return 0;
	case VGPU_S_BAD_OPCODE:
		return -EOPNOTSUPP;
	case VGPU_S_BAD_PASID:
		return -ESRCH;
	case VGPU_S_BAD_RANGE:
	case VGPU_S_BAD_JOB:
		return -EINVAL;
	case VGPU_S_FAULT:
		return -EFAULT;
	case VGPU_S_BUSY:
		return -EBUSY;
	case VGPU_S_BAD_CHAIN:
	default:
		return -EIO;
	}
}

struct vgpu_req *vgpu_req_alloc(size_t data_len, bool data_in, gfp_t gfp)
{
	struct vgpu_req *req;

	req = kzalloc(sizeof(*req), gfp);
	if (!req)
		return NULL;
	if (data_len) {
		req->data = kzalloc(data_len, gfp);
		if (!req->data) {
			kfree(req);
			return NULL;
		}
		req->data_len = data_len;
		req->data_in = data_in;
	}
	init_completion(&req->done);
	return req;
}

void vgpu_req_free(struct vgpu_req *req)
{
	if (!req)
		return;
	kfree(req->data);
	kfree(req);
}

/* Makes a finished (not abandoned) request reusable. */
void vgpu_req_reset(struct vgpu_req *req)
{
	memset(&req->cmd, 0, sizeof(req->cmd));
	memset(&req->resp, 0, sizeof(req->resp));
	req->used_len = 0;
	req->err = 0;
	req->completed = false;
	req->abandoned = false;
	req->wq = NULL;
	reinit_completion(&req->done);
}

/* Ring space for @n descriptors, or the device is gone. */
static bool vgpu_cmd_space(struct vgpu_dev *vd, unsigned int n)
{
	unsigned long flags;
	bool ok;

	spin_lock_irqsave(&vd->cmd_lock, flags);
	ok = vd->removed || vd->cmd_vq->num_free >= n;
	spin_unlock_irqrestore(&vd->cmd_lock, flags);
	return ok;
}

/*
 * Puts @req on the command queue. Returns 0 (the queue owns the buffers
 * until the request completes or is abandoned), or an error with the request
 * untouched: -ENODEV (device gone), -EBUSY (no ring space for too long), -EIO.
 */
int vgpu_submit(struct vgpu_dev *vd, struct vgpu_req *req)
{
	struct scatterlist cmd_sg, resp_sg, data_sg, *sgs[4];
	unsigned int out = 0, in = 0;
	unsigned long flags;
	long left = msecs_to_jiffies(vgpu_timeout_ms);
	int err;

	sg_init_one(&cmd_sg, &req->cmd, sizeof(req->cmd));
	sgs[out++] = &cmd_sg;
	if (req->data && !req->data_in) {
		sg_init_one(&data_sg, req->data, req->data_len);
		sgs[out++] = &data_sg;
	}
	sg_init_one(&resp_sg, &req->resp, sizeof(req->resp));
	sgs[out + in++] = &resp_sg;
	if (req->data && req->data_in) {
		sg_init_one(&data_sg, req->data, req->data_len);
		sgs[out + in++] = &data_sg;
	}

	for (;;) {
		spin_lock_irqsave(&vd->cmd_lock, flags);
		if (vd->removed) {
			err = -ENODEV;
		} else if (virtqueue_is_broken(vd->cmd_vq)) {
			err = -EIO;
		} else {
			err = virtqueue_add_sgs(vd->cmd_vq, sgs, out, in, req,
						GFP_ATOMIC);
			if (!err)
				virtqueue_kick(vd->cmd_vq);
		}
		spin_unlock_irqrestore(&vd->cmd_lock, flags);
		if (err != -ENOSPC)
			return err;
		if (left <= 0)
			return -EBUSY;
		left = wait_event_timeout(vd->cmd_space,
					  vgpu_cmd_space(vd, out + in), left);
	}
}

/*
 * Gives up on a submitted request. Returns true if it is now abandoned (the
 * completion callback or the device removal frees it; the caller must not
 * touch it again), false if it completed meanwhile.
 */
bool vgpu_abandon(struct vgpu_dev *vd, struct vgpu_req *req)
{
	unsigned long flags;
	bool abandoned;

	spin_lock_irqsave(&vd->cmd_lock, flags);
	abandoned = !req->completed;
	if (abandoned)
		req->abandoned = true;
	spin_unlock_irqrestore(&vd->cmd_lock, flags);
	return abandoned;
}

/* The device's answer to a completed request, as an errno. */
int vgpu_req_result(struct vgpu_req *req)
{
	if (req->err)
		return req->err;
	if (req->used_len < sizeof(req->resp))
		return -EIO;
	return vgpu_status_errno(le32_to_cpu(req->resp.status));
}

/*
 * Waits for a submitted request. -ETIMEDOUT means the request was abandoned
 * and belongs to the queue now; for every other result the caller still owns
 * it.
 */
static int vgpu_wait(struct vgpu_dev *vd, struct vgpu_req *req)
{
	unsigned long t = msecs_to_jiffies(vgpu_timeout_ms);

	if (!wait_for_completion_timeout(&req->done, t) &&
	    vgpu_abandon(vd, req)) {
		dev_err_ratelimited(&vd->vdev->dev,
				    "command %u (pasid %u) timed out after %u ms\n",
				    le32_to_cpu(req->cmd.opcode),
				    le32_to_cpu(req->cmd.pasid), vgpu_timeout_ms);
		return -ETIMEDOUT;
	}
	return vgpu_req_result(req);
}

/* Submit and wait; the ownership rule of vgpu_wait() applies. */
int vgpu_cmd_sync(struct vgpu_dev *vd, struct vgpu_req *req)
{
	int err = vgpu_submit(vd, req);

	if (err)
		return err;
	return vgpu_wait(vd, req);
}

/* A command without payload; @value0 (if not NULL) receives resp.value0. */
int vgpu_cmd_simple(struct vgpu_dev *vd, u32 opcode, u32 pasid, u64 arg0,
		    u64 arg1, u64 *value0)
{
	struct vgpu_req *req;
	int err;

	req = vgpu_req_alloc(0, false, GFP_KERNEL);
	if (!req)
		return -ENOMEM;
	req->cmd.opcode = cpu_to_le32(opcode);
	req->cmd.pasid = cpu_to_le32(pasid);
	req->cmd.arg0 = cpu_to_le64(arg0);
	req->cmd.arg1 = cpu_to_le64(arg1);
	err = vgpu_cmd_sync(vd, req);
	if (err == -ETIMEDOUT)
		return err;
	if (!err && value0)
		*value0 = le64_to_cpu(req->resp.value0);
	vgpu_req_free(req);
	return err;
}

/*
 * Called with cmd_lock held. A waiter woken by complete() may free @req at
 * once, so nothing of it is read after that; the job's wait queue (on the
 * job's stack) stays valid because the job leaves only after seeing the
 * request completed under cmd_lock (vgpu_req_completed()), after this.
 */
static void vgpu_req_finish(struct vgpu_dev *vd, struct vgpu_req *req, u32 len,
			    int err)
{
	size_t max = sizeof(req->resp) + (req->data_in ? req->data_len : 0);
	wait_queue_head_t *wq = req->wq;

	lockdep_assert_held(&vd->cmd_lock);
	if (req->abandoned) {
		vgpu_req_free(req);
		return;
	}
	req->used_len = min_t(size_t, len, max);
	req->err = err;
	req->completed = true;
	complete(&req->done);
	if (wq)
		wake_up(wq);
}

/*
 * Whether @req completed, with the completing side done with it: unlike
 * completion_done(), true only after vgpu_req_finish() returned.
 */
bool vgpu_req_completed(struct vgpu_dev *vd, struct vgpu_req *req)
{
	unsigned long flags;
	bool done;

	spin_lock_irqsave(&vd->cmd_lock, flags);
	done = req->completed;
	spin_unlock_irqrestore(&vd->cmd_lock, flags);
	return done;
}

void vgpu_cmd_done(struct virtqueue *vq)
{
	struct vgpu_dev *vd = vq->vdev->priv;
	struct vgpu_req *req;
	unsigned long flags;
	unsigned int len;

	spin_lock_irqsave(&vd->cmd_lock, flags);
	do {
		virtqueue_disable_cb(vq);
		while ((req = virtqueue_get_buf(vq, &len)))
			vgpu_req_finish(vd, req, len, 0);
		if (unlikely(virtqueue_is_broken(vq)))
			break;
	} while (!virtqueue_enable_cb(vq));
	spin_unlock_irqrestore(&vd->cmd_lock, flags);
	wake_up(&vd->cmd_space);
}

/* ------------------------------------------------------------------------ */
/* Fault queue */

static int vgpu_fault_add(struct vgpu_dev *vd, struct vgpu_fault_buf *fb)
{
	struct scatterlist sg;

	lockdep_assert_held(&vd->fault_lock);
	memset(&fb->f, 0, sizeof(fb->f));
	sg_init_one(&sg, &fb->f, sizeof(fb->f));
	return virtqueue_add_inbuf(vd->fault_vq, &sg, 1, fb, GFP_ATOMIC);
}

/* Posts every fault buffer; called once the device is ready. */
int vgpu_fault_post_all(struct vgpu_dev *vd)
{
	unsigned long flags;
	int i, posted = 0, err = 0;

	spin_lock_irqsave(&vd->fault_lock, flags);
	for (i = 0; i < VGPU_FAULT_BUFS; i++) {
		err = vgpu_fault_add(vd, &vd->fault_bufs[i]);
		if (err)
			break;
		posted++;
	}
	if (posted)
		virtqueue_kick(vd->fault_vq);
	spin_unlock_irqrestore(&vd->fault_lock, flags);
	if (!posted)
		return err ? err : -ENOSPC;
	if (posted < VGPU_FAULT_BUFS)
		dev_warn(&vd->vdev->dev, "only %d of %d fault buffers posted\n",
			 posted, VGPU_FAULT_BUFS);
	return 0;
}

/* Gives a fault buffer back to the device. Any context. */
void vgpu_fault_repost(struct vgpu_dev *vd, struct vgpu_fault_buf *fb)
{
	unsigned long flags;

	spin_lock_irqsave(&vd->fault_lock, flags);
	if (!vd->removed && !vgpu_fault_add(vd, fb))
		virtqueue_kick(vd->fault_vq);
	spin_unlock_irqrestore(&vd->fault_lock, flags);
}

/* Hands a written fault buffer to its job, or to the orphan work. */
static void vgpu_fault_dispatch(struct vgpu_dev *vd, struct vgpu_fault_buf *fb)
{
	u64 job_id = le64_to_cpu(fb->f.job_id);
	u32 pasid = le32_to_cpu(fb->f.pasid);
	struct vgpu_job_wait *job;
	unsigned long flags;

	spin_lock_irqsave(&vd->job_lock, flags);
	list_for_each_entry(job, &vd->jobs, node) {
		if (job->id == job_id && job->pasid == pasid) {
			list_add_tail(&fb->node, &job->faults);
			wake_up(&job->wq);
			spin_unlock_irqrestore(&vd->job_lock, flags);
			return;
		}
	}
	list_add_tail(&fb->node, &vd->orphans);
	spin_unlock_irqrestore(&vd->job_lock, flags);
	schedule_work(&vd->orphan_work);
}

void vgpu_fault_done(struct virtqueue *vq)
{
	struct vgpu_dev *vd = vq->vdev->priv;
	struct vgpu_fault_buf *fb, *tmp;
	unsigned long flags;
	unsigned int len;
	LIST_HEAD(got);

	spin_lock_irqsave(&vd->fault_lock, flags);
	do {
		virtqueue_disable_cb(vq);
		while ((fb = virtqueue_get_buf(vq, &len))) {
			if (len < sizeof(fb->f) || !fb->f.fault_id) {
				/* Nothing to answer: give it straight back. */
				if (!vgpu_fault_add(vd, fb))
					virtqueue_kick(vq);
				continue;
			}
			list_add_tail(&fb->node, &got);
		}
		if (unlikely(virtqueue_is_broken(vq)))
			break;
	} while (!virtqueue_enable_cb(vq));
	spin_unlock_irqrestore(&vd->fault_lock, flags);

	list_for_each_entry_safe(fb, tmp, &got, node) {
		list_del(&fb->node);
		vgpu_fault_dispatch(vd, fb);
	}
}

/* Fails the faults nobody waits for, so their jobs end with FAULT. */
void vgpu_orphan_work(struct work_struct *work)
{
	struct vgpu_dev *vd = container_of(work, struct vgpu_dev, orphan_work);
	struct vgpu_fault_buf *fb;
	unsigned long flags;

	for (;;) {
		spin_lock_irqsave(&vd->job_lock, flags);
		fb = list_first_entry_or_null(&vd->orphans,
					      struct vgpu_fault_buf, node);
		if (fb)
			list_del(&fb->node);
		spin_unlock_irqrestore(&vd->job_lock, flags);
		if (!fb || READ_ONCE(vd->removed))
			return;
		dev_dbg(&vd->vdev->dev, "fault %llu of unknown job %llu\n",
			le64_to_cpu(fb->f.fault_id), le64_to_cpu(fb->f.job_id));
		vgpu_cmd_simple(vd, VGPU_CMD_FAULT_FAIL,
				le32_to_cpu(fb->f.pasid),
				le64_to_cpu(fb->f.fault_id), ESRCH, NULL);
		vgpu_fault_repost(vd, fb);
	}
}

void vgpu_job_register(struct vgpu_dev *vd, struct vgpu_job_wait *job)
{
	unsigned long flags;

	INIT_LIST_HEAD(&job->faults);
	init_waitqueue_head(&job->wq);
	job->id = atomic64_inc_return(&vd->next_job_id);
	spin_lock_irqsave(&vd->job_lock, flags);
	list_add_tail(&job->node, &vd->jobs);
	spin_unlock_irqrestore(&vd->job_lock, flags);
}

/* Faults still queued for the job go to the orphan work (FAULT_FAIL). */
void vgpu_job_unregister(struct vgpu_dev *vd, struct vgpu_job_wait *job)
{
	unsigned long flags;
	bool orphans;

	spin_lock_irqsave(&vd->job_lock, flags);
	list_del(&job->node);
	orphans = !list_empty(&job->faults);
	list_splice_tail_init(&job->faults, &vd->orphans);
	spin_unlock_irqrestore(&vd->job_lock, flags);
	if (orphans)
		schedule_work(&vd->orphan_work);
}

struct vgpu_fault_buf *vgpu_job_next_fault(struct vgpu_dev *vd,
					   struct vgpu_job_wait *job)
{
	struct vgpu_fault_buf *fb;
	unsigned long flags;

	spin_lock_irqsave(&vd->job_lock, flags);
	fb = list_first_entry_or_null(&job->faults, struct vgpu_fault_buf,
				      node);
	if (fb)
		list_del(&fb->node);
	spin_unlock_irqrestore(&vd->job_lock, flags);
	return fb;
}

/*
 * Stops the device for good: reset it, so it does no DMA and raises no
 * interrupt after this, fail every request still on the command queue
 * (-ENODEV) and wake every waiter. Runs once however often it is called
 * (device removal, or a fence after an unanswered INVALIDATE); the queues
 * themselves stay until vgpu_queues_shutdown().
 */
static void vgpu_queues_stop(struct vgpu_dev *vd)
{
	struct vgpu_job_wait *job;
	struct vgpu_req *req;
	unsigned long flags;

	mutex_lock(&vd->stop_lock);
	/* Only this function sets removed, under stop_lock. */
	if (vd->removed)
		goto out;

	spin_lock_irqsave(&vd->cmd_lock, flags);
	WRITE_ONCE(vd->removed, true);
	spin_unlock_irqrestore(&vd->cmd_lock, flags);
	/* Serialize with vgpu_fault_repost(). */
	spin_lock_irqsave(&vd->fault_lock, flags);
	spin_unlock_irqrestore(&vd->fault_lock, flags);

	/* No interrupts and no buffer use after the reset. */
	virtio_reset_device(vd->vdev);

	spin_lock_irqsave(&vd->cmd_lock, flags);
	while ((req = virtqueue_detach_unused_buf(vd->cmd_vq)))
		vgpu_req_finish(vd, req, 0, -ENODEV);
	spin_unlock_irqrestore(&vd->cmd_lock, flags);
	/* Fault buffers belong to vd->fault_bufs; just forget them. */
	while (virtqueue_detach_unused_buf(vd->fault_vq))
		;
	wake_up_all(&vd->cmd_space);

	spin_lock_irqsave(&vd->job_lock, flags);
	list_for_each_entry(job, &vd->jobs, node)
		wake_up(&job->wq);
	INIT_LIST_HEAD(&vd->orphans);
	spin_unlock_irqrestore(&vd->job_lock, flags);
out:
	mutex_unlock(&vd->stop_lock);
}

/*
 * Submits @req and waits for it without ever abandoning it: for commands the
 * caller may not outlive, an INVALIDATE above all (its notifier must not
 * return while the device can still use the old pages, or the kernel reuses
 * pages the device still writes). If the device takes longer than timeout_ms
 * to accept or answer, it is fenced with vgpu_queues_stop(): every mirror
 * fails from then on, but no DMA reaches a page the kernel took back. The
 * caller owns @req on return.
 */
int vgpu_cmd_sync_or_fence(struct vgpu_dev *vd, struct vgpu_req *req)
{
	unsigned long t = msecs_to_jiffies(vgpu_timeout_ms);
	int err = vgpu_submit(vd, req);

	if (err == -EBUSY) {
		dev_err(&vd->vdev->dev,
			"command %u (pasid %u): no ring space for %u ms; stopping the device\n",
			le32_to_cpu(req->cmd.opcode),
			le32_to_cpu(req->cmd.pasid), vgpu_timeout_ms);
		vgpu_queues_stop(vd);
		return -ENODEV;
	}
	if (err)
		return err;
	if (!wait_for_completion_timeout(&req->done, t)) {
		dev_err(&vd->vdev->dev,
			"command %u (pasid %u) not answered in %u ms; stopping the device so it cannot use pages the kernel takes back\n",
			le32_to_cpu(req->cmd.opcode),
			le32_to_cpu(req->cmd.pasid), vgpu_timeout_ms);
		vgpu_queues_stop(vd);
		/* The stop finished every request still on the queue. */
		wait_for_completion(&req->done);
	}
	return vgpu_req_result(req);
}

/* The device is going away: stop it and free the queues. */
void vgpu_queues_shutdown(struct vgpu_dev *vd)
{
	vgpu_queues_stop(vd);
	cancel_work_sync(&vd->orphan_work);
	vd->vdev->config->del_vqs(vd->vdev);
}

/* ------------------------------------------------------------------------ */
/* The device structure */

static void vgpu_dev_release(struct kref *ref)
{
	struct vgpu_dev *vd = container_of(ref, struct vgpu_dev, ref);

	cancel_work_sync(&vd->orphan_work);
	ida_destroy(&vd->pasids);
	kfree(vd->fault_bufs);
	put_device(&vd->vdev->dev);
	kfree(vd);
}

void vgpu_dev_put(struct vgpu_dev *vd)
{
	kref_put(&vd->ref, vgpu_dev_release);
}
