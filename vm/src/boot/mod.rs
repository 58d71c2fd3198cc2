//! Direct boot of an x86-64 Linux bzImage through the 64-bit boot protocol.
//!
//! The flow: the VMM creates guest RAM split around the 32-bit MMIO gap
//! ([`layout::ram_regions`]), then [`load_kernel`] copies the protected-mode part of the bzImage
//! to 1 MiB (linux-loader parses the setup header) and [`load_initrd`] puts the initrd at the
//! top of low RAM. [`configure_system`] writes everything the kernel looks at before it has its
//! own: the command line, a boot GDT and IDT, identity page tables for the first 4 GiB, an MP
//! table, the ACPI tables (the MADT is how this kernel finds CPUs and the IOAPIC; the FADT/DSDT
//! give it power-off and reset through [`layout::ACPI_PM_BASE`]) and the zero page with
//! the e820 map and the RSDP address. Finally [`regs::configure_vcpu`] gives every vCPU its
//! CPUID, MSRs, FPU and LAPIC state, and puts vCPU 0 in long mode at the 64-bit entry point
//! (load address + 0x200) with RSI pointing at the zero page. The other vCPUs wait for the
//! INIT/SIPI the kernel sends through the in-kernel LAPIC.

pub mod acpi;
pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod paging;
pub mod regs;
pub mod zero_page;

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::{setup_header, XLF_KERNEL_64};
use linux_loader::loader::{bzimage::BzImage, KernelLoader};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};

pub use acpi::{create_acpi_tables, RESET_VALUE};
pub use layout::{
    ram_regions, ACPI_PM_BASE, MAX_VCPUS, MIN_MEM_SIZE, PCI_MMIO_SIZE, PCI_MMIO_START,
};
pub use regs::configure_vcpu;

/// Errors of the boot module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel image file does not exist.
    #[error("kernel image {0} not found")]
    KernelNotFound(PathBuf),
    /// The kernel image file could not be opened or inspected.
    #[error("cannot open kernel image {path}: {source}")]
    OpenKernel {
        /// Path of the image.
        path: PathBuf,
        /// Underlying error.
        source: io::Error,
    },
    /// The file is not a bzImage, or a corrupt one.
    #[error("not a valid bzImage: {0}")]
    InvalidKernel(#[source] linux_loader::loader::Error),
    /// linux-loader failed to place the kernel.
    #[error("failed to load the kernel: {0}")]
    KernelLoad(#[source] linux_loader::loader::Error),
    /// The kernel (or the memory it decompresses into) does not fit in low guest RAM.
    #[error("kernel needs memory up to {needed:#x} but low guest RAM ends at {available:#x}")]
    KernelTooBig {
        /// End address (exclusive) the kernel needs.
        needed: u64,
        /// End address (exclusive) of the low RAM region.
        available: u64,
    },
    /// The bzImage has no 64-bit entry point (boot protocol older than 2.12 or a 32-bit kernel).
    #[error("the bzImage has no 64-bit entry point")]
    No64BitEntry,
    /// The initrd file does not exist.
    #[error("initrd {0} not found")]
    InitrdNotFound(PathBuf),
    /// The initrd file could not be opened or inspected.
    #[error("cannot open initrd {path}: {source}")]
    OpenInitrd {
        /// Path of the initrd.
        path: PathBuf,
        /// Underlying error.
        source: io::Error,
    },
    /// The initrd file is empty.
    #[error("initrd {0} is empty")]
    EmptyInitrd(PathBuf),
    /// The initrd does not fit between the kernel and the highest address it may use.
    #[error(
        "initrd of {size:#x} bytes does not fit: only {available:#x} bytes free below {limit:#x}"
    )]
    InitrdTooBig {
        /// Size of the initrd.
        size: u64,
        /// Free bytes between the kernel and `limit`.
        available: u64,
        /// Highest address (exclusive) the initrd may occupy.
        limit: u64,
    },
    /// Reading the initrd into guest memory failed.
    #[error("failed to read the initrd into guest memory: {0}")]
    ReadInitrd(#[source] vm_memory::GuestMemoryError),
    /// The command line is too long.
    #[error("kernel command line of {len} bytes is too long (at most {max} bytes)")]
    CmdlineTooLong {
        /// Length in bytes, without the NUL.
        len: usize,
        /// Maximum length in bytes, without the NUL.
        max: usize,
    },
    /// The command line contains a NUL byte.
    #[error("kernel command line contains a NUL byte")]
    CmdlineHasNul,
    /// Writing the command line into guest memory failed.
    #[error("failed to write the kernel command line into guest memory: {0}")]
    WriteCmdline(#[source] vm_memory::GuestMemoryError),
    /// Guest memory size problem.
    #[error(transparent)]
    Layout(#[from] layout::Error),
    /// GDT/IDT problem.
    #[error(transparent)]
    Gdt(#[from] gdt::Error),
    /// Page table problem.
    #[error(transparent)]
    Paging(#[from] paging::Error),
    /// MP table problem.
    #[error(transparent)]
    MpTable(#[from] mptable::Error),
    /// ACPI tables problem.
    #[error(transparent)]
    Acpi(#[from] acpi::Error),
    /// Zero page problem.
    #[error(transparent)]
    ZeroPage(#[from] zero_page::Error),
    /// vCPU register problem.
    #[error(transparent)]
    Regs(#[from] regs::Error),
}

/// Result type of the boot module.
pub type Result<T> = std::result::Result<T, Error>;

/// Offset of the 64-bit entry point from the start of the protected-mode kernel.
pub const KERNEL_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// Default `initrd_addr_max` (last byte the initrd may use) for kernels that don't set it.
pub const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;

/// A kernel loaded into guest memory.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// Where the protected-mode kernel was loaded.
    pub load_addr: GuestAddress,
    /// The 64-bit entry point (`load_addr + 0x200`); goes in RIP of vCPU 0.
    pub entry: GuestAddress,
    /// End (exclusive) of the memory the kernel needs: its image and the buffer it
    /// decompresses into (`max(load address, pref_address) + init_size`).
    pub reserved_end: GuestAddress,
    /// The setup header read from the bzImage, with `code32_start` set to `load_addr`.
    pub setup_header: setup_header,
}

/// End (exclusive) of the guest RAM region that contains `HIMEM_START` (the low RAM).
fn low_ram_end(mem: &GuestMemoryMmap) -> Option<u64> {
    let region = mem.find_region(layout::HIMEM_START)?;
    Some(region.start_addr().raw_value() + region.len())
}

fn open(path: &Path) -> std::result::Result<(File, u64), io::Error> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    Ok((file, len))
}

/// Checks that `path` looks like a complete 64-bit bzImage without loading it: the boot
/// sector and `HdrS` signatures, a boot protocol with a 64-bit entry, and a file at least as
/// long as its setup sectors plus the protected-mode size the header declares (so a truncated
/// image is caught here, before a virtual host is started).
pub fn check_bzimage(path: &Path) -> Result<()> {
    let open_err = |e: io::Error| {
        if e.kind() == io::ErrorKind::NotFound {
            Error::KernelNotFound(path.to_path_buf())
        } else {
            Error::OpenKernel {
                path: path.to_path_buf(),
                source: e,
            }
        }
    };
    let (mut file, len) = open(path).map_err(open_err)?;
    let invalid = || {
        Error::InvalidKernel(linux_loader::loader::Error::Bzimage(
            linux_loader::loader::bzimage::Error::InvalidBzImage,
        ))
    };
    let mut head = [0u8; 0x240];
    io::Read::read_exact(&mut file, &mut head).map_err(|_| invalid())?;
    let u16_at = |o: usize| u16::from_le_bytes([head[o], head[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes([head[o], head[o + 1], head[o + 2], head[o + 3]]);
    if u16_at(0x1fe) != 0xaa55 || &head[0x202..0x206] != b"HdrS" {
        return Err(invalid());
    }
    if u16_at(0x206) < 0x020c || u16_at(0x236) & XLF_KERNEL_64 == 0 {
        return Err(Error::No64BitEntry);
    }
    let setup_sects = match head[0x1f1] {
        0 => 4,
        n => u64::from(n),
    };
    let payload = u64::from(u32_at(0x1f4)) * 16;
    if (setup_sects + 1) * 512 + payload > len {
        return Err(invalid());
    }
    Ok(())
}

/// Loads the bzImage at `kernel_path` into `mem` at 1 MiB.
pub fn load_kernel(mem: &GuestMemoryMmap, kernel_path: &Path) -> Result<LoadedKernel> {
    let (mut file, file_len) = open(kernel_path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            Error::KernelNotFound(kernel_path.to_path_buf())
        } else {
            Error::OpenKernel {
                path: kernel_path.to_path_buf(),
                source: e,
            }
        }
    })?;
    let available = low_ram_end(mem).ok_or(Error::KernelTooBig {
        needed: layout::HIMEM_START.raw_value() + file_len,
        available: 0,
    })?;
    // The protected-mode part (the file minus the real-mode setup) must fit; checking the whole
    // file is close enough and gives a clear error before linux-loader fails a read.
    if layout::HIMEM_START.raw_value() + file_len > available {
        return Err(Error::KernelTooBig {
            needed: layout::HIMEM_START.raw_value() + file_len,
            available,
        });
    }
    let result =
        BzImage::load(mem, None, &mut file, Some(layout::HIMEM_START)).map_err(|e| match e {
            linux_loader::loader::Error::Bzimage(_) => Error::InvalidKernel(e),
            other => Error::KernelLoad(other),
        })?;
    let hdr =
        result
            .setup_header
            .ok_or(Error::InvalidKernel(linux_loader::loader::Error::Bzimage(
                linux_loader::loader::bzimage::Error::InvalidBzImage,
            )))?;
    if hdr.version < 0x020c || hdr.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(Error::No64BitEntry);
    }
    let load = result.kernel_load.raw_value();
    let decompress_base = load.max(hdr.pref_address);
    let reserved_end = (decompress_base + u64::from(hdr.init_size)).max(result.kernel_end);
    if reserved_end > available {
        return Err(Error::KernelTooBig {
            needed: reserved_end,
            available,
        });
    }
    Ok(LoadedKernel {
        load_addr: result.kernel_load,
        entry: result.kernel_load.unchecked_add(KERNEL_64BIT_ENTRY_OFFSET),
        reserved_end: GuestAddress(reserved_end),
        setup_header: hdr,
    })
}

/// Loads the initrd at `initrd_path` page-aligned at the top of low RAM, below the kernel's
/// `initrd_addr_max` (0x37ff_ffff if unset) and above the memory the kernel needs. Returns its
/// address and size, for [`configure_system`].
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    initrd_path: &Path,
    kernel: &LoadedKernel,
) -> Result<(GuestAddress, usize)> {
    let (mut file, size) = open(initrd_path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            Error::InitrdNotFound(initrd_path.to_path_buf())
        } else {
            Error::OpenInitrd {
                path: initrd_path.to_path_buf(),
                source: e,
            }
        }
    })?;
    if size == 0 {
        return Err(Error::EmptyInitrd(initrd_path.to_path_buf()));
    }
    let addr_max = match kernel.setup_header.initrd_addr_max {
        0 => DEFAULT_INITRD_ADDR_MAX,
        m => u64::from(m),
    };
    let limit = low_ram_end(mem).unwrap_or(0).min(addr_max + 1);
    let floor = kernel.reserved_end.raw_value().next_multiple_of(0x1000);
    let available = limit.saturating_sub(floor);
    let too_big = Error::InitrdTooBig {
        size,
        available,
        limit,
    };
    let start = match limit.checked_sub(size) {
        Some(s) if s & !0xfff >= floor => s & !0xfff,
        _ => return Err(too_big),
    };
    let len = usize::try_from(size).map_err(|_| Error::InitrdTooBig {
        size,
        available,
        limit,
    })?;
    mem.read_exact_volatile_from(GuestAddress(start), &mut file, len)
        .map_err(Error::ReadInitrd)?;
    Ok((GuestAddress(start), len))
}

/// Writes the command line, NUL-terminated, at [`layout::CMDLINE_START`]; returns its length.
fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &str, kernel_max: u32) -> Result<usize> {
    if cmdline.as_bytes().contains(&0) {
        return Err(Error::CmdlineHasNul);
    }
    let mut max = layout::CMDLINE_MAX_SIZE - 1;
    if kernel_max != 0 {
        max = max.min(kernel_max as usize);
    }
    if cmdline.len() > max {
        return Err(Error::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, layout::CMDLINE_START)
        .map_err(Error::WriteCmdline)?;
    Ok(cmdline.len())
}

/// Writes everything the kernel reads at boot except the kernel and initrd themselves: command
/// line, GDT/IDT, page tables, MP table, ACPI tables and the zero page.
pub fn configure_system(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    cmdline: &str,
    initrd: Option<(GuestAddress, usize)>,
    num_cpus: u8,
) -> Result<()> {
    let mem_size: u64 = mem.iter().map(|r| r.len()).sum();
    layout::validate_mem_size(mem_size)?;
    let cmdline_len = write_cmdline(mem, cmdline, kernel.setup_header.cmdline_size)?;
    gdt::write_gdt_and_idt(mem)?;
    paging::setup_page_tables(mem)?;
    mptable::setup_mptable(mem, num_cpus)?;
    let rsdp = acpi::create_acpi_tables(mem, num_cpus)?;
    let info = zero_page::BootInfo {
        cmdline_len,
        initrd,
        rsdp: Some(rsdp),
    };
    let params = zero_page::build_zero_page(&kernel.setup_header, mem, &info)?;
    zero_page::write_zero_page(mem, &params)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use layout::{MIB, ZERO_PAGE_START};
    use linux_loader::loader::bootparam::boot_params;
    use std::io::Write;
    use vm_memory::ByteValued;
    use vmm_sys_util::tempfile::TempFile;

    /// Size of the protected-mode payload of the fake bzImage.
    const PAYLOAD: usize = 0x3000;

    /// A minimal image that passes linux-loader's bzImage checks: one setup sector after the
    /// boot sector, then the payload.
    fn fake_bzimage(xloadflags: u16, init_size: u32) -> Vec<u8> {
        let hdr = setup_header {
            setup_sects: 1,
            boot_flag: 0xaa55,
            header: 0x5372_6448,
            version: 0x020f,
            loadflags: 1,
            code32_start: 0x10_0000,
            initrd_addr_max: 0x7fff_ffff,
            kernel_alignment: 0x20_0000,
            relocatable_kernel: 1,
            xloadflags,
            cmdline_size: 2047,
            pref_address: 0x100_0000,
            init_size,
            ..Default::default()
        };
        let mut img = vec![0u8; 2 * 512];
        img[0x1f1..0x1f1 + std::mem::size_of::<setup_header>()].copy_from_slice(hdr.as_slice());
        img.extend((0..PAYLOAD).map(|i| (i % 251) as u8));
        img
    }

    fn write_temp(bytes: &[u8]) -> TempFile {
        let f = TempFile::new().unwrap();
        f.as_file().write_all(bytes).unwrap();
        f
    }

    fn guest_mem(size: u64) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&ram_regions(size)).unwrap()
    }

    #[test]
    fn load_fake_kernel() {
        let mem = guest_mem(256 * MIB);
        let f = write_temp(&fake_bzimage(XLF_KERNEL_64, 0x200_0000));
        let k = load_kernel(&mem, f.as_path()).unwrap();
        assert_eq!(k.load_addr, GuestAddress(0x10_0000));
        assert_eq!(k.entry, GuestAddress(0x10_0200));
        assert_eq!(k.reserved_end, GuestAddress(0x300_0000));
        assert_eq!({ k.setup_header.version }, 0x020f);
        let mut payload = vec![0u8; PAYLOAD];
        mem.read_slice(&mut payload, k.load_addr).unwrap();
        assert!(payload
            .iter()
            .enumerate()
            .all(|(i, b)| *b == (i % 251) as u8));
    }

    #[test]
    fn load_kernel_missing_file() {
        let mem = guest_mem(64 * MIB);
        let path = Path::new("/nonexistent/definitely/not/a/kernel");
        match load_kernel(&mem, path) {
            Err(Error::KernelNotFound(p)) => assert_eq!(p, path),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn load_kernel_garbage() {
        let mem = guest_mem(64 * MIB);
        let f = write_temp(&[0x5a; 8192]);
        match load_kernel(&mem, f.as_path()) {
            Err(Error::InvalidKernel(linux_loader::loader::Error::Bzimage(
                linux_loader::loader::bzimage::Error::InvalidBzImage,
            ))) => {}
            other => panic!("unexpected {other:?}"),
        }
        // Too short to even hold a header.
        let f = write_temp(&[0u8; 16]);
        assert!(matches!(
            load_kernel(&mem, f.as_path()),
            Err(Error::InvalidKernel(_))
        ));
    }

    #[test]
    fn load_kernel_without_64bit_entry() {
        let mem = guest_mem(64 * MIB);
        let f = write_temp(&fake_bzimage(0, 0x10_0000));
        assert!(matches!(
            load_kernel(&mem, f.as_path()),
            Err(Error::No64BitEntry)
        ));
    }

    #[test]
    fn load_kernel_too_big() {
        let mem = guest_mem(64 * MIB);
        // Decompression buffer beyond the end of RAM.
        let f = write_temp(&fake_bzimage(XLF_KERNEL_64, 0x400_0000));
        assert!(matches!(
            load_kernel(&mem, f.as_path()),
            Err(Error::KernelTooBig {
                needed: 0x500_0000,
                available: 0x400_0000
            })
        ));
        // File larger than the memory.
        let small = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_2000)]).unwrap();
        let f = write_temp(&fake_bzimage(XLF_KERNEL_64, 0x1000));
        assert!(matches!(
            load_kernel(&small, f.as_path()),
            Err(Error::KernelTooBig { .. })
        ));
    }

    #[test]
    fn initrd_placement() {
        let mem = guest_mem(256 * MIB);
        let f = write_temp(&fake_bzimage(XLF_KERNEL_64, 0x200_0000));
        let k = load_kernel(&mem, f.as_path()).unwrap();
        let initrd = write_temp(&[0xab; 0x1801]);
        let (addr, len) = load_initrd(&mem, initrd.as_path(), &k).unwrap();
        assert_eq!(len, 0x1801);
        assert_eq!(addr.raw_value() % 0x1000, 0);
        assert!(addr.raw_value() + len as u64 <= 256 * MIB);
        assert!(addr.raw_value() == 256 * MIB - 0x2000, "at the top of RAM");
        assert!(addr >= k.reserved_end);
        let mut back = vec![0u8; len];
        mem.read_slice(&mut back, addr).unwrap();
        assert!(back.iter().all(|b| *b == 0xab));

        // initrd_addr_max below the end of RAM is honoured.
        let mut k2 = k;
        k2.setup_header.initrd_addr_max = 0x7ff_ffff;
        let (addr, len) = load_initrd(&mem, initrd.as_path(), &k2).unwrap();
        assert!(addr.raw_value() + len as u64 <= 0x800_0000);

        // Large memory: still below the gap and below initrd_addr_max.
        let big = guest_mem(5 * layout::GIB);
        let k = load_kernel(&big, f.as_path()).unwrap();
        let (addr, len) = load_initrd(&big, initrd.as_path(), &k).unwrap();
        assert!(addr.raw_value() + len as u64 <= 0x8000_0000);
    }

    #[test]
    fn initrd_errors() {
        let mem = guest_mem(64 * MIB);
        let f = write_temp(&fake_bzimage(XLF_KERNEL_64, 0x200_0000));
        let k = load_kernel(&mem, f.as_path()).unwrap();
        assert!(matches!(
            load_initrd(&mem, Path::new("/nonexistent/initrd"), &k),
            Err(Error::InitrdNotFound(_))
        ));
        let empty = write_temp(&[]);
        assert!(matches!(
            load_initrd(&mem, empty.as_path(), &k),
            Err(Error::EmptyInitrd(_))
        ));
        // 64 MiB RAM, kernel reserves up to 48 MiB: a 17 MiB initrd does not fit.
        let big = write_temp(&vec![0u8; 17 * MIB as usize]);
        assert!(matches!(
            load_initrd(&mem, big.as_path(), &k),
            Err(Error::InitrdTooBig {
                available: 0x100_0000,
                ..
            })
        ));
    }

    fn read_zero_page(mem: &GuestMemoryMmap) -> boot_params {
        mem.read_obj(ZERO_PAGE_START).unwrap()
    }

    #[test]
    fn configure_full_system() {
        let mem = guest_mem(256 * MIB);
        let f = write_temp(&fake_bzimage(XLF_KERNEL_64, 0x200_0000));
        let k = load_kernel(&mem, f.as_path()).unwrap();
        let initrd = write_temp(&[1; 0x1000]);
        let initrd = load_initrd(&mem, initrd.as_path(), &k).unwrap();
        let cmdline = "console=ttyS0 reboot=k panic=1";
        configure_system(&mem, &k, cmdline, Some(initrd), 4).unwrap();

        let p = read_zero_page(&mem);
        assert_eq!(
            { p.hdr.cmd_line_ptr },
            layout::CMDLINE_START.raw_value() as u32
        );
        assert_eq!({ p.acpi_rsdp_addr }, layout::RSDP_START.raw_value());
        assert_eq!({ p.hdr.ramdisk_image } as u64, initrd.0.raw_value());
        assert_eq!({ p.hdr.ramdisk_size } as usize, initrd.1);
        assert_eq!({ p.hdr.type_of_loader }, 0xff);
        assert_eq!(p.e820_entries, 3);
        let mut cl = vec![0u8; cmdline.len() + 1];
        mem.read_slice(&mut cl, layout::CMDLINE_START).unwrap();
        assert_eq!(&cl[..cmdline.len()], cmdline.as_bytes());
        assert_eq!(cl[cmdline.len()], 0);
        let mut sig = [0u8; 8];
        mem.read_slice(&mut sig, layout::RSDP_START).unwrap();
        assert_eq!(&sig, b"RSD PTR ");
        mem.read_slice(&mut sig[..4], layout::MPTABLE_START)
            .unwrap();
        assert_eq!(&sig[..4], b"_MP_");
        assert_eq!(
            device_model::x86::walk(&mem, layout::PML4_START, k.entry.raw_value()).map(|t| t.gpa),
            Some(k.entry)
        );
    }

    #[test]
    fn configure_rejects_small_memory() {
        let f = write_temp(&fake_bzimage(XLF_KERNEL_64, 0x200_0000));
        let ok = guest_mem(MIN_MEM_SIZE);
        let k = load_kernel(&ok, f.as_path()).unwrap();
        configure_system(&ok, &k, "", None, 1).unwrap();

        let small = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), (MIN_MEM_SIZE - 1) as usize)])
            .unwrap();
        assert!(matches!(
            configure_system(&small, &k, "", None, 1),
            Err(Error::Layout(layout::Error::MemoryTooSmall { .. }))
        ));
    }

    #[test]
    fn configure_rejects_bad_cmdline_and_cpus() {
        let mem = guest_mem(128 * MIB);
        let f = write_temp(&fake_bzimage(XLF_KERNEL_64, 0x200_0000));
        let k = load_kernel(&mem, f.as_path()).unwrap();
        let long = "x".repeat(2048);
        assert!(matches!(
            configure_system(&mem, &k, &long, None, 1),
            Err(Error::CmdlineTooLong {
                len: 2048,
                max: 2047
            })
        ));
        configure_system(&mem, &k, &long[..2047], None, 1).unwrap();
        assert!(matches!(
            configure_system(&mem, &k, "a\0b", None, 1),
            Err(Error::CmdlineHasNul)
        ));
        assert!(matches!(
            configure_system(&mem, &k, "", None, MAX_VCPUS + 1),
            Err(Error::MpTable(mptable::Error::BadCpuCount(_)))
        ));
        assert!(matches!(
            configure_system(&mem, &k, "", None, 0),
            Err(Error::MpTable(mptable::Error::BadCpuCount(0)))
        ));
    }
}
