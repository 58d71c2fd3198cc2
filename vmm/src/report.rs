//! The run report: a human summary and a JSON file whose keys later tools read.
//!
//! Stable keys (do not rename): `host`, `kernel`, `boot_ms`, `workloads`; for `vmm selftest`
//! also `selftest`, `tests` and `summary`. The others describe the run and may grow.

use std::collections::BTreeMap;
use std::path::Path;

use device_model::config::OptionValue;
use device_model::counters::{FaultLatency, EVENT_NAMES};
use device_model::oracle::ViolationSample;
use device_model::{Counters, VgpuConfig};
use serde::{Deserialize, Serialize};

use crate::console::{ConsoleState, ProgramResult, SelftestCapture};
use crate::selftest::{SelftestSummary, TestReport};

/// One run of a guest.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Where the VMM ran: "kvm" (directly) or "nested" (inside the virtual host).
    pub host: String,
    /// The guest's `uname -r`.
    pub kernel: Option<String>,
    /// Milliseconds from the VM's start (once the images are ready) to the guest init's first
    /// line.
    pub boot_ms: Option<u64>,
    /// Device-fault workload reports, one object each (per round with `--repeat-for`).
    pub workloads: Vec<serde_json::Value>,
    /// Times the guest ran its program list (more than 1 with `--repeat-for`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub rounds: Option<u64>,
    /// "pass" or "fail".
    pub verdict: String,
    /// Why the VM ended.
    pub exit_reason: String,
    /// The guest programs and their exit status.
    pub programs: Vec<ProgramResult>,
    /// Errors the guest reported, and why a run failed.
    pub errors: Vec<String>,
    /// vCPUs of the guest.
    pub cpus: u8,
    /// Guest RAM in MiB.
    pub mem_mib: u64,
    /// Milliseconds from the VM's start to the end of the guest.
    pub run_ms: u64,
    /// Milliseconds the images took to build (or to be found up to date) before the VM
    /// started; absent when no image was built (`--kernel`, or the inner VMM of a nested run).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub image_build_ms: Option<u64>,
    /// For nested runs: milliseconds from starting the virtual host (once the images are
    /// ready) until its init ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub virtual_host_boot_ms: Option<u64>,
    /// For nested runs: wall milliseconds of the whole virtual-host run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub virtual_host_run_ms: Option<u64>,
    /// The coherence oracle's first violations (PASID, address, both translations, the access
    /// and the invalidations that last touched the page).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub violation_samples: Vec<serde_json::Value>,
    /// The virtual GPU's tunables (`--device`), by option name.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub device_config: Option<serde_json::Value>,
    /// The VMM's own view of the virtual GPU at the end of the run: counter totals per
    /// event and global, and the fault service latency histogram.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub device: Option<serde_json::Value>,
    /// The last console lines, kept when the run failed.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub console_tail: Vec<String>,
    /// `vmm selftest`: the suite that ran ("hmm").
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub selftest: Option<String>,
    /// `vmm selftest`: the guest driver's policy.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub policy: Option<String>,
    /// `vmm selftest`: every test the suite reported, in order.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tests: Option<Vec<TestReport>>,
    /// `vmm selftest`: counts by result, and what the suite made the device do (JSON key
    /// `summary`).
    #[serde(rename = "summary", skip_serializing_if = "Option::is_none", default)]
    pub selftest_summary: Option<SelftestSummary>,
    /// `vmm selftest`: the file with the suite's raw kselftest output.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub kselftest_output: Option<String>,
    /// Kernel selftest output the console carried (not in the JSON; `vmm selftest` judges it
    /// and writes it beside the report).
    #[serde(skip)]
    pub selftest_captures: Vec<SelftestCapture>,
}

/// The run error for a guest program that exited with a non-zero status.
pub fn program_exit_error(name: &str, exit: i32) -> String {
    format!("guest program {name} exited with {exit}")
}

impl Report {
    /// Fills the guest-side fields from what the console said.
    pub fn absorb_console(&mut self, c: &ConsoleState) {
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
            let name = w.get("name").and_then(|v| v.as_str()).unwrap_or("?");
            if w.get("ok").and_then(|v| v.as_bool()) != Some(true) {
                self.errors
                    .push(format!("workload {name}: data verification failed"));
            }
            // The coherence oracle saw the device use a translation the CPU no longer had.
            if let Some(n) = w
                .get("violations")
                .and_then(|v| v.as_u64())
                .filter(|n| *n > 0)
            {
                self.errors
                    .push(format!("workload {name}: {n} coherence violations"));
            }
        }
        for r in c.results.iter().filter(|r| r.exit != 0) {
            self.errors.push(program_exit_error(&r.name, r.exit));
        }
    }

    /// Echoes the device's tunables as `device_config`.
    pub fn set_device_config(&mut self, config: &VgpuConfig) {
        let map: serde_json::Map<String, serde_json::Value> = config
            .options()
            .iter()
            .map(|(k, v)| {
                let v = match *v {
                    OptionValue::Number(n) => serde_json::Value::from(n),
                    OptionValue::Word(w) => serde_json::Value::from(w),
                };
                (k.to_string(), v)
            })
            .collect();
        self.device_config = Some(map.into());
    }

    /// Records the device's final counters (in total and by PASID) and fault latencies as
    /// `device`.
    pub fn set_device(
        &mut self,
        counters: &Counters,
        by_pasid: &BTreeMap<u32, Counters>,
        latency: &FaultLatency,
    ) {
        use serde_json::{Map, Value};
        let object = |fields: &[(&str, u64)]| -> Value {
            fields
                .iter()
                .map(|(k, v)| (k.to_string(), Value::from(*v)))
                .collect::<Map<_, _>>()
                .into()
        };
        let events = |c: &Counters| -> Map<String, Value> {
            EVENT_NAMES
                .iter()
                .zip(&c.events)
                .map(|(name, e)| (name.to_string(), object(&e.fields())))
                .collect()
        };
        let pasids: Map<String, Value> = by_pasid
            .iter()
            .map(|(p, c)| {
                let v = serde_json::json!({
                    "global": object(&c.global.fields()),
                    "events": events(c),
                });
                (p.to_string(), v)
            })
            .collect();
        let buckets: Vec<Value> = latency
            .nonzero()
            .map(|(from_us, count)| serde_json::json!({"from_us": from_us, "count": count}))
            .collect();
        self.device = Some(serde_json::json!({
            "global": object(&counters.global.fields()),
            "events": events(counters),
            "pasids": pasids,
            "fault_latency_us": {
                "count": latency.count(),
                "total": latency.total_us,
                "max": latency.max_us,
                "buckets": buckets,
            },
        }));
    }

    /// Records the oracle's samples as `violation_samples` and makes them a run error (the
    /// workloads report their own counts; this also catches violations outside a workload).
    pub fn set_violations(&mut self, samples: &[ViolationSample]) {
        let hex = |v: u64| format!("{v:#x}");
        let event = |e: u32| EVENT_NAMES.get(e as usize).copied().unwrap_or("?");
        self.violation_samples = samples
            .iter()
            .map(|s| {
                let v = &s.violation;
                serde_json::json!({
                    "pasid": v.pasid.0,
                    "va": hex(v.va.0),
                    "access": v.access.to_string(),
                    "device": {"gpa": hex(v.device.gpa.0), "writable": v.device.writable},
                    "cpu": v.cpu.map(|c| serde_json::json!({"gpa": hex(c.gpa.0), "writable": c.writable})),
                    "at_us": s.micros,
                    "history": s.history.iter().map(|h| serde_json::json!({
                        "seq": h.seq,
                        "at_us": h.micros,
                        "event": event(h.event),
                        "start": hex(h.range.start),
                        "end": hex(h.range.end),
                        "downgrade": h.downgrade,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        if let Some(first) = samples.first() {
            self.errors.push(format!(
                "coherence oracle: {} sampled violations, first: {}",
                samples.len(),
                first.violation
            ));
        }
    }

    /// A device counter's total from `device.global` (0 when absent).
    pub fn device_global(&self, key: &str) -> u64 {
        self.device
            .as_ref()
            .and_then(|d| d["global"][key].as_u64())
            .unwrap_or(0)
    }

    /// A device event counter by event name, from `device.events` (empty when absent).
    pub fn device_per_event(&self, key: &str) -> Vec<(String, u64)> {
        self.device
            .as_ref()
            .and_then(|d| d["events"].as_object())
            .map(|events| {
                events
                    .iter()
                    .map(|(name, e)| (name.clone(), e[key].as_u64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// True if the run passed.
    pub fn passed(&self) -> bool {
        self.verdict == "pass"
    }

    /// Writes the JSON report.
    pub fn write_json(&self, path: &Path) -> std::io::Result<()> {
        let mut text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        text.push('\n');
        std::fs::write(path, text)
    }

    /// The human summary, a few lines.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let ms = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{v} ms"));
        let title = match (&self.selftest, &self.policy) {
            (Some(suite), Some(policy)) => format!("vmm selftest {suite} (policy {policy})"),
            (Some(suite), None) => format!("vmm selftest {suite}"),
            _ => "vmm run".to_string(),
        };
        s.push_str(&format!(
            "== {title}: {} ({})\n",
            self.verdict.to_uppercase(),
            self.exit_reason
        ));
        s.push_str(&format!(
            "   host {}  kernel {}  cpus {}  mem {} MiB\n",
            self.host,
            self.kernel.as_deref().unwrap_or("?"),
            self.cpus,
            self.mem_mib
        ));
        s.push_str(&format!(
            "   boot {}  run {} ms",
            ms(self.boot_ms),
            self.run_ms
        ));
        if let Some(v) = self.image_build_ms {
            s.push_str(&format!("  images {v} ms"));
        }
        if let Some(v) = self.virtual_host_boot_ms {
            s.push_str(&format!(
                "  virtual host: boot {v} ms, total {}",
                ms(self.virtual_host_run_ms)
            ));
        }
        s.push('\n');
        if self.rounds.is_some_and(|r| r > 1) {
            s.push_str(&self.repeated_summary());
        } else {
            // A selftest program's exit status says little (unsupported tests fail too):
            // its tests are listed instead.
            let programs = self.programs.iter().filter(|_| self.tests.is_none());
            for p in programs {
                let v = if p.exit == 0 { "ok" } else { "FAIL" };
                s.push_str(&format!(
                    "   program {:<16} {v} (exit {})\n",
                    p.name, p.exit
                ));
            }
            for w in &self.workloads {
                s.push_str(&workload_summary(w));
            }
        }
        if let Some(d) = &self.device {
            s.push_str(&device_summary(d, self.device_config.as_ref()));
        }
        s.push_str(&crate::selftest::summary_lines(self));
        for e in &self.errors {
            s.push_str(&format!("   error: {e}\n"));
        }
        if !self.passed() && !self.console_tail.is_empty() {
            s.push_str(&format!(
                "   last {} console lines:\n",
                self.console_tail.len()
            ));
            for l in &self.console_tail {
                s.push_str(&format!("   | {l}\n"));
            }
        }
        s
    }
}

impl Report {
    /// A stress run's programs and workloads, one line per name with the rounds summed.
    fn repeated_summary(&self) -> String {
        let mut s = format!("   rounds {}\n", self.rounds.unwrap_or(0));
        let mut names: Vec<&str> = Vec::new();
        for p in &self.programs {
            if !names.contains(&p.name.as_str()) {
                names.push(&p.name);
            }
        }
        for name in names {
            let runs: Vec<_> = self.programs.iter().filter(|p| p.name == name).collect();
            let failed = runs.iter().filter(|p| p.exit != 0).count();
            s.push_str(&format!(
                "   program {name:<16} x{:<4} {}\n",
                runs.len(),
                if failed == 0 {
                    "ok".to_string()
                } else {
                    format!("FAIL ({failed} failed)")
                }
            ));
            let ws: Vec<_> = self
                .workloads
                .iter()
                .filter(|w| w.get("name").and_then(|v| v.as_str()) == Some(name))
                .collect();
            if ws.is_empty() {
                continue;
            }
            let ok = ws
                .iter()
                .all(|w| w.get("ok").and_then(|v| v.as_bool()) == Some(true));
            s.push_str(&format!(
                "   workload {name:<12} x{:<4} {}  device faults {}  violations {}\n",
                ws.len(),
                if ok { "ok  " } else { "FAIL" },
                ws.iter().map(|w| num(w, "device_faults")).sum::<u64>(),
                ws.iter().map(|w| num(w, "violations")).sum::<u64>(),
            ));
        }
        s
    }
}

/// The unsigned number at `v[k]`, 0 when absent (the report's JSON comes from the guest).
fn num(v: &serde_json::Value, k: &str) -> u64 {
    v.get(k).and_then(|v| v.as_u64()).unwrap_or(0)
}

/// Lines for one workload: its verdict, then one line per event the device heard of.
fn workload_summary(w: &serde_json::Value) -> String {
    let str_of = |k: &str| w.get(k).and_then(|v| v.as_str()).unwrap_or("?");
    let ok = w.get("ok").and_then(|v| v.as_bool()) == Some(true);
    let mut s = format!(
        "   workload {:<12} {} policy {}  device faults {}  violations {}\n",
        str_of("name"),
        if ok { "ok  " } else { "FAIL" },
        str_of("policy"),
        num(w, "device_faults"),
        w.get("violations")
            .and_then(|v| v.as_u64())
            .map_or("-".into(), |v| v.to_string()),
    );
    if let Some(events) = w.get("events").and_then(|e| e.as_object()) {
        for (name, e) in events {
            if num(e, "notifications") == 0 {
                continue;
            }
            s.push_str(&format!(
                "      {name:<16} notifications {:>6}  ats_invalidations {:>6}  pages {:>7}  refaults {:>6}\n",
                num(e, "notifications"),
                num(e, "ats_invalidations"),
                num(e, "pages_invalidated"),
                num(e, "refaults"),
            ));
        }
    }
    s
}

/// One line of the host's device totals: the options, faults, ATC use, fault service time.
fn device_summary(d: &serde_json::Value, config: Option<&serde_json::Value>) -> String {
    let options = config
        .and_then(|c| c.as_object())
        .map(|c| {
            c.iter()
                .map(|(k, v)| match v.as_str() {
                    Some(word) => format!("{k}={word}"),
                    None => format!("{k}={v}"),
                })
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let g = &d["global"];
    let l = &d["fault_latency_us"];
    let mean = num(l, "total").checked_div(num(l, "count")).unwrap_or(0);
    format!(
        "   device {options}: faults {}  atc hits {} misses {}  fault service mean {mean} us max {} us\n",
        num(g, "device_faults"),
        num(g, "atc_hits"),
        num(g, "atc_misses"),
        num(l, "max"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_keys_are_present() {
        let r = Report {
            host: "nested".into(),
            verdict: "pass".into(),
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
    fn device_config_is_echoed_and_survives_the_nested_relay() {
        let mut r = Report::default();
        let c = VgpuConfig::from_options("atc_entries=64,atc_ways=4,fault_ahead=64K").unwrap();
        r.set_device_config(&c);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["device_config"]["atc_entries"], 64);
        assert_eq!(v["device_config"]["atc_ways"], 4);
        assert_eq!(v["device_config"]["fault_ahead"], 65536);
        assert_eq!(v["device_config"]["oracle"], "every");
        let summary = device_summary(&serde_json::json!({}), v.get("device_config"));
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
        let mut r = Report {
            host: "kvm".into(),
            ..Default::default()
        };
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
        c.workloads.push(serde_json::json!({
            "name": "touch", "policy": "naive", "ok": false, "device_faults": 64,
            "violations": null,
            "events": {
                "UNMAP": {"notifications": 3, "ats_invalidations": 5},
                "CLEAR": {"notifications": 0, "ats_invalidations": 0}
            }
        }));
        c.done_failed = Some(0);
        let mut r = Report::default();
        r.absorb_console(&c);
        assert_eq!(r.errors, vec!["workload touch: data verification failed"]);
        c.workloads[0]["ok"] = serde_json::json!(true);
        c.workloads[0]["violations"] = serde_json::json!(3);
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
            c.workloads.push(serde_json::json!({
                "name": "touch", "policy": "naive", "ok": true,
                "device_faults": faults, "violations": round - 1,
            }));
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
            Access, CpuLeaf, CpuTranslation, DeviceTranslation, InvalidationRecord, Violation,
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
            history: vec![InvalidationRecord {
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
        assert_eq!(back.violation_samples.len(), 1, "survives the nested relay");
    }
}
