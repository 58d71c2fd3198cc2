//! Port-I/O and MMIO dispatch: a sorted map from address ranges to devices.
//!
//! The vCPU loop hands every `KVM_EXIT_IO` and `KVM_EXIT_MMIO` to one of two [`Bus`]es. An
//! access that no device claims is logged and otherwise ignored (reads return all ones), so a
//! guest probing absent hardware never stops the VM.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device on a bus. `offset` is relative to the start of the range the device was
/// inserted at; `base` is that start, for devices inserted at several ranges.
pub trait BusDevice: Send {
    /// Serves a read of `data.len()` bytes at `base + offset`.
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]);
    /// Serves a write of `data` at `base + offset`.
    fn write(&mut self, base: u64, offset: u64, data: &[u8]);
}

/// Errors of bus registration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new range overlaps a registered one.
    #[error("bus range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap {
        /// Start of the new range.
        base: u64,
        /// Its length in bytes.
        len: u64,
    },
    /// A zero-length or wrapping range.
    #[error("invalid bus range {base:#x}+{len:#x}")]
    InvalidRange {
        /// Start of the range.
        base: u64,
        /// Its length in bytes.
        len: u64,
    },
    /// No device is registered at this base.
    #[error("no device registered at {0:#x}")]
    NotFound(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Range {
    base: u64,
    len: u64,
}

/// A device as the bus holds it: shared with whoever created it.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// A shared, range-indexed set of devices.
#[derive(Clone, Default)]
pub struct Bus {
    devices: Arc<Mutex<BTreeMap<u64, (Range, SharedDevice)>>>,
    name: &'static str,
}

impl Bus {
    /// Creates an empty bus; `name` appears in logs of unclaimed accesses.
    pub fn new(name: &'static str) -> Self {
        Bus {
            devices: Arc::default(),
            name,
        }
    }

    /// Registers `device` for `[base, base + len)`.
    pub fn insert(
        &self,
        device: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::InvalidRange { base, len })?;
        let mut devices = self.devices.lock().unwrap();
        // The closest range starting below `end` is the only one that can overlap.
        if let Some((_, (r, _))) = devices.range(..end).next_back() {
            if r.base + r.len > base {
                return Err(BusError::Overlap { base, len });
            }
        }
        devices.insert(base, (Range { base, len }, device));
        Ok(())
    }

    /// Removes the device registered at `base`.
    pub fn remove(&self, base: u64) -> Result<Arc<Mutex<dyn BusDevice>>, BusError> {
        let mut devices = self.devices.lock().unwrap();
        devices
            .remove(&base)
            .map(|(_, d)| d)
            .ok_or(BusError::NotFound(base))
    }

    /// Moves the registration at `old_base` to `new_base`, keeping its length.
    pub fn relocate(&self, old_base: u64, new_base: u64) -> Result<(), BusError> {
        let (range, device) = {
            let mut devices = self.devices.lock().unwrap();
            devices
                .remove(&old_base)
                .ok_or(BusError::NotFound(old_base))?
        };
        if let Err(e) = self.insert(device.clone(), new_base, range.len) {
            // Put it back where it was so a bad guest BAR write loses nothing.
            self.devices
                .lock()
                .unwrap()
                .insert(old_base, (range, device));
            return Err(e);
        }
        Ok(())
    }

    fn resolve(&self, addr: u64, len: usize) -> Option<(u64, Arc<Mutex<dyn BusDevice>>)> {
        let devices = self.devices.lock().unwrap();
        let (_, (r, d)) = devices.range(..=addr).next_back()?;
        let end = addr.checked_add(len as u64)?;
        (end <= r.base + r.len).then(|| (r.base, d.clone()))
    }

    /// Dispatches a read; returns false (and fills all ones) if no device claims `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((base, dev)) => {
                dev.lock().unwrap().read(base, addr - base, data);
                true
            }
            None => {
                data.fill(0xff);
                log::debug!(
                    "{}: unclaimed read of {} bytes at {addr:#x}",
                    self.name,
                    data.len()
                );
                false
            }
        }
    }

    /// Dispatches a write; returns false if no device claims `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((base, dev)) => {
                dev.lock().unwrap().write(base, addr - base, data);
                true
            }
            None => {
                log::debug!("{}: unclaimed write of {:x?} at {addr:#x}", self.name, data);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(Vec<u8>);
    impl BusDevice for Echo {
        fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = self.0[offset as usize + i];
            }
        }
        fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
            self.0[offset as usize..offset as usize + data.len()].copy_from_slice(data);
        }
    }

    #[test]
    fn dispatch_and_unclaimed() {
        let bus = Bus::new("test");
        bus.insert(Arc::new(Mutex::new(Echo(vec![0; 16]))), 0x100, 16)
            .unwrap();
        assert!(bus.write(0x104, &[1, 2]));
        let mut d = [0u8; 2];
        assert!(bus.read(0x104, &mut d));
        assert_eq!(d, [1, 2]);
        // Straddling the end of the range is not claimed.
        assert!(!bus.read(0x10f, &mut d));
        assert_eq!(d, [0xff, 0xff]);
        assert!(!bus.read(0xff, &mut [0u8; 1]));
    }

    #[test]
    fn overlap_and_relocate() {
        let bus = Bus::new("test");
        let dev: Arc<Mutex<dyn BusDevice>> = Arc::new(Mutex::new(Echo(vec![7; 16])));
        bus.insert(dev.clone(), 0x100, 16).unwrap();
        assert_eq!(
            bus.insert(dev.clone(), 0x10f, 1),
            Err(BusError::Overlap {
                base: 0x10f,
                len: 1
            })
        );
        assert_eq!(
            bus.insert(dev.clone(), 0xf8, 9),
            Err(BusError::Overlap { base: 0xf8, len: 9 })
        );
        bus.insert(dev.clone(), 0x110, 4).unwrap();
        assert!(bus.insert(dev.clone(), 0, 0).is_err());
        assert!(bus.insert(dev, u64::MAX, 2).is_err());
        // A relocation onto an occupied range fails and keeps the old one.
        assert!(bus.relocate(0x100, 0x10c).is_err());
        assert!(bus.read(0x100, &mut [0u8; 1]));
        bus.relocate(0x100, 0x200).unwrap();
        assert!(!bus.read(0x100, &mut [0u8; 1]));
        let mut d = [0u8; 1];
        assert!(bus.read(0x20f, &mut d));
        assert_eq!(d, [7]);
    }
}
