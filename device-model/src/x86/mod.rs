//! x86-64 4-level paging in guest memory: the entry bits, a walker that reads tables as the
//! CPU does ([`walk`]) and a writer that builds them ([`TableWriter`]).
//!
//! The coherence oracle walks the guest's own tables from the root given at BIND. The
//! writer lays tables out the way a kernel does, for the device's tests, the benchmark, the
//! shared driver rig, and any code that must hand a CPU a page table without a kernel (the
//! VMM's 64-bit boot identity map is one: 2 MiB or 1 GiB leaves, tables at fixed
//! guest-physical addresses).
//!
//! Only the lower half of the address space is handled (addresses below
//! [`LOWER_HALF_END`]), which holds both user processes and a boot identity map.

mod walk;
mod writer;

pub use walk::{walk, CpuTranslation};
pub use writer::{TablePool, TableSource, TableWriter, WriterError};

use vm_memory::GuestAddress;

/// Present bit of an x86-64 paging entry.
pub const PTE_PRESENT: u64 = 1 << 0;
/// Read/write bit: the CPU may write only if every level has it.
pub const PTE_WRITABLE: u64 = 1 << 1;
/// Page-size bit: in a PDPT entry a 1 GiB leaf, in a PD entry a 2 MiB leaf.
pub const PTE_LEAF: u64 = 1 << 7;
/// Physical-address bits of an entry (bits 12..=51, the architectural maximum).
pub const PTE_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// Bytes of one entry.
pub const PTE_SIZE: u64 = 8;
/// Entries in one table.
pub const ENTRIES: u64 = 512;
/// Bytes of one table (a 4 KiB page).
pub const TABLE_SIZE: u64 = ENTRIES * PTE_SIZE;
/// The end of the lower canonical half with 4-level paging (user addresses live below).
pub const LOWER_HALF_END: u64 = 1 << 47;
/// Index shifts of the four levels, PML4 first.
pub const LEVEL_SHIFTS: [u32; 4] = [39, 30, 21, 12];

/// Size of a CPU leaf.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuLeaf {
    /// 4 KiB (a PT entry).
    Small,
    /// 2 MiB (a PD entry with PS).
    Huge2M,
    /// 1 GiB (a PDPT entry with PS).
    Huge1G,
}

impl CpuLeaf {
    /// Bytes covered by the leaf (a `const fn`, so memory layouts can be sized with it).
    pub const fn bytes(self) -> u64 {
        1 << self.shift()
    }

    /// The index shift of the level that holds the leaf (12, 21 or 30).
    pub const fn shift(self) -> u32 {
        match self {
            CpuLeaf::Small => 12,
            CpuLeaf::Huge2M => 21,
            CpuLeaf::Huge1G => 30,
        }
    }
}

// What a table of each level spans follows from the leaf sizes.
const _: () = {
    assert!(CpuLeaf::Small.bytes() * ENTRIES == CpuLeaf::Huge2M.bytes());
    assert!(CpuLeaf::Huge2M.bytes() * ENTRIES == CpuLeaf::Huge1G.bytes());
    assert!(CpuLeaf::Huge1G.bytes() * ENTRIES * ENTRIES == LOWER_HALF_END * 2);
};

/// The address of the entry for `va` in the table at `table`, at the level of `shift` (39 =
/// PML4 ... 12 = PT).
pub fn entry_address(table: u64, va: u64, shift: u32) -> GuestAddress {
    GuestAddress(table + ((va >> shift) & (ENTRIES - 1)) * PTE_SIZE)
}

/// Scratch CPU page tables for the tests of this crate: guest memory with an empty PML4 at
/// [`scratch::ROOT`] and room for tables in the pages after it.
#[cfg(test)]
pub(crate) mod scratch {
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    use super::*;

    /// Guest RAM of the scratch tables.
    pub const RAM: u64 = 0x80_0000;
    /// Where the PML4 is.
    pub const ROOT: u64 = 0x1000;

    /// Guest memory and the writer of its tables.
    pub struct Tables {
        pub mem: GuestMemoryMmap,
        pub tables: TableWriter,
    }

    impl Tables {
        pub fn new() -> Self {
            let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap();
            let tables = TableWriter::new(&mem, GuestAddress(ROOT), GuestAddress(RAM)).unwrap();
            Tables { mem, tables }
        }

        /// Maps `va` with a leaf at level `shift` (12, 21 or 30).
        pub fn map(&mut self, va: u64, frame: u64, shift: u32, writable: bool) {
            let leaf = match shift {
                12 => CpuLeaf::Small,
                21 => CpuLeaf::Huge2M,
                _ => CpuLeaf::Huge1G,
            };
            self.tables
                .map(&self.mem, va, frame, leaf, writable)
                .unwrap();
        }

        pub fn walk(&self, va: u64) -> Option<CpuTranslation> {
            walk(&self.mem, GuestAddress(ROOT), va)
        }
    }
}
