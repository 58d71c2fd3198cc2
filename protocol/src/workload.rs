//! What a guest workload reports: the payload of its `VGPU-WORKLOAD` console line, which the
//! VMM copies into the `workloads` list of its report.

use serde::{Deserialize, Serialize};

use crate::counters::{by_event, Counters, Event, EventCounters, GlobalCounters};
use crate::wire::event;

/// The sums of the device audits that end a workload's phases.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditSums {
    /// Translations the device checked against the CPU page table.
    pub checked: u64,
    /// Translations the CPU page table disagreed with.
    pub disagreements: u64,
}

/// One workload's result.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadRecord {
    /// Workload name (the program name without `vgpu-`).
    pub name: String,
    /// The driver policy it ran under, as the driver's `policy` parameter says.
    pub policy: String,
    /// Every data check passed (`failures` is empty).
    pub ok: bool,
    /// Device faults during the workload (also in `device`).
    pub device_faults: u64,
    /// Coherence-oracle violations during the workload (also in `device`).
    pub violations: u64,
    /// What failed, if anything.
    #[serde(default)]
    pub failures: Vec<String>,
    /// Its device audits, summed.
    #[serde(default)]
    pub audit: AuditSums,
    /// How the global counters moved over the workload.
    #[serde(default)]
    pub device: GlobalCounters,
    /// How the per-event counters moved over the workload.
    #[serde(with = "by_event", default)]
    pub events: [EventCounters; event::COUNT],
}

impl WorkloadRecord {
    /// The record of workload `name` under `policy`, whose checks left `failures`, whose
    /// device counters moved by `delta` and whose audits summed to `audit`.
    pub fn new(
        name: &str,
        policy: &str,
        failures: Vec<String>,
        delta: &Counters,
        audit: AuditSums,
    ) -> Self {
        WorkloadRecord {
            name: name.to_string(),
            policy: policy.to_string(),
            ok: failures.is_empty(),
            device_faults: delta.global.device_faults,
            violations: delta.global.violations,
            failures,
            audit,
            device: delta.global,
            events: delta.events,
        }
    }

    /// The counters of event `e`.
    pub fn event(&self, e: Event) -> &EventCounters {
        &self.events[e as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_keeps_its_keys_and_round_trips() {
        let mut delta = Counters::default();
        delta.event(event::PROTECTION_VMA).ats_invalidations = 7;
        delta.global.device_faults = 3;
        delta.global.violations = 2;
        let failures = vec!["a \"quoted\"\nline".to_string()];
        let audit = AuditSums {
            checked: 64,
            disagreements: 5,
        };
        let w = WorkloadRecord::new("touch", "naive", failures, &delta, audit);
        assert!(!w.ok);
        let j = serde_json::to_string(&w).unwrap();
        assert!(j.starts_with(
            r#"{"name":"touch","policy":"naive","ok":false,"device_faults":3,"violations":2,"#
        ));
        assert!(j.contains(r#""audit":{"checked":64,"disagreements":5},"device":{"#));
        assert!(j.contains(r#""PROTECTION_VMA":{"notifications":0,"ats_invalidations":7,"#));
        for e in Event::ALL {
            assert!(j.contains(&format!("\"{e}\":{{")), "{e} missing");
        }
        assert!(j.contains(r#""a \"quoted\"\nline""#));
        assert!(!j.contains('\n'), "one console line");
        let back: WorkloadRecord = serde_json::from_str(&j).unwrap();
        assert_eq!(back, w);
        assert_eq!(back.event(Event::ProtectionVma).ats_invalidations, 7);
    }
}
