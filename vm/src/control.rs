//! How a running VM ends: the first exit reason reported wins, and everyone waiting is woken.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Why the VM stopped (a record of the report, so defined with it).
pub use protocol::ExitReason;

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
