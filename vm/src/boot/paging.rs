//! Identity-mapped page tables for the 64-bit entry point.
//!
//! One PML4 entry points to a PDPT whose first four entries point to four page directories;
//! each page directory maps 1 GiB with 512 2 MiB pages. Together they map guest-virtual X to
//! guest-physical X for X below 4 GiB, which covers the kernel, the zero page and the command
//! line as the boot protocol requires. The kernel builds its own tables right away.
//!
//! The tables are written by the device model's x86-64 writer ([`TableWriter`]), given
//! exactly the pages of the boot layout: the PML4 at [`PML4_START`], the PDPT at
//! [`PDPTE_START`] and the page directories from [`PDE_START`] on, in that order.

use std::collections::VecDeque;

use device_model::x86::{CpuLeaf, TableWriter, WriterError, TABLE_SIZE};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::layout::{IDENTITY_MAP_SIZE, PDE_START, PDPTE_START, PML4_START};

/// Errors writing the page tables.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A table could not be written: its page is not guest memory (or, were the layout
    /// wrong, the writer ran out of the pages set aside for tables).
    #[error("failed to write the boot page tables: {0}")]
    WritePageTables(#[source] WriterError),
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// Number of page directories: one per GiB, what a PDPT entry spans.
pub const NUM_PDS: u64 = IDENTITY_MAP_SIZE / CpuLeaf::Huge1G.bytes();

/// The pages the tables below the PML4 go in, in the order the writer asks for them: the
/// PDPT (for the first 2 MiB leaf), then one page directory per GiB as the map goes up.
fn table_pages() -> VecDeque<GuestAddress> {
    std::iter::once(PDPTE_START)
        .chain((0..NUM_PDS).map(|i| GuestAddress(PDE_START.0 + i * TABLE_SIZE)))
        .collect()
}

/// Writes the identity-map page tables; CR3 must then be [`PML4_START`].
pub fn setup_page_tables(mem: &GuestMemoryMmap) -> Result<()> {
    let mut tables =
        TableWriter::with_source(mem, PML4_START, table_pages()).map_err(Error::WritePageTables)?;
    tables
        .map_range(mem, 0, 0, IDENTITY_MAP_SIZE, CpuLeaf::Huge2M, true)
        .map_err(Error::WritePageTables)
}

#[cfg(test)]
mod tests {
    use device_model::x86::{walk, PTE_LEAF, PTE_PRESENT, PTE_WRITABLE};
    use vm_memory::{Address, Bytes};

    use super::*;

    /// What the tables at CR3 = [`PML4_START`] map `va` to, walked as the CPU walks them.
    fn translate(mem: &GuestMemoryMmap, va: u64) -> Option<u64> {
        walk(mem, PML4_START, va).map(|t| t.gpa.0)
    }

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    #[test]
    fn identity_maps_first_4g() {
        let mem = mem();
        setup_page_tables(&mem).unwrap();
        for x in [
            0u64,
            0x7000,
            0x10_0200,
            0x1ff_ffff,
            0x200_0000,
            0x3fff_ffff,
            0x4000_1234,
            0xbfff_ffff,
            0xfee0_0000,
            0xffff_ffff,
        ] {
            assert_eq!(translate(&mem, x), Some(x), "address {x:#x}");
            let t = walk(&mem, PML4_START, x).unwrap();
            assert_eq!((t.leaf, t.writable), (CpuLeaf::Huge2M, true), "{x:#x}");
        }
        // Nothing at or above 4 GiB.
        assert_eq!(translate(&mem, 0x1_0000_0000), None);
        assert_eq!(translate(&mem, 0x80_0000_0000), None);
    }

    #[test]
    fn entry_bits() {
        let mem = mem();
        setup_page_tables(&mem).unwrap();
        let pml4e: u64 = mem.read_obj(PML4_START).unwrap();
        let table = PTE_PRESENT | PTE_WRITABLE;
        assert_eq!(table, 0x3);
        assert_eq!(pml4e, PDPTE_START.raw_value() | table);
        let pdpte3: u64 = mem.read_obj(PDPTE_START.unchecked_add(3 * 8)).unwrap();
        assert_eq!(pdpte3, (PDE_START.raw_value() + 0x3000) | table);
        let pdpte4: u64 = mem.read_obj(PDPTE_START.unchecked_add(4 * 8)).unwrap();
        assert_eq!(pdpte4, 0);
        let last: u64 = mem
            .read_obj(PDE_START.unchecked_add(NUM_PDS * 0x1000 - 8))
            .unwrap();
        let leaf = table | PTE_LEAF;
        assert_eq!(leaf, 0x83);
        assert_eq!(last, (IDENTITY_MAP_SIZE - CpuLeaf::Huge2M.bytes()) | leaf);
    }

    /// The six pages from the PML4 to the last page directory, byte for byte, as the
    /// hand-written tables of this module had them (commit a55a920): written down here so
    /// that whatever writes the tables keeps them exactly, and touches nothing else.
    #[test]
    fn tables_are_byte_for_byte_the_boot_layout() {
        const POISON: u8 = 0xa5;
        const FIRST: usize = 0x9000;
        const END: usize = 0xf000;
        let mut want = vec![0u8; END - FIRST];
        let mut put = |at: usize, value: u64| {
            want[at - FIRST..at - FIRST + 8].copy_from_slice(&value.to_le_bytes());
        };
        // PML4 at 0x9000: entry 0 is the PDPT, present and writable.
        put(0x9000, 0x0000_0000_0000_a003);
        // PDPT at 0xa000: entries 0..4 are the four page directories.
        put(0xa000, 0x0000_0000_0000_b003);
        put(0xa008, 0x0000_0000_0000_c003);
        put(0xa010, 0x0000_0000_0000_d003);
        put(0xa018, 0x0000_0000_0000_e003);
        // Page directories at 0xb000..0xf000: 2048 2 MiB leaves, present, writable, PS.
        for i in 0..2048u64 {
            put(0xb000 + 8 * i as usize, (i << 21) | 0x83);
        }
        assert_eq!(&want[0x2000..0x2008], &[0x83, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&want[0x3000..0x3008], &[0x83, 0, 0, 0x40, 0, 0, 0, 0]);
        assert_eq!(&want[0x5ff8..], &[0x83, 0, 0xe0, 0xff, 0, 0, 0, 0]);

        let mem = mem();
        let size = 0x10_0000;
        mem.write_slice(&vec![POISON; size], GuestAddress(0))
            .unwrap();
        setup_page_tables(&mem).unwrap();
        let mut got = vec![0u8; size];
        mem.read_slice(&mut got, GuestAddress(0)).unwrap();
        assert!(got[..FIRST].iter().all(|&b| b == POISON), "below the PML4");
        assert!(got[END..].iter().all(|&b| b == POISON), "above the PDs");
        for (page, (got, want)) in got[FIRST..END]
            .chunks(0x1000)
            .zip(want.chunks(0x1000))
            .enumerate()
        {
            assert!(got == want, "table page {:#x}", FIRST + page * 0x1000);
        }
    }

    #[test]
    fn fails_without_memory() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0x10_0000), 0x1000)]).unwrap();
        assert!(matches!(
            setup_page_tables(&mem),
            Err(Error::WritePageTables(WriterError::Memory(_)))
        ));
    }
}
