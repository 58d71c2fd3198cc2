//! The run report's making and rendering: the record itself is `protocol::report::Report`
//! (shared with the virtual host's relay, the guest tests and `vmm matrix`); this module fills
//! it from the console and the device, and owns every human-readable line of it.

use std::collections::BTreeMap;
use std::path::Path;

use device_model::config::OptionValue as ConfigValue;
use device_model::counters::FaultLatency;
use device_model::oracle::ViolationSample;
use device_model::{Counters, VgpuConfig};
use protocol::counters::Event;
use protocol::report::{
    DeviceReport, FaultLatencyReport, InvalidationRecord, LatencyBucket, OptionValue,
    TranslationRecord, ViolationRecord,
};
pub use protocol::Report;

use crate::console::ConsoleState;

pub(crate) mod summary;

/// The run error for a guest program that exited with a non-zero status.
pub fn program_exit_error(name: &str, exit: i32) -> String {
    format!("guest program {name} exited with {exit}")
}

/// What the VMM adds to a [`Report`]: filling it, rendering it, writing it.
pub trait RunReport {
    /// Fills the guest-side fields from what the console said.
    fn absorb_console(&mut self, c: &ConsoleState);
    /// Echoes the device's tunables as `device_config`.
    fn set_device_config(&mut self, config: &VgpuConfig);
    /// Records the device's final counters (in total and by PASID) and fault latencies as
    /// `device`.
    fn set_device(
        &mut self,
        counters: &Counters,
        by_pasid: &BTreeMap<u32, Counters>,
        latency: &FaultLatency,
    );
    /// Records the oracle's samples as `violation_samples` and makes them a run error (the
    /// workloads report their own counts; this also catches violations outside a workload).
    fn set_violations(&mut self, samples: &[ViolationSample]);
    /// Writes the JSON report.
    fn write_json(&self, path: &Path) -> std::io::Result<()>;
    /// The human summary, a few lines.
    fn summary(&self) -> String;
}

impl RunReport for Report {
    fn absorb_console(&mut self, c: &ConsoleState) {
        self.kernel = c.kernel.clone();
        self.programs = c.results.clone();
        self.workloads = c.workloads.clone();
        self.rounds = c.rounds;
        self.selftest_captures = c.selftests.clone();
        self.errors.extend(c.errors.iter().cloned());
        if c.panicked {
            self.errors.push("guest kernel panic".into());
        }
        if c.done_failed.is_none() {
            self.errors
                .push("guest did not finish its programs (no VGPU-DONE line)".into());
        }
        for w in &c.workloads {
            if !w.ok {
                self.errors
                    .push(format!("workload {}: data verification failed", w.name));
            }
            // The coherence oracle saw the device use a translation the CPU no longer had.
            if w.violations > 0 {
                self.errors.push(format!(
                    "workload {}: {} coherence violations",
                    w.name, w.violations
                ));
            }
        }
        for r in c.results.iter().filter(|r| r.exit != 0) {
            self.errors.push(program_exit_error(&r.name, r.exit));
        }
    }

    fn set_device_config(&mut self, config: &VgpuConfig) {
        self.device_config = Some(
            config
                .options()
                .iter()
                .map(|(k, v)| {
                    let v = match *v {
                        ConfigValue::Number(n) => OptionValue::Number(n),
                        ConfigValue::Word(w) => OptionValue::Word(w.to_string()),
                    };
                    (k.to_string(), v)
                })
                .collect(),
        );
    }

    fn set_device(
        &mut self,
        counters: &Counters,
        by_pasid: &BTreeMap<u32, Counters>,
        latency: &FaultLatency,
    ) {
        self.device = Some(DeviceReport {
            counters: *counters,
            pasids: by_pasid.clone(),
            fault_latency_us: FaultLatencyReport {
                count: latency.count(),
                total: latency.total_us,
                max: latency.max_us,
                buckets: latency
                    .nonzero()
                    .map(|(from_us, count)| LatencyBucket { from_us, count })
                    .collect(),
            },
        });
    }

    fn set_violations(&mut self, samples: &[ViolationSample]) {
        self.violation_samples = samples.iter().map(violation_record).collect();
        if let Some(first) = samples.first() {
            self.errors.push(format!(
                "coherence oracle: {} sampled violations, first: {}",
                samples.len(),
                first.violation
            ));
        }
    }

    fn write_json(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.to_json_pretty())
    }

    fn summary(&self) -> String {
        summary::render(self)
    }
}

/// The report's record of one oracle sample.
fn violation_record(s: &ViolationSample) -> ViolationRecord {
    let hex = |v: u64| format!("{v:#x}");
    let v = &s.violation;
    ViolationRecord {
        pasid: v.pasid.0,
        va: hex(v.va.0),
        access: v.access.to_string(),
        device: TranslationRecord {
            gpa: hex(v.device.gpa.0),
            writable: v.device.writable,
        },
        cpu: v.cpu.map(|c| TranslationRecord {
            gpa: hex(c.gpa.0),
            writable: c.writable,
        }),
        at_us: s.micros,
        history: s
            .history
            .iter()
            .map(|h| InvalidationRecord {
                seq: h.seq,
                at_us: h.micros,
                // The device only records events it validated; the last stands in otherwise.
                event: Event::from_wire(h.event).unwrap_or(Event::Exclusive),
                start: hex(h.range.start),
                end: hex(h.range.end),
                downgrade: h.downgrade,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::summary::device_summary;
    use super::*;
    use protocol::console::ProgramResult;
    use protocol::WorkloadRecord;

    #[test]
    fn stable_keys_are_present() {
        let r = Report {
            host: protocol::HostKind::VirtualHost,
            verdict: protocol::Verdict::Pass,
            ..Default::default()
        };
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        for key in ["host", "kernel", "boot_ms", "workloads"] {
            assert!(v.get(key).is_some(), "missing key {key}");
        }
        assert!(v["workloads"].as_array().unwrap().is_empty());
        let back: Report = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn image_build_time_is_reported_only_when_images_were_built() {
        let mut r = Report::default();
        let v = serde_json::to_value(&r).unwrap();
        assert!(v.get("image_build_ms").is_none());
        assert!(!r.summary().contains("images"));
        r.image_build_ms = Some(36_000);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["image_build_ms"], 36_000);
        assert!(r.summary().contains("images 36000 ms"), "{}", r.summary());
        let back: Report = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn device_config_is_echoed_and_survives_the_virtual_host_relay() {
        let mut r = Report::default();
        let c = VgpuConfig::from_options("atc_entries=64,atc_ways=4,fault_ahead=64K").unwrap();
        r.set_device_config(&c);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["device_config"]["atc_entries"], 64);
        assert_eq!(v["device_config"]["atc_ways"], 4);
        assert_eq!(v["device_config"]["fault_ahead"], 65536);
        assert_eq!(v["device_config"]["oracle"], "every");
        let summary = device_summary(&DeviceReport::default(), r.device_config.as_ref());
        assert!(
            summary.contains("oracle=every") && !summary.contains('"'),
            "{summary}"
        );
        // The outer VMM reads the inner report back as a Report.
        let back: Report = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn device_section_names_every_counter_and_keeps_stable_keys() {
        let mut c = Counters::default();
        c.event(device_model::wire::event::CLEAR).refaults = 3;
        c.global.permission_faults = 2;
        let mut h = FaultLatency::default();
        h.record(std::time::Duration::from_micros(5));
        let mut r = Report::default();
        let by_pasid = BTreeMap::from([(7, c)]);
        r.set_device(&c, &by_pasid, &h);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["device"]["events"]["CLEAR"]["refaults"], 3);
        assert_eq!(v["device"]["pasids"]["7"]["events"]["CLEAR"]["refaults"], 3);
        assert_eq!(v["device"]["pasids"]["7"]["global"]["permission_faults"], 2);
        assert_eq!(v["device"]["events"]["UNMAP"]["pages_invalidated"], 0);
        assert_eq!(v["device"]["global"]["permission_faults"], 2);
        assert_eq!(v["device"]["fault_latency_us"]["count"], 1);
        assert_eq!(
            v["device"]["fault_latency_us"]["buckets"][0],
            serde_json::json!({"from_us": 4, "count": 1})
        );
        for key in ["host", "kernel", "boot_ms", "workloads"] {
            assert!(v.get(key).is_some(), "missing key {key}");
        }
        r.set_device_config(&VgpuConfig::default());
        let s = r.summary();
        assert!(s.contains("device atc_entries=512,"), "{s}");
        assert!(s.contains("fault service mean 5 us max 5 us"), "{s}");
    }

    #[test]
    fn console_failures_become_errors() {
        let mut c = ConsoleState::default();
        c.results.push(ProgramResult {
            name: "selfcheck".into(),
            exit: 1,
        });
        let mut r = Report::default();
        r.absorb_console(&c);
        assert_eq!(r.errors.len(), 2, "{:?}", r.errors);
        assert!(r.summary().contains("FAIL"));
    }

    #[test]
    fn failed_workload_is_an_error_and_events_are_summarised() {
        let mut c = ConsoleState::default();
        let mut w = WorkloadRecord {
            name: "touch".into(),
            policy: "naive".into(),
            ok: false,
            device_faults: 64,
            ..Default::default()
        };
        w.events[Event::Unmap as usize].notifications = 3;
        w.events[Event::Unmap as usize].ats_invalidations = 5;
        c.workloads.push(w);
        c.done_failed = Some(0);
        let mut r = Report::default();
        r.absorb_console(&c);
        assert_eq!(r.errors, vec!["workload touch: data verification failed"]);
        c.workloads[0].ok = true;
        c.workloads[0].violations = 3;
        let mut r = Report::default();
        r.absorb_console(&c);
        assert_eq!(r.errors, vec!["workload touch: 3 coherence violations"]);
        let s = r.summary();
        assert!(s.contains("violations 3"), "{s}");
        assert!(s.contains("workload touch"), "{s}");
        assert!(s.contains("device faults 64"), "{s}");
        assert!(s.contains("UNMAP"), "{s}");
        assert!(
            !s.contains("CLEAR"),
            "events without notifications are left out: {s}"
        );
    }

    #[test]
    fn a_stress_run_sums_its_rounds_per_name() {
        let mut c = ConsoleState::default();
        for (round, faults) in [(1, 10), (2, 32)] {
            c.results.push(ProgramResult {
                name: "touch".into(),
                exit: 0,
            });
            c.workloads.push(WorkloadRecord {
                name: "touch".into(),
                policy: "naive".into(),
                ok: true,
                device_faults: faults,
                violations: round - 1,
                ..Default::default()
            });
        }
        let mut r = Report::default();
        r.absorb_console(&c);
        assert_eq!(r.rounds, None);
        c.handle_line(
            "VGPU-DONE {\"failed\":0,\"rounds\":2}",
            std::time::Instant::now(),
        );
        let mut r = Report::default();
        r.absorb_console(&c);
        assert_eq!(r.rounds, Some(2));
        let s = r.summary();
        assert!(s.contains("rounds 2"), "{s}");
        assert!(s.contains("program touch            x2    ok"), "{s}");
        assert!(s.contains("device faults 42  violations 1"), "{s}");
        assert_eq!(s.matches("   workload touch ").count(), 1, "{s}");
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["rounds"], 2);
    }

    #[test]
    fn violation_samples_are_reported_and_fail_the_run() {
        use device_model::address::{Iova, IovaRange, Pasid};
        use device_model::oracle::{
            Access, CpuLeaf, CpuTranslation, DeviceTranslation, InvalidationRecord as Inval,
            Violation,
        };
        use vm_memory::GuestAddress;
        let sample = ViolationSample {
            violation: Violation {
                pasid: Pasid(1),
                va: Iova(0x7000_1000),
                device: DeviceTranslation {
                    gpa: GuestAddress(0x5000),
                    writable: true,
                },
                cpu: Some(CpuTranslation {
                    gpa: GuestAddress(0x9000),
                    writable: true,
                    leaf: CpuLeaf::Small,
                }),
                access: Access::Write,
            },
            micros: 10,
            after_seq: 1,
            history: vec![Inval {
                seq: 1,
                micros: 5,
                event: device_model::wire::event::CLEAR,
                range: IovaRange {
                    start: 0x7000_1000,
                    end: 0x7000_2000,
                },
                downgrade: false,
            }],
        };
        let mut r = Report::default();
        r.set_violations(&[]);
        assert!(r.errors.is_empty() && r.violation_samples.is_empty());
        r.set_violations(&[sample]);
        let v = serde_json::to_value(&r).unwrap();
        let s = &v["violation_samples"][0];
        assert_eq!(s["va"], "0x70001000");
        assert_eq!(s["device"]["gpa"], "0x5000");
        assert_eq!(s["cpu"]["gpa"], "0x9000");
        assert_eq!(s["history"][0]["event"], "CLEAR");
        assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
        let back: Report = serde_json::from_value(v).unwrap();
        assert_eq!(
            back.violation_samples.len(),
            1,
            "survives the virtual host's relay"
        );
    }
}
