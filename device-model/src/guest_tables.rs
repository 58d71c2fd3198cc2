//! x86-64 4-level page tables written into guest memory, laid out as the guest kernel lays
//! them out. The coherence oracle only reads such tables; this builder writes them for the
//! oracle's tests, the device's end-to-end tests and the `vmm bench oracle` setup, which all
//! need a CPU page table without a guest kernel.

use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryError};

use crate::address::PAGE_SIZE;
use crate::oracle::{CpuLeaf, PTE_ADDR_MASK, PTE_LEAF, PTE_PRESENT, PTE_SIZE, PTE_WRITABLE};

/// Why a table could not be written.
#[derive(Debug, thiserror::Error)]
pub enum GuestTablesError {
    /// The pages set aside for tables are used up.
    #[error("no room for another page table below {0:#x}")]
    OutOfTables(u64),
    /// The address or frame is not aligned to the leaf size.
    #[error("va {va:#x} / frame {frame:#x} not aligned to the leaf size")]
    Unaligned {
        /// The virtual address.
        va: u64,
        /// The frame.
        frame: u64,
    },
    /// A table is not guest memory.
    #[error("page table not in guest memory: {0}")]
    Memory(#[from] GuestMemoryError),
}

/// Index shifts of the four levels, PML4 first.
const SHIFTS: [u32; 4] = [39, 30, 21, 12];

/// A page table under construction: a PML4 at `root` and tables taken from the pages after
/// it, up to `limit`.
#[derive(Clone, Debug)]
pub struct GuestTables {
    root: u64,
    next: u64,
    limit: u64,
}

impl GuestTables {
    /// An empty PML4 at `root` (page aligned); further tables go in `(root, limit)`.
    pub fn new<M: GuestMemory>(
        mem: &M,
        root: GuestAddress,
        limit: GuestAddress,
    ) -> Result<Self, GuestTablesError> {
        let root = root.0 & !(PAGE_SIZE - 1);
        mem.write_slice(&[0u8; PAGE_SIZE as usize], GuestAddress(root))?;
        Ok(GuestTables {
            root,
            next: root + PAGE_SIZE,
            limit: limit.0,
        })
    }

    /// The PML4's guest-physical address (what BIND gives the device).
    pub fn root(&self) -> GuestAddress {
        GuestAddress(self.root)
    }

    /// The address of `table`'s entry for `va` at the level of `shift`.
    pub fn slot(table: u64, va: u64, shift: u32) -> GuestAddress {
        GuestAddress(table + ((va >> shift) & 0x1ff) * PTE_SIZE)
    }

    /// The address of the entry that maps `va` at the level of `shift` (39 = PML4 ... 12 =
    /// PT), if the tables above it exist.
    pub fn entry_of<M: GuestMemory>(&self, mem: &M, va: u64, shift: u32) -> Option<GuestAddress> {
        let mut table = self.root;
        for s in SHIFTS {
            let at = Self::slot(table, va, s);
            if s == shift {
                return Some(at);
            }
            let e: u64 = mem.read_obj(at).ok()?;
            if e & PTE_PRESENT == 0 || e & PTE_LEAF != 0 {
                return None;
            }
            table = e & PTE_ADDR_MASK;
        }
        None
    }

    /// The table below `table`'s entry for `va`, created present and writable if absent.
    fn child<M: GuestMemory>(
        &mut self,
        mem: &M,
        table: u64,
        va: u64,
        shift: u32,
    ) -> Result<u64, GuestTablesError> {
        let at = Self::slot(table, va, shift);
        let e: u64 = mem.read_obj(at)?;
        if e & PTE_PRESENT != 0 && e & PTE_LEAF == 0 {
            return Ok(e & PTE_ADDR_MASK);
        }
        if self.next + PAGE_SIZE > self.limit {
            return Err(GuestTablesError::OutOfTables(self.limit));
        }
        let new = self.next;
        self.next += PAGE_SIZE;
        mem.write_slice(&[0u8; PAGE_SIZE as usize], GuestAddress(new))?;
        mem.write_obj(new | PTE_PRESENT | PTE_WRITABLE, at)?;
        Ok(new)
    }

    /// Maps `va` to `frame` with one leaf of size `leaf`, read-only unless `writable`
    /// (a leaf in the way of a lower table is replaced by a table).
    pub fn map<M: GuestMemory>(
        &mut self,
        mem: &M,
        va: u64,
        frame: u64,
        leaf: CpuLeaf,
        writable: bool,
    ) -> Result<(), GuestTablesError> {
        let size = leaf.bytes();
        if !va.is_multiple_of(size) || !frame.is_multiple_of(size) {
            return Err(GuestTablesError::Unaligned { va, frame });
        }
        let leaf_shift = size.trailing_zeros();
        let mut table = self.root;
        for shift in SHIFTS {
            if shift == leaf_shift {
                let mut e = frame | PTE_PRESENT;
                if writable {
                    e |= PTE_WRITABLE;
                }
                if leaf != CpuLeaf::Small {
                    e |= PTE_LEAF;
                }
                mem.write_obj(e, Self::slot(table, va, shift))?;
                return Ok(());
            }
            table = self.child(mem, table, va, shift)?;
        }
        Ok(())
    }

    /// Maps `pages` 4 KiB pages from `va` to the frames from `frame` on.
    pub fn map_pages<M: GuestMemory>(
        &mut self,
        mem: &M,
        va: u64,
        frame: u64,
        pages: u64,
        writable: bool,
    ) -> Result<(), GuestTablesError> {
        for i in 0..pages {
            let off = i * PAGE_SIZE;
            self.map(mem, va + off, frame + off, CpuLeaf::Small, writable)?;
        }
        Ok(())
    }

    /// Removes the 4 KiB leaf of `va`, as munmap would (the tables above stay).
    pub fn unmap_page<M: GuestMemory>(&self, mem: &M, va: u64) -> Result<(), GuestTablesError> {
        if let Some(at) = self.entry_of(mem, va, 12) {
            mem.write_obj(0u64, at)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::GuestMemoryMmap;

    use super::*;
    use crate::oracle::walk;

    #[test]
    fn builds_what_the_walker_reads() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let mut t = GuestTables::new(&mem, GuestAddress(0x1000), GuestAddress(0x7000)).unwrap();
        t.map_pages(&mem, 0x7f00_0000_0000, 0x8_0000, 3, true)
            .unwrap();
        t.map(&mem, 0x4000_0000, 0x20_0000, CpuLeaf::Huge2M, false)
            .unwrap();
        let w = walk(&mem, t.root(), 0x7f00_0000_2010).unwrap();
        assert_eq!((w.gpa, w.writable), (GuestAddress(0x8_2010), true));
        let w = walk(&mem, t.root(), 0x4000_1000).unwrap();
        assert_eq!((w.gpa, w.leaf), (GuestAddress(0x20_1000), CpuLeaf::Huge2M));
        t.unmap_page(&mem, 0x7f00_0000_1000).unwrap();
        assert_eq!(walk(&mem, t.root(), 0x7f00_0000_1000), None);
        // Three tables for the first map, two more for the second (another PML4 slot): the
        // five pages of the pool are spent.
        assert!(matches!(
            t.map(&mem, 0x100_0000_0000, 0, CpuLeaf::Small, true),
            Err(GuestTablesError::OutOfTables(0x7000))
        ));
        assert!(matches!(
            t.map(&mem, 0x1000, 0x20_0000, CpuLeaf::Huge2M, true),
            Err(GuestTablesError::Unaligned { .. })
        ));
    }
}
