//! The writer: builds 4-level tables in guest memory, with the root and every new table at
//! guest-physical pages the caller chooses.

use std::collections::VecDeque;

use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryError};

use super::{
    entry_address, CpuLeaf, LEVEL_SHIFTS, LOWER_HALF_END, PTE_ADDR_MASK, PTE_LEAF, PTE_PRESENT,
    PTE_WRITABLE, TABLE_SIZE,
};

/// Why a table could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    /// The pages set aside for tables are used up.
    #[error("no page left for another page table ({placed} placed below the root)")]
    OutOfTables {
        /// Tables the writer had placed besides the root.
        placed: u64,
    },
    /// The address or frame is not aligned to the leaf size, or a length is not a multiple
    /// of it.
    #[error("va {va:#x} / frame {frame:#x} not aligned to the leaf size")]
    Unaligned {
        /// The virtual address.
        va: u64,
        /// The frame.
        frame: u64,
    },
    /// The mapping does not lie below [`LOWER_HALF_END`].
    #[error("va {va:#x} + {len:#x} leaves the lower half of the address space")]
    OutOfSpace {
        /// First virtual address.
        va: u64,
        /// Bytes.
        len: u64,
    },
    /// A table is not guest memory.
    #[error("page table not in guest memory: {0}")]
    Memory(#[from] GuestMemoryError),
}

/// Where a writer places the tables it creates below the root.
pub trait TableSource {
    /// The guest-physical address of the next page to hold a table, if any is left.
    fn next_table(&mut self) -> Option<GuestAddress>;
}

/// Consecutive pages `[start, end)`, handed out in address order.
#[derive(Clone, Debug)]
pub struct TablePool {
    next: u64,
    end: u64,
}

impl TablePool {
    /// The pages from `start` (rounded down to a page) up to `end`.
    pub fn new(start: GuestAddress, end: GuestAddress) -> Self {
        TablePool {
            next: start.0 & !(TABLE_SIZE - 1),
            end: end.0,
        }
    }
}

impl TableSource for TablePool {
    fn next_table(&mut self) -> Option<GuestAddress> {
        let end = self.next.checked_add(TABLE_SIZE)?;
        if end > self.end {
            return None;
        }
        let at = self.next;
        self.next = end;
        Some(GuestAddress(at))
    }
}

/// Exactly these pages, in this order (tables at fixed addresses of a memory layout).
impl TableSource for VecDeque<GuestAddress> {
    fn next_table(&mut self) -> Option<GuestAddress> {
        self.pop_front()
    }
}

/// A page table under construction: a PML4 at `root` and the tables below it taken from a
/// [`TableSource`] as they are needed. Entries that point to tables are present and
/// writable (the leaf decides the permission); leaves are present, writable if asked, and
/// have PS set above 4 KiB.
#[derive(Clone, Debug)]
pub struct TableWriter<S: TableSource = TablePool> {
    root: u64,
    source: S,
    placed: u64,
}

impl TableWriter<TablePool> {
    /// An empty PML4 at `root` (page aligned); further tables go in the pages after it,
    /// below `limit`.
    pub fn new<M: GuestMemory>(
        mem: &M,
        root: GuestAddress,
        limit: GuestAddress,
    ) -> Result<Self, WriterError> {
        let root = GuestAddress(root.0 & !(TABLE_SIZE - 1));
        let pool = TablePool::new(GuestAddress(root.0 + TABLE_SIZE), limit);
        Self::with_source(mem, root, pool)
    }
}

impl<S: TableSource> TableWriter<S> {
    /// An empty PML4 at `root` (page aligned); further tables come from `source`.
    pub fn with_source<M: GuestMemory>(
        mem: &M,
        root: GuestAddress,
        source: S,
    ) -> Result<Self, WriterError> {
        let root = root.0 & !(TABLE_SIZE - 1);
        mem.write_slice(&[0u8; TABLE_SIZE as usize], GuestAddress(root))?;
        Ok(TableWriter {
            root,
            source,
            placed: 0,
        })
    }

    /// The PML4's guest-physical address (what CR3, or the device's BIND, is given).
    pub fn root(&self) -> GuestAddress {
        GuestAddress(self.root)
    }

    /// Tables placed below the root so far.
    pub fn tables_placed(&self) -> u64 {
        self.placed
    }

    /// The address of the entry that maps `va` at the level of `shift` (39 = PML4 ... 12 =
    /// PT), if the tables above it exist.
    pub fn entry_of<M: GuestMemory>(&self, mem: &M, va: u64, shift: u32) -> Option<GuestAddress> {
        let mut table = self.root;
        for s in LEVEL_SHIFTS {
            let at = entry_address(table, va, s);
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
    ) -> Result<u64, WriterError> {
        let at = entry_address(table, va, shift);
        let e: u64 = mem.read_obj(at)?;
        if e & PTE_PRESENT != 0 && e & PTE_LEAF == 0 {
            return Ok(e & PTE_ADDR_MASK);
        }
        let new = self.source.next_table().ok_or(WriterError::OutOfTables {
            placed: self.placed,
        })?;
        let new = new.0 & !(TABLE_SIZE - 1);
        mem.write_slice(&[0u8; TABLE_SIZE as usize], GuestAddress(new))?;
        mem.write_obj(new | PTE_PRESENT | PTE_WRITABLE, at)?;
        self.placed += 1;
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
    ) -> Result<(), WriterError> {
        self.map_range(mem, va, frame, leaf.bytes(), leaf, writable)
    }

    /// Maps the `len` bytes from `va` to the frames from `frame` on with leaves of size
    /// `leaf` (an identity map of the first 4 GiB is `map_range(mem, 0, 0, 4 << 30,
    /// CpuLeaf::Huge2M, true)`).
    pub fn map_range<M: GuestMemory>(
        &mut self,
        mem: &M,
        va: u64,
        frame: u64,
        len: u64,
        leaf: CpuLeaf,
        writable: bool,
    ) -> Result<(), WriterError> {
        let size = leaf.bytes();
        if !va.is_multiple_of(size) || !frame.is_multiple_of(size) || !len.is_multiple_of(size) {
            return Err(WriterError::Unaligned { va, frame });
        }
        if va.checked_add(len).is_none_or(|end| end > LOWER_HALF_END) {
            return Err(WriterError::OutOfSpace { va, len });
        }
        let mut bits = PTE_PRESENT;
        if writable {
            bits |= PTE_WRITABLE;
        }
        if leaf != CpuLeaf::Small {
            bits |= PTE_LEAF;
        }
        for off in (0..len).step_by(size as usize) {
            let va = va + off;
            let mut table = self.root;
            for shift in LEVEL_SHIFTS {
                if shift == leaf.shift() {
                    mem.write_obj((frame + off) | bits, entry_address(table, va, shift))?;
                    break;
                }
                table = self.child(mem, table, va, shift)?;
            }
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
    ) -> Result<(), WriterError> {
        let len = pages
            .checked_mul(CpuLeaf::Small.bytes())
            .ok_or(WriterError::OutOfSpace { va, len: u64::MAX })?;
        self.map_range(mem, va, frame, len, CpuLeaf::Small, writable)
    }

    /// Removes the 4 KiB leaf of `va`, as munmap would (the tables above stay).
    pub fn unmap_page<M: GuestMemory>(&self, mem: &M, va: u64) -> Result<(), WriterError> {
        if let Some(at) = self.entry_of(mem, va, CpuLeaf::Small.shift()) {
            mem.write_obj(0u64, at)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::GuestMemoryMmap;

    use super::*;
    use crate::x86::walk;

    const GIB: u64 = 1 << 30;

    fn mem(size: u64) -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), size as usize)]).unwrap()
    }

    #[test]
    fn builds_what_the_walker_reads() {
        let mem = mem(0x10_0000);
        let mut t = TableWriter::new(&mem, GuestAddress(0x1000), GuestAddress(0x7000)).unwrap();
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
        assert_eq!(t.tables_placed(), 5);
        assert!(matches!(
            t.map(&mem, 0x100_0000_0000, 0, CpuLeaf::Small, true),
            Err(WriterError::OutOfTables { placed: 5 })
        ));
        assert!(matches!(
            t.map(&mem, 0x1000, 0x20_0000, CpuLeaf::Huge2M, true),
            Err(WriterError::Unaligned { .. })
        ));
        assert!(matches!(
            t.map_range(&mem, 0, 0, 0x1800, CpuLeaf::Small, true),
            Err(WriterError::Unaligned { .. })
        ));
        assert!(matches!(
            t.map(&mem, LOWER_HALF_END - GIB, 0, CpuLeaf::Huge1G, true),
            Err(WriterError::OutOfTables { .. })
        ));
        assert!(matches!(
            t.map(&mem, LOWER_HALF_END, 0, CpuLeaf::Huge1G, true),
            Err(WriterError::OutOfSpace { .. })
        ));
    }

    /// The VMM's boot identity map: PML4, PDPT and four page directories on consecutive
    /// pages, 2 MiB leaves over the first 4 GiB, entries as the 64-bit boot protocol's
    /// tables have them (0x3 for tables, 0x83 for leaves).
    #[test]
    fn writes_a_boot_identity_map_at_fixed_addresses() {
        const PML4: u64 = 0x9000;
        const PDPT: u64 = 0xa000;
        const PD: u64 = 0xb000;
        let mem = mem(0x10_0000);
        let mut t =
            TableWriter::new(&mem, GuestAddress(PML4), GuestAddress(PD + 4 * TABLE_SIZE)).unwrap();
        t.map_range(&mem, 0, 0, 4 * GIB, CpuLeaf::Huge2M, true)
            .unwrap();
        assert_eq!(t.tables_placed(), 5, "one PDPT and four PDs");
        let read = |at: u64| mem.read_obj::<u64>(GuestAddress(at)).unwrap();
        assert_eq!(read(PML4), PDPT | 0x3);
        assert_eq!(read(PML4 + 8), 0);
        assert_eq!(read(PDPT + 3 * 8), (PD + 0x3000) | 0x3);
        assert_eq!(read(PDPT + 4 * 8), 0);
        assert_eq!(read(PD + 4 * TABLE_SIZE - 8), (4 * GIB - (2 << 20)) | 0x83);
        for x in [
            0u64,
            0x7000,
            0x1ff_ffff,
            0x4000_1234,
            0xfee0_0000,
            0xffff_ffff,
        ] {
            assert_eq!(walk(&mem, t.root(), x).map(|w| w.gpa.0), Some(x), "{x:#x}");
        }
        assert_eq!(walk(&mem, t.root(), 4 * GIB), None);
        // The same with 1 GiB leaves needs only the PDPT; with the tables given one by one
        // they go exactly there.
        let pages: VecDeque<GuestAddress> = [GuestAddress(0x5_0000)].into();
        let mut t = TableWriter::with_source(&mem, GuestAddress(0x4_0000), pages).unwrap();
        t.map_range(&mem, 0, 0, 4 * GIB, CpuLeaf::Huge1G, false)
            .unwrap();
        assert_eq!(read(0x4_0000), 0x5_0000 | 0x3);
        assert_eq!(read(0x5_0000 + 3 * 8), (3 * GIB) | 0x81);
        let w = walk(&mem, t.root(), 0xc000_0123).unwrap();
        assert_eq!(
            (w.gpa.0, w.leaf, w.writable),
            (0xc000_0123, CpuLeaf::Huge1G, false)
        );
        assert!(matches!(
            t.map(&mem, 0x80_0000_0000, 0, CpuLeaf::Huge1G, true),
            Err(WriterError::OutOfTables { placed: 1 })
        ));
    }

    #[test]
    fn tables_outside_guest_memory_fail() {
        let small =
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0x10_0000), 0x1000)]).unwrap();
        assert!(matches!(
            TableWriter::new(&small, GuestAddress(0x9000), GuestAddress(0x20_0000)),
            Err(WriterError::Memory(_))
        ));
        let mut t =
            TableWriter::new(&small, GuestAddress(0x10_0000), GuestAddress(0x10_2000)).unwrap();
        assert!(matches!(
            t.map(&small, 0, 0, CpuLeaf::Small, true),
            Err(WriterError::Memory(_))
        ));
    }
}
