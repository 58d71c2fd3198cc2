//! The virtual GPU (virtio type 63) on the virtio-pci transport.
//!
//! All device logic lives in `device_model::VgpuDevice`; this adapter hands it the queues
//! at activation, forwards notifications, and raises the MSI-X interrupts the device asks
//! for. The device sits behind a mutex shared with a [`VgpuHandle`], so the run code can
//! read its counters for the report after the guest is done.
//!
//! Invalidations complete after the device's `inval_latency_us`, off the vCPU thread: one
//! completion thread per activation sleeps until the device's next deadline, completes what
//! is due and raises the command-queue interrupt. Notifications wake it when they put a new
//! invalidation in flight; a reset or a new activation retires it.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use device_model::counters::FaultLatency;
use device_model::wire::{
    COMMAND_QUEUE_SIZE, FAULT_QUEUE_SIZE, QUEUE_COMMAND, QUEUE_FAULT, VIRTIO_ID_VGPU,
};
use device_model::{ConfigError, Counters, UsedQueues, VgpuConfig, VgpuDevice};
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use crate::virtio_pci::{ActivateError, VirtioDevice, VirtioInterrupt};

/// Queue sizes: the command queue, then the fault queue.
const QUEUE_SIZES: [u16; 2] = [COMMAND_QUEUE_SIZE, FAULT_QUEUE_SIZE];

/// The device and what its completion thread waits on.
struct Shared {
    device: Mutex<Guarded>,
    /// Signalled when an invalidation goes in flight or the activation ends.
    wake: Condvar,
}

/// What the mutex guards: the device, and which activation the completion thread serves.
struct Guarded {
    device: VgpuDevice,
    /// Bumped by every activation and reset; a completion thread whose number is stale exits.
    activation: u64,
}

/// A shared handle on the device, for reading its counters from outside the vCPU threads.
#[derive(Clone)]
pub struct VgpuHandle(Arc<Shared>);

impl VgpuHandle {
    /// A snapshot of the device's counters (they survive device resets).
    pub fn counters(&self) -> Counters {
        self.lock_all().device.counters()
    }

    /// The counters split by PASID (see `VgpuDevice::pasid_counters`).
    pub fn pasid_counters(&self) -> std::collections::BTreeMap<u32, Counters> {
        self.lock_all().device.pasid_counters().clone()
    }

    /// The coherence oracle's first violations, with the invalidations that preceded them.
    pub fn violation_samples(&self) -> Vec<device_model::oracle::ViolationSample> {
        self.lock_all().device.violations().to_vec()
    }

    /// How long the guest driver took to answer device faults.
    pub fn fault_latency(&self) -> FaultLatency {
        self.lock_all().device.fault_latency()
    }

    fn lock_all(&self) -> MutexGuard<'_, Guarded> {
        // A panic while holding the lock cannot leave the counters half-written in a way
        // that matters for a report, so a poisoned lock is still read.
        self.0.device.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes the completion thread if an invalidation is in flight.
    fn kick_completions(&self, g: &Guarded) {
        if g.device.next_deadline().is_some() {
            self.0.wake.notify_all();
        }
    }

    /// Ends the current activation: its completion thread exits.
    fn retire_completions(&self, g: &mut Guarded) {
        g.activation += 1;
        self.0.wake.notify_all();
    }

    /// The completion thread of activation `activation`: completes invalidations as they
    /// fall due and interrupts the driver for them.
    fn complete_invalidations(self, activation: u64, irq: VirtioInterrupt) {
        let mut g = self.lock_all();
        while g.activation == activation {
            let Some(due) = g.device.next_deadline() else {
                g = self.0.wake.wait(g).unwrap_or_else(|e| e.into_inner());
                continue;
            };
            let now = Instant::now();
            if due > now {
                g = self
                    .0
                    .wake
                    .wait_timeout(g, due - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                continue;
            }
            let used = g.device.complete_due(now);
            drop(g);
            signal(&irq, used);
            g = self.lock_all();
        }
    }
}

fn signal(irq: &VirtioInterrupt, used: UsedQueues) {
    for q in used.queues() {
        irq.signal_used_queue(q);
    }
}

/// The virtio-pci face of the virtual GPU.
pub struct VirtioVgpu {
    device: VgpuHandle,
    interrupt: Option<VirtioInterrupt>,
    acked_features: u64,
}

impl VirtioVgpu {
    /// A virtual GPU built as `config` says.
    pub fn new(config: VgpuConfig) -> Result<Self, ConfigError> {
        Ok(VirtioVgpu {
            device: VgpuHandle(Arc::new(Shared {
                device: Mutex::new(Guarded {
                    device: VgpuDevice::new(config)?,
                    activation: 0,
                }),
                wake: Condvar::new(),
            })),
            interrupt: None,
            acked_features: 0,
        })
    }

    /// The handle to read counters with.
    pub fn handle(&self) -> VgpuHandle {
        self.device.clone()
    }

    /// Features the driver accepted.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    fn signal(&self, used: UsedQueues) {
        if let Some(irq) = &self.interrupt {
            signal(irq, used);
        }
    }
}

impl VirtioDevice for VirtioVgpu {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VGPU
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        0
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.device.lock_all().device.read_config(offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        log::warn!(
            "vgpu: ignoring write of {} bytes to the read-only config at {offset:#x}",
            data.len()
        );
    }

    fn activate(
        &mut self,
        mem: Arc<GuestMemoryMmap>,
        queues: Vec<Queue>,
        interrupt: VirtioInterrupt,
    ) -> Result<(), ActivateError> {
        let [command, fault]: [Queue; 2] =
            queues
                .try_into()
                .map_err(|q: Vec<Queue>| ActivateError::QueueCount {
                    expected: QUEUE_SIZES.len(),
                    got: q.len(),
                })?;
        let mut g = self.device.lock_all();
        g.device.activate(mem, command, fault);
        // Fault buffers may have been posted before DRIVER_OK; nothing is waiting yet, but
        // serving both queues once keeps activation and notification on one path.
        let used = g.device.process_command_queue();
        self.device.retire_completions(&mut g);
        let activation = g.activation;
        drop(g);
        let handle = self.device.clone();
        let irq = interrupt.clone();
        std::thread::Builder::new()
            .name("vgpu-inval".into())
            .spawn(move || handle.complete_invalidations(activation, irq))
            .map_err(|source| ActivateError::Thread {
                thread: "invalidation completion",
                source,
            })?;
        self.interrupt = Some(interrupt);
        self.signal(used);
        Ok(())
    }

    fn queue_notify(&mut self, queue_index: u16) {
        let used = {
            let mut g = self.device.lock_all();
            let used = match queue_index {
                QUEUE_COMMAND => g.device.process_command_queue(),
                QUEUE_FAULT => g.device.process_fault_queue(),
                other => {
                    log::warn!("vgpu: notify of absent queue {other}");
                    return;
                }
            };
            self.device.kick_completions(&g);
            used
        };
        self.signal(used);
    }

    fn reset(&mut self) {
        let mut g = self.device.lock_all();
        g.device.reset();
        self.device.retire_completions(&mut g);
        drop(g);
        self.interrupt = None;
        self.acked_features = 0;
    }
}

#[cfg(test)]
mod tests {
    use device_model::testing::{cmd, Notify, Rig, VgpuDriver, JOB_ID};
    use device_model::wire;
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::pci::msix::testing::RecordingGroup;
    use crate::pci::msix::{MsixConfig, MSIX_ENABLE};

    /// Both queues as the transport configures them, smaller than the device's maximum.
    const QSIZE: u16 = 16;

    /// The shared rig notifies through the transport's entry point.
    impl Notify for VirtioVgpu {
        fn notify(&mut self, queue: u16) {
            self.queue_notify(queue);
        }
    }

    #[test]
    fn identity_and_config() {
        let v = VirtioVgpu::new(VgpuConfig::default()).unwrap();
        assert_eq!(v.device_type(), 63);
        assert_eq!(v.queue_max_sizes(), &[128, 64]);
        assert_eq!(v.features(), 0);
        let mut b = [0u8; 4];
        v.read_config(0, &mut b);
        assert_eq!(u32::from_le_bytes(b), 64);
        v.read_config(12, &mut b);
        assert_eq!(u32::from_le_bytes(b), 8);
        v.read_config(0x100, &mut b);
        assert_eq!(b, [0; 4]);
        assert!(VirtioVgpu::new(VgpuConfig {
            atc_ways: 0,
            ..Default::default()
        })
        .is_err());
    }

    #[test]
    fn commands_and_faults_raise_interrupts() {
        let driver = VgpuDriver::with_queue_sizes(QSIZE, QSIZE);
        let mem = driver.mem.clone();
        let irq = Arc::new(RecordingGroup::default());
        let mut msix = MsixConfig::new(3, irq.clone()).unwrap();
        msix.set_message_control(MSIX_ENABLE);
        for v in 0..3u64 {
            msix.write_table(v * 16 + 12, &0u32.to_le_bytes());
        }
        let interrupt = VirtioInterrupt::new(Arc::new(Mutex::new(msix)), 2);
        interrupt.set_queue_vector(0, 1);
        interrupt.set_queue_vector(1, 2);
        let mut v = VirtioVgpu::new(VgpuConfig::default()).unwrap();
        assert!(matches!(
            v.activate(mem.clone(), vec![], interrupt.clone()),
            Err(ActivateError::QueueCount {
                expected: 2,
                got: 0
            })
        ));
        v.activate(mem.clone(), driver.device_queues().into(), interrupt)
            .unwrap();
        let handle = v.handle();
        let mut rig = Rig::with_device(v, driver);

        // BIND completes at once (status OK) with the command-queue interrupt.
        rig.bind(1);
        assert_eq!(irq.take_triggers(), vec![1]);
        // A job on an unmapped page faults: no completion, a fault once a buffer is posted.
        rig.job(1, wire::job_op::CHECKSUM, 0, 0x1000, 0);
        rig.notify_commands();
        assert!(irq.take_triggers().is_empty());
        assert_eq!(rig.used(), vec![]);
        rig.post_fault_buffers(1);
        rig.notify_faults();
        assert_eq!(irq.take_triggers(), vec![2]);
        let faults = rig.faults();
        assert_eq!(faults.len(), 1);
        let f = faults[0];
        assert_eq!((f.pasid, f.address, f.flags), (1, 0, 0));
        assert_eq!(f.job_id, JOB_ID);
        // A notification of an absent queue is ignored.
        rig.dev.queue_notify(5);
        assert_eq!(handle.counters().global.device_faults, 1);
        // An INVALIDATE completes off the vCPU thread once its latency has passed, with
        // the command-queue interrupt (5 ms by default).
        let inv = rig
            .driver
            .send(&cmd(wire::opcode::INVALIDATE, 1, 0, 0x1000));
        mem.write_obj(u32::MAX, GuestAddress(inv.resp)).unwrap();
        rig.notify_commands();
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        while irq.triggers.lock().unwrap().is_empty() && Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(irq.take_triggers(), vec![1]);
        assert_eq!(rig.used(), vec![(inv.head, 24)]);
        assert_eq!(rig.resp(&inv).status, 0);
        rig.dev.reset();
        rig.notify_commands();
        assert!(irq.take_triggers().is_empty());
        assert_eq!(handle.counters().global.device_faults, 1);
    }
}
