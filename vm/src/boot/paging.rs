//! Identity-mapped page tables for the 64-bit entry point.
//!
//! One PML4 entry points to a PDPT whose first four entries point to four page directories;
//! each page directory maps 1 GiB with 512 2 MiB pages. Together they map guest-virtual X to
//! guest-physical X for X below 4 GiB, which covers the kernel, the zero page and the command
//! line as the boot protocol requires. The kernel builds its own tables right away.

use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{IDENTITY_MAP_SIZE, PDE_START, PDPTE_START, PML4_START};

/// Errors writing the page tables.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Writing a page table into guest memory failed.
    #[error("failed to write the boot page tables into guest memory: {0}")]
    WritePageTables(#[source] vm_memory::GuestMemoryError),
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// Present.
const PTE_PRESENT: u64 = 1 << 0;
/// Writable.
const PTE_WRITABLE: u64 = 1 << 1;
/// Page size: a PDE maps a 2 MiB page.
const PTE_LARGE: u64 = 1 << 7;

/// Size of one large page.
const PAGE_2M: u64 = 2 << 20;
/// Bytes mapped by one page directory.
const PD_SPAN: u64 = 512 * PAGE_2M;
/// Number of page directories.
pub const NUM_PDS: u64 = IDENTITY_MAP_SIZE / PD_SPAN;

/// Builds the value of a table entry pointing at `addr` with `flags`.
fn entry(addr: u64, flags: u64) -> u64 {
    addr | flags
}

fn table_bytes(entries: impl Iterator<Item = u64>) -> Vec<u8> {
    entries.flat_map(u64::to_le_bytes).collect()
}

/// Writes the identity-map page tables; CR3 must then be [`PML4_START`].
pub fn setup_page_tables(mem: &GuestMemoryMmap) -> Result<()> {
    let pml4 = table_bytes(
        std::iter::once(entry(PDPTE_START.raw_value(), PTE_PRESENT | PTE_WRITABLE))
            .chain(std::iter::repeat_n(0, 511)),
    );
    mem.write_slice(&pml4, PML4_START)
        .map_err(Error::WritePageTables)?;

    let pdpt = table_bytes(
        (0..NUM_PDS)
            .map(|i| {
                entry(
                    PDE_START.raw_value() + i * 0x1000,
                    PTE_PRESENT | PTE_WRITABLE,
                )
            })
            .chain(std::iter::repeat_n(0, 512 - NUM_PDS as usize)),
    );
    mem.write_slice(&pdpt, PDPTE_START)
        .map_err(Error::WritePageTables)?;

    let pds = table_bytes(
        (0..NUM_PDS * 512).map(|i| entry(i * PAGE_2M, PTE_PRESENT | PTE_WRITABLE | PTE_LARGE)),
    );
    mem.write_slice(&pds, PDE_START)
        .map_err(Error::WritePageTables)?;
    Ok(())
}

/// Walks the tables in guest memory like the MMU would and returns the physical address that
/// virtual address `va` maps to, or `None` if it is not mapped. Useful to check the tables.
pub fn translate(mem: &GuestMemoryMmap, cr3: GuestAddress, va: u64) -> Option<u64> {
    const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
    let read = |table: u64, index: u64| -> Option<u64> {
        let e: u64 = mem.read_obj(GuestAddress(table + index * 8)).ok()?;
        (e & PTE_PRESENT != 0).then_some(e)
    };
    let pml4e = read(cr3.raw_value() & ADDR_MASK, (va >> 39) & 0x1ff)?;
    let pdpte = read(pml4e & ADDR_MASK, (va >> 30) & 0x1ff)?;
    if pdpte & PTE_LARGE != 0 {
        return Some((pdpte & 0x000f_ffff_c000_0000) | (va & 0x3fff_ffff));
    }
    let pde = read(pdpte & ADDR_MASK, (va >> 21) & 0x1ff)?;
    if pde & PTE_LARGE != 0 {
        return Some((pde & 0x000f_ffff_ffe0_0000) | (va & 0x1f_ffff));
    }
    let pte = read(pde & ADDR_MASK, (va >> 12) & 0x1ff)?;
    Some((pte & ADDR_MASK) | (va & 0xfff))
}

#[cfg(test)]
mod tests {
    use super::*;

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
            assert_eq!(translate(&mem, PML4_START, x), Some(x), "address {x:#x}");
        }
        // Nothing at or above 4 GiB.
        assert_eq!(translate(&mem, PML4_START, 0x1_0000_0000), None);
        assert_eq!(translate(&mem, PML4_START, 0x80_0000_0000), None);
    }

    #[test]
    fn entry_bits() {
        let mem = mem();
        setup_page_tables(&mem).unwrap();
        let pml4e: u64 = mem.read_obj(PML4_START).unwrap();
        assert_eq!(pml4e, PDPTE_START.raw_value() | 0x3);
        let pdpte3: u64 = mem.read_obj(PDPTE_START.unchecked_add(3 * 8)).unwrap();
        assert_eq!(pdpte3, (PDE_START.raw_value() + 0x3000) | 0x3);
        let pdpte4: u64 = mem.read_obj(PDPTE_START.unchecked_add(4 * 8)).unwrap();
        assert_eq!(pdpte4, 0);
        let last: u64 = mem
            .read_obj(PDE_START.unchecked_add(NUM_PDS * 0x1000 - 8))
            .unwrap();
        assert_eq!(last, (IDENTITY_MAP_SIZE - PAGE_2M) | 0x83);
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
        assert!(setup_page_tables(&mem).is_err());
    }
}
