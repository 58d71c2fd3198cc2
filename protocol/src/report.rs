//! The run report: what `vmm run` and `vmm selftest` write with `--report`, what the virtual
//! host relays (`VGPU-HOST-REPORT`), and what the guest tests and `vmm matrix` read back.
//!
//! Stable keys (do not rename): `host`, `kernel`, `boot_ms`, `workloads`, `verdict`; for
//! `vmm selftest` also `selftest`, `tests` and `summary`. The others describe the run and may
//! grow. Rendering (the human summary) lives with the VMM, not here.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::counters::{Counters, Event};
use crate::workload::WorkloadRecord;

/// A run's verdict.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Every guest program passed, the guest ended cleanly and nothing was stale.
    Pass,
    /// Anything else (the default, until a run proves otherwise).
    #[default]
    Fail,
}

impl Verdict {
    /// `Pass` when `passed`.
    pub fn of(passed: bool) -> Verdict {
        if passed {
            Verdict::Pass
        } else {
            Verdict::Fail
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
        })
    }
}

/// Where the VMM ran.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostKind {
    /// Directly on KVM.
    #[default]
    Kvm,
    /// Inside the virtual host (QEMU TCG with nested SVM); the report's word is "nested".
    #[serde(rename = "nested")]
    VirtualHost,
}

impl fmt::Display for HostKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HostKind::Kvm => "kvm",
            HostKind::VirtualHost => "nested",
        })
    }
}

/// Why the VM stopped. In JSON, the sentence [`fmt::Display`] prints.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest powered off through ACPI S5.
    PowerOff,
    /// The guest asked for a reset (i8042 or ACPI reset register).
    Reset,
    /// A vCPU triple-faulted (KVM_EXIT_SHUTDOWN); the vCPU's state at that moment, as text.
    TripleFault(String),
    /// A vCPU stopped on an error the VMM cannot recover from.
    VcpuError(String),
    /// The run's time limit passed.
    Timeout,
    /// A vCPU halted with no in-kernel irqchip to wake it (only bare test programs do).
    Halted,
    /// No VMM said (the virtual host returned no report).
    #[default]
    Unknown,
}

impl ExitReason {
    /// True for the ends a guest chooses itself (power off, reset).
    pub fn is_clean(&self) -> bool {
        matches!(self, ExitReason::PowerOff | ExitReason::Reset)
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::PowerOff => write!(f, "guest powered off"),
            ExitReason::Reset => write!(f, "guest reset"),
            ExitReason::TripleFault(state) if state.is_empty() => write!(f, "vCPU triple fault"),
            ExitReason::TripleFault(state) => write!(f, "vCPU triple fault ({state})"),
            ExitReason::VcpuError(e) => write!(f, "vCPU error: {e}"),
            ExitReason::Timeout => write!(f, "timed out"),
            ExitReason::Halted => write!(f, "vCPU halted"),
            ExitReason::Unknown => write!(f, "unknown"),
        }
    }
}

impl std::str::FromStr for ExitReason {
    type Err = String;

    /// Reads what [`fmt::Display`] printed.
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "guest powered off" => ExitReason::PowerOff,
            "guest reset" => ExitReason::Reset,
            "vCPU triple fault" => ExitReason::TripleFault(String::new()),
            "timed out" => ExitReason::Timeout,
            "vCPU halted" => ExitReason::Halted,
            "unknown" => ExitReason::Unknown,
            _ => {
                if let Some(state) = s
                    .strip_prefix("vCPU triple fault (")
                    .and_then(|r| r.strip_suffix(')'))
                {
                    ExitReason::TripleFault(state.to_string())
                } else if let Some(e) = s.strip_prefix("vCPU error: ") {
                    ExitReason::VcpuError(e.to_string())
                } else {
                    return Err(format!("unknown exit reason {s:?}"));
                }
            }
        })
    }
}

impl Serialize for ExitReason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ExitReason {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A device option's value in `device_config`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OptionValue {
    /// A number (sizes in bytes).
    Number(u64),
    /// A word (`every`, `sampled`, `off`).
    Word(String),
}

impl fmt::Display for OptionValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OptionValue::Number(n) => write!(f, "{n}"),
            OptionValue::Word(w) => f.write_str(w),
        }
    }
}

/// One bucket of the fault service latency histogram.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencyBucket {
    /// Lower bound in µs (the bucket holds [from_us, 2 * from_us)).
    pub from_us: u64,
    /// Faults answered in that time.
    pub count: u64,
}

/// The device's fault service latency: raised to answered (MAP or FAULT_FAIL), in µs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultLatencyReport {
    /// Faults answered.
    pub count: u64,
    /// Sum of the latencies.
    pub total: u64,
    /// The largest.
    pub max: u64,
    /// The non-empty power-of-two buckets.
    pub buckets: Vec<LatencyBucket>,
}

impl FaultLatencyReport {
    /// The mean latency in µs (0 without faults).
    pub fn mean(&self) -> u64 {
        self.total.checked_div(self.count).unwrap_or(0)
    }
}

/// The VMM's own view of the virtual GPU at the end of a run (`device`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceReport {
    /// The totals: `global` and `events` (keyed by event name).
    #[serde(flatten)]
    pub counters: Counters,
    /// The same per PASID (in JSON, keyed by the PASID as a string).
    #[serde(default)]
    pub pasids: BTreeMap<u32, Counters>,
    /// The fault service latency histogram.
    pub fault_latency_us: FaultLatencyReport,
}

/// A translation as the device or the CPU had it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TranslationRecord {
    /// Guest-physical address, hex.
    pub gpa: String,
    /// Writable.
    pub writable: bool,
}

/// An invalidation that touched a violation's page before it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvalidationRecord {
    /// Order among all invalidations the device received (from 1).
    pub seq: u64,
    /// Microseconds since the device was created.
    pub at_us: u64,
    /// The mmu-notifier event.
    pub event: Event,
    /// Range start, hex.
    pub start: String,
    /// Range end (exclusive), hex.
    pub end: String,
    /// It only removed write permission.
    pub downgrade: bool,
}

/// One of the coherence oracle's first violations (`violation_samples`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViolationRecord {
    /// The address space.
    pub pasid: u32,
    /// The virtual address, hex.
    pub va: String,
    /// The access (`read`, `write`).
    pub access: String,
    /// What the device used.
    pub device: TranslationRecord,
    /// What the CPU maps (`null`: nothing).
    pub cpu: Option<TranslationRecord>,
    /// Microseconds since the device was created.
    pub at_us: u64,
    /// The last invalidations whose range holds the page, oldest first.
    pub history: Vec<InvalidationRecord>,
}

/// What the kselftest harness said about one test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HarnessOutcome {
    /// `ok N name`.
    Pass,
    /// `not ok N name`.
    Fail,
    /// `ok N # SKIP reason`, or a `SKIP` line before a plain `ok`.
    Skip,
    /// The test started (`RUN`) and no result followed: the suite stopped inside it.
    Unfinished,
}

/// A selftest's verdict in the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TestResult {
    /// The harness said ok.
    Pass,
    /// The harness said not ok, or the test never finished.
    Fail,
    /// The test skipped itself (the reason says why).
    Skip,
    /// The test cannot run on the guest kernel; never a pass.
    Unsupported,
}

/// One selftest in the report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestReport {
    /// `fixture.variant.test`.
    pub name: String,
    /// The verdict.
    pub result: TestResult,
    /// Why it skipped, failed, or is unsupported.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
    /// What the harness itself said (differs from `result` for unsupported tests).
    pub harness: HarnessOutcome,
}

/// The report's `summary` of a selftest run: counts by result, and what the suite made the
/// device do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SelftestSummary {
    /// Tests that passed.
    pub passed: u32,
    /// Tests that failed or never finished.
    pub failed: u32,
    /// Tests that skipped themselves.
    pub skipped: u32,
    /// Tests this kernel cannot run.
    pub unsupported: u32,
    /// Device faults in the run (the suite is the guest's only program, so all are its own).
    pub device_faults: u64,
    /// ATS invalidation requests the device sent to its ATC, all events together
    /// (`device.events` has them per event).
    pub ats_invalidations: u64,
    /// Translations the coherence oracle found stale.
    pub violations: u64,
}

/// One guest program's result (`VGPU-RESULT`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramResult {
    /// Program name (the `vgpu-` prefix dropped).
    pub name: String,
    /// Its exit status.
    pub exit: i32,
}

/// The raw output of one kernel selftest suite, between the guest program's
/// `VGPU-KSELFTEST-BEGIN <suite>` and `VGPU-KSELFTEST-END <suite> <exit>` lines. Everything
/// the console said in between is kept, kernel messages included: the selftest judge sorts
/// the harness's lines from the rest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SelftestCapture {
    /// The suite name of the BEGIN line.
    pub suite: String,
    /// The lines between the markers.
    pub lines: Vec<String>,
    /// The suite's exit status from the END line; `None` when the END line never came
    /// (the guest crashed or the run timed out).
    pub exit: Option<i32>,
    /// More lines came than the console keeps; the rest were dropped.
    pub truncated: bool,
}

/// One run of a guest.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Where the VMM ran: `"kvm"` (directly) or `"nested"` (inside the virtual host).
    pub host: HostKind,
    /// The guest's `uname -r`.
    pub kernel: Option<String>,
    /// Milliseconds from the start of the boot (images ready) to the guest init's first line.
    pub boot_ms: Option<u64>,
    /// Device-fault workload reports, one each (per round with `--repeat-for`).
    pub workloads: Vec<WorkloadRecord>,
    /// Times the guest ran its program list (more than 1 with `--repeat-for`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub rounds: Option<u64>,
    /// `"pass"` or `"fail"`.
    pub verdict: Verdict,
    /// Why the VM ended.
    pub exit_reason: ExitReason,
    /// The guest programs and their exit status.
    pub programs: Vec<ProgramResult>,
    /// Errors the guest reported, and why a run failed.
    pub errors: Vec<String>,
    /// vCPUs of the guest.
    pub cpus: u8,
    /// Guest RAM in MiB.
    pub mem_mib: u64,
    /// Milliseconds from the start of the boot to the end of the guest.
    pub run_ms: u64,
    /// Milliseconds this command spent building or checking the images before the boot.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub image_build_ms: Option<u64>,
    /// For nested runs: milliseconds from starting the virtual host until its init ran.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub virtual_host_boot_ms: Option<u64>,
    /// For nested runs: wall milliseconds of the whole virtual-host run.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub virtual_host_run_ms: Option<u64>,
    /// The coherence oracle's first violations (PASID, address, both translations, the access
    /// and the invalidations that last touched the page).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub violation_samples: Vec<ViolationRecord>,
    /// The virtual GPU's tunables (`--device`), by option name.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub device_config: Option<BTreeMap<String, OptionValue>>,
    /// The VMM's own view of the virtual GPU at the end of the run: counter totals per
    /// event and global, and the fault service latency histogram.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub device: Option<DeviceReport>,
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

impl Report {
    /// True if the run passed.
    pub fn passed(&self) -> bool {
        self.verdict == Verdict::Pass
    }

    /// The device's final counters, if the VMM read them.
    pub fn device_counters(&self) -> Option<&Counters> {
        self.device.as_ref().map(|d| &d.counters)
    }

    /// Coherence-oracle violations over the whole run: the device's own count where the VMM
    /// read it, else the workloads' sum.
    pub fn violations(&self) -> u64 {
        match self.device_counters() {
            Some(c) => c.global.violations,
            None => self.workloads.iter().map(|w| w.violations).sum(),
        }
    }

    /// The workloads called `name`, in order (one per round).
    pub fn workloads_named<'a>(
        &'a self,
        name: &'a str,
    ) -> impl Iterator<Item = &'a WorkloadRecord> {
        self.workloads.iter().filter(move |w| w.name == name)
    }

    /// Reads a report written with [`Report::to_json_pretty`] (or relayed on one line).
    pub fn from_json(text: &str) -> Result<Report, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// The report file's text.
    pub fn to_json_pretty(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).expect("a report always serializes");
        text.push('\n');
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_keys_are_present_with_their_values() {
        let r = Report {
            host: HostKind::VirtualHost,
            verdict: Verdict::Pass,
            exit_reason: ExitReason::PowerOff,
            ..Default::default()
        };
        let v = serde_json::to_value(&r).unwrap();
        for k in [
            "host",
            "kernel",
            "boot_ms",
            "workloads",
            "verdict",
            "exit_reason",
        ] {
            assert!(v.get(k).is_some(), "{k} missing");
        }
        assert_eq!(v["host"], "nested");
        assert_eq!(v["verdict"], "pass");
        assert_eq!(v["exit_reason"], "guest powered off");
        assert!(v.get("image_build_ms").is_none(), "absent until measured");
        assert_eq!(Report::from_json(&r.to_json_pretty()).unwrap(), r);
    }

    #[test]
    fn exit_reasons_read_back_what_they_print() {
        for r in [
            ExitReason::PowerOff,
            ExitReason::Reset,
            ExitReason::TripleFault(String::new()),
            ExitReason::TripleFault("rip 0xffff, cr0 0x11".into()),
            ExitReason::VcpuError("KVM_RUN: EFAULT".into()),
            ExitReason::Timeout,
            ExitReason::Halted,
            ExitReason::Unknown,
        ] {
            assert_eq!(r.to_string().parse::<ExitReason>(), Ok(r.clone()));
        }
        assert!("the guest ate a bug".parse::<ExitReason>().is_err());
        assert!(ExitReason::Reset.is_clean() && !ExitReason::Timeout.is_clean());
    }

    #[test]
    fn the_device_section_keeps_its_keys() {
        let mut c = Counters::default();
        c.global.device_faults = 9;
        c.event(crate::wire::event::UNMAP).pages_invalidated = 16;
        let d = DeviceReport {
            counters: c,
            pasids: BTreeMap::from([(1, c)]),
            fault_latency_us: FaultLatencyReport {
                count: 2,
                total: 30,
                max: 20,
                buckets: vec![LatencyBucket {
                    from_us: 8,
                    count: 2,
                }],
            },
        };
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["global"]["device_faults"], 9);
        assert_eq!(v["events"]["UNMAP"]["pages_invalidated"], 16);
        assert_eq!(v["pasids"]["1"]["global"]["device_faults"], 9);
        assert_eq!(v["fault_latency_us"]["buckets"][0]["from_us"], 8);
        assert_eq!(d.fault_latency_us.mean(), 15);
        let back: DeviceReport = serde_json::from_value(v).unwrap();
        assert_eq!(back, d);
    }

    #[test]
    fn device_options_are_numbers_or_words() {
        let config = BTreeMap::from([
            ("atc_entries".to_string(), OptionValue::Number(64)),
            ("oracle".to_string(), OptionValue::Word("sampled".into())),
        ]);
        let v = serde_json::to_value(&config).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"atc_entries": 64, "oracle": "sampled"})
        );
        let back: BTreeMap<String, OptionValue> = serde_json::from_value(v).unwrap();
        assert_eq!(back, config);
    }
}
