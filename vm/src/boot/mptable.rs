//! Intel MultiProcessor Specification 1.4 table.
//!
//! Written for kernels built with `CONFIG_X86_MPPARSE`; the Debian cloud kernel is not, and finds
//! the CPUs and the IOAPIC through the ACPI MADT instead (see `acpi.rs`). The table is:
//!
//! - the 16-byte floating pointer at [`MPTABLE_START`] (the kernel scans the last KiB below
//!   640 KiB for `_MP_`), pointing at
//! - the configuration table right after it: header, one processor entry per vCPU (vCPU 0 is the
//!   bootstrap processor), one ISA bus, one IOAPIC (id `num_cpus`), I/O interrupt entries for the
//!   ISA IRQs (IRQ 0 to IOAPIC pin 2 like the MADT override, IRQ 2 — the PIC cascade — omitted,
//!   the others identity-mapped) and local interrupt entries for LINT0 (ExtINT) and LINT1 (NMI).
//!
//! Both parts carry a checksum making their bytes sum to zero.

use vm_memory::{Address, ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{IOAPIC_START, LAPIC_START, MAX_VCPUS, MPTABLE_END, MPTABLE_START};

/// Errors writing the MP table.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The number of vCPUs is zero or larger than the table supports.
    #[error("cannot describe {0} vCPUs in the MP table (1..={MAX_VCPUS} supported)")]
    BadCpuCount(u8),
    /// The table would not fit in the area reserved for it.
    #[error("the MP table does not fit below {:#x}", MPTABLE_END.0)]
    TooBig,
    /// Writing the table into guest memory failed.
    #[error("failed to write the MP table into guest memory")]
    Write,
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, Error>;

const MPC_SPEC_REV: u8 = 4;
const MPC_OEM_ID: [u8; 8] = *b"RVMMBOOT";
const MPC_PRODUCT_ID: [u8; 12] = *b"VMM MPTABLE ";

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

const CPU_ENABLED: u8 = 1 << 0;
const CPU_BOOTPROCESSOR: u8 = 1 << 1;
/// Local APIC version reported by KVM's in-kernel LAPIC.
const LAPIC_VERSION: u8 = 0x14;
/// Version of KVM's in-kernel IOAPIC.
const IOAPIC_VERSION: u8 = 0x11;
const IOAPIC_ENABLED: u8 = 1;
/// CPU signature (family 6) and feature flags (FPU, APIC) for processor entries.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);

const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
/// Polarity and trigger "conform to the bus".
const INT_FLAGS_CONFORM: u16 = 0;
const ISA_BUS_ID: u8 = 0;
/// Destination local APIC id meaning "all".
const ALL_LAPICS: u8 = 0xff;

/// MP floating pointer structure.
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, Default)]
struct MpfIntel {
    signature: [u8; 4],
    physptr: u32,
    length: u8,
    spec_rev: u8,
    checksum: u8,
    feature1: u8,
    feature2: u8,
    feature3: [u8; 3],
}
// SAFETY: packed plain-data struct of integers; every byte pattern is a valid value.
unsafe impl ByteValued for MpfIntel {}

/// MP configuration table header.
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, Default)]
struct MpcTable {
    signature: [u8; 4],
    length: u16,
    spec_rev: u8,
    checksum: u8,
    oem_id: [u8; 8],
    product_id: [u8; 12],
    oem_ptr: u32,
    oem_size: u16,
    entry_count: u16,
    lapic_addr: u32,
    ext_length: u16,
    ext_checksum: u8,
    reserved: u8,
}
// SAFETY: packed plain-data struct of integers; every byte pattern is a valid value.
unsafe impl ByteValued for MpcTable {}

/// Processor entry.
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, Default)]
struct MpcCpu {
    type_: u8,
    apic_id: u8,
    apic_version: u8,
    cpu_flags: u8,
    signature: u32,
    feature_flags: u32,
    reserved: [u32; 2],
}
// SAFETY: packed plain-data struct of integers; every byte pattern is a valid value.
unsafe impl ByteValued for MpcCpu {}

/// Bus entry.
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, Default)]
struct MpcBus {
    type_: u8,
    bus_id: u8,
    bus_type: [u8; 6],
}
// SAFETY: packed plain-data struct of integers; every byte pattern is a valid value.
unsafe impl ByteValued for MpcBus {}

/// IOAPIC entry.
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, Default)]
struct MpcIoapic {
    type_: u8,
    apic_id: u8,
    apic_version: u8,
    flags: u8,
    addr: u32,
}
// SAFETY: packed plain-data struct of integers; every byte pattern is a valid value.
unsafe impl ByteValued for MpcIoapic {}

/// I/O or local interrupt assignment entry (both have the same layout).
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, Default)]
struct MpcInterrupt {
    type_: u8,
    int_type: u8,
    flags: u16,
    src_bus_id: u8,
    src_bus_irq: u8,
    dst_apic_id: u8,
    dst_pin: u8,
}
// SAFETY: packed plain-data struct of integers; every byte pattern is a valid value.
unsafe impl ByteValued for MpcInterrupt {}

/// Byte sum modulo 256.
fn byte_sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
}

/// The ISA IRQ to IOAPIC pin assignments described by the table.
fn isa_irq_routes() -> impl Iterator<Item = (u8, u8)> {
    (0u8..16)
        .filter(|&irq| irq != 2)
        .map(|irq| (irq, if irq == 0 { 2 } else { irq }))
}

/// Size in bytes of the whole MP table (floating pointer included) for `num_cpus` vCPUs.
pub fn mptable_size(num_cpus: u8) -> usize {
    std::mem::size_of::<MpfIntel>()
        + std::mem::size_of::<MpcTable>()
        + usize::from(num_cpus) * std::mem::size_of::<MpcCpu>()
        + std::mem::size_of::<MpcBus>()
        + std::mem::size_of::<MpcIoapic>()
        + (isa_irq_routes().count() + 2) * std::mem::size_of::<MpcInterrupt>()
}

/// Builds the configuration table (header and entries) with its checksum set.
fn build_config_table(num_cpus: u8) -> Vec<u8> {
    let ioapic_id = num_cpus;
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..num_cpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTPROCESSOR } else { 0 };
        let e = MpcCpu {
            type_: ENTRY_PROCESSOR,
            apic_id: cpu,
            apic_version: LAPIC_VERSION,
            cpu_flags: flags,
            signature: CPU_SIGNATURE,
            feature_flags: CPU_FEATURES,
            reserved: [0; 2],
        };
        entries.extend_from_slice(e.as_slice());
        count += 1;
    }
    let bus = MpcBus {
        type_: ENTRY_BUS,
        bus_id: ISA_BUS_ID,
        bus_type: *b"ISA   ",
    };
    entries.extend_from_slice(bus.as_slice());
    count += 1;
    let ioapic = MpcIoapic {
        type_: ENTRY_IOAPIC,
        apic_id: ioapic_id,
        apic_version: IOAPIC_VERSION,
        flags: IOAPIC_ENABLED,
        addr: IOAPIC_START as u32,
    };
    entries.extend_from_slice(ioapic.as_slice());
    count += 1;
    for (irq, pin) in isa_irq_routes() {
        let e = MpcInterrupt {
            type_: ENTRY_IO_INTERRUPT,
            int_type: INT_TYPE_INT,
            flags: INT_FLAGS_CONFORM,
            src_bus_id: ISA_BUS_ID,
            src_bus_irq: irq,
            dst_apic_id: ioapic_id,
            dst_pin: pin,
        };
        entries.extend_from_slice(e.as_slice());
        count += 1;
    }
    for (lint, int_type) in [(0u8, INT_TYPE_EXTINT), (1u8, INT_TYPE_NMI)] {
        let e = MpcInterrupt {
            type_: ENTRY_LOCAL_INTERRUPT,
            int_type,
            flags: INT_FLAGS_CONFORM,
            src_bus_id: ISA_BUS_ID,
            src_bus_irq: 0,
            dst_apic_id: ALL_LAPICS,
            dst_pin: lint,
        };
        entries.extend_from_slice(e.as_slice());
        count += 1;
    }

    let length = std::mem::size_of::<MpcTable>() + entries.len();
    let mut header = MpcTable {
        signature: *b"PCMP",
        length: length as u16,
        spec_rev: MPC_SPEC_REV,
        checksum: 0,
        oem_id: MPC_OEM_ID,
        product_id: MPC_PRODUCT_ID,
        oem_ptr: 0,
        oem_size: 0,
        entry_count: count,
        lapic_addr: LAPIC_START as u32,
        ext_length: 0,
        ext_checksum: 0,
        reserved: 0,
    };
    let sum = byte_sum(header.as_slice()).wrapping_add(byte_sum(&entries));
    header.checksum = sum.wrapping_neg();
    let mut table = header.as_slice().to_vec();
    table.extend_from_slice(&entries);
    table
}

/// Writes the MP table for `num_cpus` vCPUs at [`MPTABLE_START`].
pub fn setup_mptable(mem: &GuestMemoryMmap, num_cpus: u8) -> Result<()> {
    if num_cpus == 0 || num_cpus > MAX_VCPUS {
        return Err(Error::BadCpuCount(num_cpus));
    }
    if MPTABLE_START.raw_value() + mptable_size(num_cpus) as u64 > MPTABLE_END.raw_value() {
        return Err(Error::TooBig);
    }
    let table_addr: GuestAddress =
        MPTABLE_START.unchecked_add(std::mem::size_of::<MpfIntel>() as u64);
    let mut mpf = MpfIntel {
        signature: *b"_MP_",
        physptr: table_addr.raw_value() as u32,
        length: 1,
        spec_rev: MPC_SPEC_REV,
        ..Default::default()
    };
    mpf.checksum = byte_sum(mpf.as_slice()).wrapping_neg();
    let table = build_config_table(num_cpus);
    debug_assert_eq!(table.len() + 16, mptable_size(num_cpus));
    mem.write_slice(mpf.as_slice(), MPTABLE_START)
        .map_err(|_| Error::Write)?;
    mem.write_slice(&table, table_addr)
        .map_err(|_| Error::Write)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn read_bytes(mem: &GuestMemoryMmap, addr: GuestAddress, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        mem.read_slice(&mut v, addr).unwrap();
        v
    }

    /// Parses the table in memory and returns (entry count, cpu entries, entries by type).
    fn check_table(mem: &GuestMemoryMmap, num_cpus: u8) -> (u16, Vec<MpcCpu>, [usize; 5]) {
        let mpf: MpfIntel = mem.read_obj(MPTABLE_START).unwrap();
        assert_eq!(&mpf.signature, b"_MP_");
        assert_eq!(mpf.length, 1);
        assert_eq!(byte_sum(&read_bytes(mem, MPTABLE_START, 16)), 0);
        let table_addr = GuestAddress(u64::from(mpf.physptr));
        let hdr: MpcTable = mem.read_obj(table_addr).unwrap();
        assert_eq!(&hdr.signature, b"PCMP");
        assert_eq!({ hdr.lapic_addr }, 0xfee0_0000);
        let len = usize::from(hdr.length);
        assert_eq!(len + 16, mptable_size(num_cpus));
        let bytes = read_bytes(mem, table_addr, len);
        assert_eq!(byte_sum(&bytes), 0, "config table checksum");

        let mut cpus = Vec::new();
        let mut by_type = [0usize; 5];
        let mut off = std::mem::size_of::<MpcTable>();
        for _ in 0..hdr.entry_count {
            let t = bytes[off];
            by_type[usize::from(t)] += 1;
            off += match t {
                ENTRY_PROCESSOR => {
                    cpus.push(MpcCpu::from_slice(&bytes[off..off + 20]).copied().unwrap());
                    20
                }
                ENTRY_IOAPIC => {
                    let io = MpcIoapic::from_slice(&bytes[off..off + 8])
                        .copied()
                        .unwrap();
                    assert_eq!(io.apic_id, num_cpus);
                    assert_eq!({ io.addr }, 0xfec0_0000);
                    8
                }
                _ => 8,
            };
        }
        assert_eq!(off, len, "entries fill the table exactly");
        (hdr.entry_count, cpus, by_type)
    }

    #[test]
    fn one_cpu() {
        let mem = mem();
        setup_mptable(&mem, 1).unwrap();
        let (count, cpus, by_type) = check_table(&mem, 1);
        assert_eq!(count, 1 + 1 + 1 + 15 + 2);
        assert_eq!(by_type, [1, 1, 1, 15, 2]);
        assert_eq!(cpus[0].apic_id, 0);
        assert_eq!(cpus[0].cpu_flags, CPU_ENABLED | CPU_BOOTPROCESSOR);
    }

    #[test]
    fn four_cpus() {
        let mem = mem();
        setup_mptable(&mem, 4).unwrap();
        let (count, cpus, by_type) = check_table(&mem, 4);
        assert_eq!(count, 4 + 1 + 1 + 15 + 2);
        assert_eq!(by_type[0], 4);
        let ids: Vec<u8> = cpus.iter().map(|c| c.apic_id).collect();
        assert_eq!(ids, vec![0, 1, 2, 3]);
        assert_eq!(
            cpus.iter()
                .filter(|c| c.cpu_flags & CPU_BOOTPROCESSOR != 0)
                .count(),
            1
        );
        assert!(cpus.iter().all(|c| c.cpu_flags & CPU_ENABLED != 0));
    }

    #[test]
    fn max_cpus_fit() {
        let mem = mem();
        setup_mptable(&mem, MAX_VCPUS).unwrap();
        let (_, cpus, _) = check_table(&mem, MAX_VCPUS);
        assert_eq!(cpus.len(), usize::from(MAX_VCPUS));
    }

    #[test]
    fn bad_cpu_counts() {
        let mem = mem();
        assert_eq!(setup_mptable(&mem, 0), Err(Error::BadCpuCount(0)));
        assert_eq!(
            setup_mptable(&mem, MAX_VCPUS + 1),
            Err(Error::BadCpuCount(MAX_VCPUS + 1))
        );
    }

    #[test]
    fn irq0_goes_to_pin2() {
        let routes: Vec<(u8, u8)> = isa_irq_routes().collect();
        assert_eq!(routes[0], (0, 2));
        assert!(!routes.iter().any(|&(irq, _)| irq == 2));
        assert!(routes.iter().skip(1).all(|&(irq, pin)| irq == pin));
    }

    #[test]
    fn write_fails_without_memory() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert_eq!(setup_mptable(&mem, 1), Err(Error::Write));
    }
}
