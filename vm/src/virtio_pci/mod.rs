//! The modern (virtio 1.x) virtio-pci transport and the device trait it hosts.
//!
//! A [`VirtioDevice`] knows its queues and its device-specific configuration;
//! [`transport::VirtioPciDevice`] turns it into a [`crate::pci::PciDevice`] with the virtio
//! PCI capabilities, the common configuration structure ([`common_config`]), notification
//! and MSI-X. When the driver sets DRIVER_OK the transport hands the device its queues, the
//! guest memory and a [`VirtioInterrupt`] to signal used buffers with.

pub mod common_config;
pub mod transport;

use std::sync::atomic::{AtomicU16, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use crate::pci::MsixConfig;

pub use common_config::CommonConfig;
pub use transport::{VirtioPciDevice, VirtioPciError};

/// "No MSI-X vector" in msix_config / queue_msix_vector.
pub const VIRTIO_MSI_NO_VECTOR: u16 = 0xffff;
/// ISR bit: a queue has used buffers.
pub const VIRTIO_ISR_QUEUE: u8 = 0x1;
/// ISR bit: the device configuration changed.
pub const VIRTIO_ISR_CONFIG: u8 = 0x2;

/// What is wrong with a queue as the driver configured it.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The device's maximum queue size is not one virtio-queue accepts.
    #[error("maximum size {max_size}: {source}")]
    MaxSize {
        /// The maximum size.
        max_size: u16,
        /// virtio-queue's reason.
        #[source]
        source: virtio_queue::Error,
    },
    /// The size the driver chose (zero, above the maximum, or not a power of two).
    #[error("size {size}: {source}")]
    Size {
        /// The driver's size.
        size: u16,
        /// virtio-queue's reason.
        #[source]
        source: virtio_queue::Error,
    },
    /// An enabled queue has a ring at address zero.
    #[error("zero ring address")]
    ZeroRingAddress,
    /// A ring address is misaligned.
    #[error("{ring} at {addr:#x}: {source}")]
    RingAddress {
        /// Which ring: the descriptor table, the driver (available) or device (used) ring.
        ring: &'static str,
        /// The address the driver wrote.
        addr: u64,
        /// virtio-queue's reason.
        #[source]
        source: virtio_queue::Error,
    },
    /// The rings do not lie inside guest memory.
    #[error("rings outside guest memory")]
    OutsideGuestMemory,
}

/// Why a device could not be activated.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver configured queue `index` badly (size, alignment, address).
    #[error("queue {index} is invalid: {source}")]
    InvalidQueue {
        /// The queue.
        index: u16,
        /// What is wrong with it.
        #[source]
        source: QueueError,
    },
    /// The device got a different number of queues than it has.
    #[error("expected {expected} queues, got {got}")]
    QueueCount {
        /// The device's queues.
        expected: usize,
        /// The queues handed to it.
        got: usize,
    },
    /// A thread the device serves its queues with could not be started.
    #[error("device activation failed: cannot start the {thread} thread: {source}")]
    Thread {
        /// What the thread does.
        thread: &'static str,
        /// The spawn error.
        #[source]
        source: std::io::Error,
    },
}

/// A virtio device as the transport sees it.
pub trait VirtioDevice: Send {
    /// Virtio device type (4 = entropy, 16 = GPU, ...).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue (each a power of two, at most 32768).
    fn queue_max_sizes(&self) -> &[u16];
    /// Device feature bits; the transport adds VIRTIO_F_VERSION_1.
    fn features(&self) -> u64;
    /// The features the driver accepted (a subset of what was offered, with VERSION_1).
    fn ack_features(&mut self, features: u64);
    /// Reads the device-specific configuration; bytes past its end read zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific configuration.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts the device with the queues the driver configured (one per
    /// [`Self::queue_max_sizes`] entry; queues the driver did not enable are not ready).
    fn activate(
        &mut self,
        mem: Arc<GuestMemoryMmap>,
        queues: Vec<Queue>,
        interrupt: VirtioInterrupt,
    ) -> Result<(), ActivateError>;
    /// The driver notified queue `queue_index` (only called while activated).
    fn queue_notify(&mut self, queue_index: u16);
    /// Drops the queues and memory and returns to the pre-activation state.
    fn reset(&mut self);
}

/// MSI-X vector assignment, updated by the transport as the driver writes msix_config and
/// queue_msix_vector.
#[derive(Debug)]
struct Vectors {
    config: AtomicU16,
    queues: Vec<AtomicU16>,
}

/// The handle a device uses to interrupt the driver. Cheap to clone.
#[derive(Clone, Debug)]
pub struct VirtioInterrupt {
    msix: Arc<Mutex<MsixConfig>>,
    vectors: Arc<Vectors>,
    isr: Arc<AtomicU8>,
}

impl VirtioInterrupt {
    /// A handle for `num_queues` queues; every vector starts unassigned.
    pub fn new(msix: Arc<Mutex<MsixConfig>>, num_queues: usize) -> Self {
        VirtioInterrupt {
            msix,
            vectors: Arc::new(Vectors {
                config: AtomicU16::new(VIRTIO_MSI_NO_VECTOR),
                queues: (0..num_queues)
                    .map(|_| AtomicU16::new(VIRTIO_MSI_NO_VECTOR))
                    .collect(),
            }),
            isr: Arc::new(AtomicU8::new(0)),
        }
    }

    /// Assigns the configuration-change vector.
    pub fn set_config_vector(&self, vector: u16) {
        self.vectors.config.store(vector, Ordering::Release);
    }

    /// Assigns the vector of `queue` (ignored for unknown queues).
    pub fn set_queue_vector(&self, queue: u16, vector: u16) {
        if let Some(v) = self.vectors.queues.get(usize::from(queue)) {
            v.store(vector, Ordering::Release);
        }
    }

    /// Signals "used buffers in queue `queue`".
    pub fn signal_used_queue(&self, queue: u16) {
        let Some(v) = self.vectors.queues.get(usize::from(queue)) else {
            log::warn!("virtio: interrupt for unknown queue {queue}");
            return;
        };
        self.raise(VIRTIO_ISR_QUEUE, v.load(Ordering::Acquire));
    }

    /// Signals "device configuration changed" (also used for DEVICE_NEEDS_RESET).
    pub fn signal_config_change(&self) {
        self.raise(
            VIRTIO_ISR_CONFIG,
            self.vectors.config.load(Ordering::Acquire),
        );
    }

    fn raise(&self, isr_bit: u8, vector: u16) {
        self.isr.fetch_or(isr_bit, Ordering::AcqRel);
        if vector == VIRTIO_MSI_NO_VECTOR {
            // INTx is not wired; the driver only sees the ISR bit if it polls.
            log::debug!("virtio: interrupt without an MSI-X vector dropped");
            return;
        }
        self.msix.lock().unwrap().trigger(vector);
    }

    /// Reads and clears the ISR status.
    pub fn take_isr(&self) -> u8 {
        self.isr.swap(0, Ordering::AcqRel)
    }

    /// Clears the ISR and unassigns every vector (device reset).
    pub fn reset(&self) {
        self.isr.store(0, Ordering::Release);
        self.set_config_vector(VIRTIO_MSI_NO_VECTOR);
        for v in &self.vectors.queues {
            v.store(VIRTIO_MSI_NO_VECTOR, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::msix::testing::RecordingGroup;
    use crate::pci::msix::MSIX_ENABLE;

    #[test]
    fn interrupt_routes_to_assigned_vectors() {
        let g = Arc::new(RecordingGroup::default());
        let msix = Arc::new(Mutex::new(MsixConfig::new(3, g.clone()).unwrap()));
        {
            let mut m = msix.lock().unwrap();
            m.set_message_control(MSIX_ENABLE);
            for v in 0..3u64 {
                m.write_table(v * 16 + 12, &0u32.to_le_bytes());
            }
        }
        let irq = VirtioInterrupt::new(msix, 2);
        irq.signal_used_queue(1);
        assert!(g.take_triggers().is_empty());
        assert_eq!(irq.take_isr(), VIRTIO_ISR_QUEUE);
        assert_eq!(irq.take_isr(), 0);
        irq.set_queue_vector(1, 2);
        irq.set_config_vector(0);
        irq.signal_used_queue(1);
        irq.signal_config_change();
        irq.signal_used_queue(7);
        assert_eq!(g.take_triggers(), vec![2, 0]);
        assert_eq!(irq.take_isr(), VIRTIO_ISR_QUEUE | VIRTIO_ISR_CONFIG);
        irq.reset();
        irq.signal_used_queue(1);
        assert!(g.take_triggers().is_empty());
    }
}
