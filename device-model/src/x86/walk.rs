//! The walker: what the CPU's page table says about one virtual address.
//!
//! Guest page tables are guest-controlled data: the walk is bounded to four levels, and an
//! entry it cannot read is "absent", never a panic.

use std::sync::atomic::Ordering;

use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::{
    entry_address, CpuLeaf, LEVEL_SHIFTS, LOWER_HALF_END, PTE_ADDR_MASK, PTE_LEAF, PTE_PRESENT,
    PTE_WRITABLE,
};

/// What the guest CPU's page table says about one virtual address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuTranslation {
    /// Guest-physical address of the virtual address (frame plus offset).
    pub gpa: GuestAddress,
    /// Whether every level allows writes.
    pub writable: bool,
    /// The leaf that maps it.
    pub leaf: CpuLeaf,
}

/// Walks the 4-level table at `root` for the lower-half address `va`. `None` when any level
/// is not present, an entry is not guest memory, or `va` is not below [`LOWER_HALF_END`].
pub fn walk<M: GuestMemory>(mem: &M, root: GuestAddress, va: u64) -> Option<CpuTranslation> {
    if va >= LOWER_HALF_END {
        return None;
    }
    let mut table = root.0 & PTE_ADDR_MASK;
    let mut writable = true;
    // One iteration per level, PML4 to PT: the loop cannot run longer than the table is deep.
    for shift in LEVEL_SHIFTS {
        // An atomic load: other vCPUs update entries while the device reads them, and an
        // aligned 8-byte load sees either the old or the new entry, never a mix.
        let entry: u64 = mem
            .load(entry_address(table, va, shift), Ordering::Relaxed)
            .ok()?;
        if entry & PTE_PRESENT == 0 {
            return None;
        }
        writable &= entry & PTE_WRITABLE != 0;
        let leaf = match shift {
            12 => Some(CpuLeaf::Small),
            21 if entry & PTE_LEAF != 0 => Some(CpuLeaf::Huge2M),
            30 if entry & PTE_LEAF != 0 => Some(CpuLeaf::Huge1G),
            // PS in a PML4 entry is reserved: the CPU would fault, so it maps nothing.
            39 if entry & PTE_LEAF != 0 => return None,
            _ => None,
        };
        if let Some(leaf) = leaf {
            let size = leaf.bytes();
            // Masking with the leaf size also drops the large-page PAT bit (bit 12).
            let frame = entry & PTE_ADDR_MASK & !(size - 1);
            return Some(CpuTranslation {
                gpa: GuestAddress(frame | (va & (size - 1))),
                writable,
                leaf,
            });
        }
        table = entry & PTE_ADDR_MASK;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x86::scratch::{Tables, RAM, ROOT};

    #[test]
    fn small_leaf() {
        let mut t = Tables::new();
        t.map(0x7f00_1234_5000, 0x30_0000, 12, true);
        assert_eq!(
            t.walk(0x7f00_1234_5abc),
            Some(CpuTranslation {
                gpa: GuestAddress(0x30_0abc),
                writable: true,
                leaf: CpuLeaf::Small
            })
        );
        assert_eq!(t.walk(0x7f00_1234_6000), None);
        assert_eq!(t.walk(0x7f00_1234_4fff), None);
    }

    #[test]
    fn huge_leaves() {
        let mut t = Tables::new();
        // A 2 MiB leaf with the large-page PAT bit (12) set: it is not an address bit.
        t.map(0x4000_0000, 0x60_0000, 21, true);
        let at = t.tables.entry_of(&t.mem, 0x4000_0000, 21).unwrap();
        let e: u64 = t.mem.read_obj(at).unwrap();
        t.mem.write_obj(e | (1 << 12), at).unwrap();
        assert_eq!(
            t.walk(0x401f_f008),
            Some(CpuTranslation {
                gpa: GuestAddress(0x7f_f008),
                writable: true,
                leaf: CpuLeaf::Huge2M
            })
        );
        // A 1 GiB leaf: the frame need not be guest RAM for the walk, only for the tables.
        t.map(0x80_0000_0000, 0x1_4000_0000, 30, false);
        assert_eq!(
            t.walk(0x80_3fff_ffff),
            Some(CpuTranslation {
                gpa: GuestAddress(0x1_7fff_ffff),
                writable: false,
                leaf: CpuLeaf::Huge1G
            })
        );
    }

    #[test]
    fn read_only_at_any_level_is_read_only() {
        let mut t = Tables::new();
        t.map(0x1000, 0x5000, 12, true);
        assert!(t.walk(0x1000).unwrap().writable);
        // Clear R/W in the PML4 entry: the whole walk becomes read-only.
        let at = entry_address(ROOT, 0x1000, 39);
        let e: u64 = t.mem.read_obj(at).unwrap();
        t.mem.write_obj(e & !PTE_WRITABLE, at).unwrap();
        assert!(!t.walk(0x1000).unwrap().writable);
    }

    #[test]
    fn absent_garbage_and_kernel_addresses() {
        let mut t = Tables::new();
        assert_eq!(t.walk(0), None);
        t.map(0x2000, 0x5000, 12, true);
        // Kernel half and non-canonical addresses are never checked.
        assert_eq!(t.walk(LOWER_HALF_END), None);
        assert_eq!(t.walk(u64::MAX), None);
        // A PDPT entry pointing outside guest memory.
        let at = entry_address(ROOT, 0x2000, 39);
        let pdpt: u64 = t.mem.read_obj::<u64>(at).unwrap() & PTE_ADDR_MASK;
        t.mem
            .write_obj(
                0x000f_ffff_ffff_f000 | PTE_PRESENT,
                entry_address(pdpt, 0x2000, 30),
            )
            .unwrap();
        assert_eq!(t.walk(0x2000), None);
        // A root outside guest memory, and one at the very end of the address bits.
        assert_eq!(walk(&t.mem, GuestAddress(RAM), 0x2000), None);
        assert_eq!(walk(&t.mem, GuestAddress(u64::MAX), 0x2000), None);
        // PS in a PML4 entry is reserved: nothing is mapped.
        t.mem
            .write_obj(PTE_PRESENT | PTE_LEAF | 0x5000, entry_address(ROOT, 0, 39))
            .unwrap();
        assert_eq!(t.walk(0x2000), None);
        // A self-referencing table stays bounded to four levels.
        t.mem
            .write_obj(
                ROOT | PTE_PRESENT | PTE_WRITABLE,
                entry_address(ROOT, 0, 39),
            )
            .unwrap();
        assert_eq!(
            t.walk(0).map(|c| c.gpa),
            Some(GuestAddress(ROOT)),
            "four levels through the root itself land on the root page"
        );
    }
}
