//! The shared driver rig as another crate uses it (`features = ["test-utils"]`): a host
//! that owns the device behind its own notification entry point, as a VMM's virtio
//! adapter does, driven through `testing::Rig`.

use device_model::testing::{entry, layout::FRAMES, Notify, Rig, VgpuDriver};
use device_model::wire::{job_op, status, QUEUE_COMMAND, QUEUE_FAULT};
use device_model::{VgpuConfig, VgpuDevice};

/// A stand-in for a transport adapter: it hosts the device and counts notifications.
struct Host {
    device: VgpuDevice,
    notifications: u32,
}

impl Notify for Host {
    fn notify(&mut self, queue: u16) {
        self.notifications += 1;
        match queue {
            QUEUE_COMMAND => {
                self.device.process_command_queue();
            }
            QUEUE_FAULT => {
                self.device.process_fault_queue();
            }
            _ => {}
        }
    }
}

#[test]
fn a_host_adapter_runs_a_faulting_job_through_the_rig() {
    // A transport may configure queues smaller than the device's maximum.
    let driver = VgpuDriver::with_queue_sizes(16, 16);
    let mut device = VgpuDevice::new(VgpuConfig {
        inval_latency_us: 0,
        ..VgpuConfig::default()
    })
    .unwrap();
    let [command, fault] = driver.device_queues();
    device.activate(driver.mem.clone(), command, fault);
    let mut r = Rig::with_device(
        Host {
            device,
            notifications: 0,
        },
        driver,
    );

    let va = 0x7000_0000;
    r.bind_with_tables(
        1,
        &[(va, FRAMES, true), (va + 0x1000, FRAMES + 0x1000, true)],
    );
    assert_eq!(r.map(1, va, &[entry(FRAMES, true)]).value0, 1);
    // The second page faults; the driver answers and the job completes.
    let job = r.job(1, job_op::FILL, va, 0x2000, 3);
    r.notify_commands();
    r.post_fault_buffers(1);
    r.notify_faults();
    let faults = r.faults();
    assert_eq!(faults.len(), 1);
    assert_eq!(faults[0].address, va + 0x1000);
    let answer = r.answer_fault(&faults[0], &[entry(FRAMES + 0x1000, true)]);
    assert_eq!((answer.status, answer.value1), (status::OK, 1));
    assert_eq!(r.resp(&job).status, status::OK);
    // Many more commands than the queue has descriptors: they are recycled.
    for _ in 0..40 {
        let sum = r.run_job(1, job_op::CHECKSUM, va, 0x2000, 0);
        assert_eq!(sum.status, status::OK);
    }
    let c = r.read_counters(1);
    assert_eq!((c.global.violations, c.global.device_faults), (0, 1));
    assert!(r.dev.notifications > 40);
}
