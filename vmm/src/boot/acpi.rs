//! Minimal ACPI tables: how the guest kernel finds its CPUs and IOAPIC, and how it powers off.
//!
//! The Debian kernel is built without `CONFIG_X86_MPPARSE`, so the MADT is its only source for
//! SMP and IOAPIC information. We describe a *hardware-reduced* ACPI platform (no PM1 blocks, no
//! SCI, no PM timer, no FACS) with:
//!
//! - **RSDP** (revision 2) at [`RSDP_START`], pointing at the XSDT;
//! - **XSDT** listing the FADT and the MADT;
//! - **FADT** (revision 6): `HW_REDUCED_ACPI | RESET_REG_SUP`; the sleep control, sleep status and
//!   reset registers are one byte each at I/O port [`ACPI_SHUTDOWN_PORT`]. For S5 the kernel
//!   writes `(SLP_TYP << 2) | SLP_EN` = `(5 << 2) | (1 << 5)` = [`SHUTDOWN_VALUE`] to the sleep
//!   control register; to reboot it writes [`RESET_VALUE`] to the reset register. So a device on
//!   that port powers the VM off on 0x34 and resets it on 0x01. Before the sleep command the
//!   kernel writes 0x80 (clear `WAK_STS`) to the sleep status register, i.e. the same port, so the
//!   device must ignore any other value. `IAPC_BOOT_ARCH` says "no VGA"
//!   and "no CMOS RTC" and, by leaving the bits clear, "no legacy devices" and "no i8042", so the
//!   kernel does not probe those. `X_DSDT` points at the DSDT;
//! - **DSDT** holding only `Name (_S5_, Package (0x04) {0x05, 0x00, 0x00, 0x00})`, which the
//!   kernel needs to consider S5 (and so `acpi_power_off`) supported;
//! - **MADT**: local APIC address, `PCAT_COMPAT`, one enabled Processor Local APIC per vCPU
//!   (ACPI processor uid = APIC id = vCPU index), one IOAPIC (id `num_cpus`, GSI base 0), an
//!   Interrupt Source Override ISA IRQ 0 -> GSI 2 and a Local APIC NMI on LINT1 for all CPUs.
//!
//! Tables follow the RSDP in the area up to 1 MiB, which the e820 map reports as reserved.

use vm_memory::{Address, ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{
    ACPI_END, ACPI_SHUTDOWN_PORT, IOAPIC_START, LAPIC_START, MAX_VCPUS, RSDP_START,
};

/// Errors building or writing the ACPI tables.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The number of vCPUs is zero or larger than the tables support.
    #[error("cannot describe {0} vCPUs in the MADT (1..={MAX_VCPUS} supported)")]
    BadCpuCount(u8),
    /// The tables do not fit in the ACPI area.
    #[error("the ACPI tables do not fit below {:#x}", ACPI_END.0)]
    TooBig,
    /// Writing a table into guest memory failed.
    #[error("failed to write the ACPI {0} table into guest memory")]
    Write(&'static str),
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// Value written to the sleep control register for S5 (soft off): `SLP_TYP` 5 in bits 2..=4 and
/// `SLP_EN` (bit 5).
pub const SHUTDOWN_VALUE: u8 = (5 << 2) | (1 << 5);
/// Value written to the reset register to reboot. Distinct from any sleep request since it sets
/// neither `SLP_EN` nor a sleep type.
pub const RESET_VALUE: u8 = 0x01;

const OEM_ID: [u8; 6] = *b"RVMM  ";
const OEM_TABLE_ID: [u8; 8] = *b"RVMMBOOT";
const OEM_REVISION: u32 = 1;
const CREATOR_ID: [u8; 4] = *b"RVMM";
const CREATOR_REVISION: u32 = 1;

/// FADT flag: the reset register is supported.
pub const FADT_RESET_REG_SUP: u32 = 1 << 10;
/// FADT flag: hardware-reduced ACPI.
pub const FADT_HW_REDUCED_ACPI: u32 = 1 << 20;
/// IAPC_BOOT_ARCH: VGA not present.
pub const IAPC_BOOT_ARCH_NO_VGA: u16 = 1 << 2;
/// IAPC_BOOT_ARCH: CMOS RTC not present.
pub const IAPC_BOOT_ARCH_NO_CMOS_RTC: u16 = 1 << 5;
/// MADT flag: the platform also has dual 8259 PICs.
pub const MADT_PCAT_COMPAT: u32 = 1;

/// GAS address space: system I/O.
const GAS_SYSTEM_IO: u8 = 1;
/// GAS access size: byte.
const GAS_ACCESS_BYTE: u8 = 1;

const MADT_TYPE_LOCAL_APIC: u8 = 0;
const MADT_TYPE_IOAPIC: u8 = 1;
const MADT_TYPE_INT_SRC_OVERRIDE: u8 = 2;
const MADT_TYPE_LOCAL_APIC_NMI: u8 = 4;
const MADT_LAPIC_ENABLED: u32 = 1;
/// ACPI processor uid meaning "all processors".
const ALL_PROCESSORS: u8 = 0xff;

/// AML of the DSDT body, hand-encoded:
///
/// ```text
/// 08              NameOp
/// 5F 53 35 5F     NameString "_S5_"
/// 12              PackageOp
/// 07              PkgLength: 7 bytes, counting itself and everything up to the package end
/// 04              NumElements: 4
/// 0A 05           BytePrefix 0x05   (SLP_TYPa = 5)
/// 00              ZeroOp            (SLP_TYPb)
/// 00              ZeroOp            (reserved)
/// 00              ZeroOp            (reserved)
/// ```
pub const DSDT_AML: [u8; 13] = [
    0x08, b'_', b'S', b'5', b'_', 0x12, 0x07, 0x04, 0x0a, 0x05, 0x00, 0x00, 0x00,
];

/// Common header of every system description table.
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, Default)]
struct SdtHeader {
    signature: [u8; 4],
    length: u32,
    revision: u8,
    checksum: u8,
    oem_id: [u8; 6],
    oem_table_id: [u8; 8],
    oem_revision: u32,
    creator_id: [u8; 4],
    creator_revision: u32,
}
// SAFETY: packed plain-data struct of integers; every byte pattern is a valid value.
unsafe impl ByteValued for SdtHeader {}

/// Root System Description Pointer, revision 2.
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, Default)]
struct Rsdp {
    signature: [u8; 8],
    checksum: u8,
    oem_id: [u8; 6],
    revision: u8,
    rsdt_address: u32,
    length: u32,
    xsdt_address: u64,
    extended_checksum: u8,
    reserved: [u8; 3],
}
// SAFETY: packed plain-data struct of integers; every byte pattern is a valid value.
unsafe impl ByteValued for Rsdp {}

/// Generic Address Structure.
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Gas {
    address_space_id: u8,
    register_bit_width: u8,
    register_bit_offset: u8,
    access_size: u8,
    address: u64,
}
// SAFETY: packed plain-data struct of integers; every byte pattern is a valid value.
unsafe impl ByteValued for Gas {}

impl Gas {
    /// A one-byte register at I/O `port`.
    fn io_byte(port: u16) -> Self {
        Gas {
            address_space_id: GAS_SYSTEM_IO,
            register_bit_width: 8,
            register_bit_offset: 0,
            access_size: GAS_ACCESS_BYTE,
            address: u64::from(port),
        }
    }
}

/// Fixed ACPI Description Table, revision 6 layout (276 bytes).
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, Default)]
struct Fadt {
    header: SdtHeader,
    firmware_ctrl: u32,
    dsdt: u32,
    reserved0: u8,
    preferred_pm_profile: u8,
    sci_int: u16,
    smi_cmd: u32,
    acpi_enable: u8,
    acpi_disable: u8,
    s4bios_req: u8,
    pstate_cnt: u8,
    pm1a_evt_blk: u32,
    pm1b_evt_blk: u32,
    pm1a_cnt_blk: u32,
    pm1b_cnt_blk: u32,
    pm2_cnt_blk: u32,
    pm_tmr_blk: u32,
    gpe0_blk: u32,
    gpe1_blk: u32,
    pm1_evt_len: u8,
    pm1_cnt_len: u8,
    pm2_cnt_len: u8,
    pm_tmr_len: u8,
    gpe0_blk_len: u8,
    gpe1_blk_len: u8,
    gpe1_base: u8,
    cst_cnt: u8,
    p_lvl2_lat: u16,
    p_lvl3_lat: u16,
    flush_size: u16,
    flush_stride: u16,
    duty_offset: u8,
    duty_width: u8,
    day_alrm: u8,
    mon_alrm: u8,
    century: u8,
    iapc_boot_arch: u16,
    reserved1: u8,
    flags: u32,
    reset_reg: Gas,
    reset_value: u8,
    arm_boot_arch: u16,
    minor_version: u8,
    x_firmware_ctrl: u64,
    x_dsdt: u64,
    x_pm1a_evt_blk: Gas,
    x_pm1b_evt_blk: Gas,
    x_pm1a_cnt_blk: Gas,
    x_pm1b_cnt_blk: Gas,
    x_pm2_cnt_blk: Gas,
    x_pm_tmr_blk: Gas,
    x_gpe0_blk: Gas,
    x_gpe1_blk: Gas,
    sleep_control_reg: Gas,
    sleep_status_reg: Gas,
    hypervisor_vendor_id: u64,
}
// SAFETY: packed plain-data struct of integers; every byte pattern is a valid value.
unsafe impl ByteValued for Fadt {}

const _: () = assert!(std::mem::size_of::<SdtHeader>() == 36);
const _: () = assert!(std::mem::size_of::<Rsdp>() == 36);
const _: () = assert!(std::mem::size_of::<Gas>() == 12);
const _: () = assert!(std::mem::size_of::<Fadt>() == 276);

/// MADT fixed part after the header.
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, Default)]
struct MadtFixed {
    lapic_address: u32,
    flags: u32,
}
// SAFETY: packed plain-data struct of integers; every byte pattern is a valid value.
unsafe impl ByteValued for MadtFixed {}

/// MADT Processor Local APIC structure.
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, Default)]
struct MadtLocalApic {
    type_: u8,
    length: u8,
    processor_uid: u8,
    apic_id: u8,
    flags: u32,
}
// SAFETY: packed plain-data struct of integers; every byte pattern is a valid value.
unsafe impl ByteValued for MadtLocalApic {}

/// MADT I/O APIC structure.
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, Default)]
struct MadtIoapic {
    type_: u8,
    length: u8,
    ioapic_id: u8,
    reserved: u8,
    address: u32,
    gsi_base: u32,
}
// SAFETY: packed plain-data struct of integers; every byte pattern is a valid value.
unsafe impl ByteValued for MadtIoapic {}

/// MADT Interrupt Source Override structure.
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, Default)]
struct MadtIntSrcOverride {
    type_: u8,
    length: u8,
    bus: u8,
    source: u8,
    gsi: u32,
    flags: u16,
}
// SAFETY: packed plain-data struct of integers; every byte pattern is a valid value.
unsafe impl ByteValued for MadtIntSrcOverride {}

/// MADT Local APIC NMI structure.
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, Default)]
struct MadtLocalApicNmi {
    type_: u8,
    length: u8,
    processor_uid: u8,
    flags: u16,
    lint: u8,
}
// SAFETY: packed plain-data struct of integers; every byte pattern is a valid value.
unsafe impl ByteValued for MadtLocalApicNmi {}

/// Byte sum modulo 256.
fn byte_sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
}

/// Length of `T` as the `u8` length field of a MADT structure.
fn len8<T>() -> u8 {
    std::mem::size_of::<T>() as u8
}

/// Builds a complete table: a header with `signature` and `revision`, then `body`, with the
/// length and checksum fields filled in.
fn make_sdt(signature: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let header = SdtHeader {
        signature: *signature,
        length: (std::mem::size_of::<SdtHeader>() + body.len()) as u32,
        revision,
        checksum: 0,
        oem_id: OEM_ID,
        oem_table_id: OEM_TABLE_ID,
        oem_revision: OEM_REVISION,
        creator_id: CREATOR_ID,
        creator_revision: CREATOR_REVISION,
    };
    let mut table = header.as_slice().to_vec();
    table.extend_from_slice(body);
    fix_checksum(&mut table);
    table
}

/// Sets the checksum byte (offset 9) so the table sums to zero.
fn fix_checksum(table: &mut [u8]) {
    table[9] = 0;
    table[9] = byte_sum(table).wrapping_neg();
}

/// The DSDT.
fn build_dsdt() -> Vec<u8> {
    make_sdt(b"DSDT", 2, &DSDT_AML)
}

/// The FADT, pointing at the DSDT at `dsdt_addr`.
fn build_fadt(dsdt_addr: GuestAddress) -> Vec<u8> {
    let mut fadt = Fadt {
        flags: FADT_HW_REDUCED_ACPI | FADT_RESET_REG_SUP,
        iapc_boot_arch: IAPC_BOOT_ARCH_NO_VGA | IAPC_BOOT_ARCH_NO_CMOS_RTC,
        reset_reg: Gas::io_byte(ACPI_SHUTDOWN_PORT),
        reset_value: RESET_VALUE,
        x_dsdt: dsdt_addr.raw_value(),
        sleep_control_reg: Gas::io_byte(ACPI_SHUTDOWN_PORT),
        sleep_status_reg: Gas::io_byte(ACPI_SHUTDOWN_PORT),
        hypervisor_vendor_id: u64::from_le_bytes(*b"RVMMHYPV"),
        ..Default::default()
    };
    let hdr_len = std::mem::size_of::<SdtHeader>();
    let table = make_sdt(b"FACP", 6, &fadt.as_slice()[hdr_len..]);
    fadt.header = SdtHeader::from_slice(&table[..hdr_len])
        .copied()
        .unwrap_or_default();
    fadt.as_slice().to_vec()
}

/// The MADT for `num_cpus` vCPUs.
fn build_madt(num_cpus: u8) -> Vec<u8> {
    let mut body = MadtFixed {
        lapic_address: LAPIC_START as u32,
        flags: MADT_PCAT_COMPAT,
    }
    .as_slice()
    .to_vec();
    for cpu in 0..num_cpus {
        let lapic = MadtLocalApic {
            type_: MADT_TYPE_LOCAL_APIC,
            length: len8::<MadtLocalApic>(),
            processor_uid: cpu,
            apic_id: cpu,
            flags: MADT_LAPIC_ENABLED,
        };
        body.extend_from_slice(lapic.as_slice());
    }
    let ioapic = MadtIoapic {
        type_: MADT_TYPE_IOAPIC,
        length: len8::<MadtIoapic>(),
        ioapic_id: num_cpus,
        reserved: 0,
        address: IOAPIC_START as u32,
        gsi_base: 0,
    };
    body.extend_from_slice(ioapic.as_slice());
    let iso = MadtIntSrcOverride {
        type_: MADT_TYPE_INT_SRC_OVERRIDE,
        length: len8::<MadtIntSrcOverride>(),
        bus: 0,
        source: 0,
        gsi: 2,
        flags: 0, // conforms to the ISA bus: edge-triggered, active high
    };
    body.extend_from_slice(iso.as_slice());
    let nmi = MadtLocalApicNmi {
        type_: MADT_TYPE_LOCAL_APIC_NMI,
        length: len8::<MadtLocalApicNmi>(),
        processor_uid: ALL_PROCESSORS,
        flags: 0,
        lint: 1,
    };
    body.extend_from_slice(nmi.as_slice());
    make_sdt(b"APIC", 5, &body)
}

/// The XSDT listing `tables`.
fn build_xsdt(tables: &[GuestAddress]) -> Vec<u8> {
    let body: Vec<u8> = tables
        .iter()
        .flat_map(|a| a.raw_value().to_le_bytes())
        .collect();
    make_sdt(b"XSDT", 1, &body)
}

/// The RSDP pointing at the XSDT at `xsdt_addr`.
fn build_rsdp(xsdt_addr: GuestAddress) -> Rsdp {
    let mut rsdp = Rsdp {
        signature: *b"RSD PTR ",
        checksum: 0,
        oem_id: OEM_ID,
        revision: 2,
        rsdt_address: 0,
        length: std::mem::size_of::<Rsdp>() as u32,
        xsdt_address: xsdt_addr.raw_value(),
        extended_checksum: 0,
        reserved: [0; 3],
    };
    // The ACPI 1.0 checksum covers the first 20 bytes, the extended one the whole structure.
    rsdp.checksum = byte_sum(&rsdp.as_slice()[..20]).wrapping_neg();
    rsdp.extended_checksum = byte_sum(rsdp.as_slice()).wrapping_neg();
    rsdp
}

/// Places tables one after the other in the ACPI area, 16-byte aligned.
struct Writer<'a> {
    mem: &'a GuestMemoryMmap,
    next: u64,
}

impl Writer<'_> {
    fn put(&mut self, name: &'static str, bytes: &[u8]) -> Result<GuestAddress> {
        let addr = self.next.next_multiple_of(16);
        let end = addr + bytes.len() as u64;
        if end > ACPI_END.raw_value() {
            return Err(Error::TooBig);
        }
        self.mem
            .write_slice(bytes, GuestAddress(addr))
            .map_err(|_| Error::Write(name))?;
        self.next = end;
        Ok(GuestAddress(addr))
    }
}

/// Writes the RSDP at [`RSDP_START`] and the XSDT, FADT, DSDT and MADT after it; returns the
/// RSDP address (for `boot_params.acpi_rsdp_addr`).
pub fn create_acpi_tables(mem: &GuestMemoryMmap, num_cpus: u8) -> Result<GuestAddress> {
    if num_cpus == 0 || num_cpus > MAX_VCPUS {
        return Err(Error::BadCpuCount(num_cpus));
    }
    let mut w = Writer {
        mem,
        next: RSDP_START.raw_value() + std::mem::size_of::<Rsdp>() as u64,
    };
    let dsdt = w.put("DSDT", &build_dsdt())?;
    let fadt = w.put("FADT", &build_fadt(dsdt))?;
    let madt = w.put("MADT", &build_madt(num_cpus))?;
    let xsdt = w.put("XSDT", &build_xsdt(&[fadt, madt]))?;
    mem.write_obj(build_rsdp(xsdt), RSDP_START)
        .map_err(|_| Error::Write("RSDP"))?;
    Ok(RSDP_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn read_table(mem: &GuestMemoryMmap, addr: GuestAddress) -> Vec<u8> {
        let hdr: SdtHeader = mem.read_obj(addr).unwrap();
        let mut v = vec![0u8; hdr.length as usize];
        mem.read_slice(&mut v, addr).unwrap();
        v
    }

    /// Follows RSDP -> XSDT -> tables and returns the tables by signature, checking checksums.
    fn walk(
        mem: &GuestMemoryMmap,
        rsdp_addr: GuestAddress,
    ) -> Vec<([u8; 4], GuestAddress, Vec<u8>)> {
        let rsdp: Rsdp = mem.read_obj(rsdp_addr).unwrap();
        assert_eq!(&rsdp.signature, b"RSD PTR ");
        assert_eq!(rsdp.revision, 2);
        assert_eq!({ rsdp.length }, 36);
        assert_eq!(byte_sum(&rsdp.as_slice()[..20]), 0, "RSDP checksum");
        assert_eq!(byte_sum(rsdp.as_slice()), 0, "RSDP extended checksum");
        let xsdt_addr = GuestAddress(rsdp.xsdt_address);
        let xsdt = read_table(mem, xsdt_addr);
        assert_eq!(&xsdt[..4], b"XSDT");
        assert_eq!(byte_sum(&xsdt), 0, "XSDT checksum");
        let mut out = vec![(*b"XSDT", xsdt_addr, xsdt.clone())];
        for chunk in xsdt[36..].chunks_exact(8) {
            let addr = GuestAddress(u64::from_le_bytes(chunk.try_into().unwrap()));
            let t = read_table(mem, addr);
            assert_eq!(byte_sum(&t), 0, "checksum of {:?}", &t[..4]);
            out.push((t[..4].try_into().unwrap(), addr, t));
        }
        out
    }

    fn find(tables: &[([u8; 4], GuestAddress, Vec<u8>)], sig: &[u8; 4]) -> Vec<u8> {
        tables.iter().find(|t| &t.0 == sig).unwrap().2.clone()
    }

    /// Returns the (type, bytes) of each MADT interrupt controller structure.
    fn madt_entries(madt: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut off = 44;
        let mut v = Vec::new();
        while off < madt.len() {
            let len = usize::from(madt[off + 1]);
            assert!(len >= 2);
            v.push((madt[off], madt[off..off + len].to_vec()));
            off += len;
        }
        assert_eq!(off, madt.len());
        v
    }

    #[test]
    fn all_checksums_and_pointers() {
        let mem = mem();
        let rsdp = create_acpi_tables(&mem, 2).unwrap();
        assert_eq!(rsdp, RSDP_START);
        let tables = walk(&mem, rsdp);
        let sigs: Vec<[u8; 4]> = tables.iter().map(|t| t.0).collect();
        assert_eq!(sigs, vec![*b"XSDT", *b"FACP", *b"APIC"]);
        for (_, addr, t) in &tables {
            assert!(addr.raw_value() >= RSDP_START.raw_value() + 36);
            assert!(addr.raw_value() + t.len() as u64 <= ACPI_END.raw_value());
        }
        // The DSDT, reached through the FADT.
        let fadt_bytes = find(&tables, b"FACP");
        let fadt = Fadt::from_slice(&fadt_bytes).copied().unwrap();
        let dsdt = read_table(&mem, GuestAddress(fadt.x_dsdt));
        assert_eq!(&dsdt[..4], b"DSDT");
        assert_eq!(byte_sum(&dsdt), 0, "DSDT checksum");
    }

    #[test]
    fn fadt_contents() {
        let mem = mem();
        let tables = walk(&mem, create_acpi_tables(&mem, 1).unwrap());
        let bytes = find(&tables, b"FACP");
        assert_eq!(bytes.len(), 276);
        let fadt = Fadt::from_slice(&bytes).copied().unwrap();
        assert_eq!(fadt.header.revision, 6);
        let flags = fadt.flags;
        assert_ne!(flags & FADT_HW_REDUCED_ACPI, 0);
        assert_ne!(flags & FADT_RESET_REG_SUP, 0);
        // Flags live at offset 112 per the spec.
        assert_eq!(
            u32::from_le_bytes(bytes[112..116].try_into().unwrap()),
            flags
        );
        let port = Gas::io_byte(ACPI_SHUTDOWN_PORT);
        assert_eq!({ fadt.sleep_control_reg }, port);
        assert_eq!({ fadt.sleep_status_reg }, port);
        assert_eq!({ fadt.reset_reg }, port);
        assert_eq!({ fadt.sleep_control_reg.address }, 0x600);
        assert_eq!(fadt.sleep_control_reg.address_space_id, 1);
        assert_eq!(fadt.reset_value, RESET_VALUE);
        // Sleep control register at offset 244, X_DSDT at 140 per the spec.
        assert_eq!(&bytes[244..256], port.as_slice());
        assert_eq!(u64::from_le_bytes(bytes[140..148].try_into().unwrap()), {
            fadt.x_dsdt
        });
        assert_eq!({ fadt.dsdt }, 0);
        assert_eq!(
            { fadt.iapc_boot_arch },
            IAPC_BOOT_ARCH_NO_VGA | IAPC_BOOT_ARCH_NO_CMOS_RTC
        );
        assert_ne!(SHUTDOWN_VALUE, RESET_VALUE);
        assert_eq!(SHUTDOWN_VALUE, 0x34);
    }

    #[test]
    fn dsdt_has_s5() {
        let mem = mem();
        let tables = walk(&mem, create_acpi_tables(&mem, 1).unwrap());
        let fadt = Fadt::from_slice(&find(&tables, b"FACP")).copied().unwrap();
        let dsdt = read_table(&mem, GuestAddress(fadt.x_dsdt));
        let body = &dsdt[36..];
        let pos = body.windows(4).position(|w| w == b"_S5_").expect("_S5_");
        assert_eq!(body[pos - 1], 0x08, "NameOp before _S5_");
        assert_eq!(body[pos + 4], 0x12, "PackageOp");
        // PkgLength covers exactly the rest of the package.
        assert_eq!(usize::from(body[pos + 5]), body.len() - (pos + 5));
        assert_eq!(body[pos + 6], 4, "four elements");
        assert_eq!(&body[pos + 7..pos + 9], &[0x0a, 0x05], "SLP_TYPa = 5");
    }

    #[test]
    fn madt_for_one_and_four_cpus() {
        for n in [1u8, 4] {
            let mem = mem();
            let tables = walk(&mem, create_acpi_tables(&mem, n).unwrap());
            let madt = find(&tables, b"APIC");
            let fixed = MadtFixed::from_slice(&madt[36..44]).copied().unwrap();
            assert_eq!({ fixed.lapic_address }, 0xfee0_0000);
            assert_eq!({ fixed.flags }, MADT_PCAT_COMPAT);
            let entries = madt_entries(&madt);
            let lapics: Vec<MadtLocalApic> = entries
                .iter()
                .filter(|e| e.0 == MADT_TYPE_LOCAL_APIC)
                .map(|e| MadtLocalApic::from_slice(&e.1).copied().unwrap())
                .collect();
            assert_eq!(lapics.len(), usize::from(n));
            for (i, l) in lapics.iter().enumerate() {
                assert_eq!(usize::from(l.apic_id), i);
                assert_eq!({ l.flags } & 1, 1, "enabled");
            }
            let ioapics: Vec<MadtIoapic> = entries
                .iter()
                .filter(|e| e.0 == MADT_TYPE_IOAPIC)
                .map(|e| MadtIoapic::from_slice(&e.1).copied().unwrap())
                .collect();
            assert_eq!(ioapics.len(), 1);
            assert_eq!(ioapics[0].ioapic_id, n);
            assert_eq!({ ioapics[0].address }, 0xfec0_0000);
            assert_eq!({ ioapics[0].gsi_base }, 0);
            let isos: Vec<MadtIntSrcOverride> = entries
                .iter()
                .filter(|e| e.0 == MADT_TYPE_INT_SRC_OVERRIDE)
                .map(|e| MadtIntSrcOverride::from_slice(&e.1).copied().unwrap())
                .collect();
            assert_eq!(isos.len(), 1);
            assert_eq!((isos[0].bus, isos[0].source, { isos[0].gsi }), (0, 0, 2));
            let nmis: Vec<&(u8, Vec<u8>)> = entries
                .iter()
                .filter(|e| e.0 == MADT_TYPE_LOCAL_APIC_NMI)
                .collect();
            assert_eq!(nmis.len(), 1);
            assert_eq!(nmis[0].1, vec![4, 6, 0xff, 0, 0, 1]);
        }
    }

    #[test]
    fn max_cpus_fit_and_too_many_fail() {
        let mem = mem();
        let tables = walk(&mem, create_acpi_tables(&mem, MAX_VCPUS).unwrap());
        let madt = find(&tables, b"APIC");
        assert_eq!(
            madt_entries(&madt)
                .iter()
                .filter(|e| e.0 == MADT_TYPE_LOCAL_APIC)
                .count(),
            usize::from(MAX_VCPUS)
        );
        assert_eq!(create_acpi_tables(&mem, 0), Err(Error::BadCpuCount(0)));
        assert_eq!(
            create_acpi_tables(&mem, MAX_VCPUS + 1),
            Err(Error::BadCpuCount(MAX_VCPUS + 1))
        );
    }

    #[test]
    fn fails_without_memory() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert!(matches!(create_acpi_tables(&mem, 1), Err(Error::Write(_))));
    }
}
