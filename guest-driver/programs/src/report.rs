//! What a workload reports: the `VGPU-WORKLOAD {json}` console line that the VMM copies into
//! the `workloads` list of its report (format in images/README.md).

use std::fmt::Write;

use crate::uapi::RawCounters;

/// The mmu-notifier events, in the device's counter order (the kernel's enum order).
pub const EVENTS: [&str; 8] = [
    "UNMAP",
    "CLEAR",
    "PROTECTION_VMA",
    "PROTECTION_PAGE",
    "SOFT_DIRTY",
    "RELEASE",
    "MIGRATE",
    "EXCLUSIVE",
];

/// The per-event counters, in `struct vgpu_event_counters` order.
pub const EVENT_FIELDS: [&str; 9] = [
    "notifications",
    "ats_invalidations",
    "pasid_invalidations",
    "pages_invalidated",
    "atc_entries_dropped",
    "useless_invalidations",
    "refaults",
    "downgrades",
    "leaf_splits",
];

/// u64 slots per event in `struct vgpu_counters`.
const EVENT_STRIDE: usize = 16;

/// The global counters, in `struct vgpu_global_counters` order.
pub const GLOBAL_FIELDS: [&str; 12] = [
    "device_faults",
    "jobs_completed",
    "jobs_failed",
    "maps",
    "pages_mapped",
    "command_errors",
    "atc_hits",
    "atc_misses",
    "page_walks",
    "violations",
    "bytes_read",
    "bytes_written",
];

/// How the device's counters moved over a workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CounterDelta(RawCounters);

impl CounterDelta {
    /// `after - before`, slot by slot (a counter reset in between reads as 0, not a wrap).
    pub fn between(before: &RawCounters, after: &RawCounters) -> Self {
        let mut d = RawCounters::default();
        for (i, slot) in d.0.iter_mut().enumerate() {
            *slot = after.0[i].saturating_sub(before.0[i]);
        }
        CounterDelta(d)
    }

    /// The counter `field` (an [`EVENT_FIELDS`] index) of event `event`.
    pub fn event(&self, event: usize, field: usize) -> u64 {
        self.0 .0[event * EVENT_STRIDE + field]
    }

    /// The global counter with index `field` in [`GLOBAL_FIELDS`].
    pub fn global(&self, field: usize) -> u64 {
        self.0 .0[EVENTS.len() * EVENT_STRIDE + field]
    }

    /// The global counter called `name`.
    pub fn global_named(&self, name: &str) -> u64 {
        GLOBAL_FIELDS
            .iter()
            .position(|f| *f == name)
            .map_or(0, |i| self.global(i))
    }

    /// The event counter `field` of the event called `event`.
    pub fn event_named(&self, event: &str, field: &str) -> u64 {
        match (
            EVENTS.iter().position(|e| *e == event),
            EVENT_FIELDS.iter().position(|f| *f == field),
        ) {
            (Some(e), Some(f)) => self.event(e, f),
            _ => 0,
        }
    }
}

/// One workload's result.
pub struct WorkloadReport<'a> {
    /// Workload name.
    pub name: &'a str,
    /// The driver policy it ran under.
    pub policy: &'a str,
    /// Every data check passed.
    pub ok: bool,
    /// What failed, if anything.
    pub failures: &'a [String],
    /// Counter movement over the workload.
    pub delta: &'a CounterDelta,
}

impl WorkloadReport<'_> {
    /// The JSON object of the report's `workloads` list (one line).
    pub fn to_json(&self) -> String {
        let mut s = String::new();
        let _ = write!(
            s,
            "{{\"name\":{},\"policy\":{},\"ok\":{},\"device_faults\":{},\"violations\":null",
            json_str(self.name),
            json_str(self.policy),
            self.ok,
            self.delta.global_named("device_faults"),
        );
        s.push_str(",\"failures\":[");
        for (i, f) in self.failures.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str(&json_str(f));
        }
        s.push_str("],\"device\":{");
        for (i, name) in GLOBAL_FIELDS.iter().enumerate() {
            if *name == "violations" {
                continue; // null until the coherence oracle exists
            }
            if i > 0 {
                s.push(',');
            }
            let _ = write!(s, "\"{name}\":{}", self.delta.global(i));
        }
        s.push_str("},\"events\":{");
        for (e, event) in EVENTS.iter().enumerate() {
            if e > 0 {
                s.push(',');
            }
            let _ = write!(s, "\"{event}\":{{");
            for (f, field) in EVENT_FIELDS.iter().enumerate() {
                if f > 0 {
                    s.push(',');
                }
                let _ = write!(s, "\"{field}\":{}", self.delta.event(e, f));
            }
            s.push('}');
        }
        s.push_str("}}");
        s
    }
}

/// A JSON string literal.
pub fn json_str(v: &str) -> String {
    let mut s = String::with_capacity(v.len() + 2);
    s.push('"');
    for c in v.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(s, "\\u{:04x}", c as u32);
            }
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uapi::COUNTERS_WORDS;

    #[test]
    fn layout_matches_the_counter_struct_size() {
        assert_eq!(
            EVENTS.len() * EVENT_STRIDE + 32,
            COUNTERS_WORDS,
            "8 events of 16 slots, then 32 global slots"
        );
        assert!(EVENT_FIELDS.len() <= EVENT_STRIDE && GLOBAL_FIELDS.len() <= 32);
    }

    #[test]
    fn delta_is_per_slot_and_never_wraps() {
        let mut a = RawCounters::default();
        let mut b = RawCounters::default();
        a.0[EVENT_STRIDE] = 5; // CLEAR notifications
        b.0[EVENT_STRIDE] = 8;
        a.0[128] = 10; // device_faults went backwards (a reset)
        b.0[128] = 4;
        let d = CounterDelta::between(&a, &b);
        assert_eq!(d.event_named("CLEAR", "notifications"), 3);
        assert_eq!(d.global_named("device_faults"), 0);
        assert_eq!(d.event_named("NOPE", "notifications"), 0);
    }

    #[test]
    fn report_json_has_every_event_and_escapes_strings() {
        let mut after = RawCounters::default();
        after.0[2 * EVENT_STRIDE + 1] = 7; // PROTECTION_VMA ats_invalidations
        after.0[128] = 3;
        let d = CounterDelta::between(&RawCounters::default(), &after);
        let failures = vec!["a \"quoted\"\nline".to_string()];
        let j = WorkloadReport {
            name: "touch",
            policy: "naive",
            ok: false,
            failures: &failures,
            delta: &d,
        }
        .to_json();
        assert!(j.starts_with("{\"name\":\"touch\",\"policy\":\"naive\",\"ok\":false,\"device_faults\":3,\"violations\":null"));
        assert!(j.contains("\"PROTECTION_VMA\":{\"notifications\":0,\"ats_invalidations\":7,"));
        for e in EVENTS {
            assert!(j.contains(&format!("\"{e}\":{{")), "{e} missing");
        }
        assert!(j.contains(r#""a \"quoted\"\u000aline""#));
        assert!(!j.contains('\n'));
    }
}
