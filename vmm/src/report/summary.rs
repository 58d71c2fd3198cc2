//! Every human-readable line of a report: the run, its programs and workloads, the device,
//! a selftest's results, the errors and the console tail.

use std::collections::BTreeMap;

use protocol::counters::Event;
use protocol::report::{DeviceReport, OptionValue, SelftestSummary, TestResult};
use protocol::{Report, WorkloadRecord};

/// The human summary of `r`, a few lines.
pub(super) fn render(r: &Report) -> String {
    let mut s = String::new();
    let ms = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{v} ms"));
    let title = match (&r.selftest, &r.policy) {
        (Some(suite), Some(policy)) => format!("vmm selftest {suite} (policy {policy})"),
        (Some(suite), None) => format!("vmm selftest {suite}"),
        _ => "vmm run".to_string(),
    };
    s.push_str(&format!(
        "== {title}: {} ({})\n",
        r.verdict.to_string().to_uppercase(),
        r.exit_reason
    ));
    s.push_str(&format!(
        "   host {}  kernel {}  cpus {}  mem {} MiB\n",
        r.host,
        r.kernel.as_deref().unwrap_or("?"),
        r.cpus,
        r.mem_mib
    ));
    s.push_str(&format!("   boot {}  run {} ms", ms(r.boot_ms), r.run_ms));
    if let Some(v) = r.image_build_ms {
        s.push_str(&format!("  images {v} ms"));
    }
    if let Some(v) = r.virtual_host_boot_ms {
        s.push_str(&format!(
            "  virtual host: boot {v} ms, total {}",
            ms(r.virtual_host_run_ms)
        ));
    }
    s.push('\n');
    if r.rounds.is_some_and(|r| r > 1) {
        s.push_str(&repeated_summary(r));
    } else {
        // A selftest program's exit status says little (unsupported tests fail too):
        // its tests are listed instead.
        let programs = r.programs.iter().filter(|_| r.tests.is_none());
        for p in programs {
            let v = if p.exit == 0 { "ok" } else { "FAIL" };
            s.push_str(&format!(
                "   program {:<16} {v} (exit {})\n",
                p.name, p.exit
            ));
        }
        for w in &r.workloads {
            s.push_str(&workload_summary(w));
        }
    }
    if let Some(d) = &r.device {
        s.push_str(&device_summary(d, r.device_config.as_ref()));
    }
    s.push_str(&selftest_lines(r));
    for e in &r.errors {
        s.push_str(&format!("   error: {e}\n"));
    }
    if !r.passed() && !r.console_tail.is_empty() {
        s.push_str(&format!(
            "   last {} console lines:\n",
            r.console_tail.len()
        ));
        for l in &r.console_tail {
            s.push_str(&format!("   | {l}\n"));
        }
    }
    s
}

/// A stress run's programs and workloads, one line per name with the rounds summed.
fn repeated_summary(r: &Report) -> String {
    let mut s = format!("   rounds {}\n", r.rounds.unwrap_or(0));
    let mut names: Vec<&str> = Vec::new();
    for p in &r.programs {
        if !names.contains(&p.name.as_str()) {
            names.push(&p.name);
        }
    }
    for name in names {
        let runs: Vec<_> = r.programs.iter().filter(|p| p.name == name).collect();
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
        let ws: Vec<&WorkloadRecord> = r.workloads_named(name).collect();
        if ws.is_empty() {
            continue;
        }
        let ok = ws.iter().all(|w| w.ok);
        s.push_str(&format!(
            "   workload {name:<12} x{:<4} {}  device faults {}  violations {}\n",
            ws.len(),
            if ok { "ok  " } else { "FAIL" },
            ws.iter().map(|w| w.device_faults).sum::<u64>(),
            ws.iter().map(|w| w.violations).sum::<u64>(),
        ));
    }
    s
}

/// Lines for one workload: its verdict, then one line per event the device heard of.
fn workload_summary(w: &WorkloadRecord) -> String {
    let mut s = format!(
        "   workload {:<12} {} policy {}  device faults {}  violations {}\n",
        w.name,
        if w.ok { "ok  " } else { "FAIL" },
        w.policy,
        w.device_faults,
        w.violations,
    );
    for e in Event::ALL {
        let c = w.event(e);
        if c.notifications == 0 {
            continue;
        }
        s.push_str(&format!(
            "      {:<16} notifications {:>6}  ats_invalidations {:>6}  pages {:>7}  refaults {:>6}\n",
            e.name(),
            c.notifications,
            c.ats_invalidations,
            c.pages_invalidated,
            c.refaults,
        ));
    }
    s
}

/// One line of the host's device totals: the options, faults, ATC use, fault service time.
pub(super) fn device_summary(
    d: &DeviceReport,
    config: Option<&BTreeMap<String, OptionValue>>,
) -> String {
    let options = config
        .map(|c| {
            c.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let g = &d.counters.global;
    let l = &d.fault_latency_us;
    format!(
        "   device {options}: faults {}  atc hits {} misses {}  fault service mean {} us max {} us\n",
        g.device_faults,
        g.atc_hits,
        g.atc_misses,
        l.mean(),
        l.max,
    )
}

/// `hmm selftests: N passed, N failed, N skipped, N unsupported`
pub(crate) fn totals_line(suite: &str, s: &SelftestSummary) -> String {
    format!(
        "{suite} selftests: {} passed, {} failed, {} skipped, {} unsupported",
        s.passed, s.failed, s.skipped, s.unsupported
    )
}

/// The lines of a selftest report (empty for other runs): the failures and skips
/// one per line, the unsupported tests grouped by reason, the totals, what the device did and
/// the oracle's verdict.
fn selftest_lines(report: &Report) -> String {
    let (Some(tests), Some(summary)) = (&report.tests, &report.selftest_summary) else {
        return String::new();
    };
    let suite = report.selftest.as_deref().unwrap_or("?");
    let mut s = String::new();
    for t in tests {
        let label = match t.result {
            TestResult::Fail => "FAIL",
            TestResult::Skip => "skip",
            TestResult::Pass | TestResult::Unsupported => continue,
        };
        let reason = t.reason.as_deref().unwrap_or("no reason given");
        s.push_str(&format!("   {label} {}: {reason}\n", t.name));
    }
    let mut reasons: Vec<(&str, u32)> = Vec::new();
    for t in tests.iter().filter(|t| t.result == TestResult::Unsupported) {
        let reason = t.reason.as_deref().unwrap_or("?");
        match reasons.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, n)) => *n += 1,
            None => reasons.push((reason, 1)),
        }
    }
    for (reason, n) in reasons {
        s.push_str(&format!("   unsupported {n:>2}: {reason}\n"));
    }
    s.push_str(&format!("   {}\n", totals_line(suite, summary)));
    let device = report.device_counters().copied().unwrap_or_default();
    let by_event: Vec<String> = Event::ALL
        .into_iter()
        .map(|e| (e, device.of(e).ats_invalidations))
        .filter(|(_, n)| *n > 0)
        .map(|(event, n)| format!("{event} {n}"))
        .collect();
    s.push_str(&format!(
        "   device faults {}, ATS invalidations {}{}\n",
        summary.device_faults,
        summary.ats_invalidations,
        if by_event.is_empty() {
            String::new()
        } else {
            format!(" ({})", by_event.join(", "))
        }
    ));
    s.push_str(&format!(
        "   coherence oracle: {} violations{}\n",
        summary.violations,
        if summary.violations == 0 {
            " (pass)"
        } else {
            " (FAIL)"
        }
    ));
    s
}
