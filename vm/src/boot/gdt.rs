//! The boot GDT and IDT, and the conversion of GDT descriptors to KVM segment registers.
//!
//! The 64-bit boot protocol (Documentation/arch/x86/boot.rst) asks for a GDT with flat 4 GiB
//! descriptors at selectors `__BOOT_CS` (0x10, execute/read) and `__BOOT_DS` (0x18, read/write),
//! CS loaded with the former and DS/ES/SS with the latter. Our table is:
//!
//! | index | selector | descriptor                              |
//! |-------|----------|-----------------------------------------|
//! | 0     | 0x00     | null                                    |
//! | 1     | 0x08     | null (unused, keeps `__BOOT_CS` at 0x10) |
//! | 2     | 0x10     | 64-bit code, flat                       |
//! | 3     | 0x18     | data, flat                              |
//! | 4, 5  | 0x20     | 64-bit TSS (a 16-byte system descriptor) |
//!
//! The TSS is only there because VMX refuses to enter a guest whose TR is unusable; the kernel
//! loads its own GDT, IDT and TSS early in `startup_64`.

use kvm_bindings::kvm_segment;
#[cfg(test)]
use vm_memory::Address;
use vm_memory::{Bytes, GuestMemoryMmap};

use super::layout::{BOOT_GDT_MAX_ENTRIES, BOOT_GDT_START, BOOT_IDT_START};

/// Errors writing the descriptor tables.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Writing the GDT into guest memory failed.
    #[error("failed to write the boot GDT into guest memory: {0}")]
    WriteGdt(#[source] vm_memory::GuestMemoryError),
    /// Writing the IDT into guest memory failed.
    #[error("failed to write the boot IDT into guest memory: {0}")]
    WriteIdt(#[source] vm_memory::GuestMemoryError),
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// Selector of the 64-bit code segment (`__BOOT_CS`).
pub const BOOT_CS_SELECTOR: u16 = 0x10;
/// Selector of the data segment (`__BOOT_DS`).
pub const BOOT_DS_SELECTOR: u16 = 0x18;
/// Selector of the TSS.
pub const BOOT_TSS_SELECTOR: u16 = 0x20;

/// Segment type: code, execute/read, accessed.
const TYPE_CODE_XR_ACCESSED: u8 = 0xb;
/// Segment type: data, read/write, accessed.
const TYPE_DATA_RW_ACCESSED: u8 = 0x3;
/// System segment type: busy 64-bit TSS.
const TYPE_TSS64_BUSY: u8 = 0xb;
/// Limit of a TSS without I/O bitmap (104 bytes - 1).
const TSS_LIMIT: u32 = 0x67;

/// A decoded 8-byte segment descriptor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Descriptor {
    /// Low 32 bits of the base (64-bit system descriptors keep the high half in the next slot).
    pub base: u32,
    /// 20-bit limit, in bytes or in 4 KiB units depending on `granularity`.
    pub limit: u32,
    /// 4-bit type field.
    pub type_: u8,
    /// S bit: code/data (true) or system (false) descriptor.
    pub code_data: bool,
    /// Descriptor privilege level (0..=3).
    pub dpl: u8,
    /// P bit.
    pub present: bool,
    /// AVL bit.
    pub avl: bool,
    /// L bit: 64-bit code segment.
    pub long: bool,
    /// D/B bit: 32-bit default operand size.
    pub db: bool,
    /// G bit: limit counted in 4 KiB pages.
    pub granularity: bool,
}

impl Descriptor {
    /// Flat 64-bit code segment.
    pub const fn code64() -> Self {
        Descriptor {
            base: 0,
            limit: 0xf_ffff,
            type_: TYPE_CODE_XR_ACCESSED,
            code_data: true,
            dpl: 0,
            present: true,
            avl: false,
            long: true,
            db: false,
            granularity: true,
        }
    }

    /// Flat read/write data segment.
    pub const fn data() -> Self {
        Descriptor {
            base: 0,
            limit: 0xf_ffff,
            type_: TYPE_DATA_RW_ACCESSED,
            code_data: true,
            dpl: 0,
            present: true,
            avl: false,
            long: false,
            db: true,
            granularity: true,
        }
    }

    /// Busy 64-bit TSS at address 0 (never dereferenced during boot).
    pub const fn tss() -> Self {
        Descriptor {
            base: 0,
            limit: TSS_LIMIT,
            type_: TYPE_TSS64_BUSY,
            code_data: false,
            dpl: 0,
            present: true,
            avl: false,
            long: false,
            db: false,
            granularity: false,
        }
    }

    /// Encodes into the hardware 8-byte layout.
    pub fn encode(&self) -> u64 {
        let base = u64::from(self.base);
        let limit = u64::from(self.limit & 0xf_ffff);
        (limit & 0xffff)
            | ((base & 0xff_ffff) << 16)
            | (u64::from(self.type_ & 0xf) << 40)
            | (u64::from(self.code_data) << 44)
            | (u64::from(self.dpl & 0x3) << 45)
            | (u64::from(self.present) << 47)
            | ((limit >> 16) << 48)
            | (u64::from(self.avl) << 52)
            | (u64::from(self.long) << 53)
            | (u64::from(self.db) << 54)
            | (u64::from(self.granularity) << 55)
            | ((base >> 24) << 56)
    }

    /// Decodes the hardware 8-byte layout.
    pub fn decode(raw: u64) -> Self {
        let bit = |n: u32| (raw >> n) & 1 == 1;
        Descriptor {
            base: (((raw >> 16) & 0xff_ffff) | (((raw >> 56) & 0xff) << 24)) as u32,
            limit: ((raw & 0xffff) | (((raw >> 48) & 0xf) << 16)) as u32,
            type_: ((raw >> 40) & 0xf) as u8,
            code_data: bit(44),
            dpl: ((raw >> 45) & 0x3) as u8,
            present: bit(47),
            avl: bit(52),
            long: bit(53),
            db: bit(54),
            granularity: bit(55),
        }
    }

    /// The limit in bytes, as KVM wants it in `kvm_segment::limit`.
    pub fn byte_limit(&self) -> u32 {
        if self.granularity {
            (self.limit << 12) | 0xfff
        } else {
            self.limit
        }
    }

    /// The segment register state that loading `selector` (pointing at this descriptor) gives.
    pub fn to_kvm_segment(&self, selector: u16) -> kvm_segment {
        kvm_segment {
            base: u64::from(self.base),
            limit: self.byte_limit(),
            selector,
            type_: self.type_,
            present: u8::from(self.present),
            dpl: self.dpl,
            db: u8::from(self.db),
            s: u8::from(self.code_data),
            l: u8::from(self.long),
            g: u8::from(self.granularity),
            avl: u8::from(self.avl),
            unusable: u8::from(!self.present),
            padding: 0,
        }
    }
}

/// Number of 8-byte slots in the boot GDT.
pub const BOOT_GDT_ENTRIES: usize = 6;

/// The boot GDT as raw 8-byte slots (see the module docs for the layout).
pub fn boot_gdt() -> [u64; BOOT_GDT_ENTRIES] {
    [
        0,
        0,
        Descriptor::code64().encode(),
        Descriptor::data().encode(),
        Descriptor::tss().encode(),
        0, // High half of the TSS descriptor: base[63:32] = 0.
    ]
}

/// GDTR limit of the boot GDT.
pub const BOOT_GDT_LIMIT: u16 = (BOOT_GDT_ENTRIES * 8 - 1) as u16;
/// IDTR limit of the boot IDT (one 16-byte gate).
pub const BOOT_IDT_LIMIT: u16 = 15;

const _: () = assert!(BOOT_GDT_ENTRIES <= BOOT_GDT_MAX_ENTRIES);

/// CS for the 64-bit entry point.
pub fn code_segment() -> kvm_segment {
    Descriptor::code64().to_kvm_segment(BOOT_CS_SELECTOR)
}

/// DS/ES/FS/GS/SS for the 64-bit entry point.
pub fn data_segment() -> kvm_segment {
    Descriptor::data().to_kvm_segment(BOOT_DS_SELECTOR)
}

/// TR for the 64-bit entry point.
pub fn tss_segment() -> kvm_segment {
    Descriptor::tss().to_kvm_segment(BOOT_TSS_SELECTOR)
}

/// Writes the boot GDT at [`BOOT_GDT_START`] and the empty boot IDT at [`BOOT_IDT_START`].
pub fn write_gdt_and_idt(mem: &GuestMemoryMmap) -> Result<()> {
    let mut bytes = [0u8; BOOT_GDT_ENTRIES * 8];
    for (chunk, entry) in bytes.chunks_exact_mut(8).zip(boot_gdt()) {
        chunk.copy_from_slice(&entry.to_le_bytes());
    }
    mem.write_slice(&bytes, BOOT_GDT_START)
        .map_err(Error::WriteGdt)?;
    mem.write_slice(&[0u8; BOOT_IDT_LIMIT as usize + 1], BOOT_IDT_START)
        .map_err(Error::WriteIdt)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    #[test]
    fn known_encodings() {
        // Well-known values for flat segments: 64-bit code and 32-bit data, both accessed.
        assert_eq!(Descriptor::code64().encode(), 0x00af_9b00_0000_ffff);
        assert_eq!(Descriptor::data().encode(), 0x00cf_9300_0000_ffff);
        assert_eq!(Descriptor::tss().encode(), 0x0000_8b00_0000_0067);
    }

    #[test]
    fn encode_decode_round_trip() {
        let d = Descriptor {
            base: 0x1234_5678,
            limit: 0xa_bcde,
            type_: 0x5,
            code_data: true,
            dpl: 2,
            present: true,
            avl: true,
            long: false,
            db: true,
            granularity: false,
        };
        assert_eq!(Descriptor::decode(d.encode()), d);
        for d in [Descriptor::code64(), Descriptor::data(), Descriptor::tss()] {
            assert_eq!(Descriptor::decode(d.encode()), d);
        }
        let raw = 0xdead_beef_cafe_f00d_u64;
        assert_eq!(Descriptor::decode(raw).encode(), raw);
    }

    #[test]
    fn kvm_segments() {
        let cs = code_segment();
        assert_eq!(cs.selector, 0x10);
        assert_eq!((cs.l, cs.db, cs.s, cs.present, cs.g), (1, 0, 1, 1, 1));
        assert_eq!(cs.limit, 0xffff_ffff);
        assert_eq!(cs.type_, 0xb);
        let ds = data_segment();
        assert_eq!(ds.selector, 0x18);
        assert_eq!((ds.l, ds.db, ds.unusable), (0, 1, 0));
        assert_eq!(ds.limit, 0xffff_ffff);
        let tr = tss_segment();
        assert_eq!(
            (tr.selector, tr.s, tr.limit, tr.type_),
            (0x20, 0, 0x67, 0xb)
        );
        // The selectors index the table entries they describe.
        let gdt = boot_gdt();
        assert_eq!(
            Descriptor::decode(gdt[usize::from(BOOT_CS_SELECTOR >> 3)]),
            Descriptor::code64()
        );
        assert_eq!(
            Descriptor::decode(gdt[usize::from(BOOT_DS_SELECTOR >> 3)]),
            Descriptor::data()
        );
        assert_eq!(
            Descriptor::decode(gdt[usize::from(BOOT_TSS_SELECTOR >> 3)]),
            Descriptor::tss()
        );
    }

    #[test]
    fn written_to_memory() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        mem.write_slice(&[0xffu8; 0x100], BOOT_GDT_START).unwrap();
        write_gdt_and_idt(&mem).unwrap();
        let cs: u64 = mem
            .read_obj(BOOT_GDT_START.unchecked_add(u64::from(BOOT_CS_SELECTOR)))
            .unwrap();
        assert_eq!(cs, Descriptor::code64().encode());
        let null: u64 = mem.read_obj(BOOT_GDT_START).unwrap();
        assert_eq!(null, 0);
        let idt: [u8; 16] = mem.read_obj(BOOT_IDT_START).unwrap();
        assert_eq!(idt, [0u8; 16]);
    }

    #[test]
    fn write_fails_without_memory() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0x10_0000), 0x1000)]).unwrap();
        assert!(matches!(write_gdt_and_idt(&mem), Err(Error::WriteGdt(_))));
    }
}
