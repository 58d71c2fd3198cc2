//! The device's counters (SPEC.md "Counters"): one set per mmu-notifier event and one
//! global set. Readable by the guest (COUNTERS) and by the host (the VMM's report).
//!
//! The counters are the wire structs themselves ([`wire::Counters`]): one definition, so a
//! counter added to SPEC.md cannot be forgotten in a conversion. This module adds the
//! device-side helpers.

use crate::wire;
pub use crate::wire::{Counters, EventCounters, GlobalCounters};

impl Counters {
    /// The counters of `event`. Events at or above [`wire::event::COUNT`] (the caller
    /// validates them; this only keeps a bug from indexing out of bounds) land on the last.
    pub fn event(&mut self, event: u32) -> &mut EventCounters {
        let i = (event as usize).min(wire::event::COUNT - 1);
        &mut self.events[i]
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::ByteValued;

    use super::*;

    #[test]
    fn event_counters_land_in_their_wire_slot() {
        let mut c = Counters::default();
        c.event(wire::event::SOFT_DIRTY).downgrades = 3;
        c.event(wire::event::UNMAP).leaf_splits = 4;
        c.global.permission_faults = 5;
        assert_eq!(c.events[4].downgrades, 3);
        assert_eq!(c.events[0].leaf_splits, 4);
        // permission_faults took the first reserved global slot: word 8*16 + 12.
        let words: Vec<u64> = c
            .as_slice()
            .chunks_exact(8)
            .map(|w| u64::from_le_bytes(w.try_into().unwrap()))
            .collect();
        assert_eq!(words[8 * 16 + 12], 5);
        assert_eq!(c.global.reserved, [0; 19]);
        // An out-of-range event never indexes out of bounds.
        c.event(99).notifications += 1;
        assert_eq!(c.events[7].notifications, 1);
    }
}
