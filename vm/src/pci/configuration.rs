//! A type-0 PCI configuration space: 64 dwords with per-register write masks.
//!
//! Everything the guest writes goes through [`PciConfiguration::write_reg`], which only
//! changes the bits the write mask allows. BAR sizing falls out of the masks: the address
//! bits below the BAR size are read-only zero, so writing all ones reads back `!(size - 1)`
//! (plus the read-only type bits). Capabilities are appended with
//! [`PciConfiguration::add_capability`]; their bytes are read-only unless the owner widens
//! the mask with [`PciConfiguration::set_writable_bits`].

/// Number of 32-bit registers in a type-0 configuration space.
pub const NUM_CONFIG_REGISTERS: usize = 64;
/// Number of BAR registers in a type-0 header.
pub const NUM_BARS: usize = 6;

const COMMAND_REG: usize = 1;
const CLASS_REG: usize = 2;
const HEADER_REG: usize = 3;
const BAR0_REG: usize = 4;
const SUBSYSTEM_REG: usize = 11;
const CAP_PTR_REG: usize = 13;
const INTERRUPT_REG: usize = 15;

/// Command register: memory space enable.
pub const COMMAND_MEMORY_SPACE: u16 = 1 << 1;
/// Command register bits the guest may change: I/O, memory, bus master, parity, SERR#,
/// INTx disable.
const COMMAND_WRITABLE: u32 = 0x0547;
/// Status register: a capability list is present (bit 4 of the status word).
pub const STATUS_CAP_LIST: u32 = 1 << (16 + 4);
/// First byte offset available to capabilities.
const FIRST_CAP_OFFSET: usize = 0x40;
const CONFIG_SPACE_BYTES: usize = NUM_CONFIG_REGISTERS * 4;

/// BAR type bits: 64-bit memory BAR.
const BAR_MEM64_TYPE: u32 = 0b10 << 1;
/// Address bits of a memory BAR's low register.
const BAR_MEM_ADDR_MASK: u32 = !0xf;
/// Smallest memory BAR the spec allows.
const MIN_BAR_SIZE: u64 = 16;

/// Errors of building a configuration space.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// BAR index out of range, or a 64-bit BAR at index 5.
    #[error("invalid BAR index {0}")]
    InvalidBarIndex(usize),
    /// The BAR (or the upper half of a 64-bit BAR) is already in use.
    #[error("BAR {0} is already in use")]
    BarInUse(usize),
    /// BAR size is not a power of two of at least 16 bytes (or too big for a 32-bit BAR).
    #[error("invalid BAR size {0:#x}")]
    InvalidBarSize(u64),
    /// The address is not aligned to the BAR size or does not fit the BAR type.
    #[error("invalid address {addr:#x} for BAR {index}")]
    InvalidBarAddress {
        /// The BAR.
        index: usize,
        /// The refused address.
        addr: u64,
    },
    /// The BAR was never added.
    #[error("BAR {0} is not implemented")]
    NoSuchBar(usize),
    /// The capability does not fit in the 256-byte configuration space.
    #[error("no room for a capability of {0} bytes")]
    CapabilityNoSpace(usize),
    /// A capability must have at least the id and next-pointer bytes.
    #[error("capability of {0} bytes is too short")]
    CapabilityTooShort(usize),
}

/// Kind of a memory BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    /// 32-bit memory BAR, one register.
    Memory32,
    /// 64-bit memory BAR, two consecutive registers.
    Memory64,
}

/// One implemented BAR: where it currently decodes and how big it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciBarRegion {
    /// BAR index (the low register of a 64-bit BAR).
    pub index: usize,
    /// Guest physical address.
    pub addr: u64,
    /// Size in bytes (a power of two).
    pub size: u64,
}

/// The guest moved a BAR: `old` is the previously decoded address, `new` the one it wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarReprogram {
    /// BAR index (the low register of a 64-bit BAR).
    pub index: usize,
    /// Address before the write.
    pub old: u64,
    /// Address after the write.
    pub new: u64,
}

/// The identity fields of a type-0 header.
#[derive(Clone, Copy, Debug, Default)]
pub struct PciHeader {
    /// Vendor id.
    pub vendor_id: u16,
    /// Device id.
    pub device_id: u16,
    /// Revision id.
    pub revision: u8,
    /// Base class code.
    pub class: u8,
    /// Sub-class code.
    pub subclass: u8,
    /// Programming interface.
    pub prog_if: u8,
    /// Subsystem vendor id.
    pub subsystem_vendor_id: u16,
    /// Subsystem id.
    pub subsystem_id: u16,
    /// Interrupt pin (0 = none, 1 = INTA#, ...).
    pub interrupt_pin: u8,
}

#[derive(Clone, Copy, Debug)]
struct Bar {
    size: u64,
    kind: BarKind,
    /// The address the BAR registers decoded to after the last non-sizing write.
    addr: u64,
}

/// A type-0 configuration space.
#[derive(Clone, Debug)]
pub struct PciConfiguration {
    registers: [u32; NUM_CONFIG_REGISTERS],
    writable: [u32; NUM_CONFIG_REGISTERS],
    bars: [Option<Bar>; NUM_BARS],
    /// Registers used as the upper half of a 64-bit BAR.
    bar_upper: [bool; NUM_BARS],
    last_cap: Option<usize>,
    next_cap: usize,
}

impl PciConfiguration {
    /// Creates a configuration space with the header fields of `h`, no BARs and no
    /// capabilities.
    pub fn new(h: &PciHeader) -> Self {
        let mut registers = [0u32; NUM_CONFIG_REGISTERS];
        let mut writable = [0u32; NUM_CONFIG_REGISTERS];
        registers[0] = u32::from(h.vendor_id) | (u32::from(h.device_id) << 16);
        writable[COMMAND_REG] = COMMAND_WRITABLE;
        registers[CLASS_REG] = u32::from(h.revision)
            | (u32::from(h.prog_if) << 8)
            | (u32::from(h.subclass) << 16)
            | (u32::from(h.class) << 24);
        // Cache line size and latency timer are read/write; header type 0, no BIST.
        writable[HEADER_REG] = 0x0000_ffff;
        registers[SUBSYSTEM_REG] =
            u32::from(h.subsystem_vendor_id) | (u32::from(h.subsystem_id) << 16);
        registers[INTERRUPT_REG] = u32::from(h.interrupt_pin) << 8;
        // Interrupt line is scratch for the OS.
        writable[INTERRUPT_REG] = 0xff;
        PciConfiguration {
            registers,
            writable,
            bars: [None; NUM_BARS],
            bar_upper: [false; NUM_BARS],
            last_cap: None,
            next_cap: FIRST_CAP_OFFSET,
        }
    }

    /// Reads register `reg`; registers past the end read all ones.
    pub fn read_reg(&self, reg: usize) -> u32 {
        self.registers.get(reg).copied().unwrap_or(0xffff_ffff)
    }

    /// Widens the write mask of register `reg` by `mask` (for capability fields the
    /// device owner handles, such as MSI-X message control).
    pub fn set_writable_bits(&mut self, reg: usize, mask: u32) {
        if let Some(w) = self.writable.get_mut(reg) {
            *w |= mask;
        }
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.registers[COMMAND_REG] as u16
    }

    /// Whether the memory space enable bit is set.
    pub fn memory_enabled(&self) -> bool {
        self.command() & COMMAND_MEMORY_SPACE != 0
    }

    /// Interrupt line as written by the OS.
    pub fn interrupt_line(&self) -> u8 {
        self.registers[INTERRUPT_REG] as u8
    }

    /// Applies a guest write of `data` at byte `offset` of register `reg` through the write
    /// mask. Returns the BAR move if the write changed a BAR's decoded address (writes of
    /// all ones, i.e. BAR sizing, never count as a move). Bad offsets or sizes are logged
    /// and ignored.
    pub fn write_reg(&mut self, reg: usize, offset: u64, data: &[u8]) -> Option<BarReprogram> {
        if reg >= NUM_CONFIG_REGISTERS
            || !matches!(data.len(), 1 | 2 | 4)
            || offset
                .checked_add(data.len() as u64)
                .is_none_or(|end| end > 4)
        {
            log::warn!(
                "pci config: ignoring write of {} bytes at reg {reg} offset {offset}",
                data.len()
            );
            return None;
        }
        let shift = offset * 8;
        let mut value = 0u32;
        for (i, b) in data.iter().enumerate() {
            value |= u32::from(*b) << (8 * i);
        }
        let lanes = if data.len() == 4 {
            u32::MAX
        } else {
            ((1u32 << (8 * data.len())) - 1) << shift
        };
        let mask = lanes & self.writable[reg];
        self.registers[reg] = (self.registers[reg] & !mask) | ((value << shift) & mask);

        let index = self.bar_index_of_reg(reg)?;
        let sizing = data.len() == 4 && value == u32::MAX;
        let new = self.decoded_bar_addr(index)?;
        let bar = self.bars[index].as_mut()?;
        if sizing || new == bar.addr {
            return None;
        }
        let old = bar.addr;
        bar.addr = new;
        Some(BarReprogram { index, old, new })
    }

    /// Which BAR (by its low register index) register `reg` belongs to.
    fn bar_index_of_reg(&self, reg: usize) -> Option<usize> {
        let i = reg.checked_sub(BAR0_REG).filter(|i| *i < NUM_BARS)?;
        if self.bar_upper[i] {
            Some(i - 1)
        } else {
            self.bars[i].map(|_| i)
        }
    }

    /// The address the BAR registers currently hold.
    fn decoded_bar_addr(&self, index: usize) -> Option<u64> {
        let bar = self.bars.get(index).copied().flatten()?;
        let lo = u64::from(self.registers[BAR0_REG + index] & BAR_MEM_ADDR_MASK);
        let hi = match bar.kind {
            BarKind::Memory32 => 0,
            BarKind::Memory64 => u64::from(self.registers[BAR0_REG + index + 1]),
        };
        Some((hi << 32) | lo)
    }

    /// Implements BAR `index` as a memory BAR of `size` bytes, initially at address 0.
    pub fn add_bar(&mut self, index: usize, size: u64, kind: BarKind) -> Result<(), ConfigError> {
        let regs = match kind {
            BarKind::Memory32 => 1,
            BarKind::Memory64 => 2,
        };
        if index + regs > NUM_BARS {
            return Err(ConfigError::InvalidBarIndex(index));
        }
        for i in index..index + regs {
            if self.bars[i].is_some() || self.bar_upper[i] {
                return Err(ConfigError::BarInUse(i));
            }
        }
        if !size.is_power_of_two()
            || size < MIN_BAR_SIZE
            || (kind == BarKind::Memory32 && size > 1 << 31)
        {
            return Err(ConfigError::InvalidBarSize(size));
        }
        let addr_mask = !(size - 1);
        let reg = BAR0_REG + index;
        match kind {
            BarKind::Memory32 => {
                self.registers[reg] = 0;
                self.writable[reg] = (addr_mask as u32) & BAR_MEM_ADDR_MASK;
            }
            BarKind::Memory64 => {
                self.registers[reg] = BAR_MEM64_TYPE;
                self.writable[reg] = (addr_mask as u32) & BAR_MEM_ADDR_MASK;
                self.registers[reg + 1] = 0;
                self.writable[reg + 1] = (addr_mask >> 32) as u32;
                self.bar_upper[index + 1] = true;
            }
        }
        self.bars[index] = Some(Bar {
            size,
            kind,
            addr: 0,
        });
        Ok(())
    }

    /// Programs BAR `index` to `addr` (host-side allocation; the guest sees it on read).
    pub fn set_bar_addr(&mut self, index: usize, addr: u64) -> Result<(), ConfigError> {
        let bar = self
            .bars
            .get_mut(index)
            .and_then(|b| b.as_mut())
            .ok_or(ConfigError::NoSuchBar(index))?;
        let fits = match bar.kind {
            BarKind::Memory32 => addr.checked_add(bar.size).is_some_and(|e| e <= 1 << 32),
            BarKind::Memory64 => addr.checked_add(bar.size).is_some(),
        };
        if addr & (bar.size - 1) != 0 || !fits {
            return Err(ConfigError::InvalidBarAddress { index, addr });
        }
        bar.addr = addr;
        let reg = BAR0_REG + index;
        self.registers[reg] = (self.registers[reg] & !BAR_MEM_ADDR_MASK) | (addr as u32);
        if bar.kind == BarKind::Memory64 {
            self.registers[reg + 1] = (addr >> 32) as u32;
        }
        Ok(())
    }

    /// Address of BAR `index` after the last accepted (non-sizing) write.
    pub fn bar_addr(&self, index: usize) -> Option<u64> {
        self.bars.get(index).copied().flatten().map(|b| b.addr)
    }

    /// Size of BAR `index`.
    pub fn bar_size(&self, index: usize) -> Option<u64> {
        self.bars.get(index).copied().flatten().map(|b| b.size)
    }

    /// All implemented BARs.
    pub fn bars(&self) -> Vec<PciBarRegion> {
        self.bars
            .iter()
            .enumerate()
            .filter_map(|(index, b)| {
                b.map(|b| PciBarRegion {
                    index,
                    addr: b.addr,
                    size: b.size,
                })
            })
            .collect()
    }

    /// Appends a capability: `cap[0]` is the capability id, `cap[1]` (the next pointer) is
    /// filled in here, the rest is the body. Returns the byte offset of the capability.
    /// The capability is read-only to the guest until [`Self::set_writable_bits`].
    pub fn add_capability(&mut self, cap: &[u8]) -> Result<usize, ConfigError> {
        if cap.len() < 2 {
            return Err(ConfigError::CapabilityTooShort(cap.len()));
        }
        let offset = self.next_cap;
        let end = offset + cap.len();
        if end > CONFIG_SPACE_BYTES {
            return Err(ConfigError::CapabilityNoSpace(cap.len()));
        }
        for (i, b) in cap.iter().enumerate() {
            let byte = if i == 1 { 0 } else { *b };
            self.set_byte(offset + i, byte);
        }
        match self.last_cap {
            Some(prev) => self.set_byte(prev + 1, offset as u8),
            None => {
                self.set_byte(CAP_PTR_REG * 4, offset as u8);
                self.registers[COMMAND_REG] |= STATUS_CAP_LIST;
            }
        }
        self.last_cap = Some(offset);
        // Keep capabilities dword aligned.
        self.next_cap = (end + 3) & !3;
        Ok(offset)
    }

    fn set_byte(&mut self, offset: usize, value: u8) {
        let reg = offset / 4;
        let shift = (offset % 4) * 8;
        self.registers[reg] =
            (self.registers[reg] & !(0xff << shift)) | (u32::from(value) << shift);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> PciHeader {
        PciHeader {
            vendor_id: 0x1234,
            device_id: 0x5678,
            revision: 2,
            class: 0xff,
            subclass: 0x01,
            prog_if: 0x02,
            subsystem_vendor_id: 0xaaaa,
            subsystem_id: 0xbbbb,
            interrupt_pin: 1,
        }
    }

    #[test]
    fn ids_and_read_only_registers() {
        let mut c = PciConfiguration::new(&header());
        assert_eq!(c.read_reg(0), 0x5678_1234);
        assert_eq!(c.read_reg(2), 0xff01_0202);
        assert_eq!(c.read_reg(11), 0xbbbb_aaaa);
        // Vendor/device ids and class are read-only.
        assert_eq!(c.write_reg(0, 0, &[0; 4]), None);
        c.write_reg(2, 2, &[0, 0]);
        assert_eq!(c.read_reg(0), 0x5678_1234);
        assert_eq!(c.read_reg(2), 0xff01_0202);
        // Out-of-range register reads all ones, writes are ignored.
        assert_eq!(c.read_reg(64), 0xffff_ffff);
        c.write_reg(64, 0, &[0; 4]);
        c.write_reg(1, 3, &[0, 0]);
        c.write_reg(1, 0, &[0; 3]);
    }

    #[test]
    fn command_and_interrupt_masks() {
        let mut c = PciConfiguration::new(&header());
        c.write_reg(1, 0, &[0xff, 0xff, 0xff, 0xff]);
        assert_eq!(c.read_reg(1), 0x0547);
        assert!(c.memory_enabled());
        c.write_reg(1, 0, &[0x04, 0x00]);
        assert!(!c.memory_enabled());
        // Interrupt line writable, pin read-only.
        c.write_reg(15, 0, &[0x0b, 0x07]);
        assert_eq!(c.interrupt_line(), 0x0b);
        assert_eq!(c.read_reg(15) & 0xff00, 0x0100);
    }

    #[test]
    fn bar32_sizing_and_reprogram() {
        let mut c = PciConfiguration::new(&header());
        c.add_bar(1, 0x1000, BarKind::Memory32).unwrap();
        c.set_bar_addr(1, 0xc000_0000).unwrap();
        assert_eq!(c.read_reg(5), 0xc000_0000);
        // Sizing: all ones reads back the size mask, and is not a move.
        assert_eq!(c.write_reg(5, 0, &[0xff; 4]), None);
        assert_eq!(c.read_reg(5), !(0x1000u32 - 1));
        // Restoring the old address is not a move either.
        assert_eq!(c.write_reg(5, 0, &0xc000_0000u32.to_le_bytes()), None);
        let r = c.write_reg(5, 0, &0xd000_0000u32.to_le_bytes());
        assert_eq!(
            r,
            Some(BarReprogram {
                index: 1,
                old: 0xc000_0000,
                new: 0xd000_0000
            })
        );
        assert_eq!(c.bar_addr(1), Some(0xd000_0000));
        // Unimplemented BARs read zero even after all ones.
        c.write_reg(4, 0, &[0xff; 4]);
        assert_eq!(c.read_reg(4), 0);
    }

    #[test]
    fn bar64_sizing_and_reprogram() {
        let mut c = PciConfiguration::new(&header());
        c.add_bar(0, 0x8000, BarKind::Memory64).unwrap();
        assert_eq!(
            c.add_bar(1, 0x1000, BarKind::Memory32),
            Err(ConfigError::BarInUse(1))
        );
        c.set_bar_addr(0, 0x1_0000_0000).unwrap();
        assert_eq!(c.read_reg(4), 0x4); // 64-bit type bits
        assert_eq!(c.read_reg(5), 1);
        assert_eq!(c.write_reg(4, 0, &[0xff; 4]), None);
        assert_eq!(c.read_reg(4), !(0x8000u32 - 1) | 0x4);
        c.write_reg(4, 0, &0x4u32.to_le_bytes());
        assert_eq!(c.write_reg(5, 0, &[0xff; 4]), None);
        assert_eq!(c.read_reg(5), 0xffff_ffff);
        assert_eq!(c.write_reg(5, 0, &1u32.to_le_bytes()), None);
        // Move below 4 GiB: low then high dword.
        let r = c.write_reg(4, 0, &0xe000_0000u32.to_le_bytes()).unwrap();
        assert_eq!((r.old, r.new), (0x1_0000_0000, 0x1_e000_0000));
        let r = c.write_reg(5, 0, &0u32.to_le_bytes()).unwrap();
        assert_eq!((r.index, r.old, r.new), (0, 0x1_e000_0000, 0xe000_0000));
        assert_eq!(
            c.bars(),
            vec![PciBarRegion {
                index: 0,
                addr: 0xe000_0000,
                size: 0x8000
            }]
        );
    }

    #[test]
    fn bar_errors() {
        let mut c = PciConfiguration::new(&header());
        assert_eq!(
            c.add_bar(5, 0x1000, BarKind::Memory64),
            Err(ConfigError::InvalidBarIndex(5))
        );
        assert_eq!(
            c.add_bar(0, 0x1001, BarKind::Memory32),
            Err(ConfigError::InvalidBarSize(0x1001))
        );
        assert_eq!(
            c.add_bar(0, 8, BarKind::Memory32),
            Err(ConfigError::InvalidBarSize(8))
        );
        c.add_bar(0, 0x1000, BarKind::Memory32).unwrap();
        assert!(c.set_bar_addr(0, 0x800).is_err());
        assert!(c.set_bar_addr(0, 0xffff_f000).is_ok());
        assert!(c.set_bar_addr(0, 0x1_0000_0000).is_err());
        assert_eq!(c.set_bar_addr(2, 0), Err(ConfigError::NoSuchBar(2)));
    }

    #[test]
    fn capability_list() {
        let mut c = PciConfiguration::new(&header());
        assert_eq!(c.read_reg(1) & STATUS_CAP_LIST, 0);
        let a = c.add_capability(&[0x09, 0xee, 1, 2, 3]).unwrap();
        let b = c.add_capability(&[0x11, 0, 0xaa, 0xbb]).unwrap();
        assert_eq!(a, 0x40);
        assert_eq!(b, 0x48);
        assert_ne!(c.read_reg(1) & STATUS_CAP_LIST, 0);
        assert_eq!(c.read_reg(13) & 0xff, 0x40);
        assert_eq!(c.read_reg(0x40 / 4), 0x0201_4809);
        assert_eq!(c.read_reg(0x44 / 4) & 0xff, 3);
        assert_eq!(c.read_reg(0x48 / 4), 0xbbaa_0011);
        // Read-only by default; a widened mask lets the guest write.
        c.write_reg(0x48 / 4, 2, &[0, 0]);
        assert_eq!(c.read_reg(0x48 / 4), 0xbbaa_0011);
        c.set_writable_bits(0x48 / 4, 0xc000_0000);
        c.write_reg(0x48 / 4, 2, &[0, 0xff]);
        assert_eq!(c.read_reg(0x48 / 4), 0xfbaa_0011);
        assert_eq!(
            c.add_capability(&[1]),
            Err(ConfigError::CapabilityTooShort(1))
        );
        assert_eq!(
            c.add_capability(&[0u8; 200]),
            Err(ConfigError::CapabilityNoSpace(200))
        );
    }
}
