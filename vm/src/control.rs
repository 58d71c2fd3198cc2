//! How a running VM ends: the first exit reason reported wins, and everyone waiting is woken.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Why the VM stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest powered off through ACPI S5.
    PowerOff,
    /// The guest asked for a reset (i8042 or ACPI reset register).
    Reset,
    /// A vCPU triple-faulted (KVM_EXIT_SHUTDOWN); the vCPU's state at that moment, as text.
    TripleFault(String),
    /// A vCPU stopped on an error the VMM cannot recover from.
    VcpuError(String),
    /// The run's time limit passed.
    Timeout,
    /// A vCPU halted with no in-kernel irqchip to wake it (only bare test programs do).
    Halted,
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::PowerOff => write!(f, "guest powered off"),
            ExitReason::Reset => write!(f, "guest reset"),
            ExitReason::TripleFault(state) if state.is_empty() => write!(f, "vCPU triple fault"),
            ExitReason::TripleFault(state) => write!(f, "vCPU triple fault ({state})"),
            ExitReason::VcpuError(e) => write!(f, "vCPU error: {e}"),
            ExitReason::Timeout => write!(f, "timed out"),
            ExitReason::Halted => write!(f, "vCPU halted"),
        }
    }
}

/// A cloneable handle shared by the devices and vCPUs that can end the VM.
#[derive(Clone, Default)]
pub struct VmControl {
    inner: Arc<(Mutex<Option<ExitReason>>, Condvar)>,
}

impl VmControl {
    /// Records `reason` unless an earlier one is already recorded.
    pub fn request_exit(&self, reason: ExitReason) {
        let (lock, cvar) = &*self.inner;
        let mut slot = lock.lock().unwrap();
        if slot.is_none() {
            log::debug!("VM exit requested: {reason}");
            *slot = Some(reason);
            cvar.notify_all();
        }
    }

    /// The recorded reason, if any.
    pub fn exit_reason(&self) -> Option<ExitReason> {
        self.inner.0.lock().unwrap().clone()
    }

    /// Waits up to `timeout` for an exit reason; records `Timeout` if none came.
    pub fn wait(&self, timeout: Duration) -> ExitReason {
        let (lock, cvar) = &*self.inner;
        let guard = lock.lock().unwrap();
        let (mut slot, _) = cvar
            .wait_timeout_while(guard, timeout, |r| r.is_none())
            .unwrap();
        slot.get_or_insert(ExitReason::Timeout).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins() {
        let c = VmControl::default();
        assert_eq!(c.exit_reason(), None);
        c.clone().request_exit(ExitReason::PowerOff);
        c.request_exit(ExitReason::Reset);
        assert_eq!(c.wait(Duration::from_secs(1)), ExitReason::PowerOff);
    }

    #[test]
    fn wait_times_out() {
        let c = VmControl::default();
        assert_eq!(c.wait(Duration::from_millis(10)), ExitReason::Timeout);
        assert_eq!(c.exit_reason(), Some(ExitReason::Timeout));
    }
}
