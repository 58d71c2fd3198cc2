//! PCI bus 0 behind configuration mechanism #1 (I/O ports 0xCF8..0xCFF).
//!
//! The guest writes `enable | bus << 16 | device << 11 | function << 8 | register` to the
//! address port 0xCF8 and then accesses the selected dword through 0xCFC..0xCFF. Only bus
//! 0, function 0 is populated; everything else reads all ones. [`PciBus`] owns the slots,
//! allocates every BAR from an MMIO window when a device is added, registers it on the
//! MMIO [`Bus`] and follows the guest when it moves a BAR.

use std::sync::{Arc, Mutex};

use super::configuration::{BarReprogram, ConfigError, PciBarRegion, PciConfiguration, PciHeader};
use crate::bus::{Bus, BusDevice, BusError};

/// I/O port of the configuration address register.
pub const PCI_CONFIG_ADDRESS_PORT: u64 = 0xcf8;
/// Number of I/O ports the bus claims (0xCF8..0xCFF).
pub const PCI_CONFIG_PORTS_LEN: u64 = 8;
/// Slots on bus 0.
pub const NUM_SLOTS: usize = 32;

const CONFIG_ENABLE: u32 = 1 << 31;

/// A device on the PCI bus.
pub trait PciDevice: Send {
    /// Reads configuration register `reg` (dword index, 0..64).
    fn config_read(&self, reg: usize) -> u32;
    /// Writes `data` at byte `offset` of configuration register `reg`; returns the BAR
    /// move the write caused, if any.
    fn config_write(&mut self, reg: usize, offset: u64, data: &[u8]) -> Option<BarReprogram>;
    /// The implemented BARs with their sizes and current addresses.
    fn bars(&self) -> Vec<PciBarRegion>;
    /// Programs BAR `index` to `addr` (called by the bus when it allocates the BAR).
    fn set_bar_addr(&mut self, index: usize, addr: u64) -> Result<(), ConfigError>;
    /// Serves a read at `offset` inside BAR `index`.
    fn read_bar(&mut self, index: usize, offset: u64, data: &mut [u8]);
    /// Serves a write at `offset` inside BAR `index`.
    fn write_bar(&mut self, index: usize, offset: u64, data: &[u8]);
}

/// Errors of the PCI bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciBusError {
    /// All 32 slots are taken.
    #[error("no free PCI slot")]
    NoFreeSlot,
    /// The MMIO window has no room for a BAR of this size.
    #[error("MMIO window exhausted allocating a BAR of {0:#x} bytes")]
    WindowExhausted(u64),
    /// The MMIO window is empty or wraps.
    #[error("invalid MMIO window {start:#x}+{size:#x}")]
    InvalidWindow {
        /// First address of the window.
        start: u64,
        /// Its size in bytes.
        size: u64,
    },
    /// The device refused the address the bus chose.
    #[error("device rejected BAR {index} at {addr:#x}: {source}")]
    BarRejected {
        /// The BAR.
        index: usize,
        /// The address the bus chose.
        addr: u64,
        /// Why the device's configuration space refused it.
        #[source]
        source: ConfigError,
    },
    /// Registering the BAR on the MMIO bus failed.
    #[error("registering a BAR on the MMIO bus: {0}")]
    Mmio(#[from] BusError),
}

/// The host bridge at 00:00.0: an id, a host-bridge class code, no BARs.
pub struct PciHostBridge {
    config: PciConfiguration,
}

/// Vendor id of the host bridge (Intel).
pub const HOST_BRIDGE_VENDOR_ID: u16 = 0x8086;
/// Device id of the host bridge.
pub const HOST_BRIDGE_DEVICE_ID: u16 = 0x0d57;

impl PciHostBridge {
    /// A host bridge (class 06, subclass 00).
    pub fn new() -> Self {
        PciHostBridge {
            config: PciConfiguration::new(&PciHeader {
                vendor_id: HOST_BRIDGE_VENDOR_ID,
                device_id: HOST_BRIDGE_DEVICE_ID,
                class: 0x06,
                subclass: 0x00,
                ..Default::default()
            }),
        }
    }
}

impl Default for PciHostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl PciDevice for PciHostBridge {
    fn config_read(&self, reg: usize) -> u32 {
        self.config.read_reg(reg)
    }
    fn config_write(&mut self, reg: usize, offset: u64, data: &[u8]) -> Option<BarReprogram> {
        self.config.write_reg(reg, offset, data)
    }
    fn bars(&self) -> Vec<PciBarRegion> {
        Vec::new()
    }
    fn set_bar_addr(&mut self, index: usize, _addr: u64) -> Result<(), ConfigError> {
        Err(ConfigError::NoSuchBar(index))
    }
    fn read_bar(&mut self, _index: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn write_bar(&mut self, _index: usize, _offset: u64, _data: &[u8]) {}
}

/// Forwards MMIO accesses of one BAR to its device.
struct BarAdapter {
    device: Arc<Mutex<dyn PciDevice>>,
    index: usize,
}

impl BusDevice for BarAdapter {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        self.device
            .lock()
            .unwrap()
            .read_bar(self.index, offset, data);
    }
    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        self.device
            .lock()
            .unwrap()
            .write_bar(self.index, offset, data);
    }
}

struct Slot {
    device: Arc<Mutex<dyn PciDevice>>,
    /// Where each BAR is registered on the MMIO bus (the bus's own record, which is what
    /// counts when the guest moves a BAR).
    bars: Vec<PciBarRegion>,
}

/// PCI bus 0 with configuration mechanism #1.
pub struct PciBus {
    slots: Vec<Option<Slot>>,
    config_address: u32,
    mmio_bus: Bus,
    window_end: u64,
    next_free: u64,
}

impl PciBus {
    /// A bus with the host bridge at slot 0; BARs are allocated from
    /// `[mmio_window.0, mmio_window.0 + mmio_window.1)` and registered on `mmio_bus`.
    pub fn new(mmio_bus: Bus, mmio_window: (u64, u64)) -> Result<Self, PciBusError> {
        let (start, size) = mmio_window;
        let window_end = start
            .checked_add(size)
            .filter(|_| size > 0)
            .ok_or(PciBusError::InvalidWindow { start, size })?;
        let mut bus = PciBus {
            slots: (0..NUM_SLOTS).map(|_| None).collect(),
            config_address: 0,
            mmio_bus,
            window_end,
            next_free: start,
        };
        bus.add_device(Arc::new(Mutex::new(PciHostBridge::new())))?;
        Ok(bus)
    }

    /// Plugs `device` into the first free slot: every BAR is allocated naturally aligned
    /// from the window, programmed into the device and registered on the MMIO bus.
    /// Returns the slot number.
    pub fn add_device(&mut self, device: Arc<Mutex<dyn PciDevice>>) -> Result<u8, PciBusError> {
        let slot = self
            .slots
            .iter()
            .position(|s| s.is_none())
            .ok_or(PciBusError::NoFreeSlot)?;
        let wanted = device.lock().unwrap().bars();
        let mut next = self.next_free;
        let mut placed = Vec::with_capacity(wanted.len());
        for bar in &wanted {
            let size = bar.size.max(1);
            let addr = next
                .checked_next_multiple_of(size.next_power_of_two())
                .filter(|a| a.checked_add(size).is_some_and(|e| e <= self.window_end))
                .ok_or(PciBusError::WindowExhausted(bar.size))?;
            next = addr + size;
            placed.push(PciBarRegion {
                index: bar.index,
                addr,
                size,
            });
        }
        for bar in &placed {
            device
                .lock()
                .unwrap()
                .set_bar_addr(bar.index, bar.addr)
                .map_err(|source| PciBusError::BarRejected {
                    index: bar.index,
                    addr: bar.addr,
                    source,
                })?;
        }
        for (i, bar) in placed.iter().enumerate() {
            let adapter = Arc::new(Mutex::new(BarAdapter {
                device: device.clone(),
                index: bar.index,
            }));
            if let Err(e) = self.mmio_bus.insert(adapter, bar.addr, bar.size) {
                for done in &placed[..i] {
                    let _ = self.mmio_bus.remove(done.addr);
                }
                return Err(e.into());
            }
        }
        self.next_free = next;
        self.slots[slot] = Some(Slot {
            device,
            bars: placed,
        });
        Ok(slot as u8)
    }

    /// Where BAR `index` of the device in `slot` is registered on the MMIO bus.
    pub fn bar_addr(&self, slot: u8, index: usize) -> Option<u64> {
        let s = self.slots.get(usize::from(slot))?.as_ref()?;
        s.bars.iter().find(|b| b.index == index).map(|b| b.addr)
    }

    /// The device selected by the address register, with the register index, or `None`
    /// if disabled, not bus 0 / function 0, or an empty slot.
    fn selected(&self) -> Option<(&Slot, usize)> {
        let a = self.config_address;
        if a & CONFIG_ENABLE == 0 {
            return None;
        }
        let bus = (a >> 16) & 0xff;
        let dev = ((a >> 11) & 0x1f) as usize;
        let func = (a >> 8) & 0x7;
        // Bits 27:24 select extended registers, which a conventional PCI device lacks.
        let ext = (a >> 24) & 0xf;
        if bus != 0 || func != 0 || ext != 0 {
            return None;
        }
        let reg = ((a & 0xfc) >> 2) as usize;
        self.slots[dev].as_ref().map(|s| (s, reg))
    }

    fn config_data_read(&self, offset: u64, data: &mut [u8]) {
        let value = match self.selected() {
            Some((slot, reg)) => slot.device.lock().unwrap().config_read(reg),
            None => 0xffff_ffff,
        };
        let bytes = value.to_le_bytes();
        let start = offset as usize;
        match bytes.get(start..start + data.len()) {
            Some(src) => data.copy_from_slice(src),
            None => data.fill(0xff),
        }
    }

    fn config_data_write(&mut self, offset: u64, data: &[u8]) {
        let Some((slot, reg)) = self.selected() else {
            return;
        };
        let dev = ((self.config_address >> 11) & 0x1f) as usize;
        let moved = slot.device.lock().unwrap().config_write(reg, offset, data);
        if let Some(m) = moved {
            self.move_bar(dev, m);
        }
    }

    /// Follows a guest BAR move on the MMIO bus; bad or overlapping targets are logged and
    /// ignored (the BAR keeps decoding at its old address).
    fn move_bar(&mut self, dev: usize, m: BarReprogram) {
        let Some(slot) = self.slots[dev].as_mut() else {
            return;
        };
        let Some(bar) = slot.bars.iter_mut().find(|b| b.index == m.index) else {
            log::warn!("pci: {dev:02x}.0 moved unknown BAR {}", m.index);
            return;
        };
        if bar.addr == m.new {
            return;
        }
        let bad =
            m.new == 0 || m.new & (bar.size - 1) != 0 || m.new.checked_add(bar.size).is_none();
        if bad {
            log::warn!(
                "pci: {dev:02x}.0 BAR {} moved to invalid address {:#x}; still at {:#x}",
                m.index,
                m.new,
                bar.addr
            );
            return;
        }
        match self.mmio_bus.relocate(bar.addr, m.new) {
            Ok(()) => {
                log::debug!(
                    "pci: {dev:02x}.0 BAR {} moved {:#x} -> {:#x}",
                    m.index,
                    bar.addr,
                    m.new
                );
                bar.addr = m.new;
            }
            Err(e) => log::warn!(
                "pci: {dev:02x}.0 BAR {} cannot move to {:#x}: {e}; still at {:#x}",
                m.index,
                m.new,
                bar.addr
            ),
        }
    }
}

impl BusDevice for PciBus {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        match (offset, data.len()) {
            (0, 4) => data.copy_from_slice(&self.config_address.to_le_bytes()),
            (4..=7, 1 | 2 | 4) => self.config_data_read(offset - 4, data),
            _ => {
                log::debug!("pci: unhandled read of {} bytes at {offset}", data.len());
                data.fill(0xff);
            }
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        match (offset, data.len()) {
            (0, 4) => {
                self.config_address = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            }
            (4..=7, 1 | 2 | 4) if (offset - 4) + data.len() as u64 <= 4 => {
                self.config_data_write(offset - 4, data)
            }
            _ => log::debug!("pci: ignoring write of {} bytes at {offset}", data.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::configuration::BarKind;

    const WINDOW: (u64, u64) = (0xc000_0000, 0x1000_0000);

    /// A device with one 64-bit and one 32-bit BAR whose BAR space echoes writes.
    struct TestDevice {
        config: PciConfiguration,
        mem: [Vec<u8>; 6],
    }

    impl TestDevice {
        fn new() -> Self {
            let mut config = PciConfiguration::new(&PciHeader {
                vendor_id: 0x1af4,
                device_id: 0x1044,
                class: 0xff,
                ..Default::default()
            });
            config.add_bar(0, 0x4000, BarKind::Memory64).unwrap();
            config.add_bar(2, 0x100, BarKind::Memory32).unwrap();
            TestDevice {
                config,
                mem: [
                    vec![0; 0x4000],
                    vec![],
                    vec![0; 0x100],
                    vec![],
                    vec![],
                    vec![],
                ],
            }
        }
    }

    impl PciDevice for TestDevice {
        fn config_read(&self, reg: usize) -> u32 {
            self.config.read_reg(reg)
        }
        fn config_write(&mut self, reg: usize, offset: u64, data: &[u8]) -> Option<BarReprogram> {
            self.config.write_reg(reg, offset, data)
        }
        fn bars(&self) -> Vec<PciBarRegion> {
            self.config.bars()
        }
        fn set_bar_addr(&mut self, index: usize, addr: u64) -> Result<(), ConfigError> {
            self.config.set_bar_addr(index, addr)
        }
        fn read_bar(&mut self, index: usize, offset: u64, data: &mut [u8]) {
            let o = offset as usize;
            data.copy_from_slice(&self.mem[index][o..o + data.len()]);
        }
        fn write_bar(&mut self, index: usize, offset: u64, data: &[u8]) {
            let o = offset as usize;
            self.mem[index][o..o + data.len()].copy_from_slice(data);
        }
    }

    fn addr(dev: u32, reg: u32) -> u32 {
        CONFIG_ENABLE | (dev << 11) | (reg << 2)
    }

    fn cfg_read(bus: &mut PciBus, a: u32, port_off: u64, len: usize) -> u32 {
        bus.write(0, 0, &a.to_le_bytes());
        let mut d = [0u8; 4];
        bus.read(0, 4 + port_off, &mut d[..len]);
        u32::from_le_bytes(d)
    }

    fn cfg_write32(bus: &mut PciBus, a: u32, v: u32) {
        bus.write(0, 0, &a.to_le_bytes());
        bus.write(0, 4, &v.to_le_bytes());
    }

    #[test]
    fn config_mechanism_one() {
        let mut bus = PciBus::new(Bus::new("mmio"), WINDOW).unwrap();
        // Address latch reads back.
        bus.write(0, 0, &0x8000_1234u32.to_le_bytes());
        let mut d = [0u8; 4];
        bus.read(0, 0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x8000_1234);
        // Host bridge ids and class.
        assert_eq!(cfg_read(&mut bus, addr(0, 0), 0, 4), 0x0d57_8086);
        assert_eq!(cfg_read(&mut bus, addr(0, 2), 0, 4) >> 16, 0x0600);
        // Byte and word reads at 0xCFD..0xCFF.
        assert_eq!(cfg_read(&mut bus, addr(0, 0), 1, 1), 0x80);
        assert_eq!(cfg_read(&mut bus, addr(0, 0), 2, 2), 0x0d57);
        assert_eq!(cfg_read(&mut bus, addr(0, 0), 3, 1), 0x0d);
        assert_eq!(cfg_read(&mut bus, addr(0, 2), 2, 2), 0x0600);
        // Absent device, other function, other bus, enable bit clear.
        assert_eq!(cfg_read(&mut bus, addr(1, 0), 0, 4), 0xffff_ffff);
        assert_eq!(cfg_read(&mut bus, addr(0, 0) | 1 << 8, 0, 4), 0xffff_ffff);
        assert_eq!(cfg_read(&mut bus, addr(0, 0) | 1 << 16, 0, 4), 0xffff_ffff);
        assert_eq!(cfg_read(&mut bus, 0, 0, 4), 0xffff_ffff);
        assert_eq!(cfg_read(&mut bus, addr(0, 0) | 1 << 24, 0, 4), 0xffff_ffff);
        // Straddling the data port and odd accesses are harmless.
        bus.write(0, 0, &addr(0, 0).to_le_bytes());
        let mut d2 = [0u8; 2];
        bus.read(0, 7, &mut d2);
        assert_eq!(d2, [0xff, 0xff]);
        bus.write(0, 7, &[0, 0]);
        bus.write(0, 3, &[1]);
        bus.write(0, 4, &[0; 3]);
        assert_eq!(cfg_read(&mut bus, addr(0, 0), 0, 4), 0x0d57_8086);
        // Writes to the host bridge's read-only ids are ignored.
        cfg_write32(&mut bus, addr(0, 0), 0);
        assert_eq!(cfg_read(&mut bus, addr(0, 0), 0, 4), 0x0d57_8086);
    }

    #[test]
    fn add_device_allocates_and_registers_bars() {
        let mmio = Bus::new("mmio");
        let mut bus = PciBus::new(mmio.clone(), WINDOW).unwrap();
        let slot = bus
            .add_device(Arc::new(Mutex::new(TestDevice::new())))
            .unwrap();
        assert_eq!(slot, 1);
        let bar0 = bus.bar_addr(1, 0).unwrap();
        let bar2 = bus.bar_addr(1, 2).unwrap();
        assert_eq!(bar0 % 0x4000, 0);
        assert_eq!(bar2 % 0x100, 0);
        assert!(bar0 >= WINDOW.0 && bar2 + 0x100 <= WINDOW.0 + WINDOW.1);
        assert_eq!(cfg_read(&mut bus, addr(1, 4), 0, 4), bar0 as u32 | 0x4);
        assert_eq!(cfg_read(&mut bus, addr(1, 5), 0, 4), (bar0 >> 32) as u32);
        assert_eq!(cfg_read(&mut bus, addr(1, 6), 0, 4), bar2 as u32);
        assert!(mmio.write(bar0 + 8, &[5]));
        let mut d = [0u8];
        assert!(mmio.read(bar0 + 8, &mut d));
        assert_eq!(d, [5]);
        assert!(mmio.write(bar2 + 0xff, &[6]));
        // Sizing through the ports.
        cfg_write32(&mut bus, addr(1, 4), 0xffff_ffff);
        assert_eq!(cfg_read(&mut bus, addr(1, 4), 0, 4), !(0x4000u32 - 1) | 0x4);
        cfg_write32(&mut bus, addr(1, 4), bar0 as u32);
        // Sizing did not move the registration.
        assert!(mmio.read(bar0 + 8, &mut d));
    }

    #[test]
    fn bar_relocation_moves_mmio_registration() {
        let mmio = Bus::new("mmio");
        let mut bus = PciBus::new(mmio.clone(), WINDOW).unwrap();
        bus.add_device(Arc::new(Mutex::new(TestDevice::new())))
            .unwrap();
        let bar2 = bus.bar_addr(1, 2).unwrap();
        assert!(mmio.write(bar2, &[9]));
        let new = 0xd000_0000u64;
        cfg_write32(&mut bus, addr(1, 6), new as u32);
        assert_eq!(bus.bar_addr(1, 2), Some(new));
        let mut d = [0u8];
        assert!(!mmio.read(bar2, &mut d));
        assert!(mmio.read(new, &mut d));
        assert_eq!(d, [9]);
        // Overlapping BAR 0: logged, ignored, BAR 2 stays where it was.
        let bar0 = bus.bar_addr(1, 0).unwrap();
        cfg_write32(&mut bus, addr(1, 6), bar0 as u32);
        assert_eq!(bus.bar_addr(1, 2), Some(new));
        assert!(mmio.read(new, &mut d));
        // Zero is refused too.
        cfg_write32(&mut bus, addr(1, 6), 0);
        assert_eq!(bus.bar_addr(1, 2), Some(new));
        // 64-bit BAR moved by low then high dword.
        cfg_write32(&mut bus, addr(1, 4), 0xe000_0000);
        cfg_write32(&mut bus, addr(1, 5), 0x1);
        assert_eq!(bus.bar_addr(1, 0), Some(0x1_e000_0000));
        assert!(mmio.read(0x1_e000_0008, &mut d));
        assert!(!mmio.read(bar0 + 8, &mut d));
    }

    #[test]
    fn window_exhaustion_and_slots() {
        let mut bus = PciBus::new(Bus::new("mmio"), (0x1000, 0x4000)).unwrap();
        assert_eq!(
            bus.add_device(Arc::new(Mutex::new(TestDevice::new()))),
            Err(PciBusError::WindowExhausted(0x4000))
        );
        assert!(PciBus::new(Bus::new("mmio"), (u64::MAX, 2)).is_err());
        let mut bus = PciBus::new(Bus::new("mmio"), WINDOW).unwrap();
        for _ in 1..NUM_SLOTS {
            bus.add_device(Arc::new(Mutex::new(PciHostBridge::new())))
                .unwrap();
        }
        assert_eq!(
            bus.add_device(Arc::new(Mutex::new(PciHostBridge::new()))),
            Err(PciBusError::NoFreeSlot)
        );
    }
}
