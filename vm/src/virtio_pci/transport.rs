//! [`VirtioPciDevice`]: a [`VirtioDevice`] behind the modern virtio-pci transport.
//!
//! PCI identity: vendor 0x1af4, device 0x1040 + device type, revision 1, subsystem vendor
//! 0x1af4, no INTx pin. Everything lives in one 64-bit memory BAR 0 of 32 KiB:
//!
//! | BAR 0 offset | size   | structure                                        |
//! |--------------|--------|--------------------------------------------------|
//! | 0x0000       | 0x1000 | common configuration ([`super::common_config`])  |
//! | 0x1000       | 0x1000 | ISR status (byte 0, read-to-clear)               |
//! | 0x2000       | 0x1000 | device-specific configuration                    |
//! | 0x3000       | 0x1000 | notifications, queue N at N * 4                  |
//! | 0x4000       | 0x1000 | MSI-X table (up to 256 vectors)                  |
//! | 0x5000       | 0x1000 | MSI-X PBA                                        |
//!
//! MSI-X vector count = number of queues + 1 (one for configuration changes).

use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::common_config::{CommonConfig, CommonConfigEvent, FEATURE_VERSION_1};
use super::{ActivateError, QueueError, VirtioDevice, VirtioInterrupt};
use crate::interrupt::MsiInterruptGroup;
use crate::pci::configuration::{
    BarKind, BarReprogram, ConfigError, PciBarRegion, PciConfiguration, PciHeader,
};
use crate::pci::msix::{MsixCap, MsixConfig, MsixError};
use crate::pci::PciDevice;

/// PCI vendor id of virtio devices.
pub const VIRTIO_PCI_VENDOR_ID: u16 = 0x1af4;
/// Modern virtio device ids are this plus the device type.
pub const VIRTIO_PCI_DEVICE_ID_BASE: u16 = 0x1040;

/// Size of BAR 0.
pub const BAR0_SIZE: u64 = 0x8000;
/// Offset of the common configuration in BAR 0.
pub const COMMON_CFG_OFFSET: u64 = 0x0000;
/// Offset of the ISR byte in BAR 0.
pub const ISR_OFFSET: u64 = 0x1000;
/// Offset of the device configuration in BAR 0.
pub const DEVICE_CFG_OFFSET: u64 = 0x2000;
/// Offset of the notification area in BAR 0.
pub const NOTIFY_OFFSET: u64 = 0x3000;
/// Offset of the MSI-X table in BAR 0.
pub const MSIX_TABLE_OFFSET: u64 = 0x4000;
/// Offset of the MSI-X PBA in BAR 0.
pub const MSIX_PBA_OFFSET: u64 = 0x5000;
/// Size of each region above.
pub const REGION_SIZE: u64 = 0x1000;
/// Bytes between the notification addresses of consecutive queues.
pub const NOTIFY_OFF_MULTIPLIER: u32 = 4;

/// Most queues the layout supports (the MSI-X table holds 256 vectors, one is for config).
pub const MAX_QUEUES: usize = 255;

const VIRTIO_PCI_CAP_VENDOR: u8 = 0x09;
const VIRTIO_PCI_CAP_COMMON_CFG: u8 = 1;
const VIRTIO_PCI_CAP_NOTIFY_CFG: u8 = 2;
const VIRTIO_PCI_CAP_ISR_CFG: u8 = 3;
const VIRTIO_PCI_CAP_DEVICE_CFG: u8 = 4;
const VIRTIO_PCI_CAP_LEN: u8 = 16;
const VIRTIO_PCI_NOTIFY_CAP_LEN: u8 = 20;

/// Errors of building a virtio-pci device.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VirtioPciError {
    /// No queues, or more than [`MAX_QUEUES`].
    #[error("invalid queue layout: {0} queues (1 to {MAX_QUEUES} supported)")]
    QueueCount(usize),
    /// A maximum queue size that is not a power of two up to 32768.
    #[error("invalid queue layout: max size {0}")]
    QueueMaxSize(u16),
    /// The device type does not fit a modern PCI device id.
    #[error("virtio device type {0} cannot be a PCI device")]
    InvalidDeviceType(u32),
    /// Building the configuration space failed.
    #[error("configuration space: {0}")]
    Config(#[from] ConfigError),
    /// Building MSI-X failed.
    #[error("MSI-X: {0}")]
    Msix(#[from] MsixError),
}

/// PCI class, subclass for a virtio device type.
fn class_of(device_type: u32) -> (u8, u8) {
    match device_type {
        1 => (0x02, 0x00),  // network: ethernet
        2 => (0x01, 0x80),  // block: other mass storage
        3 => (0x07, 0x80),  // console: other communication
        16 => (0x03, 0x80), // GPU: other display
        18 => (0x09, 0x80), // input: other input
        63 => (0x03, 0x80), // the virtual GPU (device-model/SPEC.md): other display
        _ => (0xff, 0x00),  // entropy and the rest: unassigned class
    }
}

fn virtio_cap(cfg_type: u8, offset: u64, length: u64, extra: Option<u32>) -> Vec<u8> {
    let len = if extra.is_some() {
        VIRTIO_PCI_NOTIFY_CAP_LEN
    } else {
        VIRTIO_PCI_CAP_LEN
    };
    let mut c = vec![VIRTIO_PCI_CAP_VENDOR, 0, len, cfg_type, 0, 0, 0, 0];
    c.extend_from_slice(&(offset as u32).to_le_bytes());
    c.extend_from_slice(&(length as u32).to_le_bytes());
    if let Some(x) = extra {
        c.extend_from_slice(&x.to_le_bytes());
    }
    c
}

/// A virtio device on the PCI bus.
pub struct VirtioPciDevice {
    config: PciConfiguration,
    common: CommonConfig,
    device: Box<dyn VirtioDevice>,
    msix: Arc<Mutex<MsixConfig>>,
    msix_cap_reg: usize,
    interrupt: VirtioInterrupt,
    mem: Arc<GuestMemoryMmap>,
    activated: bool,
}

impl VirtioPciDevice {
    /// The MSI-X vectors the transport gives `device`: one per queue and one for
    /// configuration changes.
    pub fn msix_vectors_for(device: &dyn VirtioDevice) -> u16 {
        device.queue_max_sizes().len() as u16 + 1
    }

    /// Wraps `device`; `mem` is the guest memory its queues live in, `msi` the interrupt
    /// sources of its MSI-X vectors (queues + 1).
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: Arc<GuestMemoryMmap>,
        msi: Arc<dyn MsiInterruptGroup>,
    ) -> Result<Self, VirtioPciError> {
        let sizes = device.queue_max_sizes().to_vec();
        if sizes.is_empty() || sizes.len() > MAX_QUEUES {
            return Err(VirtioPciError::QueueCount(sizes.len()));
        }
        if let Some(bad) = sizes.iter().find(|s| !s.is_power_of_two() || **s > 32768) {
            return Err(VirtioPciError::QueueMaxSize(*bad));
        }
        let device_type = device.device_type();
        let device_id = u16::try_from(device_type)
            .ok()
            .and_then(|t| VIRTIO_PCI_DEVICE_ID_BASE.checked_add(t))
            .filter(|id| *id <= 0x107f)
            .ok_or(VirtioPciError::InvalidDeviceType(device_type))?;
        let (class, subclass) = class_of(device_type);
        let mut config = PciConfiguration::new(&PciHeader {
            vendor_id: VIRTIO_PCI_VENDOR_ID,
            device_id,
            revision: 1,
            class,
            subclass,
            prog_if: 0,
            subsystem_vendor_id: VIRTIO_PCI_VENDOR_ID,
            subsystem_id: device_id,
            interrupt_pin: 0,
        });
        config.add_bar(0, BAR0_SIZE, BarKind::Memory64)?;
        config.add_capability(&virtio_cap(
            VIRTIO_PCI_CAP_COMMON_CFG,
            COMMON_CFG_OFFSET,
            REGION_SIZE,
            None,
        ))?;
        config.add_capability(&virtio_cap(
            VIRTIO_PCI_CAP_NOTIFY_CFG,
            NOTIFY_OFFSET,
            REGION_SIZE,
            Some(NOTIFY_OFF_MULTIPLIER),
        ))?;
        config.add_capability(&virtio_cap(VIRTIO_PCI_CAP_ISR_CFG, ISR_OFFSET, 1, None))?;
        config.add_capability(&virtio_cap(
            VIRTIO_PCI_CAP_DEVICE_CFG,
            DEVICE_CFG_OFFSET,
            REGION_SIZE,
            None,
        ))?;
        let num_vectors = Self::msix_vectors_for(device.as_ref());
        let cap = MsixCap::new(
            num_vectors,
            0,
            MSIX_TABLE_OFFSET as u32,
            0,
            MSIX_PBA_OFFSET as u32,
        )?;
        let msix_cap_offset = config.add_capability(&cap.bytes())?;
        let msix_cap_reg = msix_cap_offset / 4;
        config.set_writable_bits(msix_cap_reg, MsixCap::first_dword_writable_mask());
        let msix = Arc::new(Mutex::new(MsixConfig::new(num_vectors, msi)?));
        let interrupt = VirtioInterrupt::new(msix.clone(), sizes.len());
        Ok(VirtioPciDevice {
            config,
            common: CommonConfig::new(&sizes, num_vectors),
            device,
            msix,
            msix_cap_reg,
            interrupt,
            mem,
            activated: false,
        })
    }

    /// Features offered to the driver (the device's plus VERSION_1).
    fn offered_features(&self) -> u64 {
        self.device.features() | FEATURE_VERSION_1
    }

    /// Whether the device was activated (DRIVER_OK accepted and queues valid).
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// The device status register.
    pub fn device_status(&self) -> u8 {
        self.common.status()
    }

    /// The interrupt handle (for devices that signal configuration changes).
    pub fn interrupt(&self) -> &VirtioInterrupt {
        &self.interrupt
    }

    fn sync_vectors(&self) {
        self.interrupt.set_config_vector(self.common.msix_config());
        for (i, q) in self.common.queues().iter().enumerate() {
            self.interrupt.set_queue_vector(i as u16, q.msix_vector);
        }
    }

    fn build_queues(&self) -> Result<Vec<Queue>, ActivateError> {
        let mut queues = Vec::new();
        for (i, qc) in self.common.queues().iter().enumerate() {
            let index = i as u16;
            let bad = |source: QueueError| ActivateError::InvalidQueue { index, source };
            let ring = |ring: &'static str, addr: u64| {
                move |source| bad(QueueError::RingAddress { ring, addr, source })
            };
            let mut q = Queue::new(qc.max_size).map_err(|source| {
                bad(QueueError::MaxSize {
                    max_size: qc.max_size,
                    source,
                })
            })?;
            if qc.enabled {
                q.try_set_size(qc.size).map_err(|source| {
                    bad(QueueError::Size {
                        size: qc.size,
                        source,
                    })
                })?;
                if qc.desc == 0 || qc.driver == 0 || qc.device == 0 {
                    return Err(bad(QueueError::ZeroRingAddress));
                }
                q.try_set_desc_table_address(GuestAddress(qc.desc))
                    .map_err(ring("descriptor table", qc.desc))?;
                q.try_set_avail_ring_address(GuestAddress(qc.driver))
                    .map_err(ring("driver ring", qc.driver))?;
                q.try_set_used_ring_address(GuestAddress(qc.device))
                    .map_err(ring("device ring", qc.device))?;
                q.set_ready(true);
                if !q.is_valid(self.mem.as_ref()) {
                    return Err(bad(QueueError::OutsideGuestMemory));
                }
            }
            queues.push(q);
        }
        Ok(queues)
    }

    fn activate(&mut self) {
        let result = self.build_queues().and_then(|queues| {
            self.device
                .activate(self.mem.clone(), queues, self.interrupt.clone())
        });
        match result {
            Ok(()) => self.activated = true,
            Err(e) => {
                log::error!("virtio-pci: activation failed: {e}; device needs reset");
                self.common.set_needs_reset();
                self.interrupt.signal_config_change();
            }
        }
    }

    fn reset(&mut self) {
        self.device.reset();
        self.activated = false;
        self.interrupt.reset();
    }

    fn write_common(&mut self, offset: u64, data: &[u8]) {
        let event = self.common.write(offset, data, self.offered_features());
        self.sync_vectors();
        match event {
            CommonConfigEvent::None => {}
            CommonConfigEvent::FeaturesOk(f) => self.device.ack_features(f),
            CommonConfigEvent::DriverOk => self.activate(),
            CommonConfigEvent::Reset => self.reset(),
            CommonConfigEvent::Failed => {}
        }
    }

    fn notify(&mut self, offset: u64, len: usize) {
        if !offset.is_multiple_of(u64::from(NOTIFY_OFF_MULTIPLIER)) || len > 4 {
            log::warn!("virtio-pci: bad notify of {len} bytes at {offset:#x}");
            return;
        }
        let queue = offset / u64::from(NOTIFY_OFF_MULTIPLIER);
        if queue >= self.common.queues().len() as u64 {
            log::warn!("virtio-pci: notify of absent queue {queue}");
            return;
        }
        if !self.activated {
            log::debug!("virtio-pci: notify of queue {queue} before activation ignored");
            return;
        }
        self.device.queue_notify(queue as u16);
    }
}

impl PciDevice for VirtioPciDevice {
    fn config_read(&self, reg: usize) -> u32 {
        self.config.read_reg(reg)
    }

    fn config_write(&mut self, reg: usize, offset: u64, data: &[u8]) -> Option<BarReprogram> {
        let moved = self.config.write_reg(reg, offset, data);
        if reg == self.msix_cap_reg {
            let ctrl = (self.config.read_reg(reg) >> 16) as u16;
            self.msix.lock().unwrap().set_message_control(ctrl);
        }
        moved
    }

    fn bars(&self) -> Vec<PciBarRegion> {
        self.config.bars()
    }

    fn set_bar_addr(&mut self, index: usize, addr: u64) -> Result<(), ConfigError> {
        self.config.set_bar_addr(index, addr)
    }

    fn read_bar(&mut self, index: usize, offset: u64, data: &mut [u8]) {
        if index != 0 || offset >= BAR0_SIZE {
            data.fill(0xff);
            return;
        }
        let region = offset & !(REGION_SIZE - 1);
        let off = offset - region;
        if off + data.len() as u64 > REGION_SIZE {
            log::warn!("virtio-pci: read crossing regions at {offset:#x}");
            data.fill(0);
            return;
        }
        match region {
            COMMON_CFG_OFFSET => self.common.read(off, data, self.offered_features()),
            ISR_OFFSET => {
                data.fill(0);
                if off == 0 {
                    if let Some(b) = data.first_mut() {
                        *b = self.interrupt.take_isr();
                    }
                }
            }
            DEVICE_CFG_OFFSET => self.device.read_config(off, data),
            MSIX_TABLE_OFFSET => self.msix.lock().unwrap().read_table(off, data),
            MSIX_PBA_OFFSET => self.msix.lock().unwrap().read_pba(off, data),
            _ => data.fill(0),
        }
    }

    fn write_bar(&mut self, index: usize, offset: u64, data: &[u8]) {
        if index != 0 || offset >= BAR0_SIZE {
            return;
        }
        let region = offset & !(REGION_SIZE - 1);
        let off = offset - region;
        if off + data.len() as u64 > REGION_SIZE {
            log::warn!("virtio-pci: write crossing regions at {offset:#x}");
            return;
        }
        match region {
            COMMON_CFG_OFFSET => self.write_common(off, data),
            DEVICE_CFG_OFFSET => self.device.write_config(off, data),
            NOTIFY_OFFSET => self.notify(off, data.len()),
            MSIX_TABLE_OFFSET => self.msix.lock().unwrap().write_table(off, data),
            MSIX_PBA_OFFSET => self.msix.lock().unwrap().write_pba(off, data),
            _ => log::debug!("virtio-pci: write to read-only BAR offset {offset:#x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::msix::testing::RecordingGroup;
    use crate::pci::msix::{MSIX_CAP_ID, MSIX_ENABLE};
    use crate::virtio_pci::common_config::offsets::*;
    use crate::virtio_pci::common_config::{
        STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK, STATUS_NEEDS_RESET,
    };

    #[derive(Default)]
    struct Log {
        acked: u64,
        activations: Vec<Vec<(u16, bool)>>,
        notifies: Vec<u16>,
        resets: u32,
        config_writes: Vec<(u64, Vec<u8>)>,
    }

    /// A two-queue device that records what the transport does.
    struct FakeDevice {
        log: Arc<Mutex<Log>>,
        interrupt: Option<VirtioInterrupt>,
    }

    impl VirtioDevice for FakeDevice {
        fn device_type(&self) -> u32 {
            4
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 8]
        }
        fn features(&self) -> u64 {
            1 << 3
        }
        fn ack_features(&mut self, features: u64) {
            self.log.lock().unwrap().acked = features;
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = offset as u8 + i as u8;
            }
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            self.log
                .lock()
                .unwrap()
                .config_writes
                .push((offset, data.to_vec()));
        }
        fn activate(
            &mut self,
            _mem: Arc<GuestMemoryMmap>,
            queues: Vec<Queue>,
            interrupt: VirtioInterrupt,
        ) -> Result<(), ActivateError> {
            self.log
                .lock()
                .unwrap()
                .activations
                .push(queues.iter().map(|q| (q.size(), q.ready())).collect());
            self.interrupt = Some(interrupt);
            Ok(())
        }
        fn queue_notify(&mut self, queue_index: u16) {
            self.log.lock().unwrap().notifies.push(queue_index);
            if let Some(i) = &self.interrupt {
                i.signal_used_queue(queue_index);
            }
        }
        fn reset(&mut self) {
            self.log.lock().unwrap().resets += 1;
            self.interrupt = None;
        }
    }

    struct Setup {
        dev: VirtioPciDevice,
        log: Arc<Mutex<Log>>,
        irq: Arc<RecordingGroup>,
    }

    fn setup() -> Setup {
        let log = Arc::new(Mutex::new(Log::default()));
        let irq = Arc::new(RecordingGroup::default());
        let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap());
        let dev = VirtioPciDevice::new(
            Box::new(FakeDevice {
                log: log.clone(),
                interrupt: None,
            }),
            mem,
            irq.clone(),
        )
        .unwrap();
        Setup { dev, log, irq }
    }

    fn rd(dev: &mut VirtioPciDevice, offset: u64, len: usize) -> u32 {
        let mut d = [0u8; 4];
        dev.read_bar(0, offset, &mut d[..len]);
        u32::from_le_bytes(d)
    }

    fn wr(dev: &mut VirtioPciDevice, offset: u64, len: usize, v: u32) {
        dev.write_bar(0, offset, &v.to_le_bytes()[..len]);
    }

    fn status(dev: &mut VirtioPciDevice, s: u8) {
        wr(dev, DEVICE_STATUS, 1, s.into());
    }

    /// Drives the device to FEATURES_OK and configures queue 0 at 0x1000 (and queue 1 at
    /// 0x4000 if `both`).
    fn negotiate(dev: &mut VirtioPciDevice, both: bool) {
        status(dev, STATUS_ACKNOWLEDGE);
        status(dev, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        wr(dev, DRIVER_FEATURE_SELECT, 4, 0);
        wr(dev, DRIVER_FEATURE, 4, 1 << 3);
        wr(dev, DRIVER_FEATURE_SELECT, 4, 1);
        wr(dev, DRIVER_FEATURE, 4, 1);
        status(dev, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
        let queues: &[(u16, u64)] = if both {
            &[(0, 0x1000), (1, 0x4000)]
        } else {
            &[(0, 0x1000)]
        };
        for (q, base) in queues {
            wr(dev, QUEUE_SELECT, 2, (*q).into());
            wr(dev, QUEUE_SIZE, 2, 8);
            wr(dev, QUEUE_MSIX_VECTOR, 2, u32::from(*q) + 1);
            wr(dev, QUEUE_DESC_LO, 4, *base as u32);
            wr(dev, QUEUE_DRIVER_LO, 4, *base as u32 + 0x800);
            wr(dev, QUEUE_DEVICE_LO, 4, *base as u32 + 0x1000);
            wr(dev, QUEUE_ENABLE, 2, 1);
        }
    }

    const OK: u8 = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;

    #[test]
    fn pci_identity_and_capabilities() {
        let Setup { dev, .. } = setup();
        assert_eq!(dev.config_read(0), 0x1044_1af4);
        assert_eq!(dev.config_read(2), 0xff00_0001);
        assert_eq!(dev.config_read(11), 0x1044_1af4);
        assert_eq!(dev.config_read(4) & 0x6, 0x4); // 64-bit memory BAR
        assert_eq!(dev.bars()[0].size, BAR0_SIZE);
        // Walk the capability list.
        let mut found = Vec::new();
        let mut ptr = (dev.config_read(13) & 0xff) as usize;
        while ptr != 0 {
            let dw = dev.config_read(ptr / 4);
            let id = dw as u8;
            if id == VIRTIO_PCI_CAP_VENDOR {
                let cfg_type = (dw >> 24) as u8;
                let offset = dev.config_read(ptr / 4 + 2);
                found.push((cfg_type, offset));
                if cfg_type == VIRTIO_PCI_CAP_NOTIFY_CFG {
                    assert_eq!(dev.config_read(ptr / 4 + 4), NOTIFY_OFF_MULTIPLIER);
                }
            } else {
                assert_eq!(id, MSIX_CAP_ID);
                assert_eq!((dw >> 16) & 0x7ff, 2); // 3 vectors
                assert_eq!(dev.config_read(ptr / 4 + 1), MSIX_TABLE_OFFSET as u32);
                assert_eq!(dev.config_read(ptr / 4 + 2), MSIX_PBA_OFFSET as u32);
                found.push((0, 0));
            }
            ptr = ((dw >> 8) & 0xff) as usize;
        }
        assert_eq!(
            found,
            vec![(1, 0), (2, 0x3000), (3, 0x1000), (4, 0x2000), (0, 0)]
        );
    }

    #[test]
    fn driver_ok_activates_and_notify_reaches_device() {
        let Setup {
            mut dev, log, irq, ..
        } = setup();
        negotiate(&mut dev, true);
        assert_eq!(log.lock().unwrap().acked, (1 << 3) | FEATURE_VERSION_1);
        // Notify before activation is ignored.
        wr(&mut dev, NOTIFY_OFFSET, 2, 0);
        assert!(log.lock().unwrap().notifies.is_empty());
        status(&mut dev, OK);
        assert!(dev.is_activated());
        assert_eq!(
            log.lock().unwrap().activations,
            vec![vec![(8, true), (8, true)]]
        );
        // Enable MSI-X via config space and unmask vector 1.
        let cap_reg = dev.msix_cap_reg;
        dev.config_write(cap_reg, 2, &MSIX_ENABLE.to_le_bytes());
        wr(&mut dev, MSIX_TABLE_OFFSET + 16 + 12, 4, 0);
        wr(&mut dev, NOTIFY_OFFSET + 4, 2, 1);
        wr(&mut dev, NOTIFY_OFFSET, 2, 0);
        wr(&mut dev, NOTIFY_OFFSET + 8, 2, 2); // absent queue
        wr(&mut dev, NOTIFY_OFFSET + 1, 1, 0); // misaligned
        assert_eq!(log.lock().unwrap().notifies, vec![1, 0]);
        // Queue 0 -> vector 1 fired; queue 1 had vector 2 (masked) -> pending.
        assert_eq!(irq.take_triggers(), vec![1]);
        assert_eq!(rd(&mut dev, MSIX_PBA_OFFSET, 4), 0b100);
        // ISR is read-to-clear.
        assert_eq!(rd(&mut dev, ISR_OFFSET, 1), 1);
        assert_eq!(rd(&mut dev, ISR_OFFSET, 1), 0);
        // Device config passes through.
        assert_eq!(rd(&mut dev, DEVICE_CFG_OFFSET + 4, 2), 0x0504);
        wr(&mut dev, DEVICE_CFG_OFFSET + 2, 1, 7);
        assert_eq!(log.lock().unwrap().config_writes, vec![(2, vec![7])]);
    }

    #[test]
    fn invalid_queue_fails_activation() {
        for (bad, says) in [
            ((QUEUE_SIZE, 2usize, 6u32), "size 6: "),
            ((QUEUE_SIZE, 2, 32), "size 32: "),
            ((QUEUE_DESC_LO, 4, 0), "zero ring address"),
            // The used ring past the end of memory.
            (
                (QUEUE_DEVICE_LO, 4, 0x00ff_f000),
                "rings outside guest memory",
            ),
            ((QUEUE_DRIVER_LO, 4, 0x1801), "driver ring at 0x1801: "),
        ] {
            let Setup {
                mut dev, log, irq, ..
            } = setup();
            status(&mut dev, STATUS_ACKNOWLEDGE);
            status(&mut dev, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
            wr(&mut dev, DRIVER_FEATURE_SELECT, 4, 1);
            wr(&mut dev, DRIVER_FEATURE, 4, 1);
            status(
                &mut dev,
                STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
            );
            wr(&mut dev, MSIX_CONFIG, 2, 0);
            wr(&mut dev, QUEUE_SIZE, 2, 8);
            wr(&mut dev, QUEUE_DESC_LO, 4, 0x1000);
            wr(&mut dev, QUEUE_DRIVER_LO, 4, 0x1800);
            wr(&mut dev, QUEUE_DEVICE_LO, 4, 0x2000);
            wr(&mut dev, bad.0, bad.1, bad.2);
            wr(&mut dev, QUEUE_ENABLE, 2, 1);
            let err = dev.build_queues().unwrap_err().to_string();
            assert!(err.starts_with("queue 0 is invalid: "), "{err}");
            assert!(err.contains(says), "{bad:?}: {err}");
            let cap_reg = dev.msix_cap_reg;
            dev.config_write(cap_reg, 2, &MSIX_ENABLE.to_le_bytes());
            wr(&mut dev, MSIX_TABLE_OFFSET + 12, 4, 0);
            status(&mut dev, OK);
            assert!(!dev.is_activated(), "{bad:?}");
            assert_eq!(dev.device_status(), OK | STATUS_NEEDS_RESET, "{bad:?}");
            assert!(log.lock().unwrap().activations.is_empty());
            // The config-change vector told the driver.
            assert_eq!(irq.take_triggers(), vec![0]);
        }
    }

    #[test]
    fn reset_clears_queues_and_vectors() {
        let Setup {
            mut dev, log, irq, ..
        } = setup();
        negotiate(&mut dev, true);
        status(&mut dev, OK);
        let cap_reg = dev.msix_cap_reg;
        dev.config_write(cap_reg, 2, &MSIX_ENABLE.to_le_bytes());
        wr(&mut dev, MSIX_TABLE_OFFSET + 16 + 12, 4, 0);
        status(&mut dev, 0);
        assert_eq!(log.lock().unwrap().resets, 1);
        assert!(!dev.is_activated());
        assert_eq!(rd(&mut dev, DEVICE_STATUS, 1), 0);
        assert_eq!(rd(&mut dev, QUEUE_ENABLE, 2), 0);
        assert_eq!(rd(&mut dev, QUEUE_SIZE, 2), 16);
        assert_eq!(rd(&mut dev, QUEUE_MSIX_VECTOR, 2), 0xffff);
        // After reset a notify does nothing and the old vector is unassigned.
        wr(&mut dev, NOTIFY_OFFSET, 2, 0);
        assert!(log.lock().unwrap().notifies.is_empty());
        dev.interrupt().signal_used_queue(0);
        assert!(irq.take_triggers().is_empty());
        // The device can be brought up again.
        negotiate(&mut dev, false);
        status(&mut dev, OK);
        assert!(dev.is_activated());
        assert_eq!(log.lock().unwrap().activations.len(), 2);
    }

    #[test]
    fn hostile_bar_accesses() {
        let Setup { mut dev, .. } = setup();
        let mut d = [0u8; 8];
        dev.read_bar(0, BAR0_SIZE - 2, &mut d[..4]);
        dev.read_bar(0, u64::MAX, &mut d[..1]);
        dev.read_bar(3, 0, &mut d[..4]);
        assert_eq!(&d[..4], &[0xff; 4]);
        dev.read_bar(0, REGION_SIZE - 2, &mut d[..4]);
        dev.write_bar(0, REGION_SIZE - 2, &[0; 4]);
        dev.write_bar(0, u64::MAX, &[0; 4]);
        dev.write_bar(0, ISR_OFFSET, &[0xff]);
        dev.write_bar(0, 0x6000, &[0xff; 8]);
        dev.write_bar(0, MSIX_TABLE_OFFSET + 0x800, &[0xff; 4]);
        dev.read_bar(0, MSIX_PBA_OFFSET + 0x800, &mut d);
        assert_eq!(rd(&mut dev, ISR_OFFSET, 1), 0);
        assert_eq!(rd(&mut dev, DEVICE_STATUS, 1), 0);
    }
}
