//! Guest physical memory map used when booting a Linux guest on x86-64.
//!
//! ```text
//! 0x0000_0000 ..0x0000_0500   real-mode IVT / BIOS data area (left zero)
//! 0x0000_0500 ..0x0000_0540   boot GDT                      (BOOT_GDT_START)
//! 0x0000_0540 ..0x0000_0550   boot IDT (one empty gate)     (BOOT_IDT_START)
//! 0x0000_7000 ..0x0000_8000   zero page / boot_params       (ZERO_PAGE_START)
//! 0x0000_8000 ..0x0000_8ff0   boot stack, grows down        (BOOT_STACK_POINTER)
//! 0x0000_9000 ..0x0000_a000   PML4                          (PML4_START)
//! 0x0000_a000 ..0x0000_b000   PDPT                          (PDPTE_START)
//! 0x0000_b000 ..0x0000_f000   4 page directories, 2 MiB pages (PDE_START)
//! 0x0002_0000 ..0x0002_0800   kernel command line           (CMDLINE_START)
//! 0x0009_fc00 ..0x000e_0000   EBDA: Intel MP table          (MPTABLE_START)
//! 0x000e_0000 ..0x0010_0000   ACPI: RSDP then the tables    (RSDP_START)
//! 0x0010_0000 ..              kernel (bzImage protected-mode part) (HIMEM_START)
//!             ..0xc000_0000   end of low RAM                (MMIO_GAP_START)
//! 0xc000_0000 ..0xfec0_0000   32-bit PCI MMIO window        (PCI_MMIO_START)
//! 0xfec0_0000 ..0xfec0_1000   IOAPIC                        (IOAPIC_START)
//! 0xfee0_0000 ..0xfee0_1000   local APIC                    (LAPIC_START)
//! 0x1_0000_0000 ..            RAM above 4 GiB               (HIGH_RAM_START)
//! ```
//!
//! Everything from the EBDA up to 1 MiB is reported to the guest as reserved in the e820 map,
//! so the MP and ACPI tables are never handed out as free memory.

use vm_memory::GuestAddress;

/// Errors about the guest memory size.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The requested guest memory is smaller than the minimum the boot layout needs.
    #[error("guest memory of {size:#x} bytes is too small, at least {min:#x} bytes are needed")]
    MemoryTooSmall {
        /// Requested size in bytes.
        size: u64,
        /// Minimum size in bytes.
        min: u64,
    },
    /// The requested guest memory does not fit in the guest physical address space or in a `usize`.
    #[error("guest memory of {0:#x} bytes is too large")]
    MemoryTooLarge(u64),
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// One mebibyte.
pub const MIB: u64 = 1 << 20;
/// One gibibyte.
pub const GIB: u64 = 1 << 30;

/// The smallest guest memory we accept: room for the low structures, a decompressing
/// distribution kernel (which unpacks itself at 16 MiB) and some working memory.
pub const MIN_MEM_SIZE: u64 = 64 * MIB;

/// The boot GDT (see `gdt.rs`); at most 8 descriptors (64 bytes).
pub const BOOT_GDT_START: GuestAddress = GuestAddress(0x500);
/// Maximum number of 8-byte slots in the boot GDT.
pub const BOOT_GDT_MAX_ENTRIES: usize = 8;
/// The boot IDT: a single non-present 16-byte gate, so any exception before the kernel installs
/// its own IDT escalates to a triple fault (a clean VM shutdown) instead of running garbage.
pub const BOOT_IDT_START: GuestAddress = GuestAddress(0x540);

/// The zero page (`struct boot_params`), passed to the kernel in RSI.
pub const ZERO_PAGE_START: GuestAddress = GuestAddress(0x7000);

/// Initial stack pointer of the boot vCPU; the stack lives in the page above the zero page.
pub const BOOT_STACK_POINTER: GuestAddress = GuestAddress(0x8ff0);

/// Level-4 page map (CR3).
pub const PML4_START: GuestAddress = GuestAddress(0x9000);
/// Page-directory-pointer table: four entries, one per GiB of the identity map.
pub const PDPTE_START: GuestAddress = GuestAddress(0xa000);
/// First of four page directories, each mapping 1 GiB with 2 MiB pages.
pub const PDE_START: GuestAddress = GuestAddress(0xb000);
/// Size of the identity map set up for boot (the boot protocol needs the kernel, the zero
/// page and the command line mapped; we map all of the first 4 GiB).
pub const IDENTITY_MAP_SIZE: u64 = 4 * GIB;

/// The kernel command line.
pub const CMDLINE_START: GuestAddress = GuestAddress(0x20000);
/// Maximum command line length, including the terminating NUL.
pub const CMDLINE_MAX_SIZE: usize = 2048;

/// Start of the Extended BIOS Data Area; the Intel MP floating pointer is placed here (the
/// kernel scans the last KiB below 640 KiB for it).
pub const EBDA_START: GuestAddress = GuestAddress(0x9fc00);
/// The MP table (floating pointer followed by the configuration table).
pub const MPTABLE_START: GuestAddress = EBDA_START;
/// The MP table must end before the ACPI area.
pub const MPTABLE_END: GuestAddress = RSDP_START;

/// The ACPI RSDP, inside the BIOS read-only area the kernel also scans (0xe0000..0x100000).
pub const RSDP_START: GuestAddress = GuestAddress(0xe0000);
/// ACPI tables area end (exclusive); tables are laid out after the RSDP.
pub const ACPI_END: GuestAddress = HIMEM_START;

/// Start of "high" memory, where the protected-mode part of the bzImage is loaded.
pub const HIMEM_START: GuestAddress = GuestAddress(0x10_0000);

/// End of RAM below 4 GiB: RAM stops at 3 GiB to leave the 32-bit MMIO gap.
pub const MMIO_GAP_START: u64 = 3 * GIB;
/// End of the 32-bit MMIO gap (exclusive): 4 GiB.
pub const MMIO_GAP_END: u64 = 4 * GIB;
/// Start of the 32-bit PCI MMIO window (for BARs).
pub const PCI_MMIO_START: u64 = MMIO_GAP_START;
/// Size of the 32-bit PCI MMIO window: up to the IOAPIC.
pub const PCI_MMIO_SIZE: u64 = IOAPIC_START - PCI_MMIO_START;
/// IOAPIC MMIO base.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC MMIO base.
pub const LAPIC_START: u64 = 0xfee0_0000;
/// RAM beyond what fits below the gap continues here.
pub const HIGH_RAM_START: GuestAddress = GuestAddress(MMIO_GAP_END);

/// Maximum number of vCPUs the boot tables describe: xAPIC ids 0..=253 for the CPUs, the next
/// id (`num_cpus`) for the IOAPIC, and 0xff is the broadcast id.
pub const MAX_VCPUS: u8 = 254;

/// I/O port of the ACPI sleep control / sleep status / reset registers (see `acpi.rs`).
pub const ACPI_PM_BASE: u16 = 0x600;

/// Checks that `mem_size` bytes of guest RAM are enough and representable.
pub fn validate_mem_size(mem_size: u64) -> Result<()> {
    if mem_size < MIN_MEM_SIZE {
        return Err(Error::MemoryTooSmall {
            size: mem_size,
            min: MIN_MEM_SIZE,
        });
    }
    let high = mem_size.saturating_sub(MMIO_GAP_START);
    if usize::try_from(mem_size).is_err() || HIGH_RAM_START.0.checked_add(high).is_none() {
        return Err(Error::MemoryTooLarge(mem_size));
    }
    Ok(())
}

/// Splits `mem_size` bytes of RAM around the 32-bit MMIO gap: up to 3 GiB at address 0, the rest
/// at 4 GiB. Returns `(start, length)` pairs ready for `GuestMemoryMmap::from_ranges`.
///
/// Call [`validate_mem_size`] first; sizes that do not fit a `usize` are clamped.
pub fn ram_regions(mem_size: u64) -> Vec<(GuestAddress, usize)> {
    let to_usize = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
    let low = mem_size.min(MMIO_GAP_START);
    let mut regions = vec![(GuestAddress(0), to_usize(low))];
    if mem_size > MMIO_GAP_START {
        regions.push((HIGH_RAM_START, to_usize(mem_size - MMIO_GAP_START)));
    }
    regions
}

// The structures above must not overlap each other.
const _: () = {
    assert!(BOOT_GDT_START.0 + (BOOT_GDT_MAX_ENTRIES as u64) * 8 <= BOOT_IDT_START.0);
    assert!(BOOT_IDT_START.0 + 16 <= ZERO_PAGE_START.0);
    assert!(ZERO_PAGE_START.0 + 0x1000 <= BOOT_STACK_POINTER.0 - 0x800);
    assert!(BOOT_STACK_POINTER.0 < PML4_START.0);
    assert!(PDPTE_START.0 == PML4_START.0 + 0x1000);
    assert!(PDE_START.0 == PDPTE_START.0 + 0x1000);
    assert!(PDE_START.0 + 4 * 0x1000 <= CMDLINE_START.0);
    assert!(CMDLINE_START.0 + CMDLINE_MAX_SIZE as u64 <= EBDA_START.0);
    assert!(MPTABLE_END.0 <= RSDP_START.0);
    assert!(PCI_MMIO_START + PCI_MMIO_SIZE == IOAPIC_START);
    assert!(IOAPIC_START < LAPIC_START && LAPIC_START < MMIO_GAP_END);
    assert!(MIN_MEM_SIZE <= MMIO_GAP_START);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_is_one_region() {
        let r = ram_regions(256 * MIB);
        assert_eq!(r, vec![(GuestAddress(0), (256 * MIB) as usize)]);
    }

    #[test]
    fn exactly_gap_start_is_one_region() {
        let r = ram_regions(MMIO_GAP_START);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].1 as u64, MMIO_GAP_START);
    }

    #[test]
    fn large_memory_is_split_around_gap() {
        let r = ram_regions(5 * GIB);
        assert_eq!(
            r,
            vec![
                (GuestAddress(0), (3 * GIB) as usize),
                (GuestAddress(4 * GIB), (2 * GIB) as usize)
            ]
        );
        let total: u64 = r.iter().map(|(_, l)| *l as u64).sum();
        assert_eq!(total, 5 * GIB);
        for (start, len) in r {
            let end = start.0 + len as u64;
            assert!(end <= MMIO_GAP_START || start.0 >= MMIO_GAP_END);
        }
    }

    #[test]
    fn minimum_size_is_enforced() {
        assert!(validate_mem_size(MIN_MEM_SIZE).is_ok());
        assert_eq!(
            validate_mem_size(MIN_MEM_SIZE - 1),
            Err(Error::MemoryTooSmall {
                size: MIN_MEM_SIZE - 1,
                min: MIN_MEM_SIZE
            })
        );
        assert_eq!(
            validate_mem_size(u64::MAX),
            Err(Error::MemoryTooLarge(u64::MAX))
        );
    }
}
