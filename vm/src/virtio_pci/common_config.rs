//! The virtio 1.x common configuration structure (`struct virtio_pci_common_cfg`).
//!
//! [`CommonConfig`] holds the registers and enforces the device-status state machine; it
//! never touches the device. A write that needs the transport to act (features accepted,
//! DRIVER_OK, reset) is reported as a [`CommonConfigEvent`]. Each field must be accessed
//! with its natural width; anything else is logged and ignored (reads return zero).

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};

use super::VIRTIO_MSI_NO_VECTOR;

/// Byte offsets of the fields.
pub mod offsets {
    /// le32, selects which 32 feature bits `DEVICE_FEATURE` shows.
    pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
    /// le32, read-only device feature window.
    pub const DEVICE_FEATURE: u64 = 0x04;
    /// le32, selects which 32 feature bits `DRIVER_FEATURE` writes.
    pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
    /// le32, driver feature window.
    pub const DRIVER_FEATURE: u64 = 0x0c;
    /// le16, MSI-X vector for configuration changes.
    pub const MSIX_CONFIG: u64 = 0x10;
    /// le16, read-only number of queues.
    pub const NUM_QUEUES: u64 = 0x12;
    /// u8, device status.
    pub const DEVICE_STATUS: u64 = 0x14;
    /// u8, read-only configuration generation.
    pub const CONFIG_GENERATION: u64 = 0x15;
    /// le16, selects the queue the following fields refer to.
    pub const QUEUE_SELECT: u64 = 0x16;
    /// le16, queue size (0 reads for absent queues).
    pub const QUEUE_SIZE: u64 = 0x18;
    /// le16, MSI-X vector of the queue.
    pub const QUEUE_MSIX_VECTOR: u64 = 0x1a;
    /// le16, queue enable.
    pub const QUEUE_ENABLE: u64 = 0x1c;
    /// le16, read-only notification offset (in units of the notify multiplier).
    pub const QUEUE_NOTIFY_OFF: u64 = 0x1e;
    /// le32 pair, descriptor table address.
    pub const QUEUE_DESC_LO: u64 = 0x20;
    /// High half of the descriptor table address.
    pub const QUEUE_DESC_HI: u64 = 0x24;
    /// le32 pair, driver (available) ring address.
    pub const QUEUE_DRIVER_LO: u64 = 0x28;
    /// High half of the driver ring address.
    pub const QUEUE_DRIVER_HI: u64 = 0x2c;
    /// le32 pair, device (used) ring address.
    pub const QUEUE_DEVICE_LO: u64 = 0x30;
    /// High half of the device ring address.
    pub const QUEUE_DEVICE_HI: u64 = 0x34;
    /// Size of the structure without the optional trailing fields.
    pub const SIZE: u64 = 0x38;
}

use offsets::*;

/// Device status: ACKNOWLEDGE.
pub const STATUS_ACKNOWLEDGE: u8 = VIRTIO_CONFIG_S_ACKNOWLEDGE as u8;
/// Device status: DRIVER.
pub const STATUS_DRIVER: u8 = VIRTIO_CONFIG_S_DRIVER as u8;
/// Device status: FEATURES_OK.
pub const STATUS_FEATURES_OK: u8 = VIRTIO_CONFIG_S_FEATURES_OK as u8;
/// Device status: DRIVER_OK.
pub const STATUS_DRIVER_OK: u8 = VIRTIO_CONFIG_S_DRIVER_OK as u8;
/// Device status: DEVICE_NEEDS_RESET (set by the device only).
pub const STATUS_NEEDS_RESET: u8 = VIRTIO_CONFIG_S_NEEDS_RESET as u8;
/// Device status: FAILED.
pub const STATUS_FAILED: u8 = VIRTIO_CONFIG_S_FAILED as u8;
/// Feature bit VIRTIO_F_VERSION_1 as a mask.
pub const FEATURE_VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;

const A: u8 = STATUS_ACKNOWLEDGE;
const D: u8 = STATUS_DRIVER;
const F: u8 = STATUS_FEATURES_OK;
const K: u8 = STATUS_DRIVER_OK;

/// The only status changes a driver may make (besides reset and setting FAILED):
/// each step adds exactly the next bit of the initialization sequence.
const STATUS_TRANSITIONS: [(u8, u8); 4] = [
    (0, A),
    (A, A | D),
    (A | D, A | D | F),
    (A | D | F, A | D | F | K),
];

/// What the transport must do after a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommonConfigEvent {
    /// Nothing.
    None,
    /// FEATURES_OK was accepted with these driver features.
    FeaturesOk(u64),
    /// DRIVER_OK was set: activate the device.
    DriverOk,
    /// The driver wrote 0 to device status: reset the device.
    Reset,
    /// The driver set FAILED.
    Failed,
}

/// What the driver configured for one queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    /// Largest size the device supports.
    pub max_size: u16,
    /// Size the driver chose (not validated until activation).
    pub size: u16,
    /// MSI-X vector, or [`VIRTIO_MSI_NO_VECTOR`].
    pub msix_vector: u16,
    /// queue_enable was written 1.
    pub enabled: bool,
    /// Descriptor table address.
    pub desc: u64,
    /// Driver (available) ring address.
    pub driver: u64,
    /// Device (used) ring address.
    pub device: u64,
}

impl QueueConfig {
    fn new(max_size: u16) -> Self {
        QueueConfig {
            max_size,
            size: max_size,
            msix_vector: VIRTIO_MSI_NO_VECTOR,
            enabled: false,
            desc: 0,
            driver: 0,
            device: 0,
        }
    }
}

/// The common configuration registers of one device.
#[derive(Clone, Debug)]
pub struct CommonConfig {
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    msix_config: u16,
    status: u8,
    config_generation: u8,
    queue_select: u16,
    queues: Vec<QueueConfig>,
    msix_vectors: u16,
}

fn set_half(v: &mut u64, high: bool, value: u32) {
    if high {
        *v = (*v & 0xffff_ffff) | (u64::from(value) << 32);
    } else {
        *v = (*v & !0xffff_ffff) | u64::from(value);
    }
}

impl CommonConfig {
    /// Registers for queues of the given maximum sizes and a device with `msix_vectors`
    /// MSI-X vectors (vector numbers at or above it read back as NO_VECTOR).
    pub fn new(queue_max_sizes: &[u16], msix_vectors: u16) -> Self {
        CommonConfig {
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            msix_config: VIRTIO_MSI_NO_VECTOR,
            status: 0,
            config_generation: 0,
            queue_select: 0,
            queues: queue_max_sizes
                .iter()
                .map(|m| QueueConfig::new(*m))
                .collect(),
            msix_vectors,
        }
    }

    /// Device status.
    pub fn status(&self) -> u8 {
        self.status
    }

    /// Features the driver wrote.
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    /// The configuration-change MSI-X vector.
    pub fn msix_config(&self) -> u16 {
        self.msix_config
    }

    /// The per-queue configuration.
    pub fn queues(&self) -> &[QueueConfig] {
        &self.queues
    }

    /// Sets DEVICE_NEEDS_RESET (the device hit an error it cannot recover from).
    pub fn set_needs_reset(&mut self) {
        self.status |= STATUS_NEEDS_RESET;
    }

    /// Bumps config_generation (the device configuration changed).
    pub fn bump_generation(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
    }

    /// Back to the power-on state (device status 0).
    pub fn reset(&mut self) {
        let sizes: Vec<u16> = self.queues.iter().map(|q| q.max_size).collect();
        *self = CommonConfig::new(&sizes, self.msix_vectors);
    }

    fn selected_queue(&self) -> Option<&QueueConfig> {
        self.queues.get(usize::from(self.queue_select))
    }

    fn checked_vector(&self, vector: u16) -> u16 {
        checked_vector(self.msix_vectors, vector)
    }

    /// Serves a guest read. `device_features` is what the device offers (with VERSION_1).
    pub fn read(&self, offset: u64, data: &mut [u8], device_features: u64) {
        let q = self.selected_queue();
        let value: Option<u32> = match (offset, data.len()) {
            (DEVICE_FEATURE_SELECT, 4) => Some(self.device_feature_select),
            (DEVICE_FEATURE, 4) => Some(match self.device_feature_select {
                0 => device_features as u32,
                1 => (device_features >> 32) as u32,
                _ => 0,
            }),
            (DRIVER_FEATURE_SELECT, 4) => Some(self.driver_feature_select),
            (DRIVER_FEATURE, 4) => Some(match self.driver_feature_select {
                0 => self.driver_features as u32,
                1 => (self.driver_features >> 32) as u32,
                _ => 0,
            }),
            (MSIX_CONFIG, 2) => Some(self.msix_config.into()),
            (NUM_QUEUES, 2) => Some(self.queues.len() as u32),
            (DEVICE_STATUS, 1) => Some(self.status.into()),
            (CONFIG_GENERATION, 1) => Some(self.config_generation.into()),
            (QUEUE_SELECT, 2) => Some(self.queue_select.into()),
            (QUEUE_SIZE, 2) => Some(q.map_or(0, |q| q.size.into())),
            (QUEUE_MSIX_VECTOR, 2) => {
                Some(q.map_or(VIRTIO_MSI_NO_VECTOR, |q| q.msix_vector).into())
            }
            (QUEUE_ENABLE, 2) => Some(q.map_or(0, |q| q.enabled.into())),
            (QUEUE_NOTIFY_OFF, 2) => Some(u32::from(self.queue_select)),
            (QUEUE_DESC_LO, 4) => Some(q.map_or(0, |q| q.desc as u32)),
            (QUEUE_DESC_HI, 4) => Some(q.map_or(0, |q| (q.desc >> 32) as u32)),
            (QUEUE_DRIVER_LO, 4) => Some(q.map_or(0, |q| q.driver as u32)),
            (QUEUE_DRIVER_HI, 4) => Some(q.map_or(0, |q| (q.driver >> 32) as u32)),
            (QUEUE_DEVICE_LO, 4) => Some(q.map_or(0, |q| q.device as u32)),
            (QUEUE_DEVICE_HI, 4) => Some(q.map_or(0, |q| (q.device >> 32) as u32)),
            _ => None,
        };
        match value {
            Some(v) => {
                let bytes = v.to_le_bytes();
                data.copy_from_slice(&bytes[..data.len()]);
            }
            None => {
                if offset < SIZE {
                    log::warn!(
                        "virtio: bad common cfg read of {} bytes at {offset:#x}",
                        data.len()
                    );
                }
                data.fill(0);
            }
        }
    }

    /// Serves a guest write. `device_features` is what the device offers (with VERSION_1).
    pub fn write(&mut self, offset: u64, data: &[u8], device_features: u64) -> CommonConfigEvent {
        let value = match data.len() {
            1 => u32::from(data[0]),
            2 => u32::from(u16::from_le_bytes([data[0], data[1]])),
            4 => u32::from_le_bytes([data[0], data[1], data[2], data[3]]),
            _ => {
                log::warn!(
                    "virtio: bad common cfg write of {} bytes at {offset:#x}",
                    data.len()
                );
                return CommonConfigEvent::None;
            }
        };
        match (offset, data.len()) {
            (DEVICE_FEATURE_SELECT, 4) => self.device_feature_select = value,
            (DRIVER_FEATURE_SELECT, 4) => self.driver_feature_select = value,
            (DRIVER_FEATURE, 4) => self.write_driver_features(value),
            (MSIX_CONFIG, 2) => self.msix_config = self.checked_vector(value as u16),
            (DEVICE_STATUS, 1) => return self.write_status(value as u8, device_features),
            (QUEUE_SELECT, 2) => self.queue_select = value as u16,
            (QUEUE_SIZE, 2)
            | (QUEUE_MSIX_VECTOR, 2)
            | (QUEUE_ENABLE, 2)
            | (QUEUE_DESC_LO, 4)
            | (QUEUE_DESC_HI, 4)
            | (QUEUE_DRIVER_LO, 4)
            | (QUEUE_DRIVER_HI, 4)
            | (QUEUE_DEVICE_LO, 4)
            | (QUEUE_DEVICE_HI, 4) => self.write_queue(offset, value),
            (DEVICE_FEATURE, 4)
            | (NUM_QUEUES, 2)
            | (CONFIG_GENERATION, 1)
            | (QUEUE_NOTIFY_OFF, 2) => {
                log::warn!("virtio: write to read-only common cfg field at {offset:#x}")
            }
            _ => log::warn!(
                "virtio: bad common cfg write of {} bytes at {offset:#x}",
                data.len()
            ),
        }
        CommonConfigEvent::None
    }

    fn write_driver_features(&mut self, value: u32) {
        if self.status & !STATUS_NEEDS_RESET != A | D {
            log::warn!(
                "virtio: driver features written in status {:#x}, ignored",
                self.status
            );
            return;
        }
        match self.driver_feature_select {
            0 => set_half(&mut self.driver_features, false, value),
            1 => set_half(&mut self.driver_features, true, value),
            s => {
                if value != 0 {
                    log::warn!("virtio: driver features {value:#x} in window {s} ignored");
                }
            }
        }
    }

    fn write_queue(&mut self, offset: u64, value: u32) {
        let status = self.status;
        let select = self.queue_select;
        let Some(q) = self.queues.get_mut(usize::from(select)) else {
            log::warn!("virtio: write to absent queue {select}");
            return;
        };
        if status & STATUS_DRIVER_OK != 0 || (q.enabled && offset != QUEUE_MSIX_VECTOR) {
            log::warn!("virtio: queue {select} changed after enable/DRIVER_OK, ignored");
            return;
        }
        match offset {
            QUEUE_SIZE => q.size = value as u16,
            QUEUE_MSIX_VECTOR => {
                let vectors = self.msix_vectors;
                q.msix_vector = checked_vector(vectors, value as u16)
            }
            QUEUE_ENABLE => {
                if value == 1 {
                    q.enabled = true;
                } else {
                    log::warn!("virtio: queue_enable {value} for queue {select} ignored");
                }
            }
            QUEUE_DESC_LO | QUEUE_DESC_HI => set_half(&mut q.desc, offset == QUEUE_DESC_HI, value),
            QUEUE_DRIVER_LO | QUEUE_DRIVER_HI => {
                set_half(&mut q.driver, offset == QUEUE_DRIVER_HI, value)
            }
            _ => set_half(&mut q.device, offset == QUEUE_DEVICE_HI, value),
        }
    }

    fn write_status(&mut self, value: u8, device_features: u64) -> CommonConfigEvent {
        if value == 0 {
            self.reset();
            return CommonConfigEvent::Reset;
        }
        let needs_reset = self.status & STATUS_NEEDS_RESET;
        let cur = self.status & !STATUS_NEEDS_RESET;
        // DEVICE_NEEDS_RESET belongs to the device; ignore the driver's copy of it.
        let new = value & !STATUS_NEEDS_RESET;
        if new == cur {
            return CommonConfigEvent::None;
        }
        if new == cur | STATUS_FAILED {
            log::warn!("virtio: driver set FAILED (status {cur:#x})");
            self.status |= STATUS_FAILED;
            return CommonConfigEvent::Failed;
        }
        if !STATUS_TRANSITIONS.contains(&(cur, new)) {
            log::warn!("virtio: invalid status transition {cur:#x} -> {new:#x}, ignored");
            return CommonConfigEvent::None;
        }
        let event = match new & !cur {
            STATUS_FEATURES_OK => {
                let unknown = self.driver_features & !device_features;
                if unknown != 0 || self.driver_features & FEATURE_VERSION_1 == 0 {
                    log::warn!(
                        "virtio: driver features {:#x} not acceptable (offered {device_features:#x}); FEATURES_OK stays clear",
                        self.driver_features
                    );
                    return CommonConfigEvent::None;
                }
                CommonConfigEvent::FeaturesOk(self.driver_features)
            }
            STATUS_DRIVER_OK => CommonConfigEvent::DriverOk,
            _ => CommonConfigEvent::None,
        };
        self.status = new | needs_reset;
        event
    }
}

/// `vector` if the device has it, else NO_VECTOR (which the driver reads back as a refusal).
fn checked_vector(msix_vectors: u16, vector: u16) -> u16 {
    if vector < msix_vectors {
        vector
    } else {
        if vector != VIRTIO_MSI_NO_VECTOR {
            log::warn!("virtio: MSI-X vector {vector} out of range");
        }
        VIRTIO_MSI_NO_VECTOR
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFERED: u64 = FEATURE_VERSION_1 | 0b101;

    fn r(c: &CommonConfig, offset: u64, len: usize) -> u32 {
        let mut d = [0u8; 4];
        c.read(offset, &mut d[..len], OFFERED);
        u32::from_le_bytes(d)
    }

    fn w(c: &mut CommonConfig, offset: u64, len: usize, v: u32) -> CommonConfigEvent {
        c.write(offset, &v.to_le_bytes()[..len], OFFERED)
    }

    fn to_features_ok(c: &mut CommonConfig, features: u64) -> CommonConfigEvent {
        w(c, DEVICE_STATUS, 1, A.into());
        w(c, DEVICE_STATUS, 1, (A | D).into());
        w(c, DRIVER_FEATURE_SELECT, 4, 0);
        w(c, DRIVER_FEATURE, 4, features as u32);
        w(c, DRIVER_FEATURE_SELECT, 4, 1);
        w(c, DRIVER_FEATURE, 4, (features >> 32) as u32);
        w(c, DEVICE_STATUS, 1, (A | D | F).into())
    }

    #[test]
    fn feature_select_windows() {
        let mut c = CommonConfig::new(&[256], 2);
        assert_eq!(r(&c, DEVICE_FEATURE, 4), 0b101);
        w(&mut c, DEVICE_FEATURE_SELECT, 4, 1);
        assert_eq!(r(&c, DEVICE_FEATURE_SELECT, 4), 1);
        assert_eq!(r(&c, DEVICE_FEATURE, 4), 1); // bit 32
        w(&mut c, DEVICE_FEATURE_SELECT, 4, 2);
        assert_eq!(r(&c, DEVICE_FEATURE, 4), 0);
        // Driver features only in ACKNOWLEDGE|DRIVER.
        w(&mut c, DRIVER_FEATURE, 4, 0b1);
        assert_eq!(c.driver_features(), 0);
        w(&mut c, DEVICE_STATUS, 1, A.into());
        w(&mut c, DEVICE_STATUS, 1, (A | D).into());
        w(&mut c, DRIVER_FEATURE, 4, 0b100);
        w(&mut c, DRIVER_FEATURE_SELECT, 4, 1);
        w(&mut c, DRIVER_FEATURE, 4, 1);
        assert_eq!(r(&c, DRIVER_FEATURE, 4), 1);
        w(&mut c, DRIVER_FEATURE_SELECT, 4, 0);
        assert_eq!(r(&c, DRIVER_FEATURE, 4), 0b100);
        assert_eq!(c.driver_features(), FEATURE_VERSION_1 | 0b100);
        // Device features are read-only; wrong widths are ignored.
        w(&mut c, DEVICE_FEATURE, 4, 0xffff_ffff);
        w(&mut c, DEVICE_FEATURE_SELECT, 4, 0);
        assert_eq!(r(&c, DEVICE_FEATURE, 4), 0b101);
        w(&mut c, DEVICE_FEATURE_SELECT, 2, 1);
        assert_eq!(r(&c, DEVICE_FEATURE_SELECT, 4), 0);
        assert_eq!(r(&c, DEVICE_FEATURE, 2), 0);
        c.write(0x3, &[1, 2, 3], OFFERED);
        assert_eq!(r(&c, 0x1000, 4), 0);
    }

    #[test]
    fn queue_select_size_enable() {
        let mut c = CommonConfig::new(&[256, 64], 3);
        assert_eq!(r(&c, NUM_QUEUES, 2), 2);
        assert_eq!(r(&c, QUEUE_SIZE, 2), 256);
        w(&mut c, QUEUE_SELECT, 2, 1);
        assert_eq!(r(&c, QUEUE_SIZE, 2), 64);
        assert_eq!(r(&c, QUEUE_NOTIFY_OFF, 2), 1);
        w(&mut c, QUEUE_SIZE, 2, 32);
        w(&mut c, QUEUE_MSIX_VECTOR, 2, 2);
        assert_eq!(r(&c, QUEUE_MSIX_VECTOR, 2), 2);
        // Vector out of range reads back NO_VECTOR.
        w(&mut c, QUEUE_MSIX_VECTOR, 2, 3);
        assert_eq!(r(&c, QUEUE_MSIX_VECTOR, 2), u32::from(VIRTIO_MSI_NO_VECTOR));
        w(&mut c, MSIX_CONFIG, 2, 0);
        assert_eq!(r(&c, MSIX_CONFIG, 2), 0);
        w(&mut c, MSIX_CONFIG, 2, 99);
        assert_eq!(c.msix_config(), VIRTIO_MSI_NO_VECTOR);
        w(&mut c, QUEUE_DESC_LO, 4, 0x1000);
        w(&mut c, QUEUE_DESC_HI, 4, 0x2);
        w(&mut c, QUEUE_DRIVER_LO, 4, 0x3000);
        w(&mut c, QUEUE_DEVICE_LO, 4, 0x4000);
        assert_eq!(r(&c, QUEUE_DESC_HI, 4), 2);
        w(&mut c, QUEUE_ENABLE, 2, 1);
        assert_eq!(r(&c, QUEUE_ENABLE, 2), 1);
        // Enabled queues are frozen.
        w(&mut c, QUEUE_SIZE, 2, 16);
        w(&mut c, QUEUE_ENABLE, 2, 0);
        let q = c.queues()[1];
        assert_eq!((q.size, q.enabled), (32, true));
        assert_eq!(
            (q.desc, q.driver, q.device),
            (0x2_0000_1000, 0x3000, 0x4000)
        );
        assert!(!c.queues()[0].enabled);
        // Absent queue: size 0, writes ignored.
        w(&mut c, QUEUE_SELECT, 2, 5);
        assert_eq!(r(&c, QUEUE_SIZE, 2), 0);
        w(&mut c, QUEUE_SIZE, 2, 8);
        w(&mut c, QUEUE_ENABLE, 2, 1);
        assert_eq!(r(&c, QUEUE_ENABLE, 2), 0);
    }

    #[test]
    fn valid_status_sequence() {
        let mut c = CommonConfig::new(&[256], 2);
        assert_eq!(
            to_features_ok(&mut c, FEATURE_VERSION_1 | 1),
            CommonConfigEvent::FeaturesOk(FEATURE_VERSION_1 | 1)
        );
        assert_eq!(c.status(), A | D | F);
        assert_eq!(
            w(&mut c, DEVICE_STATUS, 1, (A | D | F | K).into()),
            CommonConfigEvent::DriverOk
        );
        assert_eq!(r(&c, DEVICE_STATUS, 1), u32::from(A | D | F | K));
        // Rewriting the same status is a no-op, queues are frozen after DRIVER_OK.
        assert_eq!(
            w(&mut c, DEVICE_STATUS, 1, (A | D | F | K).into()),
            CommonConfigEvent::None
        );
        w(&mut c, QUEUE_SIZE, 2, 16);
        assert_eq!(c.queues()[0].size, 256);
        c.set_needs_reset();
        assert_eq!(
            w(
                &mut c,
                DEVICE_STATUS,
                1,
                (A | D | F | K | STATUS_FAILED).into()
            ),
            CommonConfigEvent::Failed
        );
        assert_eq!(
            c.status(),
            A | D | F | K | STATUS_FAILED | STATUS_NEEDS_RESET
        );
    }

    #[test]
    fn invalid_status_transitions() {
        let mut c = CommonConfig::new(&[256], 2);
        // Skipping steps.
        assert_eq!(
            w(&mut c, DEVICE_STATUS, 1, (A | D).into()),
            CommonConfigEvent::None
        );
        assert_eq!(c.status(), 0);
        w(&mut c, DEVICE_STATUS, 1, A.into());
        w(&mut c, DEVICE_STATUS, 1, (A | D | F | K).into());
        assert_eq!(c.status(), A);
        // Clearing bits.
        w(&mut c, DEVICE_STATUS, 1, (A | D).into());
        w(&mut c, DEVICE_STATUS, 1, D.into());
        assert_eq!(c.status(), A | D);
        // The driver cannot set NEEDS_RESET.
        w(
            &mut c,
            DEVICE_STATUS,
            1,
            (A | D | STATUS_NEEDS_RESET).into(),
        );
        assert_eq!(c.status(), A | D);
        // After FAILED, only reset helps.
        w(&mut c, DEVICE_STATUS, 1, (A | D | STATUS_FAILED).into());
        w(&mut c, DEVICE_STATUS, 1, (A | D | F | STATUS_FAILED).into());
        assert_eq!(c.status(), A | D | STATUS_FAILED);
    }

    #[test]
    fn features_ok_rejects_unoffered_features() {
        let mut c = CommonConfig::new(&[256], 2);
        assert_eq!(
            to_features_ok(&mut c, FEATURE_VERSION_1 | 0b10),
            CommonConfigEvent::None
        );
        assert_eq!(r(&c, DEVICE_STATUS, 1) & u32::from(F), 0);
        // Without VERSION_1 also refused.
        let mut c = CommonConfig::new(&[256], 2);
        assert_eq!(to_features_ok(&mut c, 0b1), CommonConfigEvent::None);
        assert_eq!(c.status(), A | D);
        // DRIVER_OK without FEATURES_OK is invalid.
        w(&mut c, DEVICE_STATUS, 1, (A | D | K).into());
        assert_eq!(c.status(), A | D);
    }

    #[test]
    fn reset_clears_everything() {
        let mut c = CommonConfig::new(&[256], 2);
        to_features_ok(&mut c, FEATURE_VERSION_1);
        w(&mut c, MSIX_CONFIG, 2, 1);
        w(&mut c, QUEUE_SIZE, 2, 16);
        w(&mut c, QUEUE_MSIX_VECTOR, 2, 0);
        w(&mut c, QUEUE_ENABLE, 2, 1);
        c.bump_generation();
        assert_eq!(r(&c, CONFIG_GENERATION, 1), 1);
        assert_eq!(w(&mut c, DEVICE_STATUS, 1, 0), CommonConfigEvent::Reset);
        assert_eq!(c.status(), 0);
        assert_eq!(c.driver_features(), 0);
        assert_eq!(c.msix_config(), VIRTIO_MSI_NO_VECTOR);
        assert_eq!(c.queues()[0], QueueConfig::new(256));
        assert_eq!(r(&c, QUEUE_SIZE, 2), 256);
    }
}
