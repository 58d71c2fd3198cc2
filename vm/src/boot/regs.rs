//! vCPU state for the 64-bit Linux entry point.
//!
//! Every vCPU gets CPUID (with its APIC id and the topology), boot MSRs, a sane FPU state and
//! its local APIC LINT0/LINT1 set to ExtINT/NMI. Only the bootstrap processor (vCPU 0) gets the
//! entry state: long mode with the boot GDT and identity page tables, RIP at the kernel's 64-bit
//! entry point, RSI at the zero page. The other vCPUs stay in their reset state (waiting for
//! INIT/SIPI); the kernel starts them through the in-kernel local APIC.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_fpu, kvm_msr_entry, kvm_regs, CpuId, Msrs,
    KVM_CPUID_FLAG_SIGNIFCANT_INDEX, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Kvm, VcpuFd};
use vm_memory::{Address, GuestAddress, GuestMemoryMmap};

use super::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PML4_START, ZERO_PAGE_START,
};
use super::{gdt, paging};

/// Errors setting up vCPU registers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// KVM_GET_SUPPORTED_CPUID failed.
    #[error("failed to get the supported CPUID: {0}")]
    GetSupportedCpuid(#[source] kvm_ioctls::Error),
    /// The normalized CPUID does not fit in a `KVM_SET_CPUID2` list.
    #[error("the normalized CPUID has {0} entries, more than KVM takes")]
    BuildCpuid(usize),
    /// KVM_SET_CPUID2 failed.
    #[error("failed to set the vCPU CPUID: {0}")]
    SetCpuid(#[source] kvm_ioctls::Error),
    /// Building the MSR list failed.
    #[error("failed to build the MSR list")]
    BuildMsrs,
    /// KVM_SET_MSRS failed.
    #[error("failed to set the vCPU MSRs: {0}")]
    SetMsrs(#[source] kvm_ioctls::Error),
    /// KVM_SET_MSRS set fewer MSRs than requested.
    #[error("KVM set only {set} of {wanted} boot MSRs (first rejected: {rejected:#x})")]
    MsrsNotAllSet {
        /// Number of MSRs set.
        set: usize,
        /// Number requested.
        wanted: usize,
        /// Index of the first MSR KVM refused.
        rejected: u32,
    },
    /// KVM_SET_REGS failed.
    #[error("failed to set the vCPU general-purpose registers: {0}")]
    SetRegs(#[source] kvm_ioctls::Error),
    /// KVM_GET_SREGS failed.
    #[error("failed to get the vCPU special registers: {0}")]
    GetSregs(#[source] kvm_ioctls::Error),
    /// KVM_SET_SREGS failed.
    #[error("failed to set the vCPU special registers: {0}")]
    SetSregs(#[source] kvm_ioctls::Error),
    /// KVM_SET_FPU failed.
    #[error("failed to set the vCPU FPU state: {0}")]
    SetFpu(#[source] kvm_ioctls::Error),
    /// KVM_GET_LAPIC failed (is the in-kernel irqchip created?).
    #[error("failed to get the local APIC state: {0}")]
    GetLapic(#[source] kvm_ioctls::Error),
    /// KVM_SET_LAPIC failed.
    #[error("failed to set the local APIC state: {0}")]
    SetLapic(#[source] kvm_ioctls::Error),
    /// Writing the GDT/IDT failed.
    #[error(transparent)]
    Gdt(#[from] gdt::Error),
    /// Writing the page tables failed.
    #[error(transparent)]
    Paging(#[from] paging::Error),
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, Error>;

// CR0, CR4 and EFER bits.
const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

// MSR indexes.
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
/// IA32_MISC_ENABLE: fast string operations.
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRdefType: MTRRs enabled, default type write-back.
const MTRR_ENABLE_DEFAULT_WB: u64 = (1 << 11) | 6;

// Local APIC registers and LVT delivery modes.
const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const APIC_DELIVERY_MODE_MASK: u32 = 0x700;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

// CPUID bits.
const CPUID_1_ECX_TSC_DEADLINE: u32 = 1 << 24;
const CPUID_1_ECX_HYPERVISOR: u32 = 1 << 31;
const CPUID_1_EDX_HTT: u32 = 1 << 28;
const CPUID_80000001_ECX_CMP_LEGACY: u32 = 1 << 1;
const CPUID_80000001_ECX_SVM: u32 = 1 << 2;
const CPUID_80000001_ECX_TOPOEXT: u32 = 1 << 22;
const CPUID_TOPO_LEVEL_SMT: u32 = 1;
const CPUID_TOPO_LEVEL_CORE: u32 = 2;
/// "AuthenticAMD" as leaf 0 returns it in EBX, EDX, ECX.
const VENDOR_AMD: [u32; 3] = [0x6874_7541, 0x6974_6e65, 0x444d_4163];

/// Sets `bits` in `reg` when `on`, clears them otherwise.
fn set_bits(reg: &mut u32, bits: u32, on: bool) {
    if on {
        *reg |= bits;
    } else {
        *reg &= !bits;
    }
}

/// Number of bits needed to hold ids `0..n` (`ceil(log2(n))`).
fn id_bits(n: u8) -> u32 {
    if n <= 1 {
        0
    } else {
        u32::BITS - u32::from(n - 1).leading_zeros()
    }
}

/// What the host's KVM offers beyond `KVM_GET_SUPPORTED_CPUID`, asked once per VM.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuidHost {
    /// The in-kernel local APIC emulates the TSC-deadline timer (`KVM_CAP_TSC_DEADLINE_TIMER`).
    /// KVM does not report CPUID.1:ECX[24] in its supported CPUID, so the VMM sets it.
    pub tsc_deadline: bool,
}

impl CpuidHost {
    /// Asks `kvm` for the capabilities.
    pub fn query(kvm: &Kvm) -> Self {
        Self {
            tsc_deadline: kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer),
        }
    }
}

/// Whether leaf 0 names an AMD CPU.
fn is_amd(entries: &[kvm_cpuid_entry2]) -> bool {
    entries
        .iter()
        .find(|e| e.function == 0)
        .is_some_and(|e| [e.ebx, e.edx, e.ecx] == VENDOR_AMD)
}

/// Appends an empty `function`/`index` entry (marked index-significant) unless it exists.
fn ensure_subleaf(entries: &mut Vec<kvm_cpuid_entry2>, function: u32, index: u32) {
    if !entries
        .iter()
        .any(|e| e.function == function && e.index == index)
    {
        entries.push(kvm_cpuid_entry2 {
            function,
            index,
            flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
            ..Default::default()
        });
    }
}

/// Normalizes KVM's supported CPUID for vCPU `cpu_index` of `num_cpus`, as Firecracker, Cloud
/// Hypervisor and QEMU do: one package of `num_cpus` single-thread cores with APIC id =
/// `cpu_index`, the hypervisor bit, TSC-deadline when `host` has it, SVM hidden.
///
/// - leaf 1: EBX APIC id and logical count, HTT when more than one CPU, ECX TSC-deadline and
///   hypervisor;
/// - leaf 4 (Intel only; a null descriptor on AMD): EAX cores per package and cache sharing;
/// - leaf 0xB (and 0x1F if KVM returned it): subleaf 0 the SMT level, subleaf 1 the core level,
///   both added if missing;
/// - AMD: 0x80000001 ECX TOPOEXT set, CmpLegacy when more than one CPU; 0x80000008 ECX NC and
///   ApicIdSize; 0x8000001D cache sharing (L1/L2 per core, L3 per package); 0x8000001E extended
///   APIC id, core id, one thread per core, node 0 of 1;
/// - SVM: 0x80000001 ECX[2] cleared and leaf 0x8000000A zeroed (no nested virtualization).
pub fn patch_cpuid(
    entries: &mut Vec<kvm_cpuid_entry2>,
    cpu_index: u8,
    num_cpus: u8,
    host: CpuidHost,
) {
    let num_cpus = num_cpus.max(1);
    let amd = is_amd(entries);
    let shift = id_bits(num_cpus);
    let cpu = u32::from(cpu_index);
    let cpus = u32::from(num_cpus);
    for leaf in [0xb, 0x1f] {
        if entries.iter().any(|e| e.function == leaf) {
            ensure_subleaf(entries, leaf, 0);
            ensure_subleaf(entries, leaf, 1);
        }
    }
    for e in entries.iter_mut() {
        match e.function {
            1 => {
                // EBX[31:24] initial APIC id, EBX[23:16] logical processors per package.
                e.ebx = (e.ebx & 0x0000_ffff) | (cpu << 24) | (cpus << 16);
                e.ecx |= CPUID_1_ECX_HYPERVISOR;
                set_bits(&mut e.ecx, CPUID_1_ECX_TSC_DEADLINE, host.tsc_deadline);
                set_bits(&mut e.edx, CPUID_1_EDX_HTT, num_cpus > 1);
            }
            4 if !amd => {
                // Deterministic cache parameters: EAX[31:26] cores per package - 1,
                // EAX[25:14] logical processors sharing this cache - 1 (only L3 is shared).
                let cores = (cpus - 1).min(0x3f);
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { cores } else { 0 };
                e.eax = (e.eax & 0x3fff) | (cores << 26) | (sharing << 14);
            }
            0xb | 0x1f => {
                // Extended topology: EAX = shift to the next level's id, EBX = logical
                // processors at this level, ECX = level type << 8 | level number,
                // EDX = x2APIC id.
                let (eax, ebx, level_type) = match e.index {
                    0 => (0, 1, CPUID_TOPO_LEVEL_SMT),
                    1 => (shift, cpus, CPUID_TOPO_LEVEL_CORE),
                    _ => (0, 0, 0),
                };
                e.eax = eax;
                e.ebx = ebx;
                e.ecx = (level_type << 8) | (e.index & 0xff);
                e.edx = cpu;
            }
            0x8000_0001 => {
                e.ecx &= !CPUID_80000001_ECX_SVM;
                if amd {
                    e.ecx |= CPUID_80000001_ECX_TOPOEXT;
                    set_bits(&mut e.ecx, CPUID_80000001_ECX_CMP_LEGACY, num_cpus > 1);
                }
            }
            0x8000_0008 if amd => {
                // ECX[15:12] APIC id bits for the cores, ECX[7:0] cores per package - 1.
                e.ecx = (e.ecx & !0xf0ff) | (shift << 12) | (cpus - 1);
            }
            0x8000_000a => {
                // SVM revision and features: nothing without SVM.
                (e.eax, e.ebx, e.ecx, e.edx) = (0, 0, 0, 0);
            }
            // Cache topology: EAX[25:14] logical processors sharing the cache - 1; the null
            // descriptor (type 0) ends the list and stays as it is.
            0x8000_001d if amd && e.eax & 0x1f != 0 => {
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { cpus - 1 } else { 0 };
                e.eax = (e.eax & !(0xfff << 14)) | (sharing << 14);
            }
            0x8000_001e if amd => {
                // EAX extended APIC id; EBX[15:8] threads per core - 1, EBX[7:0] core id;
                // ECX[10:8] nodes per package - 1, ECX[7:0] node id.
                e.eax = cpu;
                e.ebx = cpu & 0xff;
                e.ecx = 0;
                e.edx = 0;
            }
            _ => {}
        }
    }
}

/// Sets the vCPU's CPUID from KVM's supported CPUID, normalized by [`patch_cpuid`].
pub fn setup_cpuid(kvm: &Kvm, vcpu: &VcpuFd, cpu_index: u8, num_cpus: u8) -> Result<()> {
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(Error::GetSupportedCpuid)?;
    let mut entries = supported.as_slice().to_vec();
    patch_cpuid(&mut entries, cpu_index, num_cpus, CpuidHost::query(kvm));
    let cpuid = CpuId::from_entries(&entries).map_err(|_| Error::BuildCpuid(entries.len()))?;
    vcpu.set_cpuid2(&cpuid).map_err(Error::SetCpuid)
}

/// The MSR values every vCPU starts with.
pub fn boot_msr_entries() -> Vec<kvm_msr_entry> {
    let msr = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        msr(MSR_IA32_SYSENTER_CS, 0),
        msr(MSR_IA32_SYSENTER_ESP, 0),
        msr(MSR_IA32_SYSENTER_EIP, 0),
        msr(MSR_STAR, 0),
        msr(MSR_CSTAR, 0),
        msr(MSR_KERNEL_GS_BASE, 0),
        msr(MSR_SYSCALL_MASK, 0),
        msr(MSR_LSTAR, 0),
        msr(MSR_IA32_TSC, 0),
        msr(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        msr(MSR_MTRR_DEF_TYPE, MTRR_ENABLE_DEFAULT_WB),
    ]
}

/// Sets the boot MSRs ([`boot_msr_entries`]); fails if KVM refuses any.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<()> {
    let entries = boot_msr_entries();
    let msrs = Msrs::from_entries(&entries).map_err(|_| Error::BuildMsrs)?;
    let set = vcpu.set_msrs(&msrs).map_err(Error::SetMsrs)?;
    if set != entries.len() {
        return Err(Error::MsrsNotAllSet {
            set,
            wanted: entries.len(),
            rejected: entries.get(set).map_or(0, |e| e.index),
        });
    }
    Ok(())
}

/// Sets the general-purpose registers of the boot vCPU: RIP = `entry`, RSI = zero page,
/// RSP = RBP = boot stack, RFLAGS = only the reserved bit 1 (interrupts disabled).
pub fn setup_regs(vcpu: &VcpuFd, entry: GuestAddress) -> Result<()> {
    let regs = kvm_regs {
        rflags: 0x2,
        rip: entry.raw_value(),
        rsp: BOOT_STACK_POINTER.raw_value(),
        rbp: BOOT_STACK_POINTER.raw_value(),
        rsi: ZERO_PAGE_START.raw_value(),
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(Error::SetRegs)
}

/// Puts the boot vCPU in 64-bit long mode: writes the boot GDT/IDT and the identity page tables
/// into `mem` (the same bytes `configure_system` writes), loads the segment registers from the
/// GDT, and sets CR0 = PE|PG, CR4 = PAE, EFER = LME|LMA, CR3 = PML4.
pub fn setup_sregs(mem: &GuestMemoryMmap, vcpu: &VcpuFd) -> Result<()> {
    gdt::write_gdt_and_idt(mem)?;
    paging::setup_page_tables(mem)?;

    let mut sregs = vcpu.get_sregs().map_err(Error::GetSregs)?;
    sregs.gdt.base = BOOT_GDT_START.raw_value();
    sregs.gdt.limit = gdt::BOOT_GDT_LIMIT;
    sregs.idt.base = BOOT_IDT_START.raw_value();
    sregs.idt.limit = gdt::BOOT_IDT_LIMIT;

    let data = gdt::data_segment();
    sregs.cs = gdt::code_segment();
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = gdt::tss_segment();

    sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
    sregs.cr3 = PML4_START.raw_value();
    sregs.cr4 = X86_CR4_PAE;
    sregs.efer = EFER_LME | EFER_LMA;
    vcpu.set_sregs(&sregs).map_err(Error::SetSregs)
}

/// Sets the x87 control word and MXCSR to their power-on defaults.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<()> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(Error::SetFpu)
}

fn read_lapic_reg(regs: &[std::os::raw::c_char], offset: usize) -> u32 {
    let b = |i: usize| regs[offset + i] as u8;
    u32::from_le_bytes([b(0), b(1), b(2), b(3)])
}

fn write_lapic_reg(regs: &mut [std::os::raw::c_char], offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().into_iter().enumerate() {
        regs[offset + i] = byte as std::os::raw::c_char;
    }
}

fn with_delivery_mode(lvt: u32, mode: u32) -> u32 {
    (lvt & !APIC_DELIVERY_MODE_MASK) | (mode << 8)
}

/// Programs LINT0 as ExtINT and LINT1 as NMI in the in-kernel local APIC (which must exist:
/// create the irqchip before the vCPUs).
pub fn setup_lapic(vcpu: &VcpuFd) -> Result<()> {
    let mut lapic = vcpu.get_lapic().map_err(Error::GetLapic)?;
    let lint0 = read_lapic_reg(&lapic.regs, APIC_LVT_LINT0);
    write_lapic_reg(
        &mut lapic.regs,
        APIC_LVT_LINT0,
        with_delivery_mode(lint0, APIC_MODE_EXTINT),
    );
    let lint1 = read_lapic_reg(&lapic.regs, APIC_LVT_LINT1);
    write_lapic_reg(
        &mut lapic.regs,
        APIC_LVT_LINT1,
        with_delivery_mode(lint1, APIC_MODE_NMI),
    );
    vcpu.set_lapic(&lapic).map_err(Error::SetLapic)
}

/// Configures vCPU `cpu_index` of `num_cpus`: CPUID, MSRs, FPU and LAPIC for all of them, plus
/// the long-mode entry state (`entry` in RIP) for the bootstrap processor, vCPU 0.
pub fn configure_vcpu(
    kvm: &Kvm,
    mem: &GuestMemoryMmap,
    vcpu: &VcpuFd,
    cpu_index: u8,
    num_cpus: u8,
    entry: GuestAddress,
) -> Result<()> {
    setup_cpuid(kvm, vcpu, cpu_index, num_cpus)?;
    setup_msrs(vcpu)?;
    setup_fpu(vcpu)?;
    setup_lapic(vcpu)?;
    if cpu_index == 0 {
        setup_sregs(mem, vcpu)?;
        setup_regs(vcpu, entry)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_userspace_memory_region;
    use kvm_ioctls::{VcpuExit, VmFd};
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};

    /// `KVM_GET_SUPPORTED_CPUID` in the virtual host (QEMU 10.0.2 TCG, `-cpu EPYC,+svm,+npt`,
    /// Debian's 6.1 kvm_amd), as [`dump_supported_cpuid`] prints it: function, index, flags,
    /// EAX, EBX, ECX, EDX. Leaf 0xB has only subleaf 0, 0x8000001E is all zero, TOPOEXT
    /// (0x80000001 ECX[22]) and TSC-deadline (1 ECX[24]) are not set, SVM (0x80000001 ECX[2])
    /// is; `KVM_CAP_TSC_DEADLINE_TIMER` is there.
    #[rustfmt::skip]
    const VIRTUAL_HOST_CPUID: &[(u32, u32, u32, u32, u32, u32, u32)] = &[
        (0x0, 0x0, 0x0, 0x0000000d, 0x68747541, 0x444d4163, 0x69746e65),
        (0x1, 0x0, 0x0, 0x00800f12, 0x01020800, 0x76f83203, 0x078bfbfd),
        (0x2, 0x0, 0x0, 0x00000000, 0x00000000, 0x00000000, 0x00000000),
        (0x3, 0x0, 0x0, 0x00000000, 0x00000000, 0x00000000, 0x00000000),
        (0x4, 0x0, 0x1, 0x00000000, 0x00000000, 0x00000000, 0x00000000),
        (0x5, 0x0, 0x0, 0x00000000, 0x00000000, 0x00000000, 0x00000000),
        (0x6, 0x0, 0x0, 0x00000004, 0x00000000, 0x00000000, 0x00000000),
        (0x7, 0x0, 0x1, 0x00000000, 0x209c01ab, 0x00000000, 0x20000000),
        (0x8, 0x0, 0x0, 0x00000000, 0x00000000, 0x00000000, 0x00000000),
        (0x9, 0x0, 0x0, 0x00000000, 0x00000000, 0x00000000, 0x00000000),
        (0xa, 0x0, 0x0, 0x00000000, 0x00000000, 0x00000000, 0x00000000),
        (0xb, 0x0, 0x1, 0x00000000, 0x00000000, 0x00000000, 0x00000001),
        (0xc, 0x0, 0x0, 0x00000000, 0x00000000, 0x00000000, 0x00000000),
        (0xd, 0x0, 0x1, 0x00000007, 0x00000340, 0x00000340, 0x00000000),
        (0xd, 0x1, 0x1, 0x00000005, 0x00000000, 0x00000000, 0x00000000),
        (0xd, 0x2, 0x1, 0x00000100, 0x00000240, 0x00000000, 0x00000000),
        (0x80000000, 0x0, 0x0, 0x80000021, 0x68747541, 0x444d4163, 0x69746e65),
        (0x80000001, 0x0, 0x0, 0x00800f12, 0x00000000, 0x00000177, 0x2dd3fbfd),
        (0x80000002, 0x0, 0x0, 0x00000000, 0x00000000, 0x00000000, 0x00000000),
        (0x80000003, 0x0, 0x0, 0x00000000, 0x00000000, 0x00000000, 0x00000000),
        (0x80000004, 0x0, 0x0, 0x00000000, 0x00000000, 0x00000000, 0x00000000),
        (0x80000005, 0x0, 0x0, 0x00000000, 0x00000000, 0x00000000, 0x00000000),
        (0x80000006, 0x0, 0x0, 0x00000000, 0x42004200, 0x02006140, 0x00408140),
        (0x80000007, 0x0, 0x0, 0x00000000, 0x00000000, 0x00000000, 0x00000000),
        (0x80000008, 0x0, 0x0, 0x00003028, 0x02000000, 0x00001001, 0x00000000),
        (0x80000009, 0x0, 0x0, 0x00000000, 0x00000000, 0x00000000, 0x00000000),
        (0x8000000a, 0x0, 0x0, 0x00000001, 0x00000008, 0x00000000, 0x10000021),
        (0x8000000b, 0x0, 0x0, 0x00000000, 0x00000000, 0x00000000, 0x00000000),
        (0x8000000c, 0x0, 0x0, 0x00000000, 0x00000000, 0x00000000, 0x00000000),
        (0x8000000d, 0x0, 0x0, 0x00000000, 0x00000000, 0x00000000, 0x00000000),
        (0x8000000e, 0x0, 0x0, 0x00000000, 0x00000000, 0x00000000, 0x00000000),
        (0x8000000f, 0x0, 0x0, 0x00000000, 0x00000000, 0x00000000, 0x00000000),
        (0x80000010, 0x0, 0x0, 0x00000000, 0x00000000, 0x00000000, 0x00000000),
        (0x80000011, 0x0, 0x0, 0x00000000, 0x00000000, 0x00000000, 0x00000000),
        (0x80000012, 0x0, 0x0, 0x00000000, 0x00000000, 0x00000000, 0x00000000),
        (0x80000013, 0x0, 0x0, 0x00000000, 0x00000000, 0x00000000, 0x00000000),
        (0x80000014, 0x0, 0x0, 0x00000000, 0x00000000, 0x00000000, 0x00000000),
        (0x80000015, 0x0, 0x0, 0x00000000, 0x00000000, 0x00000000, 0x00000000),
        (0x80000016, 0x0, 0x0, 0x00000000, 0x00000000, 0x00000000, 0x00000000),
        (0x80000017, 0x0, 0x0, 0x00000000, 0x00000000, 0x00000000, 0x00000000),
        (0x80000018, 0x0, 0x0, 0x00000000, 0x00000000, 0x00000000, 0x00000000),
        (0x80000019, 0x0, 0x0, 0x00000000, 0x00000000, 0x00000000, 0x00000000),
        (0x8000001a, 0x0, 0x0, 0x00000000, 0x00000000, 0x00000000, 0x00000000),
        (0x8000001b, 0x0, 0x0, 0x00000000, 0x00000000, 0x00000000, 0x00000000),
        (0x8000001c, 0x0, 0x0, 0x00000000, 0x00000000, 0x00000000, 0x00000000),
        (0x8000001d, 0x0, 0x1, 0x00000121, 0x01c0003f, 0x0000003f, 0x00000001),
        (0x8000001d, 0x1, 0x1, 0x00000122, 0x00c0003f, 0x000000ff, 0x00000001),
        (0x8000001d, 0x2, 0x1, 0x00000043, 0x01c0003f, 0x000003ff, 0x00000000),
        (0x8000001d, 0x3, 0x1, 0x00004163, 0x03c0003f, 0x00001fff, 0x00000002),
        (0x8000001d, 0x4, 0x1, 0x00000000, 0x00000000, 0x00000000, 0x00000000),
        (0x8000001e, 0x0, 0x0, 0x00000000, 0x00000000, 0x00000000, 0x00000000),
        (0x8000001f, 0x0, 0x0, 0x00000000, 0x00000000, 0x00000000, 0x00000000),
        (0x80000020, 0x0, 0x0, 0x00000000, 0x00000000, 0x00000000, 0x00000000),
        (0x80000021, 0x0, 0x0, 0x00000204, 0x00000000, 0x00000000, 0x00000000),
        (0x40000000, 0x0, 0x0, 0x40000001, 0x4b4d564b, 0x564b4d56, 0x0000004d),
        (0x40000001, 0x0, 0x0, 0x01007efb, 0x00000000, 0x00000000, 0x00000000),
    ];

    fn virtual_host_cpuid() -> Vec<kvm_cpuid_entry2> {
        VIRTUAL_HOST_CPUID
            .iter()
            .map(
                |&(function, index, flags, eax, ebx, ecx, edx)| kvm_cpuid_entry2 {
                    function,
                    index,
                    flags,
                    eax,
                    ebx,
                    ecx,
                    edx,
                    ..Default::default()
                },
            )
            .collect()
    }

    fn leaf(e: &[kvm_cpuid_entry2], function: u32, index: u32) -> kvm_cpuid_entry2 {
        let mut found = e
            .iter()
            .filter(|e| e.function == function && e.index == index);
        let first = *found
            .next()
            .unwrap_or_else(|| panic!("no leaf {function:#x}.{index}"));
        assert!(found.next().is_none(), "leaf {function:#x}.{index} twice");
        first
    }

    const TSC_DEADLINE: CpuidHost = CpuidHost { tsc_deadline: true };

    #[test]
    fn cpuid_patching_virtual_host_amd() {
        let input = virtual_host_cpuid();
        assert!(is_amd(&input));
        for (cpu, cpus) in [(0u8, 2u8), (1, 2), (3, 6)] {
            let mut e = input.clone();
            patch_cpuid(&mut e, cpu, cpus, TSC_DEADLINE);
            let (cpu, cpus) = (u32::from(cpu), u32::from(cpus));
            // Only leaf 0xB subleaf 1 was added; 0x1F is beyond the basic range here.
            assert_eq!(e.len(), input.len() + 1);
            assert!(e.len() <= KVM_MAX_CPUID_ENTRIES);
            assert!(e.iter().all(|e| e.function != 0x1f));

            let l1 = leaf(&e, 1, 0);
            assert_eq!(l1.ebx >> 24, cpu);
            assert_eq!((l1.ebx >> 16) & 0xff, cpus);
            assert_eq!(l1.ebx & 0xffff, 0x0800, "CLFLUSH size kept");
            assert_ne!(l1.ecx & CPUID_1_ECX_TSC_DEADLINE, 0);
            assert_ne!(l1.ecx & CPUID_1_ECX_HYPERVISOR, 0);
            assert_ne!(l1.edx & CPUID_1_EDX_HTT, 0);
            assert_eq!(
                l1.ecx & !(CPUID_1_ECX_TSC_DEADLINE | CPUID_1_ECX_HYPERVISOR),
                0x76f8_3203 & !CPUID_1_ECX_HYPERVISOR
            );

            // Leaf 4 is a null descriptor on AMD and stays one.
            assert_eq!(leaf(&e, 4, 0), leaf(&input, 4, 0));

            let shift = id_bits(cpus as u8);
            let b0 = leaf(&e, 0xb, 0);
            let b1 = leaf(&e, 0xb, 1);
            assert_eq!((b0.eax, b0.ebx, b0.ecx, b0.edx), (0, 1, 0x100, cpu));
            assert_eq!((b1.eax, b1.ebx, b1.ecx, b1.edx), (shift, cpus, 0x201, cpu));
            assert_eq!(b1.flags, KVM_CPUID_FLAG_SIGNIFCANT_INDEX);

            let ext1 = leaf(&e, 0x8000_0001, 0);
            assert_eq!(ext1.ecx & CPUID_80000001_ECX_SVM, 0, "SVM hidden");
            assert_ne!(ext1.ecx & CPUID_80000001_ECX_TOPOEXT, 0);
            assert_ne!(ext1.ecx & CPUID_80000001_ECX_CMP_LEGACY, 0);
            let svm = leaf(&e, 0x8000_000a, 0);
            assert_eq!((svm.eax, svm.ebx, svm.ecx, svm.edx), (0, 0, 0, 0));

            let sizes = leaf(&e, 0x8000_0008, 0);
            assert_eq!(sizes.ecx & 0xff, cpus - 1, "NC");
            assert_eq!((sizes.ecx >> 12) & 0xf, shift, "ApicIdSize");
            assert_eq!(sizes.eax, 0x3028, "address sizes kept");

            // L1d, L1i, L2 per core; L3 shared by the package; the null descriptor kept.
            let sharing = |i| (leaf(&e, 0x8000_001d, i).eax >> 14) & 0xfff;
            assert_eq!([0, 1, 2, 3].map(sharing), [0, 0, 0, cpus - 1]);
            assert_eq!(leaf(&e, 0x8000_001d, 3).eax & 0x3fff, 0x0163);
            assert_eq!(leaf(&e, 0x8000_001d, 4).eax, 0);
            assert_eq!(leaf(&e, 0x8000_001d, 0).ebx, 0x01c0_003f, "geometry kept");

            let topo = leaf(&e, 0x8000_001e, 0);
            assert_eq!((topo.eax, topo.ebx, topo.ecx, topo.edx), (cpu, cpu, 0, 0));
        }
    }

    #[test]
    fn cpuid_patching_without_tsc_deadline_or_second_cpu() {
        let mut e = virtual_host_cpuid();
        let l1 = e.iter_mut().find(|e| e.function == 1).unwrap();
        l1.ecx |= CPUID_1_ECX_TSC_DEADLINE;
        l1.edx |= CPUID_1_EDX_HTT;
        patch_cpuid(&mut e, 0, 1, CpuidHost::default());
        let l1 = leaf(&e, 1, 0);
        assert_eq!(l1.ecx & CPUID_1_ECX_TSC_DEADLINE, 0);
        assert_eq!(l1.edx & CPUID_1_EDX_HTT, 0);
        assert_eq!((l1.ebx >> 16) & 0xff, 1);
        assert_eq!(leaf(&e, 0xb, 1).ebx, 1);
        assert_eq!(leaf(&e, 0xb, 1).eax, 0);
        let ext1 = leaf(&e, 0x8000_0001, 0);
        assert_eq!(ext1.ecx & CPUID_80000001_ECX_CMP_LEGACY, 0);
        assert_eq!(leaf(&e, 0x8000_0008, 0).ecx & 0xf0ff, 0);
        assert_eq!((leaf(&e, 0x8000_001d, 3).eax >> 14) & 0xfff, 0);

        // Patching twice changes nothing and adds nothing.
        let once = e.clone();
        patch_cpuid(&mut e, 0, 1, CpuidHost::default());
        assert_eq!(e, once);
    }

    #[test]
    fn cpuid_patching_intel() {
        let entry = |function, index, eax| kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ebx: 0x0008_0800,
            ..Default::default()
        };
        // "GenuineIntel", caches L1d/L1i/L2/L3 in leaf 4, 0xB and 0x1F with all subleaves,
        // and AMD-only leaves that must stay untouched.
        let mut e = vec![
            kvm_cpuid_entry2 {
                ebx: 0x756e_6547,
                edx: 0x4965_6e69,
                ecx: 0x6c65_746e,
                ..entry(0, 0, 0x1f)
            },
            entry(1, 0, 0),
            entry(4, 0, (1 << 5) | 1),
            entry(4, 1, (1 << 5) | 2),
            entry(4, 2, (2 << 5) | 3),
            entry(4, 3, (3 << 5) | 3),
            entry(0xb, 0, 0),
            entry(0xb, 1, 0),
            entry(0xb, 2, 0),
            entry(0x1f, 0, 0),
            entry(0x8000_0001, 0, 0),
            entry(0x8000_0008, 0, 0x3028),
        ];
        e[10].ecx = CPUID_80000001_ECX_SVM;
        e[11].ecx = 0x1001;
        patch_cpuid(&mut e, 3, 6, TSC_DEADLINE);
        assert!(!is_amd(&e));
        assert_eq!(e.len(), 13, "0x1F subleaf 1 added");
        assert_eq!(leaf(&e, 4, 0).eax >> 26, 5);
        assert_eq!((leaf(&e, 4, 0).eax >> 14) & 0xfff, 0);
        assert_eq!((leaf(&e, 4, 3).eax >> 14) & 0xfff, 5, "L3 shared by all");
        assert_eq!(leaf(&e, 4, 3).eax & 0x3fff, (3 << 5) | 3);
        for f in [0xb, 0x1f] {
            let b0 = leaf(&e, f, 0);
            let b1 = leaf(&e, f, 1);
            assert_eq!((b0.eax, b0.ebx, b0.ecx, b0.edx), (0, 1, 0x100, 3));
            assert_eq!((b1.eax, b1.ebx, b1.ecx, b1.edx), (3, 6, 0x201, 3));
        }
        let b2 = leaf(&e, 0xb, 2);
        assert_eq!((b2.ebx, (b2.ecx >> 8) & 0xff, b2.edx), (0, 0, 3));
        assert_eq!(leaf(&e, 0x8000_0001, 0).ecx, 0, "SVM hidden, no TOPOEXT");
        assert_eq!(
            leaf(&e, 0x8000_0008, 0).ecx,
            0x1001,
            "AMD-only field untouched"
        );
        assert_ne!(leaf(&e, 1, 0).ecx & CPUID_1_ECX_TSC_DEADLINE, 0);
    }

    /// Prints `KVM_GET_SUPPORTED_CPUID` and `KVM_CAP_TSC_DEADLINE_TIMER` in the format of
    /// [`VIRTUAL_HOST_CPUID`]: `cargo test -p vm dump_supported_cpuid -- --ignored --nocapture`.
    #[test]
    #[ignore = "diagnostic: prints this host's supported CPUID"]
    fn dump_supported_cpuid() {
        let Some(kvm) = kvm_or_skip() else { return };
        let cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap();
        for e in cpuid.as_slice() {
            println!(
                "({:#x}, {:#x}, {:#x}, {:#010x}, {:#010x}, {:#010x}, {:#010x}),",
                e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx
            );
        }
        println!("tsc_deadline: {}", CpuidHost::query(&kvm).tsc_deadline);
    }

    #[test]
    fn id_bit_widths() {
        assert_eq!(
            [1u8, 2, 3, 4, 5, 8, 9, 254].map(id_bits),
            [0, 1, 2, 2, 3, 3, 4, 8]
        );
    }

    #[test]
    fn lapic_lvt_encoding() {
        let masked = 0x0001_0000;
        assert_eq!(with_delivery_mode(masked, APIC_MODE_EXTINT), 0x0001_0700);
        assert_eq!(with_delivery_mode(0x0001_0700, APIC_MODE_NMI), 0x0001_0400);
        let mut regs = [0 as std::os::raw::c_char; 1024];
        write_lapic_reg(&mut regs, APIC_LVT_LINT1, 0xdead_beef);
        assert_eq!(read_lapic_reg(&regs, APIC_LVT_LINT1), 0xdead_beef);
        assert_eq!(regs[APIC_LVT_LINT1] as u8, 0xef);
    }

    /// Opens /dev/kvm, or prints a SKIP line and returns `None`.
    fn kvm_or_skip() -> Option<Kvm> {
        match Kvm::new() {
            Ok(kvm) => Some(kvm),
            Err(e) => {
                eprintln!("SKIP: /dev/kvm not usable: {e}");
                None
            }
        }
    }

    fn map_memory(vm: &VmFd, mem: &GuestMemoryMmap) {
        for (slot, region) in mem.iter().enumerate() {
            let host = mem.get_host_address(region.start_addr()).unwrap();
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the host range is a live mapping owned by `mem`, which outlives the VM in
            // every test that calls this.
            unsafe { vm.set_user_memory_region(r) }.unwrap();
        }
    }

    #[test]
    fn kvm_vcpu_setup_reads_back() {
        let Some(kvm) = kvm_or_skip() else { return };
        let vm = kvm.create_vm().unwrap();
        vm.create_irq_chip().unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap();
        map_memory(&vm, &mem);
        let bsp = vm.create_vcpu(0).unwrap();
        let ap = vm.create_vcpu(1).unwrap();
        let entry = GuestAddress(0x10_0200);
        configure_vcpu(&kvm, &mem, &bsp, 0, 2, entry).unwrap();
        configure_vcpu(&kvm, &mem, &ap, 1, 2, entry).unwrap();

        let regs = bsp.get_regs().unwrap();
        assert_eq!(regs.rip, 0x10_0200);
        assert_eq!(regs.rsi, ZERO_PAGE_START.raw_value());
        assert_eq!(regs.rsp, BOOT_STACK_POINTER.raw_value());
        let sregs = bsp.get_sregs().unwrap();
        assert_eq!(sregs.cr3, PML4_START.raw_value());
        assert_ne!(sregs.cr0 & X86_CR0_PG, 0);
        assert_ne!(sregs.cr4 & X86_CR4_PAE, 0);
        assert_eq!(sregs.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!((sregs.cs.selector, sregs.cs.l), (0x10, 1));
        assert_eq!(sregs.ss.selector, 0x18);
        assert_eq!(sregs.gdt.base, BOOT_GDT_START.raw_value());

        // The AP stays in its reset state (real mode at the reset vector).
        let ap_sregs = ap.get_sregs().unwrap();
        assert_eq!(ap_sregs.cr0 & X86_CR0_PE, 0);

        for (vcpu, id) in [(&bsp, 0u8), (&ap, 1u8)] {
            let lapic = vcpu.get_lapic().unwrap();
            assert_eq!(
                read_lapic_reg(&lapic.regs, APIC_LVT_LINT0) & APIC_DELIVERY_MODE_MASK,
                APIC_MODE_EXTINT << 8
            );
            assert_eq!(
                read_lapic_reg(&lapic.regs, APIC_LVT_LINT1) & APIC_DELIVERY_MODE_MASK,
                APIC_MODE_NMI << 8
            );
            // The APIC id register (0x20, id in bits 31:24) matches the CPUID we set.
            assert_eq!(read_lapic_reg(&lapic.regs, 0x20) >> 24, u32::from(id));
            let cpuid = vcpu.get_cpuid2(KVM_MAX_CPUID_ENTRIES).unwrap();
            let leaf1 = cpuid
                .as_slice()
                .iter()
                .find(|e| e.function == 1)
                .copied()
                .unwrap();
            assert_eq!(leaf1.ebx >> 24, u32::from(id));
            assert_ne!(leaf1.ecx & CPUID_1_ECX_HYPERVISOR, 0);
            assert_eq!(
                leaf1.ecx & CPUID_1_ECX_TSC_DEADLINE != 0,
                CpuidHost::query(&kvm).tsc_deadline
            );
            // The normalized list, with any subleaf it added, is what KVM took.
            let core_level = leaf(cpuid.as_slice(), 0xb, 1);
            assert_eq!((core_level.ebx, core_level.edx), (2, u32::from(id)));
            let ext1 = leaf(cpuid.as_slice(), 0x8000_0001, 0);
            assert_eq!(ext1.ecx & CPUID_80000001_ECX_SVM, 0);
        }

        let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
            index: MSR_MTRR_DEF_TYPE,
            ..Default::default()
        }])
        .unwrap();
        assert_eq!(bsp.get_msrs(&mut msrs).unwrap(), 1);
        assert_eq!(msrs.as_slice()[0].data, MTRR_ENABLE_DEFAULT_WB);
    }

    /// Runs a few 64-bit instructions at the entry point to prove the long-mode state, GDT,
    /// page tables and stack work.
    #[test]
    fn kvm_runs_64bit_code() {
        let Some(kvm) = kvm_or_skip() else { return };
        let vm = kvm.create_vm().unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap();
        map_memory(&vm, &mem);
        #[rustfmt::skip]
        let code: &[u8] = &[
            0x66, 0xba, 0x00, 0x06,             // mov dx, 0x600
            0x89, 0xf0,                         // mov eax, esi
            0xc1, 0xe8, 0x08,                   // shr eax, 8
            0xee,                               // out dx, al       (0x70: zero page >> 8)
            0x48, 0xb8, 0x88, 0x77, 0x66, 0x55,
            0x44, 0x33, 0x22, 0x11,             // mov rax, 0x1122334455667788
            0x48, 0xc1, 0xe8, 0x38,             // shr rax, 56
            0x50,                               // push rax
            0x5b,                               // pop rbx
            0x88, 0xd8,                         // mov al, bl
            0xee,                               // out dx, al       (0x11)
            0xf4,                               // hlt
        ];
        let entry = GuestAddress(0x10_0200);
        mem.write_slice(code, entry).unwrap();
        let mut vcpu = vm.create_vcpu(0).unwrap();
        setup_cpuid(&kvm, &vcpu, 0, 1).unwrap();
        setup_msrs(&vcpu).unwrap();
        setup_fpu(&vcpu).unwrap();
        setup_sregs(&mem, &vcpu).unwrap();
        setup_regs(&vcpu, entry).unwrap();

        let mut outs = Vec::new();
        loop {
            match vcpu.run().unwrap() {
                VcpuExit::IoOut(port, data) => outs.push((port, data.to_vec())),
                VcpuExit::Hlt => break,
                other => panic!("unexpected exit {other:?}"),
            }
            assert!(outs.len() <= 2, "too many exits: {outs:?}");
        }
        assert_eq!(outs, vec![(0x600, vec![0x70]), (0x600, vec![0x11])]);
        let regs = vcpu.get_regs().unwrap();
        assert_eq!(regs.rbx, 0x11);
        assert_eq!(regs.rsp, BOOT_STACK_POINTER.raw_value());
    }
}
