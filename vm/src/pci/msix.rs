//! MSI-X: the capability, the vector table and the pending-bit array (PBA).
//!
//! [`MsixConfig`] owns the table and the PBA of one device and pushes every change of a
//! vector's message or effective mask to the device's [`MsiInterruptGroup`]. A vector is
//! effectively masked when its entry's mask bit is set, the function mask is set, or
//! MSI-X is disabled; triggering such a vector sets its pending bit instead, and the
//! interrupt is delivered (and the bit cleared) as soon as the vector becomes unmasked.

use std::sync::Arc;

use crate::interrupt::{MsiInterruptGroup, MsiMessage};

/// PCI capability id of MSI-X.
pub const MSIX_CAP_ID: u8 = 0x11;
/// Length in bytes of the MSI-X capability.
pub const MSIX_CAP_LEN: usize = 12;
/// Message control: MSI-X enable.
pub const MSIX_ENABLE: u16 = 1 << 15;
/// Message control: function mask.
pub const MSIX_FUNCTION_MASK: u16 = 1 << 14;
/// Size of one table entry in bytes.
pub const MSIX_TABLE_ENTRY_SIZE: u64 = 16;
/// Most vectors a function can have.
pub const MAX_MSIX_VECTORS: u16 = 2048;
/// Vector control: per-vector mask bit.
const VECTOR_CTRL_MASK: u32 = 1;

/// Errors of building an MSI-X configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MsixError {
    /// The number of vectors is 0 or above 2048.
    #[error("invalid number of MSI-X vectors {0}")]
    InvalidVectorCount(u16),
    /// A table or PBA offset that is not 8-byte aligned, or a BIR above 5.
    #[error("invalid MSI-X structure location: BIR {bir}, offset {offset:#x}")]
    InvalidLocation {
        /// The BAR indicator register value.
        bir: u8,
        /// The offset in that BAR.
        offset: u32,
    },
}

/// The MSI-X capability as it sits in configuration space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixCap {
    /// Message control: table size - 1, function mask, enable.
    pub msg_ctrl: u16,
    /// Table offset (8-byte aligned) ORed with the table BIR.
    pub table: u32,
    /// PBA offset (8-byte aligned) ORed with the PBA BIR.
    pub pba: u32,
}

impl MsixCap {
    /// A capability for `num_vectors` vectors with the table at `table_offset` of BAR
    /// `table_bir` and the PBA at `pba_offset` of BAR `pba_bir`.
    pub fn new(
        num_vectors: u16,
        table_bir: u8,
        table_offset: u32,
        pba_bir: u8,
        pba_offset: u32,
    ) -> Result<Self, MsixError> {
        if num_vectors == 0 || num_vectors > MAX_MSIX_VECTORS {
            return Err(MsixError::InvalidVectorCount(num_vectors));
        }
        for (bir, offset) in [(table_bir, table_offset), (pba_bir, pba_offset)] {
            if bir > 5 || offset & 7 != 0 {
                return Err(MsixError::InvalidLocation { bir, offset });
            }
        }
        Ok(MsixCap {
            msg_ctrl: num_vectors - 1,
            table: table_offset | u32::from(table_bir),
            pba: pba_offset | u32::from(pba_bir),
        })
    }

    /// The capability bytes (id, next pointer placeholder, body) for
    /// [`crate::pci::PciConfiguration::add_capability`].
    pub fn bytes(&self) -> [u8; MSIX_CAP_LEN] {
        let mut b = [0u8; MSIX_CAP_LEN];
        b[0] = MSIX_CAP_ID;
        b[2..4].copy_from_slice(&self.msg_ctrl.to_le_bytes());
        b[4..8].copy_from_slice(&self.table.to_le_bytes());
        b[8..12].copy_from_slice(&self.pba.to_le_bytes());
        b
    }

    /// Write mask of the capability's first dword: the guest may only change the enable
    /// and function-mask bits of message control.
    pub const fn first_dword_writable_mask() -> u32 {
        ((MSIX_ENABLE | MSIX_FUNCTION_MASK) as u32) << 16
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TableEntry {
    addr_lo: u32,
    addr_hi: u32,
    data: u32,
    ctrl: u32,
}

impl Default for TableEntry {
    /// Entries come out of reset masked.
    fn default() -> Self {
        TableEntry {
            addr_lo: 0,
            addr_hi: 0,
            data: 0,
            ctrl: VECTOR_CTRL_MASK,
        }
    }
}

impl TableEntry {
    fn msg(&self) -> MsiMessage {
        MsiMessage {
            addr_lo: self.addr_lo,
            addr_hi: self.addr_hi,
            data: self.data,
        }
    }

    fn field(&mut self, i: u64) -> &mut u32 {
        match i {
            0 => &mut self.addr_lo,
            1 => &mut self.addr_hi,
            2 => &mut self.data,
            _ => &mut self.ctrl,
        }
    }
}

/// The MSI-X table, PBA and control state of one device.
pub struct MsixConfig {
    table: Vec<TableEntry>,
    pba: Vec<u64>,
    enabled: bool,
    function_masked: bool,
    group: Arc<dyn MsiInterruptGroup>,
}

impl std::fmt::Debug for MsixConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MsixConfig")
            .field("table", &self.table)
            .field("pba", &self.pba)
            .field("enabled", &self.enabled)
            .field("function_masked", &self.function_masked)
            .finish()
    }
}

impl MsixConfig {
    /// `num_vectors` vectors (1..=2048), all masked, MSI-X disabled.
    pub fn new(num_vectors: u16, group: Arc<dyn MsiInterruptGroup>) -> Result<Self, MsixError> {
        if num_vectors == 0 || num_vectors > MAX_MSIX_VECTORS {
            return Err(MsixError::InvalidVectorCount(num_vectors));
        }
        Ok(MsixConfig {
            table: vec![TableEntry::default(); usize::from(num_vectors)],
            pba: vec![0; usize::from(num_vectors).div_ceil(64)],
            enabled: false,
            function_masked: false,
            group,
        })
    }

    /// Number of vectors.
    pub fn num_vectors(&self) -> u16 {
        self.table.len() as u16
    }

    /// Size of the table in bytes.
    pub fn table_size(&self) -> u64 {
        self.table.len() as u64 * MSIX_TABLE_ENTRY_SIZE
    }

    /// Size of the PBA in bytes.
    pub fn pba_size(&self) -> u64 {
        self.pba.len() as u64 * 8
    }

    /// Whether MSI-X is enabled.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether the function mask is set.
    pub fn function_masked(&self) -> bool {
        self.function_masked
    }

    /// Whether `vector` may not fire now (entry mask, function mask or MSI-X disabled).
    /// Out-of-range vectors count as masked.
    pub fn is_masked(&self, vector: u16) -> bool {
        match self.table.get(usize::from(vector)) {
            Some(e) => !self.enabled || self.function_masked || e.ctrl & VECTOR_CTRL_MASK != 0,
            None => true,
        }
    }

    /// Whether the pending bit of `vector` is set.
    pub fn is_pending(&self, vector: u16) -> bool {
        let v = usize::from(vector);
        self.pba
            .get(v / 64)
            .is_some_and(|w| w & (1 << (v % 64)) != 0)
    }

    fn set_pending(&mut self, vector: u16, pending: bool) {
        let v = usize::from(vector);
        if let Some(w) = self.pba.get_mut(v / 64) {
            if pending {
                *w |= 1 << (v % 64);
            } else {
                *w &= !(1 << (v % 64));
            }
        }
    }

    /// The enable and function-mask bits of message control.
    pub fn message_control(&self) -> u16 {
        let mut c = 0;
        if self.enabled {
            c |= MSIX_ENABLE;
        }
        if self.function_masked {
            c |= MSIX_FUNCTION_MASK;
        }
        c
    }

    /// Applies a guest write of message control (only the enable and function-mask bits
    /// matter). Every vector's routing is refreshed if the effective masks changed, and
    /// pending vectors that became unmasked are delivered.
    pub fn set_message_control(&mut self, ctrl: u16) {
        let enabled = ctrl & MSIX_ENABLE != 0;
        let masked = ctrl & MSIX_FUNCTION_MASK != 0;
        if enabled == self.enabled && masked == self.function_masked {
            return;
        }
        self.enabled = enabled;
        self.function_masked = masked;
        for v in 0..self.num_vectors() {
            self.push_update(v);
            self.deliver_if_pending(v);
        }
    }

    fn push_update(&self, vector: u16) {
        let Some(e) = self.table.get(usize::from(vector)) else {
            return;
        };
        if let Err(err) = self.group.update(vector, e.msg(), self.is_masked(vector)) {
            log::error!("msix: updating vector {vector} failed: {err}");
        }
    }

    fn fire(&self, vector: u16) {
        if let Err(err) = self.group.trigger(vector) {
            log::error!("msix: triggering vector {vector} failed: {err}");
        }
    }

    fn deliver_if_pending(&mut self, vector: u16) {
        if self.is_pending(vector) && !self.is_masked(vector) {
            self.set_pending(vector, false);
            self.fire(vector);
        }
    }

    /// Raises `vector`, or sets its pending bit if it is masked. Out-of-range vectors are
    /// logged and ignored.
    pub fn trigger(&mut self, vector: u16) {
        if vector >= self.num_vectors() {
            log::warn!("msix: trigger of out-of-range vector {vector}");
            return;
        }
        if self.is_masked(vector) {
            self.set_pending(vector, true);
        } else {
            self.fire(vector);
        }
    }

    /// Serves a guest read of the table (4 or 8 bytes, naturally aligned).
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        let entry = usize::try_from(offset / MSIX_TABLE_ENTRY_SIZE).unwrap_or(usize::MAX);
        let field = (offset % MSIX_TABLE_ENTRY_SIZE) / 4;
        let Some(e) = self.table.get(entry).copied() else {
            log::warn!("msix: table read out of range at {offset:#x}");
            data.fill(0);
            return;
        };
        let mut e = e;
        match data.len() {
            4 if offset.is_multiple_of(4) => data.copy_from_slice(&e.field(field).to_le_bytes()),
            8 if offset.is_multiple_of(8) => {
                let lo = *e.field(field);
                let hi = *e.field(field + 1);
                data[..4].copy_from_slice(&lo.to_le_bytes());
                data[4..].copy_from_slice(&hi.to_le_bytes());
            }
            n => {
                log::warn!("msix: bad table read of {n} bytes at {offset:#x}");
                data.fill(0);
            }
        }
    }

    /// Serves a guest write of the table (4 or 8 bytes, naturally aligned). The vector's
    /// routing is refreshed; an unmask delivers a pending interrupt.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) {
        let entry = usize::try_from(offset / MSIX_TABLE_ENTRY_SIZE).unwrap_or(usize::MAX);
        let field = (offset % MSIX_TABLE_ENTRY_SIZE) / 4;
        let aligned = match data.len() {
            4 => offset.is_multiple_of(4),
            8 => offset.is_multiple_of(8),
            _ => false,
        };
        if entry >= self.table.len() || !aligned {
            log::warn!(
                "msix: ignoring table write of {} bytes at {offset:#x}",
                data.len()
            );
            return;
        }
        let e = &mut self.table[entry];
        for (i, chunk) in data.chunks_exact(4).enumerate() {
            let mut value = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            let f = field + i as u64;
            if f == 3 {
                // Only the mask bit of vector control is defined.
                value &= VECTOR_CTRL_MASK;
            }
            *e.field(f) = value;
        }
        let vector = entry as u16;
        self.push_update(vector);
        self.deliver_if_pending(vector);
    }

    /// Serves a guest read of the PBA (4 or 8 bytes, naturally aligned).
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        let word = usize::try_from(offset / 8).unwrap_or(usize::MAX);
        let (Some(w), 4 | 8) = (self.pba.get(word).copied(), data.len()) else {
            log::warn!("msix: bad PBA read of {} bytes at {offset:#x}", data.len());
            data.fill(0);
            return;
        };
        if !offset.is_multiple_of(data.len() as u64) {
            log::warn!("msix: unaligned PBA read at {offset:#x}");
            data.fill(0);
            return;
        }
        let bytes = w.to_le_bytes();
        let start = (offset % 8) as usize;
        data.copy_from_slice(&bytes[start..start + data.len()]);
    }

    /// The PBA is read-only: writes are logged and ignored.
    pub fn write_pba(&mut self, offset: u64, data: &[u8]) {
        log::warn!(
            "msix: ignoring write of {} bytes to read-only PBA at {offset:#x}",
            data.len()
        );
    }

    /// Back to the reset state: all entries masked and zeroed, nothing pending, MSI-X
    /// disabled. The interrupt group is told that every vector is masked.
    pub fn reset(&mut self) {
        self.table.fill(TableEntry::default());
        self.pba.fill(0);
        self.enabled = false;
        self.function_masked = false;
        for v in 0..self.num_vectors() {
            self.push_update(v);
        }
    }
}

/// A recording [`MsiInterruptGroup`] for tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Mutex;

    use crate::interrupt::{InterruptError, MsiInterruptGroup, MsiMessage};

    /// Records every trigger and update.
    #[derive(Default)]
    pub(crate) struct RecordingGroup {
        pub(crate) triggers: Mutex<Vec<u16>>,
        pub(crate) updates: Mutex<Vec<(u16, MsiMessage, bool)>>,
    }

    impl RecordingGroup {
        pub(crate) fn take_triggers(&self) -> Vec<u16> {
            std::mem::take(&mut *self.triggers.lock().unwrap())
        }

        pub(crate) fn last_update(&self, index: u16) -> Option<(MsiMessage, bool)> {
            self.updates
                .lock()
                .unwrap()
                .iter()
                .rev()
                .find(|u| u.0 == index)
                .map(|u| (u.1, u.2))
        }
    }

    impl MsiInterruptGroup for RecordingGroup {
        fn trigger(&self, index: u16) -> Result<(), InterruptError> {
            self.triggers.lock().unwrap().push(index);
            Ok(())
        }

        fn update(&self, index: u16, msg: MsiMessage, masked: bool) -> Result<(), InterruptError> {
            self.updates.lock().unwrap().push((index, msg, masked));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::RecordingGroup;
    use super::*;

    fn setup(n: u16) -> (Arc<RecordingGroup>, MsixConfig) {
        let g = Arc::new(RecordingGroup::default());
        let m = MsixConfig::new(n, g.clone()).unwrap();
        (g, m)
    }

    fn read32(m: &MsixConfig, offset: u64) -> u32 {
        let mut d = [0u8; 4];
        m.read_table(offset, &mut d);
        u32::from_le_bytes(d)
    }

    #[test]
    fn capability_bytes() {
        let cap = MsixCap::new(3, 0, 0x4000, 0, 0x5000).unwrap();
        let b = cap.bytes();
        assert_eq!(b[0], MSIX_CAP_ID);
        assert_eq!(u16::from_le_bytes([b[2], b[3]]), 2);
        assert_eq!(u32::from_le_bytes([b[4], b[5], b[6], b[7]]), 0x4000);
        assert_eq!(u32::from_le_bytes([b[8], b[9], b[10], b[11]]), 0x5000);
        assert!(MsixCap::new(0, 0, 0, 0, 0).is_err());
        assert!(MsixCap::new(1, 6, 0, 0, 0).is_err());
        assert!(MsixCap::new(1, 0, 4, 0, 0).is_err());
        assert!(MsixConfig::new(2049, Arc::new(RecordingGroup::default())).is_err());
    }

    #[test]
    fn table_read_write() {
        let (g, mut m) = setup(4);
        // Reset state: masked.
        assert_eq!(read32(&m, 0x1c), 1);
        m.write_table(0x10, &0xfee0_1000u32.to_le_bytes());
        m.write_table(0x14, &0x1u32.to_le_bytes());
        m.write_table(0x18, &0x41u64.to_le_bytes()); // data = 0x41, ctrl = 0 (unmask)
        assert_eq!(read32(&m, 0x10), 0xfee0_1000);
        assert_eq!(read32(&m, 0x14), 1);
        assert_eq!(read32(&m, 0x18), 0x41);
        assert_eq!(read32(&m, 0x1c), 0);
        let mut d = [0u8; 8];
        m.read_table(0x10, &mut d);
        assert_eq!(u64::from_le_bytes(d), 0x1_fee0_1000);
        let (msg, masked) = g.last_update(1).unwrap();
        assert_eq!(
            msg,
            MsiMessage {
                addr_lo: 0xfee0_1000,
                addr_hi: 1,
                data: 0x41
            }
        );
        // MSI-X is still disabled, so the vector is effectively masked.
        assert!(masked);
        m.set_message_control(MSIX_ENABLE);
        assert!(!g.last_update(1).unwrap().1);
        assert!(g.last_update(0).unwrap().1);
        // Reserved vector-control bits are dropped; bad accesses ignored.
        m.write_table(0x1c, &0xffff_fffeu32.to_le_bytes());
        assert_eq!(read32(&m, 0x1c), 0);
        m.write_table(0x12, &[1, 2]);
        m.write_table(0x14, &[0u8; 8]);
        m.write_table(0x40, &[0u8; 4]);
        m.write_table(u64::MAX - 3, &[0u8; 4]);
        assert_eq!(read32(&m, 0x14), 1);
        assert_eq!(read32(&m, 0x40), 0);
    }

    #[test]
    fn masked_trigger_sets_pending_and_unmask_delivers() {
        let (g, mut m) = setup(2);
        m.set_message_control(MSIX_ENABLE);
        m.trigger(1);
        assert!(g.take_triggers().is_empty());
        assert!(m.is_pending(1));
        let mut d = [0u8; 8];
        m.read_pba(0, &mut d);
        assert_eq!(u64::from_le_bytes(d), 0b10);
        // Unmask vector 1: delivered and cleared.
        m.write_table(0x1c, &0u32.to_le_bytes());
        assert_eq!(g.take_triggers(), vec![1]);
        assert!(!m.is_pending(1));
        m.trigger(1);
        assert_eq!(g.take_triggers(), vec![1]);
        // The PBA is read-only.
        m.write_pba(0, &[0xff; 8]);
        m.read_pba(0, &mut d);
        assert_eq!(u64::from_le_bytes(d), 0);
    }

    #[test]
    fn function_mask_and_disable() {
        let (g, mut m) = setup(2);
        m.write_table(0xc, &0u32.to_le_bytes());
        // Disabled: pending.
        m.trigger(0);
        assert!(m.is_pending(0));
        assert!(g.take_triggers().is_empty());
        // Enable with the function mask: still pending.
        m.set_message_control(MSIX_ENABLE | MSIX_FUNCTION_MASK);
        assert!(m.is_pending(0));
        assert!(g.take_triggers().is_empty());
        assert!(g.last_update(0).unwrap().1);
        m.trigger(0);
        assert!(g.take_triggers().is_empty());
        // Clear the function mask: delivered once.
        m.set_message_control(MSIX_ENABLE);
        assert_eq!(g.take_triggers(), vec![0]);
        assert!(!g.last_update(0).unwrap().1);
        assert_eq!(m.message_control(), MSIX_ENABLE);
    }

    #[test]
    fn out_of_range_vector_ignored() {
        let (g, mut m) = setup(2);
        m.set_message_control(MSIX_ENABLE);
        m.trigger(2);
        m.trigger(u16::MAX);
        assert!(g.take_triggers().is_empty());
        assert!(!m.is_pending(2));
        let mut d = [0xaau8; 4];
        m.read_pba(8, &mut d);
        assert_eq!(d, [0; 4]);
    }

    #[test]
    fn reset_masks_everything() {
        let (g, mut m) = setup(1);
        m.set_message_control(MSIX_ENABLE);
        m.write_table(0xc, &0u32.to_le_bytes());
        m.reset();
        assert!(!m.enabled());
        assert!(m.is_masked(0));
        assert_eq!(read32(&m, 0xc), 1);
        assert!(g.last_update(0).unwrap().1);
    }
}
