//! virtio-rng: the entropy device (virtio type 4).
//!
//! One queue of 256 entries. Every available chain is a request for random bytes: the
//! device fills its device-writable buffers from a [`Read`] source (`/dev/urandom` in
//! production), at most [`MAX_BYTES_PER_REQUEST`] per chain, and returns it on the used
//! ring with the number of bytes written. A malformed chain (a driver-readable buffer, a
//! buffer outside guest memory) is returned with 0 bytes. No feature bits are offered, so
//! interrupt suppression is only the driver's VRING_AVAIL_F_NO_INTERRUPT flag.

use std::fs::File;
use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
use virtio_bindings::virtio_ring::VRING_AVAIL_F_NO_INTERRUPT;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::virtio_pci::{ActivateError, VirtioDevice, VirtioInterrupt};

/// Size of the request queue.
pub const RNG_QUEUE_SIZE: u16 = 256;
/// Most bytes returned for one request.
pub const MAX_BYTES_PER_REQUEST: u32 = 64 * 1024;

/// Errors of the entropy device.
#[derive(Debug, thiserror::Error)]
pub enum RngError {
    /// Opening the entropy source failed.
    #[error("opening /dev/urandom: {0}")]
    OpenSource(#[source] io::Error),
}

/// Statistics of the entropy device, shared with whoever wants to watch them.
#[derive(Debug, Default)]
pub struct RngCounters {
    /// Chains returned to the driver.
    pub requests: AtomicU64,
    /// Random bytes written to guest memory.
    pub bytes: AtomicU64,
    /// Chains returned with 0 bytes because they were malformed or the source failed.
    pub bad_requests: AtomicU64,
}

struct Active {
    mem: Arc<GuestMemoryMmap>,
    queue: Queue,
    interrupt: VirtioInterrupt,
}

/// The virtio entropy device.
pub struct VirtioRng {
    source: Box<dyn Read + Send>,
    active: Option<Active>,
    acked_features: u64,
    counters: Arc<RngCounters>,
}

type Chain = DescriptorChain<Arc<GuestMemoryMmap>>;

impl VirtioRng {
    /// An entropy device reading from `source`.
    pub fn new(source: Box<dyn Read + Send>) -> Self {
        VirtioRng {
            source,
            active: None,
            acked_features: 0,
            counters: Arc::default(),
        }
    }

    /// An entropy device reading from `/dev/urandom`.
    pub fn from_urandom() -> Result<Self, RngError> {
        let f = File::open("/dev/urandom").map_err(RngError::OpenSource)?;
        Ok(Self::new(Box::new(f)))
    }

    /// The device's counters.
    pub fn counters(&self) -> Arc<RngCounters> {
        self.counters.clone()
    }

    /// Features the driver accepted.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Fills one chain; returns the bytes written, or `None` if the chain is malformed.
    fn fill_chain(source: &mut dyn Read, mem: &GuestMemoryMmap, chain: Chain) -> Option<u32> {
        let mut total = 0u32;
        let mut buf = Vec::new();
        for desc in chain {
            if !desc.is_write_only() {
                log::warn!("virtio-rng: driver-readable buffer in a request");
                return None;
            }
            let want = desc.len().min(MAX_BYTES_PER_REQUEST - total);
            if want == 0 {
                continue;
            }
            buf.resize(want as usize, 0);
            if let Err(e) = source.read_exact(&mut buf) {
                log::error!("virtio-rng: entropy source failed: {e}");
                return None;
            }
            if let Err(e) = mem.write_slice(&buf, desc.addr()) {
                log::warn!(
                    "virtio-rng: buffer {:#x}+{want:#x} not in guest memory: {e}",
                    desc.addr().0
                );
                return None;
            }
            total += want;
        }
        Some(total)
    }

    /// Serves every available request. Returns whether any chain was used.
    pub fn process_queue(&mut self) -> bool {
        let Some(a) = self.active.as_mut() else {
            return false;
        };
        let mut used = false;
        while let Some(chain) = a.queue.pop_descriptor_chain(a.mem.clone()) {
            let head = chain.head_index();
            let len = match Self::fill_chain(self.source.as_mut(), &a.mem, chain) {
                Some(n) => n,
                None => {
                    self.counters.bad_requests.fetch_add(1, Ordering::Relaxed);
                    0
                }
            };
            if let Err(e) = a.queue.add_used(a.mem.as_ref(), head, len) {
                log::warn!("virtio-rng: cannot return chain {head}: {e}");
                continue;
            }
            self.counters.requests.fetch_add(1, Ordering::Relaxed);
            self.counters
                .bytes
                .fetch_add(u64::from(len), Ordering::Relaxed);
            used = true;
        }
        if used && Self::wants_interrupt(a) {
            a.interrupt.signal_used_queue(0);
        }
        used
    }

    fn wants_interrupt(a: &mut Active) -> bool {
        match a.queue.needs_notification(a.mem.as_ref()) {
            Ok(false) => return false,
            Ok(true) => {}
            Err(e) => log::warn!("virtio-rng: checking notification: {e}"),
        }
        let flags: u16 = a
            .mem
            .read_obj(GuestAddress(a.queue.avail_ring()))
            .unwrap_or(0);
        flags & VRING_AVAIL_F_NO_INTERRUPT as u16 == 0
    }
}

impl VirtioDevice for VirtioRng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[RNG_QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        0
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // No device-specific configuration.
        data.fill(0);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        log::warn!(
            "virtio-rng: ignoring config write of {} bytes at {offset:#x}",
            data.len()
        );
    }

    fn activate(
        &mut self,
        mem: Arc<GuestMemoryMmap>,
        mut queues: Vec<Queue>,
        interrupt: VirtioInterrupt,
    ) -> Result<(), ActivateError> {
        if queues.len() != 1 {
            return Err(ActivateError::QueueCount {
                expected: 1,
                got: queues.len(),
            });
        }
        let queue = queues.remove(0);
        self.active = Some(Active {
            mem,
            queue,
            interrupt,
        });
        Ok(())
    }

    fn queue_notify(&mut self, queue_index: u16) {
        if queue_index != 0 {
            log::warn!("virtio-rng: notify of absent queue {queue_index}");
            return;
        }
        self.process_queue();
    }

    fn reset(&mut self) {
        self.active = None;
        self.acked_features = 0;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use device_model::testing::{guest_memory, readable, writable, DriverQueue, Next, RawDesc};
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};

    use super::*;
    use crate::pci::msix::testing::RecordingGroup;
    use crate::pci::msix::{MsixConfig, MSIX_ENABLE};

    /// Where the driver's queue lies.
    const QUEUE: GuestAddress = GuestAddress(0x1000);
    const QSIZE: u16 = 16;
    const MEM_SIZE: usize = 0x40000;
    const W: u16 = VRING_DESC_F_WRITE as u16;
    const N: u16 = VRING_DESC_F_NEXT as u16;

    /// Bytes 0, 1, 2, ... wrapping.
    struct Counting(u8);
    impl Read for Counting {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            for b in buf.iter_mut() {
                *b = self.0;
                self.0 = self.0.wrapping_add(1);
            }
            Ok(buf.len())
        }
    }

    struct Failing;
    impl Read for Failing {
        fn read(&mut self, _buf: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::other("no entropy"))
        }
    }

    /// The device activated on the queue of the shared driver rig, with MSI-X vector 0 for
    /// the queue.
    struct Rig {
        rng: VirtioRng,
        mem: Arc<GuestMemoryMmap>,
        queue: DriverQueue,
        irq: Arc<RecordingGroup>,
    }

    impl Rig {
        fn new(source: Box<dyn Read + Send>) -> Self {
            let mem = guest_memory(MEM_SIZE as u64);
            let queue = DriverQueue::new(mem.clone(), QUEUE, QSIZE);
            let irq = Arc::new(RecordingGroup::default());
            let mut rng = VirtioRng::new(source);
            rng.activate(
                mem.clone(),
                vec![queue.device_queue()],
                Self::interrupt(&irq),
            )
            .unwrap();
            Rig {
                rng,
                mem,
                queue,
                irq,
            }
        }

        /// An interrupt with vector 0 enabled and assigned to the queue.
        fn interrupt(irq: &Arc<RecordingGroup>) -> VirtioInterrupt {
            let mut msix = MsixConfig::new(2, irq.clone()).unwrap();
            msix.set_message_control(MSIX_ENABLE);
            msix.write_table(12, &0u32.to_le_bytes());
            let interrupt = VirtioInterrupt::new(Arc::new(Mutex::new(msix)), 1);
            interrupt.set_queue_vector(0, 0);
            interrupt
        }

        fn bytes_at(&self, addr: u64, len: usize) -> Vec<u8> {
            let mut v = vec![0u8; len];
            self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
            v
        }
    }

    #[test]
    fn fills_writable_buffers() {
        let mut rig = Rig::new(Box::new(Counting(0)));
        let a = rig.queue.add_chain(&[writable(0x10000, 32)]);
        let b = rig
            .queue
            .add_chain(&[writable(0x11000, 16), writable(0x12000, 8)]);
        rig.rng.queue_notify(0);
        assert_eq!(rig.queue.used(), vec![(a, 32), (b, 24)]);
        assert_eq!(rig.bytes_at(0x10000, 32), (0u8..32).collect::<Vec<_>>());
        assert_eq!(rig.bytes_at(0x11000, 16), (32u8..48).collect::<Vec<_>>());
        assert_eq!(rig.bytes_at(0x12000, 8), (48u8..56).collect::<Vec<_>>());
        assert_eq!(rig.irq.take_triggers(), vec![0]);
        let c = rig.rng.counters();
        assert_eq!(c.requests.load(Ordering::Relaxed), 2);
        assert_eq!(c.bytes.load(Ordering::Relaxed), 56);
        // Nothing new: no interrupt.
        rig.rng.queue_notify(0);
        assert!(rig.irq.take_triggers().is_empty());
        assert_eq!(rig.queue.used(), vec![]);
    }

    #[test]
    fn request_size_is_capped() {
        let mut rig = Rig::new(Box::new(Counting(0)));
        let a = rig.queue.add_chain(&[writable(0x10000, 0x20000)]);
        rig.rng.queue_notify(0);
        assert_eq!(rig.queue.used(), vec![(a, MAX_BYTES_PER_REQUEST)]);
        // The byte after the cap was not touched.
        let after = rig.bytes_at(0x10000 + u64::from(MAX_BYTES_PER_REQUEST), 1);
        assert_eq!(after, vec![0]);
    }

    #[test]
    fn malformed_chains_are_returned_empty() {
        let mut rig = Rig::new(Box::new(Counting(1)));
        let q = &mut rig.queue;
        // Driver-readable buffer.
        let readable = q.add_chain(&[readable(0x10000, 16)]);
        // Buffer outside guest memory.
        let outside = q.add_chain(&[writable(MEM_SIZE as u64 - 4, 16)]);
        // A loop: first -> second -> first ...
        let looping = q.add_raw_chain(&[
            RawDesc::new(0x11000, 4, W | N, Next::Slot(1)),
            RawDesc::new(0x11000, 4, W | N, Next::Slot(0)),
        ]);
        // Next pointer out of range.
        let dangling = q.add_raw_chain(&[RawDesc::new(0x12000, 4, W | N, Next::Index(999))]);
        // Head index out of range.
        q.offer_head(500);
        rig.rng.queue_notify(0);
        let used = rig.queue.used();
        // The out-of-range head cannot go on the used ring.
        assert_eq!(used.len(), 4);
        assert_eq!(used[0], (readable, 0));
        assert_eq!(used[1], (outside, 0));
        // The loop ends after at most QSIZE descriptors.
        let (id, len) = used[2];
        assert_eq!(id, looping);
        assert!(len <= 4 * u32::from(QSIZE));
        assert_eq!(used[3], (dangling, 4));
        assert_eq!(rig.bytes_at(0x10000, 16), vec![0; 16]);
        let c = rig.rng.counters();
        assert_eq!(c.bad_requests.load(Ordering::Relaxed), 2);
        // The device keeps working afterwards.
        let next = rig.queue.add_chain(&[writable(0x13000, 2)]);
        rig.rng.queue_notify(0);
        assert_eq!(rig.queue.used(), vec![(next, 2)]);
    }

    #[test]
    fn bogus_avail_index_does_not_hang() {
        let mut rig = Rig::new(Box::new(Counting(0)));
        let avail_idx = GuestAddress(rig.queue.avail_ring().0 + 2);
        rig.mem.write_obj(0x8000u16, avail_idx).unwrap();
        assert!(!rig.rng.process_queue());
        assert_eq!(rig.queue.used(), vec![]);
    }

    #[test]
    fn no_interrupt_flag_and_source_failure() {
        let mut rig = Rig::new(Box::new(Failing));
        rig.queue.set_avail_flags(VRING_AVAIL_F_NO_INTERRUPT as u16);
        let a = rig.queue.add_chain(&[writable(0x10000, 16)]);
        rig.rng.queue_notify(0);
        assert_eq!(rig.queue.used(), vec![(a, 0)]);
        assert!(rig.irq.take_triggers().is_empty());
    }

    #[test]
    fn inactive_and_reset() {
        let mut rng = VirtioRng::new(Box::new(Counting(0)));
        assert_eq!(rng.device_type(), 4);
        assert_eq!(rng.queue_max_sizes(), &[256]);
        rng.queue_notify(0);
        assert!(!rng.process_queue());
        let mut rig = Rig::new(Box::new(Counting(0)));
        rig.rng.queue_notify(3);
        rig.rng.reset();
        rig.queue.add_chain(&[writable(0x10000, 16)]);
        rig.rng.queue_notify(0);
        assert_eq!(rig.queue.used(), vec![]);
        let mem = rig.mem.clone();
        let irq = VirtioInterrupt::new(
            Arc::new(Mutex::new(MsixConfig::new(1, rig.irq.clone()).unwrap())),
            1,
        );
        assert!(matches!(
            rig.rng.activate(mem, vec![], irq),
            Err(ActivateError::QueueCount {
                expected: 1,
                got: 0
            })
        ));
    }

    #[test]
    fn urandom_source_works() {
        let mut rig = Rig::new(Box::new(Counting(0)));
        rig.rng = VirtioRng::from_urandom().unwrap();
        let mem = rig.mem.clone();
        let irq = VirtioInterrupt::new(
            Arc::new(Mutex::new(MsixConfig::new(1, rig.irq.clone()).unwrap())),
            1,
        );
        rig.rng
            .activate(mem, vec![rig.queue.device_queue()], irq)
            .unwrap();
        let a = rig.queue.add_chain(&[writable(0x10000, 64)]);
        rig.rng.queue_notify(0);
        assert_eq!(rig.queue.used(), vec![(a, 64)]);
        assert_ne!(rig.bytes_at(0x10000, 64), vec![0; 64]);
    }

    /// The whole path a guest takes: enumerate through 0xCF8/0xCFC on the PIO bus, drive
    /// BAR 0 through the MMIO bus, and get random bytes plus an MSI-X interrupt.
    #[test]
    fn end_to_end_through_pci_bus() {
        use crate::bus::Bus;
        use crate::pci::{PciBus, PciDevice};
        use crate::virtio_pci::common_config::offsets::*;
        use crate::virtio_pci::transport::{MSIX_TABLE_OFFSET, NOTIFY_OFFSET};
        use crate::virtio_pci::VirtioPciDevice;

        let mem = guest_memory(MEM_SIZE as u64);
        let mut queue = DriverQueue::new(mem.clone(), QUEUE, QSIZE);
        let irq = Arc::new(RecordingGroup::default());
        let pio = Bus::new("pio");
        let mmio = Bus::new("mmio");
        let mut pci = PciBus::new(mmio.clone(), (0xc000_0000, 0x1000_0000)).unwrap();
        let dev = VirtioPciDevice::new(
            Box::new(VirtioRng::new(Box::new(Counting(7)))),
            mem.clone(),
            irq.clone(),
        )
        .unwrap();
        let dev: Arc<Mutex<dyn PciDevice>> = Arc::new(Mutex::new(dev));
        let slot = pci.add_device(dev).unwrap();
        pio.insert(Arc::new(Mutex::new(pci)), 0xcf8, 8).unwrap();

        let cfg_read = |reg: u32| {
            pio.write(
                0xcf8,
                &(0x8000_0000 | u32::from(slot) << 11 | reg << 2).to_le_bytes(),
            );
            let mut d = [0u8; 4];
            pio.read(0xcfc, &mut d);
            u32::from_le_bytes(d)
        };
        assert_eq!(cfg_read(0), 0x1044_1af4);
        let bar0 = u64::from(cfg_read(4) & !0xf) | (u64::from(cfg_read(5)) << 32);
        // Enable memory decoding and MSI-X (the capability is the last one, at 0x80).
        pio.write(
            0xcf8,
            &(0x8000_0000u32 | u32::from(slot) << 11 | 1 << 2).to_le_bytes(),
        );
        pio.write(0xcfc, &[0x06, 0x00]);
        let mut cap = cfg_read(13) & 0xff;
        while cfg_read(cap / 4) & 0xff != 0x11 {
            cap = (cfg_read(cap / 4) >> 8) & 0xff;
        }
        pio.write(
            0xcf8,
            &(0x8000_0000 | u32::from(slot) << 11 | cap).to_le_bytes(),
        );
        pio.write(0xcfe, &0x8000u16.to_le_bytes());

        let w = |off: u64, v: &[u8]| assert!(mmio.write(bar0 + off, v));
        w(DEVICE_STATUS, &[1]);
        w(DEVICE_STATUS, &[3]);
        w(DRIVER_FEATURE_SELECT, &1u32.to_le_bytes());
        w(DRIVER_FEATURE, &1u32.to_le_bytes());
        w(DEVICE_STATUS, &[11]);
        w(QUEUE_SELECT, &0u16.to_le_bytes());
        w(QUEUE_SIZE, &QSIZE.to_le_bytes());
        w(QUEUE_MSIX_VECTOR, &1u16.to_le_bytes());
        w(QUEUE_DESC_LO, &(queue.desc_table().0 as u32).to_le_bytes());
        w(
            QUEUE_DRIVER_LO,
            &(queue.avail_ring().0 as u32).to_le_bytes(),
        );
        w(QUEUE_DEVICE_LO, &(queue.used_ring().0 as u32).to_le_bytes());
        w(QUEUE_ENABLE, &1u16.to_le_bytes());
        w(MSIX_TABLE_OFFSET + 16, &0xfee0_0000u32.to_le_bytes());
        w(MSIX_TABLE_OFFSET + 16 + 8, &0x31u32.to_le_bytes());
        w(MSIX_TABLE_OFFSET + 16 + 12, &0u32.to_le_bytes());
        w(DEVICE_STATUS, &[15]);
        let mut st = [0u8];
        mmio.read(bar0 + DEVICE_STATUS, &mut st);
        assert_eq!(st, [15]);

        let head = queue.add_chain(&[writable(0x10000, 4)]);
        w(NOTIFY_OFFSET, &0u16.to_le_bytes());

        let mut got = [0u8; 4];
        mem.read_slice(&mut got, GuestAddress(0x10000)).unwrap();
        assert_eq!(got, [7, 8, 9, 10]);
        assert_eq!(queue.used(), vec![(head, 4)]);
        assert_eq!(irq.take_triggers(), vec![1]);
        let (msg, masked) = irq.last_update(1).unwrap();
        assert_eq!((msg.addr_lo, msg.data, masked), (0xfee0_0000, 0x31, false));
    }
}
