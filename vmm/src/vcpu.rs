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
                ctx.control.request_exit(ExitReason::TripleFault);
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
