//! The device's counters (SPEC.md "Counters"): one set per mmu-notifier event and one
//! global set. Readable by the guest (COUNTERS) and by the host (the VMM's report).
//!
//! The counters are the wire structs themselves ([`wire::Counters`]): one definition, so a
//! counter added to SPEC.md cannot be forgotten in a conversion. This module adds the
//! device-side helpers.

use std::time::Duration;

use vm_memory::ByteValued;

use crate::wire;
pub use crate::wire::{Counters, EventCounters, GlobalCounters};

/// The event names, in counter order (the kernel's `enum mmu_notifier_event`).
pub const EVENT_NAMES: [&str; wire::event::COUNT] = [
    "UNMAP",
    "CLEAR",
    "PROTECTION_VMA",
    "PROTECTION_PAGE",
    "SOFT_DIRTY",
    "RELEASE",
    "MIGRATE",
    "EXCLUSIVE",
];

impl EventCounters {
    /// Every counter by name (the JSON keys of an event), reserved slots left out.
    pub fn fields(&self) -> [(&'static str, u64); 9] {
        [
            ("notifications", self.notifications),
            ("ats_invalidations", self.ats_invalidations),
            ("pasid_invalidations", self.pasid_invalidations),
            ("pages_invalidated", self.pages_invalidated),
            ("atc_entries_dropped", self.atc_entries_dropped),
            ("useless_invalidations", self.useless_invalidations),
            ("refaults", self.refaults),
            ("downgrades", self.downgrades),
            ("leaf_splits", self.leaf_splits),
        ]
    }
}

impl GlobalCounters {
    /// Every counter by name, reserved slots left out.
    pub fn fields(&self) -> [(&'static str, u64); 14] {
        [
            ("device_faults", self.device_faults),
            ("jobs_completed", self.jobs_completed),
            ("jobs_failed", self.jobs_failed),
            ("maps", self.maps),
            ("pages_mapped", self.pages_mapped),
            ("command_errors", self.command_errors),
            ("atc_hits", self.atc_hits),
            ("atc_misses", self.atc_misses),
            ("page_walks", self.page_walks),
            ("violations", self.violations),
            ("bytes_read", self.bytes_read),
            ("bytes_written", self.bytes_written),
            ("permission_faults", self.permission_faults),
            ("fault_retries", self.fault_retries),
        ]
    }
}

/// Buckets of [`FaultLatency`]: enough for 2^31 µs (about 36 minutes), far past any run's
/// timeout, so the last bucket only catches the absurd.
pub const LATENCY_BUCKETS: usize = 32;

/// Fault service latency: the time from a fault raised to the MAP or FAULT_FAIL that
/// answered it, in power-of-two microsecond buckets. Host-only (not on the wire): the
/// guest sees its own side of the latency; this is the device's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultLatency {
    /// Bucket 0 counts answers under 2 µs; bucket `i > 0` counts [2^i, 2^(i+1)) µs; the
    /// last bucket also takes everything longer.
    pub buckets: [u64; LATENCY_BUCKETS],
    /// Sum of all latencies in µs (for the mean), saturating.
    pub total_us: u64,
    /// Largest latency seen, in µs.
    pub max_us: u64,
}

impl FaultLatency {
    /// Counts one answered fault.
    pub fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        // ilog2 of 0 and 1 are both bucket 0.
        let bucket = (us.max(1).ilog2() as usize).min(LATENCY_BUCKETS - 1);
        self.buckets[bucket] += 1;
        self.total_us = self.total_us.saturating_add(us);
        self.max_us = self.max_us.max(us);
    }

    /// Faults answered.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// The non-empty buckets as (lower bound in µs, count).
    pub fn nonzero(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.buckets
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(i, n)| (if i == 0 { 0 } else { 1u64 << i }, *n))
    }
}

impl Counters {
    /// Adds how every counter moved from `before` to `after` (a counter that went down, as
    /// after a guest-requested reset, adds nothing). Every field is a u64, so this works word
    /// by word on the wire layout and needs no update when a counter is added.
    pub fn add_movement(&mut self, before: &Counters, after: &Counters) {
        let words = |c: &Counters| -> Vec<u64> {
            c.as_slice()
                .chunks_exact(8)
                .map(|w| u64::from_le_bytes(w.try_into().expect("8-byte chunks")))
                .collect()
        };
        let (b, a) = (words(before), words(after));
        for (i, slot) in self.as_mut_slice().chunks_exact_mut(8).enumerate() {
            let now = u64::from_le_bytes((&*slot).try_into().expect("8-byte chunks"));
            let moved = a[i].saturating_sub(b[i]);
            slot.copy_from_slice(&now.wrapping_add(moved).to_le_bytes());
        }
    }

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
    fn latency_buckets_are_powers_of_two() {
        let mut h = FaultLatency::default();
        h.record(Duration::from_nanos(300));
        h.record(Duration::from_micros(1));
        h.record(Duration::from_micros(2));
        h.record(Duration::from_micros(3));
        h.record(Duration::from_micros(1000));
        h.record(Duration::from_secs(1 << 40));
        assert_eq!(h.buckets[0], 2);
        assert_eq!(h.buckets[1], 2);
        assert_eq!(h.buckets[9], 1, "1000 µs is in [512, 1024)");
        assert_eq!(h.buckets[LATENCY_BUCKETS - 1], 1);
        assert_eq!(h.count(), 6);
        assert_eq!(
            h.nonzero().take(3).collect::<Vec<_>>(),
            [(0, 2), (2, 2), (512, 1)]
        );
    }

    #[test]
    fn names_cover_every_counter() {
        let g = GlobalCounters {
            fault_retries: 4,
            ..Default::default()
        };
        assert_eq!(g.fields().last(), Some(&("fault_retries", 4)));
        assert_eq!(EventCounters::default().fields().len(), 9);
        assert_eq!(EVENT_NAMES[wire::event::EXCLUSIVE as usize], "EXCLUSIVE");
    }

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
        assert_eq!(c.global.reserved, [0; 18]);
        // An out-of-range event never indexes out of bounds.
        c.event(99).notifications += 1;
        assert_eq!(c.events[7].notifications, 1);
    }
}
