//! The vCPU run loop: every exit KVM hands to userspace goes to the port or MMIO bus.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::bus::Bus;
use crate::control::{ExitReason, VmControl};

/// Everything a vCPU thread needs besides its fd.
#[derive(Clone)]
pub struct VcpuContext {
    /// Port I/O devices.
    pub pio: Bus,
    /// MMIO devices.
    pub mmio: Bus,
    /// Where the vCPU reports the end of the VM.
    pub control: VmControl,
}

/// Counts of exits served, for tests and debugging.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitCounts {
    /// Port reads and writes.
    pub pio: u64,
    /// MMIO reads and writes.
    pub mmio: u64,
    /// Port or MMIO accesses no device claimed.
    pub unclaimed: u64,
}

/// Runs `vcpu` until the VM ends (or, without an in-kernel irqchip, until it halts).
pub fn run_vcpu(vcpu: &mut VcpuFd, ctx: &VcpuContext) -> ExitCounts {
    let mut counts = ExitCounts::default();
    loop {
        if ctx.control.exit_reason().is_some() {
            return counts;
        }
        let exit = match vcpu.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                vcpu.set_kvm_immediate_exit(0);
                continue;
            }
            Err(e) => {
                ctx.control
                    .request_exit(ExitReason::VcpuError(format!("KVM_RUN: {e}")));
                return counts;
            }
        };
        let claimed = match exit {
            VcpuExit::IoIn(port, data) => {
                counts.pio += 1;
                ctx.pio.read(u64::from(port), data)
            }
            VcpuExit::IoOut(port, data) => {
                counts.pio += 1;
                ctx.pio.write(u64::from(port), data)
            }
            VcpuExit::MmioRead(addr, data) => {
                counts.mmio += 1;
                ctx.mmio.read(addr, data)
            }
            VcpuExit::MmioWrite(addr, data) => {
                counts.mmio += 1;
                ctx.mmio.write(addr, data)
            }
            VcpuExit::Hlt => {
                ctx.control.request_exit(ExitReason::Halted);
                return counts;
            }
            VcpuExit::Shutdown => {
                ctx.control
                    .request_exit(ExitReason::TripleFault(shutdown_state(vcpu)));
                return counts;
            }
            VcpuExit::SystemEvent(kind, _) => {
                let reason = match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN => ExitReason::PowerOff,
                    KVM_SYSTEM_EVENT_RESET => ExitReason::Reset,
                    KVM_SYSTEM_EVENT_CRASH => ExitReason::VcpuError("guest crash event".into()),
                    other => ExitReason::VcpuError(format!("system event {other}")),
                };
                ctx.control.request_exit(reason);
                return counts;
            }
            VcpuExit::Intr => true,
            VcpuExit::FailEntry(reason, cpu) => {
                ctx.control.request_exit(ExitReason::VcpuError(format!(
                    "entry failed on cpu {cpu}: hardware reason {reason:#x}"
                )));
                return counts;
            }
            VcpuExit::InternalError => {
                ctx.control
                    .request_exit(ExitReason::VcpuError("KVM internal error".into()));
                return counts;
            }
            other => {
                log::warn!("unhandled vCPU exit {other:?}");
                true
            }
        };
        if !claimed {
            counts.unclaimed += 1;
        }
    }
}

/// The registers that say where a vCPU triple-faulted: the instruction, the stack, the last
/// page-fault address and the tables the CPU was using, read at the shutdown exit so that a
/// crash that left nothing on the console still names its place. KVM on AMD re-initializes
/// the vCPU at a shutdown (the VMCB is undefined after it), so there the state is the reset
/// state and says so.
fn shutdown_state(vcpu: &VcpuFd) -> String {
    let name = std::thread::current().name().unwrap_or("vcpu").to_string();
    let (Ok(r), Ok(s)) = (vcpu.get_regs(), vcpu.get_sregs()) else {
        return format!("{name}, registers unreadable");
    };
    if r.rip == 0xfff0 && s.cs.selector == 0xf000 {
        return format!("{name}, state lost: the CPU was reset at the shutdown");
    }
    format!(
        "{name}, rip {:#x} rsp {:#x} rflags {:#x}, cr0 {:#x} cr2 {:#x} cr3 {:#x} cr4 {:#x} \
         efer {:#x} cs {:#x} idt {:#x}/{:#x} tr {:#x}@{:#x}",
        r.rip,
        r.rsp,
        r.rflags,
        s.cr0,
        s.cr2,
        s.cr3,
        s.cr4,
        s.efer,
        s.cs.selector,
        s.idt.base,
        s.idt.limit,
        s.tr.selector,
        s.tr.base
    )
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// The signal that kicks a vCPU thread out of KVM_RUN.
fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

/// vCPU threads started by [`start_vcpus`].
pub struct VcpuThreads {
    handles: Vec<JoinHandle<ExitCounts>>,
    running: Arc<AtomicBool>,
}

/// Starts one thread per vCPU.
pub fn start_vcpus(vcpus: Vec<VcpuFd>, ctx: VcpuContext) -> std::io::Result<VcpuThreads> {
    static HANDLER: std::sync::Once = std::sync::Once::new();
    HANDLER.call_once(|| {
        if let Err(e) = register_signal_handler(kick_signal(), kick_handler) {
            log::warn!("cannot register the vCPU kick signal: {e}");
        }
    });
    let running = Arc::new(AtomicBool::new(true));
    let mut handles = Vec::new();
    for (i, mut vcpu) in vcpus.into_iter().enumerate() {
        let ctx = ctx.clone();
        handles.push(
            std::thread::Builder::new()
                .name(format!("vcpu{i}"))
                .spawn(move || run_vcpu(&mut vcpu, &ctx))?,
        );
    }
    Ok(VcpuThreads { handles, running })
}

impl VcpuThreads {
    /// Kicks every thread out of KVM_RUN until all have returned or `limit` passed.
    /// The VM's exit reason must already be set, or the threads re-enter the guest.
    pub fn stop(self, limit: Duration) {
        self.running.store(false, Ordering::SeqCst);
        let deadline = Instant::now() + limit;
        for h in self.handles {
            while !h.is_finished() && Instant::now() < deadline {
                // A kick can land just before KVM_RUN starts; repeat until the thread leaves.
                let _ = h.kill(kick_signal());
                std::thread::sleep(Duration::from_millis(2));
            }
            if h.is_finished() {
                let _ = h.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! A smoke test of the run loop on a real `/dev/kvm`: a hand-assembled real-mode program
    //! reads the PCI host bridge's ids through configuration mechanism #1, echoes a byte through
    //! an MMIO device, reads an unclaimed port and halts. Skipped (with `SKIP`) where
    //! `/dev/kvm` cannot be opened.

    use super::*;
    use crate::bus::BusDevice;
    use crate::pci::bus::PciBus;
    use kvm_bindings::kvm_userspace_memory_region;
    use kvm_ioctls::Kvm;
    use std::sync::Mutex;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

    /// Records the last value written to each of its ports.
    #[derive(Default)]
    struct Recorder(std::collections::BTreeMap<u64, Vec<u8>>);
    impl BusDevice for Recorder {
        fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
            data.fill(0);
        }
        fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
            self.0.insert(offset, data.to_vec());
        }
    }

    /// A byte of MMIO storage.
    struct MmioByte(u8);
    impl BusDevice for MmioByte {
        fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
            data.fill(self.0);
        }
        fn write(&mut self, _base: u64, _offset: u64, data: &[u8]) {
            self.0 = data[0];
        }
    }

    const CODE_ADDR: u64 = 0x1000;
    const RECORDER_PORT: u64 = 0x500;
    const MMIO_ADDR: u64 = 0x2_0010;

    #[rustfmt::skip]
    const PROGRAM: &[u8] = &[
        0x66, 0xb8, 0x00, 0x00, 0x00, 0x80, // mov eax, 0x8000_0000 (bus 0, dev 0, reg 0)
        0xba, 0xf8, 0x0c,                   // mov dx, 0xcf8
        0x66, 0xef,                         // out dx, eax
        0xba, 0xfc, 0x0c,                   // mov dx, 0xcfc
        0x66, 0xed,                         // in eax, dx
        0xba, 0x00, 0x05,                   // mov dx, 0x500
        0x66, 0xef,                         // out dx, eax
        0xb8, 0x00, 0x20,                   // mov ax, 0x2000
        0x8e, 0xd8,                         // mov ds, ax
        0xc6, 0x06, 0x10, 0x00, 0x42,       // mov byte [0x10], 0x42   (MMIO 0x20010)
        0xa0, 0x10, 0x00,                   // mov al, [0x10]
        0xba, 0x04, 0x05,                   // mov dx, 0x504
        0xee,                               // out dx, al
        0xe4, 0x70,                         // in al, 0x70             (unclaimed)
        0xba, 0x08, 0x05,                   // mov dx, 0x508
        0xee,                               // out dx, al
        0xf4,                               // hlt
    ];

    #[test]
    fn run_loop_dispatches_ports_mmio_and_pci_config_cycles() {
        let kvm = match Kvm::new() {
            Ok(k) => k,
            Err(e) => {
                println!("SKIP: cannot open /dev/kvm: {e}");
                return;
            }
        };
        let vm = kvm.create_vm().unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1_0000)]).unwrap();
        mem.write_slice(PROGRAM, GuestAddress(CODE_ADDR)).unwrap();
        let host = mem.get_host_address(GuestAddress(0)).unwrap() as u64;
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: 0x1_0000,
            userspace_addr: host,
        };
        // SAFETY: `mem` outlives the VM in this test and the region covers exactly its mapping.
        unsafe { vm.set_user_memory_region(region) }.unwrap();
        let mut vcpu = vm.create_vcpu(0).unwrap();
        let mut sregs = vcpu.get_sregs().unwrap();
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        vcpu.set_sregs(&sregs).unwrap();
        let mut regs = vcpu.get_regs().unwrap();
        regs.rip = CODE_ADDR;
        regs.rflags = 2;
        vcpu.set_regs(&regs).unwrap();

        let ctx = VcpuContext {
            pio: Bus::new("pio"),
            mmio: Bus::new("mmio"),
            control: VmControl::default(),
        };
        let recorder = Arc::new(Mutex::new(Recorder::default()));
        ctx.pio.insert(recorder.clone(), RECORDER_PORT, 12).unwrap();
        let pci = PciBus::new(ctx.mmio.clone(), (0xc000_0000, 0x1000_0000)).unwrap();
        ctx.pio.insert(Arc::new(Mutex::new(pci)), 0xcf8, 8).unwrap();
        ctx.mmio
            .insert(Arc::new(Mutex::new(MmioByte(0))), MMIO_ADDR, 1)
            .unwrap();

        let counts = run_vcpu(&mut vcpu, &ctx);

        assert_eq!(ctx.control.exit_reason(), Some(ExitReason::Halted));
        let rec = recorder.lock().unwrap();
        let ids = u32::from_le_bytes(rec.0[&0].clone().try_into().unwrap());
        assert_eq!(ids & 0xffff, 0x8086, "host bridge vendor id, got {ids:#x}");
        assert_eq!(rec.0[&4], vec![0x42], "MMIO round trip");
        assert_eq!(rec.0[&8], vec![0xff], "an unclaimed port reads all ones");
        assert_eq!(counts.mmio, 2);
        assert!(counts.pio >= 6, "{counts:?}");
        assert_eq!(counts.unclaimed, 1);
    }
}
