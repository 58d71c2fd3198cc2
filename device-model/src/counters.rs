//! The device's counters (SPEC.md "Counters"): one set per mmu-notifier event and one
//! global set. Readable by the guest (COUNTERS) and by the host (the VMM's report).
//!
//! The counters are the wire structs themselves, defined once in the `protocol` crate
//! (`protocol::counters`, whose field names are the JSON keys). This module adds what only
//! the device keeps: the fault service latency histogram.

use std::time::Duration;

pub use protocol::counters::{Counters, Event, EventCounters, GlobalCounters, EVENT_NAMES};

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

#[cfg(test)]
mod tests {
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
}
