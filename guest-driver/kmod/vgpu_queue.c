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
 *
 * INVALIDATE is built and sent here too (vgpu_send_invalidate()), for the
 * notifier callback in vgpu_mm.c and for the injected variants in
 * vgpu_inject.c alike.
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

/**
 * vgpu_status_errno() - the errno of a device status
 * @status: a VGPU_S_* status from a response
 *
 * Return: 0 for OK, -EOPNOTSUPP for BAD_OPCODE, -ESRCH for BAD_PASID,
 * -EINVAL for BAD_RANGE and BAD_JOB, -EFAULT for FAULT, -EBUSY for BUSY,
 * -EIO for anything else.
 */
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

/**
 * vgpu_req_alloc() - allocate a command queue request
 * @data_len: bytes of payload (a MAP's entries, COUNTERS data), 0 for none
 * @data_in: whether the device writes the payload (true) or reads it
 * @gfp: allocation flags; under the mirror mutex only ones that cannot
 *	 reclaim (DOC: Locking)
 *
 * Command, response and payload start zeroed.
 *
 * Return: the request, or NULL without memory.
 */
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

/**
 * vgpu_req_free() - free a request the caller owns
 * @req: the request, or NULL
 *
 * Not for a request on the queue: an abandoned one belongs to the queue.
 */
void vgpu_req_free(struct vgpu_req *req)
{
	if (!req)
		return;
	kfree(req->data);
	kfree(req);
}

/**
 * vgpu_req_reset() - make a finished request reusable
 * @req: a request that completed and was not abandoned
 *
 * Clears the command, the response and the completion; the payload stays.
 */
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

/**
 * vgpu_submit() - put a request on the command queue
 * @vd: the device
 * @req: the request, owned by the caller
 *
 * Waits up to timeout_ms for ring space. On success the queue owns the
 * buffers until the request completes or is abandoned.
 *
 * Context: may sleep; takes cmd_lock.
 * Return: 0, or with @req untouched -ENODEV (device gone), -EBUSY (no ring
 * space in time), -EIO (broken queue) or another error of
 * virtqueue_add_sgs().
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

/**
 * vgpu_abandon() - give up on a submitted request
 * @vd: the device
 * @req: the request
 *
 * Context: takes cmd_lock.
 * Return: true if @req is now abandoned: the completion callback or the
 * device's stop frees it, and the caller must not touch it again; false if
 * it completed meanwhile and still belongs to the caller.
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

/**
 * vgpu_req_result() - the device's answer to a completed request
 * @req: the completed request
 *
 * Return: -ENODEV if the device went away first, -EIO for a short
 * response, else vgpu_status_errno() of the response's status.
 */
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

/**
 * vgpu_cmd_sync() - submit a request and wait for the device's answer
 * @vd: the device
 * @req: the request, owned by the caller
 *
 * Waits timeout_ms at most, then abandons the request.
 *
 * Context: may sleep.
 * Return: vgpu_req_result(), an error of vgpu_submit(), or -ETIMEDOUT: then
 * @req was abandoned and belongs to the queue. For every other result the
 * caller still owns @req.
 */
int vgpu_cmd_sync(struct vgpu_dev *vd, struct vgpu_req *req)
{
	int err = vgpu_submit(vd, req);

	if (err)
		return err;
	return vgpu_wait(vd, req);
}

/**
 * vgpu_cmd_simple() - send a command without payload and wait for it
 * @vd: the device
 * @opcode: VGPU_CMD_*
 * @pasid: the command's PASID
 * @arg0: its arg0
 * @arg1: its arg1
 * @value0: if not NULL, receives the response's value0 on success
 *
 * Context: may sleep; allocates with GFP_KERNEL, so never under the mirror
 * mutex.
 * Return: as vgpu_cmd_sync(), or -ENOMEM; a timed-out request is left to the
 * queue.
 */
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

/**
 * vgpu_req_completed() - whether the completing side is done with a request
 * @vd: the device
 * @req: a submitted request
 *
 * Unlike completion_done(), true only after vgpu_req_finish() returned (the
 * flag is read under cmd_lock), so a job whose wait queue lives on its
 * stack may leave once this is true.
 *
 * Return: true if @req completed.
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

/**
 * vgpu_cmd_done() - the command queue's callback
 * @vq: the command virtqueue
 *
 * Completes every request the device returned (and frees the abandoned
 * ones), then wakes the waiters for ring space.
 *
 * Context: interrupt; takes cmd_lock.
 */
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

/**
 * vgpu_fault_post_all() - post every fault buffer
 * @vd: the device, ready (virtio_device_ready())
 *
 * Return: 0 if at least one buffer is posted (fewer than VGPU_FAULT_BUFS is
 * logged), else the error of the first one.
 */
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

/**
 * vgpu_fault_repost() - give a fault buffer back to the device
 * @vd: the device
 * @fb: a buffer taken from a job (vgpu_job_next_fault()) or the orphans
 *
 * Nothing is posted once the device is stopped.
 *
 * Context: any; takes fault_lock.
 */
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

/**
 * vgpu_fault_done() - the fault queue's callback
 * @vq: the fault virtqueue
 *
 * Hands every written fault record to the job it names, or to the orphan
 * work; a buffer with nothing to answer is posted again at once.
 *
 * Context: interrupt; takes fault_lock, then (after releasing it) job_lock.
 */
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

/**
 * vgpu_orphan_work() - fail the faults nobody waits for
 * @work: &vgpu_dev.orphan_work
 *
 * Sends FAULT_FAIL (ESRCH) for each fault of an unknown or finished job, so
 * that the job ends with FAULT, and posts its buffer again.
 */
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

/**
 * vgpu_job_register() - give a job an id and route its faults to it
 * @vd: the device
 * @job: the job, on the caller's stack; its faults and wait queue are
 *	 initialised and its id set here
 *
 * Context: takes job_lock.
 */
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

/**
 * vgpu_job_unregister() - stop routing faults to a job
 * @vd: the device
 * @job: a registered job
 *
 * Faults still queued for the job go to the orphan work (FAULT_FAIL).
 *
 * Context: takes job_lock.
 */
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

/**
 * vgpu_job_next_fault() - take the next fault queued for a job
 * @vd: the device
 * @job: a registered job
 *
 * The caller answers the fault and gives the buffer back with
 * vgpu_fault_repost().
 *
 * Context: takes job_lock.
 * Return: the fault buffer, or NULL if none is queued.
 */
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

/**
 * vgpu_cmd_sync_or_fence() - submit a request and wait, never abandoning it
 * @vd: the device
 * @req: the request, owned by the caller
 *
 * For commands the caller may not outlive, an INVALIDATE above all: its
 * notifier must not return while the device can still use the old pages, or
 * the kernel reuses pages the device still writes. If the device takes
 * longer than timeout_ms to accept or answer, it is fenced with
 * vgpu_queues_stop(): every mirror fails from then on, but no DMA reaches a
 * page the kernel took back.
 *
 * Context: may sleep; called under the mirror mutex, takes stop_lock.
 * Return: vgpu_req_result(), or an error of vgpu_submit() (-ENODEV after a
 * fence). The caller owns @req on return.
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

/**
 * vgpu_queues_shutdown() - stop the device for good and delete its queues
 * @vd: the device, going away (remove, or a probe that failed)
 */
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

/**
 * vgpu_dev_put() - drop a reference to a device
 * @vd: the device
 *
 * Probe holds one reference until remove, every mirror one until it is
 * freed; the last one cancels the orphan work and frees @vd.
 */
void vgpu_dev_put(struct vgpu_dev *vd)
{
	kref_put(&vd->ref, vgpu_dev_release);
}

/**
 * vgpu_fill_invalidate() - write an INVALIDATE command into a request
 * @req: a fresh or reset request the caller owns
 * @m: the bound mirror (its PASID)
 * @event: the notifier event (enum mmu_notifier_event, as SPEC.md numbers
 *	   them)
 * @prot: what the vma allows now (VGPU_PROT_*)
 * @start: start of the range, page aligned
 * @end: its end, page aligned, above @start
 * @flags: VGPU_INV_F_*
 */
void vgpu_fill_invalidate(struct vgpu_req *req, const struct vgpu_mirror *m,
			  int event, u32 prot, unsigned long start,
			  unsigned long end, u32 flags)
{
	req->cmd.opcode = cpu_to_le32(VGPU_CMD_INVALIDATE);
	req->cmd.pasid = cpu_to_le32(m->pasid);
	req->cmd.start = cpu_to_le64(start);
	req->cmd.length = cpu_to_le64(end - start);
	req->cmd.arg0 = cpu_to_le64(prot);
	req->cmd.event = cpu_to_le32(event);
	req->cmd.flags = cpu_to_le32(flags);
}

/**
 * vgpu_send_invalidate() - send an INVALIDATE and wait for the device
 * @m: the bound mirror
 * @event: the notifier event (enum mmu_notifier_event)
 * @prot: what the vma allows now (VGPU_PROT_*), taken by the caller: a
 *	  deferred invalidation no longer has the vma
 * @start: start of the range, page aligned
 * @end: its end, page aligned, above @start
 * @flags: VGPU_INV_F_*
 *
 * Uses the request preallocated at bind, so nothing is allocated. Returns
 * only once the device completed the command or was fenced for not doing so
 * within timeout_ms (vgpu_cmd_sync_or_fence()); other failures are logged.
 *
 * Context: m->mutex held; may sleep.
 */
void vgpu_send_invalidate(struct vgpu_mirror *m, int event, u32 prot,
			  unsigned long start, unsigned long end, u32 flags)
{
	struct vgpu_dev *vd = m->vdev;
	/* Allocated at bind: no allocation, so no reclaim, from here. */
	struct vgpu_req *req = m->inv_req;
	int err;

	lockdep_assert_held(&m->mutex);
	vgpu_req_reset(req);
	vgpu_fill_invalidate(req, m, event, prot, start, end, flags);

	err = vgpu_cmd_sync_or_fence(vd, req);
	if (err && err != -ENODEV)
		dev_err_ratelimited(&vd->vdev->dev,
				    "pasid %u: INVALIDATE event %d [%#lx, %#lx) failed: %d\n",
				    m->pasid, event, start, end, err);
}
