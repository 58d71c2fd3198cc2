//! What a workload reports: the `VGPU-WORKLOAD {json}` console line that the VMM copies into
//! the `workloads` list of its report (format in images/README.md).

use std::fmt::Write;

use device_model::wire::{EventCounters, GlobalCounters};

use crate::uapi::{Counters, VgpuAudit};

/// The mmu-notifier events, in the device's counter order (the kernel's enum order).
pub const EVENTS: [&str; 8] = device_model::counters::EVENT_NAMES;

/// The per-event counters by name (the JSON keys of each event): the device model's list.
pub fn event_fields(e: &EventCounters) -> [(&'static str, u64); 9] {
    e.fields()
}

/// The global counters by name, without `violations` (the workload line has it at the
/// top level).
pub fn global_fields(g: &GlobalCounters) -> Vec<(&'static str, u64)> {
    g.fields()
        .into_iter()
        .filter(|(name, _)| *name != "violations")
        .collect()
}

/// How the device's counters moved over a workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CounterDelta(pub Counters);

impl CounterDelta {
    /// `after - before`, counter by counter (a counter reset in between reads as 0, not as
    /// a wrap).
    pub fn between(before: &Counters, after: &Counters) -> Self {
        let mut d = Counters::default();
        d.add_movement(before, after);
        CounterDelta(d)
    }

    /// The counters of the event called `name` (one of [`EVENTS`]).
    pub fn event(&self, name: &str) -> Option<&EventCounters> {
        let i = EVENTS.iter().position(|e| *e == name)?;
        self.0.events.get(i)
    }

    /// The global counters.
    pub fn global(&self) -> &GlobalCounters {
        &self.0.global
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
    /// Its device audits, summed.
    pub audits: VgpuAudit,
}

impl WorkloadReport<'_> {
    /// The JSON object of the report's `workloads` list (one line).
    pub fn to_json(&self) -> String {
        let mut s = String::new();
        let _ = write!(
            s,
            "{{\"name\":{},\"policy\":{},\"ok\":{},\"device_faults\":{},\"violations\":{}",
            json_str(self.name),
            json_str(self.policy),
            self.ok,
            self.delta.global().device_faults,
            // Coherence-oracle violations during the workload (device-model/src/oracle.rs).
            self.delta.global().violations,
        );
        s.push_str(",\"failures\":[");
        for (i, f) in self.failures.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str(&json_str(f));
        }
        let _ = write!(
            s,
            "],\"audit\":{{\"checked\":{},\"disagreements\":{}}}",
            self.audits.checked, self.audits.disagreements
        );
        s.push_str(",\"device\":");
        json_object(&mut s, &global_fields(self.delta.global()));
        s.push_str(",\"events\":{");
        for (e, (name, counters)) in EVENTS.iter().zip(&self.delta.0.events).enumerate() {
            if e > 0 {
                s.push(',');
            }
            let _ = write!(s, "\"{name}\":");
            json_object(&mut s, &event_fields(counters));
        }
        s.push_str("}}");
        s
    }
}

/// Appends `{"name":value,...}`.
fn json_object(s: &mut String, fields: &[(&str, u64)]) {
    s.push('{');
    for (i, (name, value)) in fields.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "\"{name}\":{value}");
    }
    s.push('}');
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

    #[test]
    fn delta_is_per_counter_and_never_wraps() {
        let mut a = Counters::default();
        let mut b = Counters::default();
        a.events[1].notifications = 5;
        b.events[1].notifications = 8;
        a.global.device_faults = 10; // went backwards: a reset in between
        b.global.device_faults = 4;
        b.global.bytes_written = 7;
        let d = CounterDelta::between(&a, &b);
        assert_eq!(d.event("CLEAR").unwrap().notifications, 3);
        assert_eq!(d.global().device_faults, 0);
        assert_eq!(d.global().bytes_written, 7);
        assert!(d.event("NOPE").is_none());
    }

    #[test]
    fn report_json_has_every_event_and_escapes_strings() {
        let mut after = Counters::default();
        after.events[2].ats_invalidations = 7; // PROTECTION_VMA
        after.global.device_faults = 3;
        after.global.violations = 2;
        let d = CounterDelta::between(&Counters::default(), &after);
        let failures = vec!["a \"quoted\"\nline".to_string()];
        let j = WorkloadReport {
            name: "touch",
            policy: "naive",
            ok: false,
            failures: &failures,
            delta: &d,
            audits: VgpuAudit {
                checked: 64,
                disagreements: 5,
            },
        }
        .to_json();
        assert!(j.contains(r#""audit":{"checked":64,"disagreements":5},"device":{"#));
        assert!(j.starts_with("{\"name\":\"touch\",\"policy\":\"naive\",\"ok\":false,\"device_faults\":3,\"violations\":2,"));
        assert!(j.contains("\"PROTECTION_VMA\":{\"notifications\":0,\"ats_invalidations\":7,"));
        for e in EVENTS {
            assert!(j.contains(&format!("\"{e}\":{{")), "{e} missing");
        }
        assert!(j.contains(r#""a \"quoted\"\u000aline""#));
        assert!(!j.contains('\n'));
    }
}
