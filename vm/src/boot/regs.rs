//! vCPU state for the 64-bit Linux entry point.
//!
//! Every vCPU gets CPUID (with its APIC id and the topology), boot MSRs, a sane FPU state and
//! its local APIC LINT0/LINT1 set to ExtINT/NMI. Only the bootstrap processor (vCPU 0) gets the
//! entry state: long mode with the boot GDT and identity page tables, RIP at the kernel's 64-bit
//! entry point, RSI at the zero page. The other vCPUs stay in their reset state (waiting for
//! INIT/SIPI); the kernel starts them through the in-kernel local APIC.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_fpu, kvm_msr_entry, kvm_regs, Msrs, KVM_MAX_CPUID_ENTRIES,
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
const CPUID_1_ECX_HYPERVISOR: u32 = 1 << 31;
const CPUID_1_EDX_HTT: u32 = 1 << 28;
const CPUID_TOPO_LEVEL_SMT: u32 = 1;
const CPUID_TOPO_LEVEL_CORE: u32 = 2;

/// Number of bits needed to hold ids `0..n` (`ceil(log2(n))`).
fn id_bits(n: u8) -> u32 {
    if n <= 1 {
        0
    } else {
        u32::BITS - u32::from(n - 1).leading_zeros()
    }
}

/// Adjusts KVM's supported CPUID for vCPU `cpu_index` of `num_cpus`: one package with
/// `num_cpus` single-thread cores, APIC id = `cpu_index`, hypervisor bit set.
pub fn patch_cpuid(entries: &mut [kvm_cpuid_entry2], cpu_index: u8, num_cpus: u8) {
    let shift = id_bits(num_cpus);
    for e in entries.iter_mut() {
        match e.function {
            1 => {
                // EBX[31:24] initial APIC id, EBX[23:16] logical processors per package.
                e.ebx = (e.ebx & 0x0000_ffff)
                    | (u32::from(cpu_index) << 24)
                    | (u32::from(num_cpus) << 16);
                e.ecx |= CPUID_1_ECX_HYPERVISOR;
                if num_cpus > 1 {
                    e.edx |= CPUID_1_EDX_HTT;
                } else {
                    e.edx &= !CPUID_1_EDX_HTT;
                }
            }
            4 => {
                // Deterministic cache parameters: EAX[31:26] cores per package - 1,
                // EAX[25:14] logical processors sharing this cache - 1 (only L3 is shared).
                let cores = u32::from(num_cpus.max(1) - 1).min(0x3f);
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
                    1 => (shift, u32::from(num_cpus), CPUID_TOPO_LEVEL_CORE),
                    _ => (0, 0, 0),
                };
                e.eax = eax;
                e.ebx = ebx;
                e.ecx = (level_type << 8) | (e.index & 0xff);
                e.edx = u32::from(cpu_index);
            }
            _ => {}
        }
    }
}

/// Sets the vCPU's CPUID from KVM's supported CPUID, patched by [`patch_cpuid`].
pub fn setup_cpuid(kvm: &Kvm, vcpu: &VcpuFd, cpu_index: u8, num_cpus: u8) -> Result<()> {
    let mut cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(Error::GetSupportedCpuid)?;
    patch_cpuid(cpuid.as_mut_slice(), cpu_index, num_cpus);
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

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx: 0x0008_0800,
            ..Default::default()
        }
    }

    #[test]
    fn cpuid_patching() {
        let mut e = vec![
            entry(1, 0),
            entry(4, 0),
            kvm_cpuid_entry2 {
                function: 4,
                index: 3,
                eax: 3 << 5,
                ..Default::default()
            },
            entry(0xb, 0),
            entry(0xb, 1),
            entry(0xb, 2),
            entry(0x1f, 1),
        ];
        patch_cpuid(&mut e, 3, 6);
        assert_eq!(e[0].ebx >> 24, 3);
        assert_eq!((e[0].ebx >> 16) & 0xff, 6);
        assert_eq!(e[0].ebx & 0xffff, 0x0800, "CLFLUSH size kept");
        assert_ne!(e[0].ecx & CPUID_1_ECX_HYPERVISOR, 0);
        assert_ne!(e[0].edx & CPUID_1_EDX_HTT, 0);
        assert_eq!(e[1].eax >> 26, 5);
        assert_eq!((e[1].eax >> 14) & 0xfff, 0);
        assert_eq!((e[2].eax >> 14) & 0xfff, 5, "L3 shared by all");
        assert_eq!((e[3].eax, e[3].ebx, e[3].ecx, e[3].edx), (0, 1, 0x100, 3));
        assert_eq!((e[4].eax, e[4].ebx, e[4].ecx, e[4].edx), (3, 6, 0x201, 3));
        assert_eq!((e[5].ebx, (e[5].ecx >> 8) & 0xff, e[5].edx), (0, 0, 3));
        assert_eq!(e[6].edx, 3);

        let mut one = vec![entry(1, 0)];
        one[0].edx = CPUID_1_EDX_HTT;
        patch_cpuid(&mut one, 0, 1);
        assert_eq!(one[0].edx & CPUID_1_EDX_HTT, 0);
        assert_eq!(one[0].ebx >> 16, 1);
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
