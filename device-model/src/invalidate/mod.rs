//! The INVALIDATE command: the driver's mmu-notifier event, applied to the page table (drop
//! or downgrade) and ATS-invalidated in the ATC, counted per event, and remembered page by
//! page so a later fault counts as a refault of that event.
//!
//! - [`parse`] checks a command into an [`Invalidation`].
//! - [`InFlight`] holds the invalidations taken off the queue whose completion is not due
//!   yet: like an ATS invalidation on a real link, one completes `inval_latency_us` after the
//!   device took it, and until then engines may still use the old translations.
//! - [`apply`] makes the change: the table change and the ATS invalidation are one
//!   [`Mmu::update_range`](crate::mmu::Mmu::update_range) call, and jobs translate page by
//!   page between commands, so once it returns no engine can use an old translation.

mod apply;
mod in_flight;

pub use apply::apply;
pub use in_flight::{InFlight, Pending};

use crate::address::{IovaRange, Pasid, RangeError};
use crate::wire;

/// One INVALIDATE, validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Invalidation {
    /// The address space.
    pub pasid: Pasid,
    /// The range.
    pub range: IovaRange,
    /// The mmu-notifier event, below [`wire::event::COUNT`].
    pub event: u32,
    /// Remove write permission only.
    pub downgrade: bool,
    /// Invalidate the ATC with one whole-PASID request instead of per-block ATS requests
    /// (the range is the whole address space, or longer than the configured threshold).
    pub whole_pasid: bool,
}

/// What the response reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InvalidationDone {
    /// ATS invalidation requests issued.
    pub ats_requests: u64,
    /// Pages covered.
    pub pages: u64,
}

/// Why an INVALIDATE was refused; [`ParseError::status`] is the response status.
#[derive(Clone, Copy, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// The range is not a page-aligned range of the address space.
    #[error("invalidation range: {0}")]
    Range(#[source] RangeError),
    /// The event is none of the kernel's `enum mmu_notifier_event`.
    #[error("unknown mmu-notifier event {0}")]
    UnknownEvent(u32),
}

impl ParseError {
    /// The response status SPEC.md gives the refusal (`BAD_RANGE` for both).
    pub fn status(self) -> u32 {
        wire::status::BAD_RANGE
    }
}

/// Builds an [`Invalidation`] from a command. Ranges longer than `pasid_threshold` bytes
/// (0: none) use a whole-PASID ATC invalidation, as a real IOMMU driver does when per-block
/// requests would outnumber the cache.
pub fn parse(cmd: &wire::Cmd, pasid_threshold: u64) -> Result<Invalidation, ParseError> {
    let range = IovaRange::pages(cmd.start, cmd.length).map_err(ParseError::Range)?;
    if cmd.event as usize >= wire::event::COUNT {
        return Err(ParseError::UnknownEvent(cmd.event));
    }
    Ok(Invalidation {
        pasid: Pasid(cmd.pasid),
        range,
        event: cmd.event,
        downgrade: cmd.flags & wire::INV_F_DOWNGRADE != 0,
        whole_pasid: range.is_everything()
            || (pasid_threshold != 0 && range.len() > pasid_threshold),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::VA_LIMIT;

    /// [`parse`] without a threshold, the error as the response status.
    fn parse0(cmd: &wire::Cmd) -> Result<Invalidation, u32> {
        parse(cmd, 0).map_err(ParseError::status)
    }

    #[test]
    fn bad_commands_are_refused() {
        let cmd = |start, length, event| wire::Cmd {
            opcode: wire::opcode::INVALIDATE,
            pasid: 1,
            start,
            length,
            event,
            ..Default::default()
        };
        assert_eq!(parse0(&cmd(0x1000, 0, 0)), Err(wire::status::BAD_RANGE));
        assert_eq!(
            parse0(&cmd(0x1001, 0x1000, 0)),
            Err(wire::status::BAD_RANGE)
        );
        assert_eq!(
            parse0(&cmd(u64::MAX - 0xfff, 0x2000, 0)),
            Err(wire::status::BAD_RANGE)
        );
        assert_eq!(
            parse0(&cmd(VA_LIMIT, 0x1000, 0)),
            Err(wire::status::BAD_RANGE)
        );
        assert_eq!(parse0(&cmd(0, 0x1000, 8)), Err(wire::status::BAD_RANGE));
        assert_eq!(
            parse(&cmd(0, 0x1000, 8), 0),
            Err(ParseError::UnknownEvent(8))
        );
        assert!(matches!(
            parse(&cmd(0x1001, 0x1000, 0), 0),
            Err(ParseError::Range(RangeError::Unaligned { .. }))
        ));
        assert!(parse0(&cmd(0, 0x1000, 7)).is_ok());
        // Whole-PASID: the whole space always, longer ranges only above the threshold.
        assert!(parse0(&cmd(0, VA_LIMIT, 0)).unwrap().whole_pasid);
        assert!(!parse0(&cmd(0, 1 << 30, 0)).unwrap().whole_pasid);
        assert!(!parse(&cmd(0, 1 << 30, 0), 1 << 30).unwrap().whole_pasid);
        assert!(
            parse(&cmd(0, (1 << 30) + 0x1000, 0), 1 << 30)
                .unwrap()
                .whole_pasid
        );
    }
}
