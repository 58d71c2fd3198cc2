//! The device's counters (SPEC.md "Counters"): one set per mmu-notifier event and one
//! global set. Readable by the guest (COUNTERS) and by the host (the VMM's report).

use crate::wire;

/// Counters of one mmu-notifier event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventCounters {
    /// INVALIDATE commands received with this event.
    pub notifications: u64,
    /// ATS invalidation requests sent to the ATC (one per aligned power-of-two block).
    pub ats_invalidations: u64,
    /// Whole-PASID invalidations (an INVALIDATE of the whole address space).
    pub pasid_invalidations: u64,
    /// Pages covered by the invalidated ranges.
    pub pages_invalidated: u64,
    /// ATC entries the invalidations actually dropped.
    pub atc_entries_dropped: u64,
    /// Invalidations that dropped no ATC entry and changed no PTE.
    pub useless_invalidations: u64,
    /// Device faults on pages whose translation an invalidation of this event removed.
    pub refaults: u64,
    /// Invalidations that downgraded to read-only instead of dropping.
    pub downgrades: u64,
    /// 2 MiB leaves split because an invalidation covered only part of them.
    pub leaf_splits: u64,
}

/// Counters that belong to no event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GlobalCounters {
    /// Device page faults raised (posted or held for the fault queue).
    pub device_faults: u64,
    /// Jobs that completed with OK.
    pub jobs_completed: u64,
    /// Jobs that ended with an error status.
    pub jobs_failed: u64,
    /// MAP commands applied.
    pub maps: u64,
    /// Pages mapped by MAP commands.
    pub pages_mapped: u64,
    /// Commands and fault buffers refused as malformed.
    pub command_errors: u64,
    /// Translations found in the ATC.
    pub atc_hits: u64,
    /// Translations not found in the ATC (including read-only entries for a write).
    pub atc_misses: u64,
    /// Page-table walks after an ATC miss.
    pub page_walks: u64,
    /// Writes that found only a read-only translation.
    pub violations: u64,
    /// Bytes jobs read from guest memory.
    pub bytes_read: u64,
    /// Bytes jobs wrote to guest memory.
    pub bytes_written: u64,
}

/// Every counter of the device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Indexed by the event number ([`wire::event`]).
    pub events: [EventCounters; wire::event::COUNT],
    /// Counters of no event.
    pub global: GlobalCounters,
}

impl Counters {
    /// The counters of `event`, which the caller has checked is below
    /// [`wire::event::COUNT`].
    pub fn event(&mut self, event: u32) -> &mut EventCounters {
        let i = (event as usize).min(wire::event::COUNT - 1);
        &mut self.events[i]
    }

    /// The counters as COUNTERS writes them.
    pub fn to_wire(&self) -> wire::Counters {
        let mut w = wire::Counters::default();
        for (dst, e) in w.events.iter_mut().zip(&self.events) {
            *dst = wire::EventCounters {
                notifications: e.notifications,
                ats_invalidations: e.ats_invalidations,
                pasid_invalidations: e.pasid_invalidations,
                pages_invalidated: e.pages_invalidated,
                atc_entries_dropped: e.atc_entries_dropped,
                useless_invalidations: e.useless_invalidations,
                refaults: e.refaults,
                downgrades: e.downgrades,
                leaf_splits: e.leaf_splits,
                reserved: [0; 7],
            };
        }
        let g = &self.global;
        w.global = wire::GlobalCounters {
            device_faults: g.device_faults,
            jobs_completed: g.jobs_completed,
            jobs_failed: g.jobs_failed,
            maps: g.maps,
            pages_mapped: g.pages_mapped,
            command_errors: g.command_errors,
            atc_hits: g.atc_hits,
            atc_misses: g.atc_misses,
            page_walks: g.page_walks,
            violations: g.violations,
            bytes_read: g.bytes_read,
            bytes_written: g.bytes_written,
            reserved: [0; 20],
        };
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_conversion_keeps_every_counter_in_place() {
        let mut c = Counters::default();
        c.event(wire::event::SOFT_DIRTY).downgrades = 3;
        c.event(wire::event::UNMAP).leaf_splits = 4;
        c.events[7].refaults = 5;
        c.global.bytes_written = 6;
        c.global.device_faults = 7;
        let w = c.to_wire();
        assert_eq!(w.events[4].downgrades, 3);
        assert_eq!(w.events[0].leaf_splits, 4);
        assert_eq!(w.events[7].refaults, 5);
        assert_eq!(w.global.bytes_written, 6);
        assert_eq!(w.global.device_faults, 7);
        assert_eq!(w.global.reserved, [0; 20]);
        // An out-of-range event never indexes out of bounds.
        c.event(99).notifications += 1;
        assert_eq!(c.events[7].notifications, 1);
    }
}
