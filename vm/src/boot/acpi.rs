//! Minimal ACPI tables: how the guest kernel finds its CPUs and IOAPIC, and how it powers off.
//!
//! The Debian kernel is built without `CONFIG_X86_MPPARSE`, so the MADT is its only source for
//! SMP and IOAPIC information. The platform is a classic (not hardware-reduced) ACPI one,
//! because a hardware-reduced platform has no legacy IRQs: Linux would then map ISA IRQ 4
//! (the COM1 UART, which is not described in the DSDT) to no IOAPIC pin at all. We write:
//!
//! - **RSDP** (revision 2) at [`RSDP_START`], pointing at the XSDT;
//! - **XSDT** listing the FADT and the MADT;
//! - **FADT** (revision 6): `RESET_REG_SUP`, no SMI command port (the platform is always in
//!   ACPI mode), SCI on IRQ 9, and the PM1a event (4 bytes) and control (2 bytes) blocks plus a
//!   one-byte reset register in I/O space from [`ACPI_PM_BASE`] (offsets [`PM1_EVT_OFFSET`],
//!   [`PM1_CNT_OFFSET`], [`RESET_OFFSET`]). To power off, Linux writes `SLP_TYP` (from the
//!   DSDT's `_S5_`, 5) in bits 10..=12 with `SLP_EN` (bit 13) to PM1a control:
//!   [`PM1_CNT_S5`]; to reboot it writes [`RESET_VALUE`] to the reset register.
//!   `IAPC_BOOT_ARCH` says "no VGA" and "no CMOS RTC" and, by leaving the bits clear, "no
//!   legacy devices" and "no i8042". `X_DSDT` and `X_FIRMWARE_CTRL` point at the DSDT and the
//!   FACS;
//! - **FACS**, empty (no waking vector, no global lock use);
//! - **DSDT** holding only `Name (_S5_, Package (0x04) {0x05, 0x00, 0x00, 0x00})`, which the
//!   kernel needs to consider S5 (and so `acpi_power_off`) supported;
//! - **MADT**: local APIC address, `PCAT_COMPAT`, one enabled Processor Local APIC per vCPU
//!   (ACPI processor uid = APIC id = vCPU index), one IOAPIC (id `num_cpus`, GSI base 0),
//!   Interrupt Source Overrides ISA IRQ 0 -> GSI 2 and IRQ 9 (SCI) -> GSI 9 level/high, and a
//!   Local APIC NMI on LINT1 for all CPUs.
//!
//! Tables follow the RSDP in the area up to 1 MiB, which the e820 map reports as reserved.

use vm_memory::{Address, ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{ACPI_END, ACPI_PM_BASE, IOAPIC_START, LAPIC_START, MAX_VCPUS, RSDP_START};

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

/// Offset of the PM1a event block (status and enable, 2 bytes each) from [`ACPI_PM_BASE`].
pub const PM1_EVT_OFFSET: u64 = 0;
/// Offset of the PM1a control block (2 bytes) from [`ACPI_PM_BASE`].
pub const PM1_CNT_OFFSET: u64 = 4;
/// PM1a enable: the second half of the PM1a event block.
pub const PM1_EN_OFFSET: u64 = PM1_EVT_OFFSET + 2;
/// Offset of the reset register (1 byte) from [`ACPI_PM_BASE`].
pub const RESET_OFFSET: u64 = 8;
/// Bytes of I/O space the PM registers take from [`ACPI_PM_BASE`].
pub const PM_PORT_LEN: u64 = 9;
/// PM1 control `SLP_EN`.
pub const PM1_CNT_SLP_EN: u16 = 1 << 13;
/// PM1 control `SLP_TYP` field shift.
pub const PM1_CNT_SLP_TYP_SHIFT: u16 = 10;
/// PM1 control `SLP_TYP` mask.
pub const PM1_CNT_SLP_TYP_MASK: u16 = 7 << PM1_CNT_SLP_TYP_SHIFT;
/// The sleep type of S5 in the DSDT's `_S5_` package.
pub const S5_SLP_TYP: u16 = 5;
/// What Linux writes to PM1a control to power off.
pub const PM1_CNT_S5: u16 = (S5_SLP_TYP << PM1_CNT_SLP_TYP_SHIFT) | PM1_CNT_SLP_EN;
/// PM1 control `SCI_EN`: reads as set, the platform is always in ACPI mode.
pub const PM1_CNT_SCI_EN: u16 = 1;
/// Value written to the reset register to reboot.
pub const RESET_VALUE: u8 = 0x01;
/// The SCI's ISA IRQ.
pub const SCI_IRQ: u16 = 9;

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
/// GAS access size: word.
const GAS_ACCESS_WORD: u8 = 2;
/// GAS access size: dword.
const GAS_ACCESS_DWORD: u8 = 3;
/// MPS INTI flags: active high, level triggered.
const MPS_INTI_ACTIVE_HIGH_LEVEL: u16 = 0x1 | (0x3 << 2);
/// Size of the FACS.
const FACS_LEN: usize = 64;

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
    /// A register of `bits` bits at I/O `port`, accessed `access` at a time.
    fn io(port: u32, bits: u8, access: u8) -> Self {
        Gas {
            address_space_id: GAS_SYSTEM_IO,
            register_bit_width: bits,
            register_bit_offset: 0,
            access_size: access,
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

/// The FACS: only its signature, length and version; nothing in it is used.
fn build_facs() -> Vec<u8> {
    let mut facs = vec![0u8; FACS_LEN];
    facs[..4].copy_from_slice(b"FACS");
    facs[4..8].copy_from_slice(&(FACS_LEN as u32).to_le_bytes());
    facs[32] = 2; // version
    facs
}

/// The FADT, pointing at the DSDT at `dsdt_addr` and the FACS at `facs_addr`.
fn build_fadt(dsdt_addr: GuestAddress, facs_addr: GuestAddress) -> Vec<u8> {
    let pm = |offset: u64| u32::from(ACPI_PM_BASE) + offset as u32;
    let mut fadt = Fadt {
        firmware_ctrl: facs_addr.raw_value() as u32,
        sci_int: SCI_IRQ,
        pm1a_evt_blk: pm(PM1_EVT_OFFSET),
        pm1a_cnt_blk: pm(PM1_CNT_OFFSET),
        pm1_evt_len: 4,
        pm1_cnt_len: 2,
        flags: FADT_RESET_REG_SUP,
        iapc_boot_arch: IAPC_BOOT_ARCH_NO_VGA | IAPC_BOOT_ARCH_NO_CMOS_RTC,
        reset_reg: Gas::io(pm(RESET_OFFSET), 8, GAS_ACCESS_BYTE),
        reset_value: RESET_VALUE,
        x_firmware_ctrl: facs_addr.raw_value(),
        x_dsdt: dsdt_addr.raw_value(),
        x_pm1a_evt_blk: Gas::io(pm(PM1_EVT_OFFSET), 32, GAS_ACCESS_DWORD),
        x_pm1a_cnt_blk: Gas::io(pm(PM1_CNT_OFFSET), 16, GAS_ACCESS_WORD),
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
    let sci = MadtIntSrcOverride {
        source: SCI_IRQ as u8,
        gsi: u32::from(SCI_IRQ),
        flags: MPS_INTI_ACTIVE_HIGH_LEVEL,
        ..iso
    };
    body.extend_from_slice(sci.as_slice());
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
    // The FACS must be 64-byte aligned.
    w.next = w.next.next_multiple_of(64);
    let facs = w.put("FACS", &build_facs())?;
    let fadt = w.put("FADT", &build_fadt(dsdt, facs))?;
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
        // Not hardware-reduced: Linux keeps legacy IRQs (COM1 on IRQ 4) only then.
        assert_eq!(flags & FADT_HW_REDUCED_ACPI, 0);
        assert_ne!(flags & FADT_RESET_REG_SUP, 0);
        // Flags live at offset 112 per the spec.
        assert_eq!(
            u32::from_le_bytes(bytes[112..116].try_into().unwrap()),
            flags
        );
        assert_eq!({ fadt.sci_int }, 9);
        assert_eq!({ fadt.smi_cmd }, 0, "always in ACPI mode");
        assert_eq!({ fadt.pm1a_evt_blk }, 0x600);
        assert_eq!({ fadt.pm1a_cnt_blk }, 0x604);
        assert_eq!((fadt.pm1_evt_len, fadt.pm1_cnt_len), (4, 2));
        // PM1a_CNT_BLK at offset 64 and X_PM1a_CNT_BLK at 172 per the spec.
        assert_eq!(u32::from_le_bytes(bytes[64..68].try_into().unwrap()), 0x604);
        assert_eq!({ fadt.x_pm1a_cnt_blk.address }, 0x604);
        assert_eq!(&bytes[172..184], fadt.x_pm1a_cnt_blk.as_slice());
        assert_eq!({ fadt.reset_reg.address }, 0x608);
        assert_eq!(fadt.reset_reg.address_space_id, 1);
        assert_eq!(fadt.reset_value, RESET_VALUE);
        assert_eq!(u64::from_le_bytes(bytes[140..148].try_into().unwrap()), {
            fadt.x_dsdt
        });
        assert_eq!({ fadt.dsdt }, 0);
        let facs = read_facs(&mem, fadt.x_firmware_ctrl);
        assert_eq!(&facs[..4], b"FACS");
        assert_eq!(fadt.x_firmware_ctrl % 64, 0, "FACS alignment");
        assert_eq!(
            { fadt.iapc_boot_arch },
            IAPC_BOOT_ARCH_NO_VGA | IAPC_BOOT_ARCH_NO_CMOS_RTC
        );
        assert_eq!(PM1_CNT_S5, 0x3400);
    }

    fn read_facs(mem: &GuestMemoryMmap, addr: u64) -> Vec<u8> {
        let mut b = vec![0u8; FACS_LEN];
        mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
        b
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
            assert_eq!(isos.len(), 2);
            assert_eq!((isos[0].bus, isos[0].source, { isos[0].gsi }), (0, 0, 2));
            assert_eq!(
                (isos[1].source, { isos[1].gsi }, { isos[1].flags }),
                (9, 9, 0xd)
            );
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
