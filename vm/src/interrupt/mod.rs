//! Interrupt delivery, seen from a device: the device only says "raise vector N".
//!
//! A PCI device with MSI-X owns an [`MsiInterruptGroup`]: one source per MSI-X vector. The
//! MSI-X table decides the message (address, data, mask) of each vector and pushes it with
//! [`MsiInterruptGroup::update`]; the device's queues call [`MsiInterruptGroup::trigger`].
//! On KVM each vector is an irqfd bound to a GSI whose routing entry carries the message,
//! so a trigger is one eventfd write and never leaves the kernel. Tests use a recording
//! implementation and need no `/dev/kvm`. [`routing`] is the KVM implementation.

pub mod routing;

use std::io;

use routing::RoutingError;

/// Why an interrupt source could not be raised or reprogrammed.
#[derive(Debug, thiserror::Error)]
pub enum InterruptError {
    /// The group has no such vector.
    #[error("no MSI vector {0}")]
    NoVector(u16),
    /// Signalling the vector (its irqfd) failed.
    #[error("signalling MSI vector {index}: {source}")]
    Signal {
        /// The vector.
        index: u16,
        /// The eventfd write's error.
        #[source]
        source: io::Error,
    },
    /// The vector's new message could not be routed.
    #[error("routing MSI vector {index}: {source}")]
    Route {
        /// The vector.
        index: u16,
        /// Why the routing table refused it.
        #[source]
        source: RoutingError,
    },
}

/// One MSI message as the guest programmed it into an MSI-X table entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsiMessage {
    /// Message address (low 32 bits in `addr_lo`, high in `addr_hi`).
    pub addr_lo: u32,
    /// High half of the message address.
    pub addr_hi: u32,
    /// Message data.
    pub data: u32,
}

/// The interrupt sources of one device, indexed by MSI-X vector.
pub trait MsiInterruptGroup: Send + Sync {
    /// Raises vector `index`.
    fn trigger(&self, index: u16) -> Result<(), InterruptError>;

    /// Installs the message of vector `index`; a masked vector must not fire.
    fn update(&self, _index: u16, _msg: MsiMessage, _masked: bool) -> Result<(), InterruptError> {
        Ok(())
    }
}
