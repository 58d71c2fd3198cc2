//! The zero page (`struct boot_params`) and its e820 memory map.
//!
//! The setup header is copied from the bzImage (as read by linux-loader) and the fields a boot
//! loader owns are filled in: loader type, command line pointer, initrd location and the ACPI
//! RSDP address. The e820 map tells the kernel which guest physical ranges are RAM:
//!
//! - RAM `0 .. EBDA_START` (conventional memory),
//! - reserved `EBDA_START .. HIMEM_START` (EBDA, MP table, ACPI tables, legacy ROM area),
//! - RAM `HIMEM_START ..` end of the low memory region (at most the 3 GiB MMIO gap),
//! - RAM from 4 GiB for the part of the memory above the gap.
//!
//! The MMIO gap is simply not listed, so the kernel treats it as available for PCI.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};

use super::layout::{CMDLINE_START, EBDA_START, HIMEM_START, ZERO_PAGE_START};

/// Errors building or writing the zero page.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The memory map needs more e820 entries than the zero page can hold.
    #[error("the e820 map needs more than {0} entries")]
    TooManyE820Entries(usize),
    /// Guest memory does not cover the low memory the boot layout uses.
    #[error("guest memory does not cover the low 1 MiB needed for boot structures")]
    NoLowMemory,
    /// The initrd does not fit the 32+32-bit fields of the boot protocol.
    #[error("initrd at {addr:#x} of {size:#x} bytes cannot be described in the zero page")]
    InitrdOutOfRange {
        /// Guest physical address of the initrd.
        addr: u64,
        /// Size in bytes.
        size: usize,
    },
    /// Writing the zero page into guest memory failed.
    #[error("failed to write the zero page into guest memory")]
    WriteZeroPage,
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

/// `boot_flag` magic.
const BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// `header` magic: "HdrS".
const HDRS_MAGIC: u32 = 0x5372_6448;
/// `type_of_loader` for a boot loader without an assigned id.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;

/// Where the boot loader put things; the inputs of [`build_zero_page`].
#[derive(Debug, Clone, Copy, Default)]
pub struct BootInfo {
    /// Command line length in bytes, without the terminating NUL (written at `CMDLINE_START`).
    pub cmdline_len: usize,
    /// Initrd address and size, if any.
    pub initrd: Option<(GuestAddress, usize)>,
    /// Address of the ACPI RSDP, if ACPI tables were written.
    pub rsdp: Option<GuestAddress>,
}

/// Appends an entry to the e820 table of `params`, failing when the table is full.
pub fn add_e820_entry(params: &mut boot_params, addr: u64, size: u64, type_: u32) -> Result<()> {
    let idx = usize::from(params.e820_entries);
    let table_len = params.e820_table.len();
    if idx >= table_len {
        return Err(Error::TooManyE820Entries(table_len));
    }
    params.e820_table[idx] = boot_e820_entry {
        addr,
        size,
        r#type: type_,
    };
    params.e820_entries += 1;
    Ok(())
}

/// Fills the e820 table of `params` from the RAM regions of `mem` (see the module docs).
pub fn fill_e820(params: &mut boot_params, mem: &GuestMemoryMmap) -> Result<()> {
    let mut regions: Vec<(u64, u64)> = mem
        .iter()
        .map(|r| (r.start_addr().raw_value(), r.len()))
        .collect();
    regions.sort_unstable();
    let covers_low = regions
        .iter()
        .any(|&(start, len)| start == 0 && len > HIMEM_START.raw_value());
    if !covers_low {
        return Err(Error::NoLowMemory);
    }
    for (start, len) in regions {
        if start == 0 {
            add_e820_entry(params, 0, EBDA_START.raw_value(), E820_RAM)?;
            add_e820_entry(
                params,
                EBDA_START.raw_value(),
                HIMEM_START.raw_value() - EBDA_START.raw_value(),
                E820_RESERVED,
            )?;
            add_e820_entry(
                params,
                HIMEM_START.raw_value(),
                len - HIMEM_START.raw_value(),
                E820_RAM,
            )?;
        } else {
            add_e820_entry(params, start, len, E820_RAM)?;
        }
    }
    Ok(())
}

/// Builds the zero page from the bzImage setup header `hdr` and the boot `info`.
pub fn build_zero_page(
    hdr: &setup_header,
    mem: &GuestMemoryMmap,
    info: &BootInfo,
) -> Result<boot_params> {
    let mut params = boot_params {
        hdr: *hdr,
        ..Default::default()
    };
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.boot_flag = BOOT_FLAG_MAGIC;
    params.hdr.header = HDRS_MAGIC;
    // CMDLINE_START is below 4 GiB (checked by a const assertion below).
    params.hdr.cmd_line_ptr = CMDLINE_START.raw_value() as u32;
    params.ext_cmd_line_ptr = 0;
    params.hdr.cmdline_size = info.cmdline_len as u32;
    if let Some((addr, size)) = info.initrd {
        let a = addr.raw_value();
        let s = u64::try_from(size).unwrap_or(u64::MAX);
        if s > u64::from(u32::MAX) || a.checked_add(s).is_none() || (a >> 32) > u64::from(u32::MAX)
        {
            return Err(Error::InitrdOutOfRange { addr: a, size });
        }
        params.hdr.ramdisk_image = a as u32;
        params.ext_ramdisk_image = (a >> 32) as u32;
        params.hdr.ramdisk_size = s as u32;
        params.ext_ramdisk_size = 0;
    }
    if let Some(rsdp) = info.rsdp {
        params.acpi_rsdp_addr = rsdp.raw_value();
    }
    fill_e820(&mut params, mem)?;
    Ok(params)
}

const _: () = assert!(CMDLINE_START.0 <= u32::MAX as u64);

/// Writes `params` at [`ZERO_PAGE_START`].
pub fn write_zero_page(mem: &GuestMemoryMmap, params: &boot_params) -> Result<()> {
    mem.write_obj(*params, ZERO_PAGE_START)
        .map_err(|_| Error::WriteZeroPage)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::layout::{ram_regions, GIB, MIB, MMIO_GAP_END, MMIO_GAP_START};
    use vm_memory::ByteValued;

    fn header() -> setup_header {
        setup_header {
            header: HDRS_MAGIC,
            version: 0x020f,
            loadflags: 1,
            code32_start: 0x10_0000,
            initrd_addr_max: 0x7fff_ffff,
            cmdline_size: 2047,
            ..Default::default()
        }
    }

    fn entries(p: &boot_params) -> Vec<(u64, u64, u32)> {
        p.e820_table[..usize::from(p.e820_entries)]
            .iter()
            .map(|e| ({ e.addr }, { e.size }, { e.r#type }))
            .collect()
    }

    fn no_ram_in_gap(p: &boot_params) {
        for (addr, size, t) in entries(p) {
            if t == E820_RAM {
                let end = addr + size;
                assert!(
                    end <= MMIO_GAP_START || addr >= MMIO_GAP_END,
                    "RAM {addr:#x}..{end:#x} overlaps the MMIO gap"
                );
            }
        }
    }

    #[test]
    fn zero_page_fields() {
        let mem = GuestMemoryMmap::from_ranges(&ram_regions(256 * MIB)).unwrap();
        let info = BootInfo {
            cmdline_len: 42,
            initrd: Some((GuestAddress(0x0f00_0000), 0x12_3000)),
            rsdp: Some(GuestAddress(0xe0000)),
        };
        let p = build_zero_page(&header(), &mem, &info).unwrap();
        assert_eq!({ p.hdr.type_of_loader }, 0xff);
        assert_eq!({ p.hdr.boot_flag }, 0xaa55);
        assert_eq!({ p.hdr.header }, 0x5372_6448);
        assert_eq!({ p.hdr.cmd_line_ptr }, 0x20000);
        assert_eq!({ p.hdr.cmdline_size }, 42);
        assert_eq!({ p.hdr.ramdisk_image }, 0x0f00_0000);
        assert_eq!({ p.hdr.ramdisk_size }, 0x12_3000);
        assert_eq!({ p.ext_ramdisk_image }, 0);
        assert_eq!({ p.acpi_rsdp_addr }, 0xe0000);
        // Fields of the kernel's header are kept.
        assert_eq!({ p.hdr.version }, 0x020f);
        assert_eq!({ p.hdr.code32_start }, 0x10_0000);

        write_zero_page(&mem, &p).unwrap();
        let back: boot_params = mem.read_obj(ZERO_PAGE_START).unwrap();
        assert_eq!(back.as_slice(), p.as_slice());
        // Raw offsets from the boot protocol: boot_flag at 0x1fe, "HdrS" at 0x202.
        let flag: u16 = mem.read_obj(ZERO_PAGE_START.unchecked_add(0x1fe)).unwrap();
        assert_eq!(flag, 0xaa55);
        let magic: u32 = mem.read_obj(ZERO_PAGE_START.unchecked_add(0x202)).unwrap();
        assert_eq!(magic, 0x5372_6448);
        let nr: u8 = mem.read_obj(ZERO_PAGE_START.unchecked_add(0x1e8)).unwrap();
        assert_eq!(nr, 3);
    }

    #[test]
    fn e820_below_gap() {
        let mem = GuestMemoryMmap::from_ranges(&ram_regions(256 * MIB)).unwrap();
        let p = build_zero_page(&header(), &mem, &BootInfo::default()).unwrap();
        assert_eq!(
            entries(&p),
            vec![
                (0, 0x9fc00, E820_RAM),
                (0x9fc00, 0x100000 - 0x9fc00, E820_RESERVED),
                (0x100000, 256 * MIB - 0x100000, E820_RAM),
            ]
        );
        no_ram_in_gap(&p);
        assert_eq!({ p.acpi_rsdp_addr }, 0);
        assert_eq!({ p.hdr.ramdisk_image }, 0);
    }

    #[test]
    fn e820_above_gap() {
        let mem = GuestMemoryMmap::from_ranges(&ram_regions(5 * GIB)).unwrap();
        let p = build_zero_page(&header(), &mem, &BootInfo::default()).unwrap();
        assert_eq!(
            entries(&p),
            vec![
                (0, 0x9fc00, E820_RAM),
                (0x9fc00, 0x100000 - 0x9fc00, E820_RESERVED),
                (0x100000, 3 * GIB - 0x100000, E820_RAM),
                (4 * GIB, 2 * GIB, E820_RAM),
            ]
        );
        no_ram_in_gap(&p);
        let ram: u64 = entries(&p)
            .iter()
            .filter(|e| e.2 == E820_RAM)
            .map(|e| e.1)
            .sum();
        assert_eq!(ram, 5 * GIB - (0x100000 - 0x9fc00));
    }

    #[test]
    fn e820_table_full() {
        let mut p = boot_params::default();
        let cap = p.e820_table.len();
        for i in 0..cap {
            add_e820_entry(&mut p, i as u64 * 0x1000, 0x1000, E820_RAM).unwrap();
        }
        assert_eq!(
            add_e820_entry(&mut p, 0, 0x1000, E820_RAM),
            Err(Error::TooManyE820Entries(cap))
        );
        assert_eq!(usize::from(p.e820_entries), cap);
    }

    #[test]
    fn needs_low_memory() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        assert_eq!(
            build_zero_page(&header(), &mem, &BootInfo::default()).err(),
            Some(Error::NoLowMemory)
        );
    }

    #[test]
    fn high_initrd_uses_ext_fields() {
        let mem = GuestMemoryMmap::from_ranges(&ram_regions(256 * MIB)).unwrap();
        let info = BootInfo {
            initrd: Some((GuestAddress(0x1_2345_6000), 0x1000)),
            ..Default::default()
        };
        let p = build_zero_page(&header(), &mem, &info).unwrap();
        assert_eq!({ p.hdr.ramdisk_image }, 0x2345_6000);
        assert_eq!({ p.ext_ramdisk_image }, 1);
    }
}
