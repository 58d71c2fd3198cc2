//! `vmm selftest`: a kernel selftest suite run in the guest, judged from its console output.
//!
//! The guest program (`/bin/vgpu-<suite>-tests`) frames the suite's output with
//! `VGPU-KSELFTEST-BEGIN <suite>` and `VGPU-KSELFTEST-END <suite> <exit>`; `console.rs` keeps
//! what came between ([`SelftestCapture`]). This module reads that text as the 6.1
//! `kselftest_harness.h` writes it (TAP 13):
//!
//! ```text
//! TAP version 13
//! 1..58
//! # Starting 58 tests from 4 test cases.
//! #  RUN           hmm.hmm_device_private.open_close ...
//! #            OK  hmm.hmm_device_private.open_close
//! ok 1 hmm.hmm_device_private.open_close
//! #  RUN           hmm.hmm_device_private.anon_write_hugetlbfs ...
//! #      SKIP      Huge page could not be allocated
//! #            OK  hmm.hmm_device_private.anon_write_hugetlbfs
//! ok 9 # SKIP Huge page could not be allocated
//! #  RUN           hmm.hmm_device_private.migrate ...
//! # hmm-tests.c:982:migrate:Expected ret (-95) == 0 (0)
//! # migrate: Test terminated by assertion
//! #          FAIL  hmm.hmm_device_private.migrate
//! not ok 12 hmm.hmm_device_private.migrate
//! # FAILED: 50 / 58 tests passed.
//! # Totals: pass:50 fail:8 xfail:0 xpass:0 skip:0 error:0
//! ```
//!
//! Quirks of that harness the parser handles: a skipped test's TAP line has no name (the name
//! comes from its `RUN` line); a `SKIP` in a fixture setup that then calls `exit(0)` (how
//! hmm-tests skips the device-coherent variants) is printed as a plain `ok`, so a `SKIP` line
//! between `RUN` and the result makes it a skip. The serial console also carries kernel
//! messages, which may come between (or, rarely, inside) the harness's lines: lines that are
//! not the harness's are ignored, and a test whose TAP line was lost is judged by the
//! harness's own `OK`/`FAIL` line, never guessed as a pass.
//!
//! Some tests cannot run on the guest kernel at all (Debian's 6.1 kernels have no
//! `CONFIG_DEVICE_PRIVATE`): [`Suite::unsupported`] names them with the reason; they are
//! reported as `unsupported`, whatever the harness said, and never counted as passes.

use std::path::{Path, PathBuf};

pub use protocol::report::{HarnessOutcome, SelftestSummary, TestReport, TestResult};
use protocol::{Event, Verdict};

use crate::console::SelftestCapture;
use crate::report::{program_exit_error, Report};
use crate::run::Policy;

/// A kernel selftest suite that `vmm selftest` can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Suite {
    /// `tools/testing/selftests/vm/hmm-tests.c` (6.1) against the virtual GPU's
    /// dmirror-compatible `/dev/hmm_dmirror0` and `/dev/hmm_dmirror1`.
    Hmm,
}

/// Why the device-private tests of hmm-tests cannot run here.
const NO_DEVICE_PRIVATE: &str = "migrates pages to device-private memory \
     (HMM_DMIRROR_MIGRATE_TO_DEV): the guest kernel has no CONFIG_DEVICE_PRIVATE";
/// Why the exclusive-access tests of hmm-tests cannot run here.
const NO_DEVICE_EXCLUSIVE: &str = "needs make_device_exclusive_range(), which 6.1 builds \
     only with CONFIG_DEVICE_PRIVATE (unset in the guest kernel)";
/// Why the device-coherent variants of hmm-tests cannot run here.
const NO_DEVICE_COHERENT: &str = "needs device-coherent memory (dmirror units 2 and 3); the \
     virtual GPU offers only /dev/hmm_dmirror0 and /dev/hmm_dmirror1 (and MEMORY_DEVICE_COHERENT \
     needs CONFIG_DEVICE_PRIVATE too)";

/// The hmm-tests (6.1) that cannot run on the guest kernel, with the reason. A name ending in
/// `*` covers every test that starts with the rest. Checked against hmm-tests.c: each one
/// calls HMM_DMIRROR_MIGRATE_TO_DEV or HMM_DMIRROR_EXCLUSIVE, or opens a coherent unit.
const HMM_UNSUPPORTED: &[(&str, &str)] = &[
    ("hmm.hmm_device_coherent.*", NO_DEVICE_COHERENT),
    ("hmm2.hmm2_device_coherent.*", NO_DEVICE_COHERENT),
    ("hmm.hmm_device_private.migrate", NO_DEVICE_PRIVATE),
    (
        "hmm.hmm_device_private.migrate_file_private",
        NO_DEVICE_PRIVATE,
    ),
    ("hmm.hmm_device_private.migrate_fault", NO_DEVICE_PRIVATE),
    ("hmm.hmm_device_private.migrate_release", NO_DEVICE_PRIVATE),
    ("hmm.hmm_device_private.migrate_shared", NO_DEVICE_PRIVATE),
    ("hmm.hmm_device_private.migrate_multiple", NO_DEVICE_PRIVATE),
    ("hmm.hmm_device_private.hmm_gup_test", NO_DEVICE_PRIVATE),
    (
        "hmm.hmm_device_private.hmm_cow_in_device",
        NO_DEVICE_PRIVATE,
    ),
    ("hmm2.hmm2_device_private.migrate_mixed", NO_DEVICE_PRIVATE),
    ("hmm2.hmm2_device_private.snapshot", NO_DEVICE_PRIVATE),
    ("hmm2.hmm2_device_private.double_map", NO_DEVICE_PRIVATE),
    ("hmm.hmm_device_private.exclusive", NO_DEVICE_EXCLUSIVE),
    (
        "hmm.hmm_device_private.exclusive_mprotect",
        NO_DEVICE_EXCLUSIVE,
    ),
    ("hmm.hmm_device_private.exclusive_cow", NO_DEVICE_EXCLUSIVE),
];

/// The hmm-tests that only mirror (no device memory), which must pass on the virtual GPU
/// (issue 6's list, less the `exclusive*` tests this kernel cannot run).
pub const HMM_MUST_PASS: &[&str] = &[
    "hmm.hmm_device_private.open_close",
    "hmm.hmm_device_private.anon_read",
    "hmm.hmm_device_private.anon_read_prot",
    "hmm.hmm_device_private.anon_write",
    "hmm.hmm_device_private.anon_write_prot",
    "hmm.hmm_device_private.anon_write_child",
    "hmm.hmm_device_private.anon_write_child_shared",
    "hmm.hmm_device_private.anon_write_huge",
    "hmm.hmm_device_private.anon_write_hugetlbfs",
    "hmm.hmm_device_private.file_read",
    "hmm.hmm_device_private.file_write",
    "hmm.hmm_device_private.anon_read_multiple",
    "hmm.hmm_device_private.anon_teardown",
    "hmm.hmm_device_private.mixedmap",
    "hmm.hmm_device_private.compound",
];

impl Suite {
    /// The suite's name (`VGPU-KSELFTEST-BEGIN <name>`, the report's `selftest`).
    pub fn name(self) -> &'static str {
        match self {
            Suite::Hmm => "hmm",
        }
    }

    /// The guest program that runs it (`/bin/vgpu-<program>`).
    pub fn guest_program(self) -> &'static str {
        match self {
            Suite::Hmm => "hmm-tests",
        }
    }

    /// Why `test` cannot run on the guest kernel, if it cannot.
    pub fn unsupported(self, test: &str) -> Option<&'static str> {
        let list = match self {
            Suite::Hmm => HMM_UNSUPPORTED,
        };
        list.iter()
            .find(|(pattern, _)| match pattern.strip_suffix('*') {
                Some(prefix) => test.starts_with(prefix),
                None => test == *pattern,
            })
            .map(|(_, reason)| *reason)
    }

    /// The tests that must pass on the virtual GPU.
    pub fn must_pass(self) -> &'static [&'static str] {
        match self {
            Suite::Hmm => HMM_MUST_PASS,
        }
    }
}

/// One test as read from the console.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawTest {
    /// `fixture.variant.test`.
    pub name: String,
    /// What the harness said.
    pub outcome: HarnessOutcome,
    /// The skip reason, or the harness's diagnostic lines (assertions, timeouts).
    pub notes: Vec<String>,
}

/// The harness's own `# Totals:` line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// `pass:`
    pub pass: u32,
    /// `fail:`
    pub fail: u32,
    /// `skip:`
    pub skip: u32,
    /// `xfail:` + `xpass:` + `error:`
    pub other: u32,
}

impl Totals {
    /// Every result the harness counted.
    pub fn all(&self) -> u32 {
        self.pass + self.fail + self.skip + self.other
    }
}

/// A suite's output, read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    /// The plan (`1..N`).
    pub plan: Option<u32>,
    /// The tests in the order they ran.
    pub tests: Vec<RawTest>,
    /// The totals line.
    pub totals: Option<Totals>,
    /// A `Bail out!` message.
    pub bailed: Option<String>,
}

/// Diagnostic lines kept per test (the first ones say why it failed).
const MAX_NOTES: usize = 6;
/// Longest diagnostic line kept.
const MAX_NOTE_LEN: usize = 300;

/// A test between its `RUN` line and its result.
#[derive(Default)]
struct Pending {
    name: String,
    /// The harness's `OK`/`FAIL` line, printed just before the TAP line.
    harness_passed: Option<bool>,
    skip_reason: Option<String>,
    notes: Vec<String>,
}

impl Pending {
    fn note(&mut self, line: &str) {
        if self.notes.len() < MAX_NOTES {
            let mut end = line.len().min(MAX_NOTE_LEN);
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            self.notes.push(line[..end].to_string());
        }
    }

    /// The test's result when its TAP line never came.
    fn without_tap_line(mut self, why: &str) -> RawTest {
        let outcome = match (self.harness_passed, &self.skip_reason) {
            (Some(true), Some(_)) => HarnessOutcome::Skip,
            (Some(true), None) => HarnessOutcome::Pass,
            (Some(false), _) => HarnessOutcome::Fail,
            (None, _) => {
                self.note(why);
                HarnessOutcome::Unfinished
            }
        };
        self.finish(outcome)
    }

    fn finish(self, outcome: HarnessOutcome) -> RawTest {
        let notes = match (outcome, self.skip_reason) {
            (HarnessOutcome::Skip, Some(reason)) => vec![reason],
            _ => self.notes,
        };
        RawTest {
            name: self.name,
            outcome,
            notes,
        }
    }
}

/// True for a line the kernel printed (`[  12.345678] ...`), not the harness.
fn is_kernel_line(line: &str) -> bool {
    let Some(rest) = line.strip_prefix('[') else {
        return false;
    };
    let Some((stamp, _)) = rest.split_once(']') else {
        return false;
    };
    let stamp = stamp.trim_start();
    !stamp.is_empty() && stamp.chars().all(|c| c.is_ascii_digit() || c == '.')
}

/// A test name as the harness prints it: no spaces, at least `fixture.test`.
fn looks_like_test_name(s: &str) -> bool {
    s.contains('.') && !s.is_empty() && !s.contains(char::is_whitespace)
}

/// Parses `ok N rest` / `not ok N rest` into (passed, rest).
fn tap_result(line: &str) -> Option<(bool, &str)> {
    let (passed, rest) = if let Some(r) = line.strip_prefix("ok ") {
        (true, r)
    } else {
        (false, line.strip_prefix("not ok ")?)
    };
    let (number, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    number.parse::<u32>().ok()?;
    Some((passed, rest.trim()))
}

/// Parses `# Totals: pass:50 fail:8 xfail:0 xpass:0 skip:0 error:0`.
fn totals(rest: &str) -> Option<Totals> {
    let mut t = Totals::default();
    for field in rest.split_whitespace() {
        let (key, value) = field.split_once(':')?;
        let value: u32 = value.parse().ok()?;
        match key {
            "pass" => t.pass = value,
            "fail" => t.fail = value,
            "skip" => t.skip = value,
            _ => t.other = t.other.saturating_add(value),
        }
    }
    Some(t)
}

/// Reads kselftest harness output (see the module doc). Never fails: what cannot be read is
/// left out, and [`judge`] notices what is missing.
pub fn parse(lines: &[String]) -> Parsed {
    let mut out = Parsed::default();
    let mut pending: Option<Pending> = None;
    for line in lines {
        let line = line.trim_end();
        if line.is_empty() || is_kernel_line(line) || line == "TAP version 13" {
            continue;
        }
        if let Some(rest) = line.strip_prefix("1..") {
            let count = rest.split_whitespace().next().unwrap_or("");
            if let Ok(n) = count.parse() {
                out.plan = Some(n);
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("Bail out!") {
            out.bailed = Some(rest.trim().to_string());
            continue;
        }
        if let Some((passed, rest)) = tap_result(line) {
            let p = pending.take().unwrap_or_default();
            let directive = rest.strip_prefix('#').map(str::trim_start);
            let skip = directive.and_then(|d| d.strip_prefix("SKIP"));
            let outcome = match (passed, skip) {
                (true, Some(_)) => HarnessOutcome::Skip,
                (true, None) if p.skip_reason.is_some() => HarnessOutcome::Skip,
                (true, None) => HarnessOutcome::Pass,
                (false, _) => HarnessOutcome::Fail,
            };
            let mut p = Pending {
                skip_reason: match skip {
                    Some(reason) if !reason.trim().is_empty() => Some(reason.trim().to_string()),
                    _ => p.skip_reason,
                },
                ..p
            };
            if directive.is_none() && looks_like_test_name(rest) {
                p.name = rest.to_string();
            }
            if p.name.is_empty() {
                // Neither a RUN line nor a name on the TAP line survived.
                p.name = format!("#{}", out.tests.len() + 1);
            }
            out.tests.push(p.finish(outcome));
            continue;
        }
        let Some(msg) = line.strip_prefix('#') else {
            // The test's own output (hmm-tests prints "could not open ..." on stderr).
            if let Some(p) = pending.as_mut() {
                p.note(line);
            }
            continue;
        };
        let msg = msg.trim();
        if let Some(rest) = msg.strip_prefix("RUN ") {
            let name = rest.trim().trim_end_matches("...").trim_end();
            if let Some(previous) = pending.take() {
                let why = "its result line was lost on the console";
                out.tests.push(previous.without_tap_line(why));
            }
            pending = Some(Pending {
                name: name.to_string(),
                ..Default::default()
            });
        } else if let Some(rest) = msg.strip_prefix("Totals:") {
            out.totals = totals(rest);
        } else if let Some(p) = pending.as_mut() {
            if let Some(reason) = msg.strip_prefix("SKIP ") {
                p.skip_reason = Some(reason.trim().to_string());
            } else if let Some(name) = msg.strip_prefix("OK ") {
                if name.trim() == p.name {
                    p.harness_passed = Some(true);
                }
            } else if let Some(name) = msg.strip_prefix("FAIL ") {
                if name.trim() == p.name {
                    p.harness_passed = Some(false);
                }
            } else {
                p.note(msg);
            }
        }
    }
    if let Some(p) = pending {
        out.tests
            .push(p.without_tap_line("the suite stopped while this test ran"));
    }
    out
}

/// A suite run, judged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Judged {
    /// Every test the console reported, in order.
    pub tests: Vec<TestReport>,
    /// The counts (the device fields are left at 0: see [`apply`]).
    pub summary: SelftestSummary,
    /// Why the suite as a whole did not finish cleanly (none when it did).
    pub problems: Vec<String>,
}

/// Judges a suite's captured output; `None` (no BEGIN line) is a problem of its own.
pub fn judge(suite: Suite, capture: Option<&SelftestCapture>) -> Judged {
    let mut j = Judged::default();
    let Some(capture) = capture else {
        j.problems.push(format!(
            "the guest never started the {} selftests (no VGPU-KSELFTEST-BEGIN {} line; is \
             /bin/vgpu-{} in the guest image?)",
            suite.name(),
            suite.name(),
            suite.guest_program()
        ));
        return j;
    };
    let parsed = parse(&capture.lines);
    for t in &parsed.tests {
        let note = (!t.notes.is_empty()).then(|| t.notes.join(" | "));
        let (result, reason) = match (suite.unsupported(&t.name), t.outcome) {
            (Some(why), _) => (TestResult::Unsupported, Some(why.to_string())),
            (None, HarnessOutcome::Pass) => (TestResult::Pass, None),
            (None, HarnessOutcome::Skip) => (TestResult::Skip, note),
            (None, HarnessOutcome::Fail | HarnessOutcome::Unfinished) => (TestResult::Fail, note),
        };
        let count = match result {
            TestResult::Pass => &mut j.summary.passed,
            TestResult::Fail => &mut j.summary.failed,
            TestResult::Skip => &mut j.summary.skipped,
            TestResult::Unsupported => &mut j.summary.unsupported,
        };
        *count += 1;
        j.tests.push(TestReport {
            name: t.name.clone(),
            result,
            reason,
            harness: t.outcome,
        });
    }
    let seen = parsed.tests.len() as u32;
    match capture.exit {
        None => j.problems.push(format!(
            "the {} selftests did not finish (no VGPU-KSELFTEST-END line: the program died, the guest crashed \
             or the run timed out)",
            suite.name()
        )),
        Some(code) if parsed.totals.is_none() => j.problems.push(format!(
            "the {} selftests exited with {code} before their totals line",
            suite.name()
        )),
        Some(_) => {}
    }
    if capture.truncated {
        j.problems
            .push("the selftest output was too long and was cut".into());
    }
    if let Some(why) = &parsed.bailed {
        j.problems.push(format!("the harness bailed out: {why}"));
    }
    match parsed.plan {
        Some(plan) if plan != seen => j.problems.push(format!(
            "{seen} of the {plan} planned tests reported a result"
        )),
        None => j.problems.push("no test plan line (1..N)".into()),
        _ => {}
    }
    if let Some(t) = parsed.totals {
        if t.all() != seen {
            j.problems.push(format!(
                "the harness counted {} results but {seen} were read from the console",
                t.all()
            ));
        }
    }
    j
}

/// `hmm selftests: N passed, N failed, N skipped, N unsupported`
pub fn totals_line(suite: &str, s: &SelftestSummary) -> String {
    format!(
        "{suite} selftests: {} passed, {} failed, {} skipped, {} unsupported",
        s.passed, s.failed, s.skipped, s.unsupported
    )
}

/// Turns a finished run of `suite`'s guest program into a selftest report: the tests, the
/// summary, and a verdict that passes only when no test failed, the suite finished and the
/// oracle saw no violation (besides everything that fails any run: a panic, a timeout, ...).
pub fn apply(report: &mut Report, suite: Suite, policy: Policy) {
    let capture = report
        .selftest_captures
        .iter()
        .rev()
        .find(|c| c.suite == suite.name());
    let judged = judge(suite, capture);
    if capture.is_some_and(|c| c.exit.is_some()) {
        // The harness exits non-zero when any test failed, unsupported ones included: once
        // the suite has reported every test, its exit status is judged test by test here.
        let program = suite.guest_program();
        let expected: Vec<String> = report
            .programs
            .iter()
            .filter(|p| p.name == program && p.exit != 0)
            .map(|p| program_exit_error(&p.name, p.exit))
            .collect();
        report.errors.retain(|e| !expected.contains(e));
    }
    report.errors.extend(judged.problems.iter().cloned());
    let failed: Vec<&str> = judged
        .tests
        .iter()
        .filter(|t| t.result == TestResult::Fail)
        .map(|t| t.name.as_str())
        .collect();
    if !failed.is_empty() {
        report.errors.push(format!(
            "{} selftests failed: {}",
            suite.name(),
            failed.join(", ")
        ));
    }
    let mut summary = judged.summary;
    let device = report.device_counters().copied().unwrap_or_default();
    summary.device_faults = device.global.device_faults;
    summary.ats_invalidations = device.events.iter().map(|e| e.ats_invalidations).sum();
    summary.violations = device.global.violations;
    if summary.violations > 0 && report.violation_samples.is_empty() {
        report.errors.push(format!(
            "coherence oracle: {} violations during the {} selftests",
            summary.violations,
            suite.name()
        ));
    }
    report.selftest = Some(suite.name().into());
    report.policy = Some(policy.as_str().into());
    report.tests = Some(judged.tests);
    report.selftest_summary = Some(summary);
    let passed = report.errors.is_empty() && summary.violations == 0;
    report.verdict = Verdict::of(passed);
    if passed {
        // Kept by the run only because the program's exit status was not 0.
        report.console_tail.clear();
    }
}

/// Where the raw kselftest output of a report at `report` goes: beside it, the extension
/// replaced (`hmm.json` -> `hmm.kselftest.txt`).
pub fn raw_output_path(report: &Path) -> PathBuf {
    report.with_extension("kselftest.txt")
}

/// The suite's raw output as the console carried it (kernel lines included), if it started.
pub fn raw_output(report: &Report, suite: Suite) -> Option<String> {
    let c = report
        .selftest_captures
        .iter()
        .rev()
        .find(|c| c.suite == suite.name())?;
    let mut text = c.lines.join("\n");
    text.push('\n');
    match c.exit {
        Some(code) => text.push_str(&format!("# (suite exit status {code})\n")),
        None => text.push_str("# (output ends here: the suite did not finish)\n"),
    }
    Some(text)
}

/// The console summary of a selftest report (empty for other runs): the failures and skips
/// one per line, the unsupported tests grouped by reason, the totals, what the device did and
/// the oracle's verdict.
pub fn summary_lines(report: &Report) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::RunReport;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_string).collect()
    }

    fn capture(text: &str, exit: Option<i32>) -> SelftestCapture {
        SelftestCapture {
            suite: "hmm".into(),
            lines: lines(text),
            exit,
            truncated: false,
        }
    }

    /// The 6.1 harness's output for one test, as `__run_test` prints it.
    fn harness_test(n: u32, name: &str, result: &str) -> String {
        let mut s = format!("#  RUN           {name} ...\n");
        match result {
            "pass" => s.push_str(&format!("#            OK  {name}\nok {n} {name}\n")),
            "fail" => {
                let test = name.rsplit('.').next().unwrap();
                s.push_str(&format!(
                    "# hmm-tests.c:982:{test}:Expected ret (-95) == 0 (0)\n\
                     # {test}: Test terminated by assertion\n\
                     #          FAIL  {name}\nnot ok {n} {name}\n"
                ));
            }
            "skip" => s.push_str(&format!(
                "#      SKIP      Huge page could not be allocated\n\
                 #            OK  {name}\nok {n} # SKIP Huge page could not be allocated\n"
            )),
            // A fixture setup that SKIPs then exit(0)s: the parent prints a plain ok.
            "setup-skip" => s.push_str(&format!(
                "could not open hmm dmirror driver (/dev/hmm_dmirror2)\n\
                 #      SKIP      DEVICE_COHERENT not available\n\
                 #            OK  {name}\nok {n} {name}\n"
            )),
            _ => unreachable!(),
        }
        s
    }

    /// A whole run: every 6.1 test name, the must-pass ones passing, the device-private
    /// ones failing, the coherent ones skipping in setup, kernel lines in between.
    fn full_run() -> String {
        const HMM: &[&str] = &[
            "open_close",
            "anon_read",
            "anon_read_prot",
            "anon_write",
            "anon_write_prot",
            "anon_write_child",
            "anon_write_child_shared",
            "anon_write_huge",
            "anon_write_hugetlbfs",
            "file_read",
            "file_write",
            "migrate",
            "migrate_file_private",
            "migrate_fault",
            "migrate_release",
            "migrate_shared",
            "migrate_multiple",
            "anon_read_multiple",
            "anon_teardown",
            "mixedmap",
            "compound",
            "exclusive",
            "exclusive_mprotect",
            "exclusive_cow",
            "hmm_gup_test",
            "hmm_cow_in_device",
        ];
        const HMM2: &[&str] = &["migrate_mixed", "snapshot", "double_map"];
        let mut names = Vec::new();
        for variant in ["hmm_device_private", "hmm_device_coherent"] {
            names.extend(HMM.iter().map(|t| format!("hmm.{variant}.{t}")));
        }
        for variant in ["hmm2_device_private", "hmm2_device_coherent"] {
            names.extend(HMM2.iter().map(|t| format!("hmm2.{variant}.{t}")));
        }
        assert_eq!(names.len(), 58);
        let mut s = String::from(
            "TAP version 13\n1..58\n# Starting 58 tests from 4 test cases.\n\
             [    3.101234] vgpu_mirror: bound pasid 1\n",
        );
        let (mut pass, mut fail) = (0, 0);
        for (i, name) in names.iter().enumerate() {
            let n = i as u32 + 1;
            let result = if name.contains("coherent") {
                "setup-skip"
            } else if HMM_MUST_PASS.contains(&name.as_str()) {
                "pass"
            } else {
                "fail"
            };
            if result == "fail" {
                fail += 1;
            } else {
                pass += 1;
            }
            s.push_str(&harness_test(n, name, result));
            if n.is_multiple_of(7) {
                s.push_str("[   14.000001] hmm-tests (233): drop_caches: 3\n");
            }
        }
        s.push_str(&format!(
            "# FAILED: {pass} / 58 tests passed.\n\
             # Totals: pass:{pass} fail:{fail} xfail:0 xpass:0 skip:0 error:0\n"
        ));
        s
    }

    #[test]
    fn a_full_run_with_the_unsupported_tests_failing() {
        let j = judge(Suite::Hmm, Some(&capture(&full_run(), Some(1))));
        assert_eq!(j.problems, Vec::<String>::new());
        assert_eq!(j.tests.len(), 58);
        assert_eq!(
            j.summary,
            SelftestSummary {
                passed: 15,
                failed: 0,
                skipped: 0,
                unsupported: 43,
                ..Default::default()
            }
        );
        for name in HMM_MUST_PASS {
            let t = j.tests.iter().find(|t| t.name == *name).unwrap();
            assert_eq!(t.result, TestResult::Pass, "{t:?}");
        }
        let migrate = j
            .tests
            .iter()
            .find(|t| t.name == "hmm.hmm_device_private.migrate")
            .unwrap();
        assert_eq!(migrate.result, TestResult::Unsupported);
        assert_eq!(migrate.harness, HarnessOutcome::Fail);
        assert!(migrate
            .reason
            .as_deref()
            .unwrap()
            .contains("DEVICE_PRIVATE"));
        // The coherent variants skipped in their setup: the harness said a plain "ok".
        let coherent = j
            .tests
            .iter()
            .find(|t| t.name == "hmm.hmm_device_coherent.open_close")
            .unwrap();
        assert_eq!(coherent.harness, HarnessOutcome::Skip);
        assert_eq!(coherent.result, TestResult::Unsupported);
        assert_eq!(
            totals_line("hmm", &j.summary),
            "hmm selftests: 15 passed, 0 failed, 0 skipped, 43 unsupported"
        );
    }

    #[test]
    fn every_unsupported_name_is_a_real_test_and_none_must_pass() {
        let parsed = parse(&lines(&full_run()));
        for (pattern, _) in HMM_UNSUPPORTED {
            let prefix = pattern.trim_end_matches('*');
            assert!(
                parsed.tests.iter().any(|t| t.name.starts_with(prefix)),
                "{pattern} matches no hmm-tests name"
            );
        }
        for name in HMM_MUST_PASS {
            assert!(parsed.tests.iter().any(|t| t.name == *name), "{name}");
            assert_eq!(Suite::Hmm.unsupported(name), None, "{name}");
        }
        // Prefix patterns stop at their prefix.
        assert!(Suite::Hmm
            .unsupported("hmm.hmm_device_private.migrate_fault")
            .is_some());
        assert_eq!(Suite::Hmm.unsupported("hmm.hmm_device_private.mig"), None);
    }

    #[test]
    fn a_failing_mirror_test_is_a_failure_with_the_assertion() {
        let text = format!(
            "TAP version 13\n1..2\n{}{}# Totals: pass:1 fail:1 xfail:0 xpass:0 skip:0 error:0\n",
            harness_test(1, "hmm.hmm_device_private.open_close", "pass"),
            harness_test(2, "hmm.hmm_device_private.anon_read", "fail"),
        );
        let j = judge(Suite::Hmm, Some(&capture(&text, Some(1))));
        assert!(j.problems.is_empty(), "{:?}", j.problems);
        assert_eq!(j.summary.failed, 1);
        let t = &j.tests[1];
        assert_eq!(t.result, TestResult::Fail);
        let reason = t.reason.as_deref().unwrap();
        assert!(
            reason.contains("hmm-tests.c:982:anon_read:Expected ret (-95) == 0 (0)"),
            "{reason}"
        );
        assert!(reason.contains("terminated by assertion"), "{reason}");
    }

    #[test]
    fn skips_keep_their_reason_and_name() {
        let text = format!(
            "1..1\n{}# Totals: pass:0 fail:0 xfail:0 xpass:0 skip:1 error:0\n",
            harness_test(1, "hmm.hmm_device_private.anon_write_hugetlbfs", "skip"),
        );
        let j = judge(Suite::Hmm, Some(&capture(&text, Some(0))));
        assert!(j.problems.is_empty(), "{:?}", j.problems);
        assert_eq!(
            j.tests,
            vec![TestReport {
                name: "hmm.hmm_device_private.anon_write_hugetlbfs".into(),
                result: TestResult::Skip,
                reason: Some("Huge page could not be allocated".into()),
                harness: HarnessOutcome::Skip,
            }]
        );
        assert_eq!(j.summary.skipped, 1);
        assert_eq!(j.summary.passed, 0, "a skip is not a pass");
    }

    #[test]
    fn a_truncated_run_fails_the_running_test_and_the_suite() {
        // The guest died inside the third test: no result, no totals, no END line.
        let text = format!(
            "TAP version 13\n1..58\n{}{}#  RUN           hmm.hmm_device_private.anon_read_prot ...\n\
             [   20.1] BUG: kernel NULL pointer dereference, address: 0000000000000008\n",
            harness_test(1, "hmm.hmm_device_private.open_close", "pass"),
            harness_test(2, "hmm.hmm_device_private.anon_read", "pass"),
        );
        let j = judge(Suite::Hmm, Some(&capture(&text, None)));
        assert_eq!(j.tests.len(), 3);
        let t = &j.tests[2];
        assert_eq!(t.result, TestResult::Fail);
        assert_eq!(t.harness, HarnessOutcome::Unfinished);
        assert!(t.reason.as_deref().unwrap().contains("stopped"), "{t:?}");
        assert_eq!(j.summary.passed, 2);
        let problems = j.problems.join("\n");
        assert!(problems.contains("did not finish"), "{problems}");
        assert!(problems.contains("3 of the 58 planned"), "{problems}");
        // A run that stopped inside an unsupported test is still unfinished.
        let text = "1..1\n#  RUN           hmm.hmm_device_private.migrate ...\n";
        let j = judge(Suite::Hmm, Some(&capture(text, None)));
        assert_eq!(j.tests[0].result, TestResult::Unsupported);
        assert!(!j.problems.is_empty());
    }

    #[test]
    fn a_lost_tap_line_falls_back_to_the_harness_line_never_to_a_pass() {
        // A kernel message cut the TAP line of test 1 in two; test 2's TAP line is gone and
        // its FAIL line survived; test 3 lost both.
        let text = "1..4\n\
            #  RUN           hmm.hmm_device_private.open_close ...\n\
            #            OK  hmm.hmm_device_private.open_close\n\
            ok 1 hmm.hmm_dev[   15.2] random: crng init done\n\
            ice_private.open_close\n\
            #  RUN           hmm.hmm_device_private.anon_read ...\n\
            #          FAIL  hmm.hmm_device_private.anon_read\n\
            #  RUN           hmm.hmm_device_private.anon_write ...\n\
            #  RUN           hmm.hmm_device_private.file_read ...\n\
            #            OK  hmm.hmm_device_private.file_read\n\
            ok 4 hmm.hmm_device_private.file_read\n\
            # Totals: pass:2 fail:2 xfail:0 xpass:0 skip:0 error:0\n";
        let j = judge(Suite::Hmm, Some(&capture(text, Some(1))));
        let results: Vec<_> = j
            .tests
            .iter()
            .map(|t| (t.name.as_str(), t.result))
            .collect();
        assert_eq!(
            results,
            vec![
                ("hmm.hmm_device_private.open_close", TestResult::Pass),
                ("hmm.hmm_device_private.anon_read", TestResult::Fail),
                ("hmm.hmm_device_private.anon_write", TestResult::Fail),
                ("hmm.hmm_device_private.file_read", TestResult::Pass),
            ]
        );
        assert!(j.tests[2].reason.as_deref().unwrap().contains("lost"));
        assert!(j.problems.is_empty(), "{:?}", j.problems);
    }

    #[test]
    fn totals_that_disagree_with_the_console_are_a_problem() {
        let text = format!(
            "1..1\n{}# Totals: pass:2 fail:0 xfail:0 xpass:0 skip:0 error:0\n",
            harness_test(1, "hmm.hmm_device_private.open_close", "pass")
        );
        let j = judge(Suite::Hmm, Some(&capture(&text, Some(0))));
        assert_eq!(
            j.problems,
            vec!["the harness counted 2 results but 1 were read from the console"]
        );
    }

    #[test]
    fn no_output_at_all() {
        let j = judge(Suite::Hmm, None);
        assert!(j.tests.is_empty());
        assert!(
            j.problems[0].contains("/bin/vgpu-hmm-tests"),
            "{:?}",
            j.problems
        );
        // The program started but exited at once (say, the harness could not run).
        let j = judge(Suite::Hmm, Some(&capture("Bail out! no memory\n", Some(1))));
        let problems = j.problems.join("\n");
        assert!(problems.contains("bailed out: no memory"), "{problems}");
        assert!(problems.contains("before their totals"), "{problems}");
        assert!(problems.contains("no test plan"), "{problems}");
    }

    #[test]
    fn kernel_lines_are_recognised() {
        assert!(is_kernel_line("[   12.345678] vgpu_mirror: hello"));
        assert!(is_kernel_line("[12.3] x"));
        assert!(!is_kernel_line("[ RUN ] x"));
        assert!(!is_kernel_line("[] x"));
        assert!(!is_kernel_line("ok 1 a.b"));
    }

    #[test]
    fn tap_lines() {
        assert_eq!(tap_result("ok 1 a.b"), Some((true, "a.b")));
        assert_eq!(tap_result("not ok 12 a.b"), Some((false, "a.b")));
        assert_eq!(tap_result("ok 3 # SKIP why"), Some((true, "# SKIP why")));
        assert_eq!(tap_result("ok x a.b"), None);
        assert_eq!(tap_result("okay"), None);
        assert_eq!(
            totals(" pass:1 fail:2 xfail:0 xpass:1 skip:3 error:1"),
            Some(Totals {
                pass: 1,
                fail: 2,
                skip: 3,
                other: 2
            })
        );
        assert_eq!(totals(" pass:x"), None);
    }

    #[test]
    fn hostile_output_is_bounded() {
        let long = "x".repeat(10_000);
        let mut text = String::from("#  RUN           a.b ...\n");
        for _ in 0..100 {
            text.push_str(&format!("# {long}é\n"));
        }
        let parsed = parse(&lines(&text));
        assert_eq!(parsed.tests[0].notes.len(), MAX_NOTES);
        assert!(parsed.tests[0]
            .notes
            .iter()
            .all(|n| n.len() <= MAX_NOTE_LEN));
        // Multi-byte characters at the cut do not panic.
        let text = format!("#  RUN           a.b ...\n# {}\n", "é".repeat(400));
        assert_eq!(parse(&lines(&text)).tests.len(), 1);
    }

    /// A report as `run_direct` leaves it after the guest ran hmm-tests: the program's exit
    /// status 1 (some tests failed) made the run fail.
    fn run_report(console: &str) -> Report {
        let mut c = crate::console::ConsoleState::default();
        for line in console.lines() {
            c.handle_line(line, std::time::Instant::now());
        }
        let mut r = Report {
            exit_reason: protocol::ExitReason::PowerOff,
            console_tail: vec!["kept for a failure".into()],
            ..Default::default()
        };
        r.absorb_console(&c);
        let mut counters = device_model::Counters::default();
        counters.global.device_faults = 40;
        counters
            .event(device_model::wire::event::UNMAP)
            .ats_invalidations = 7;
        counters
            .event(device_model::wire::event::CLEAR)
            .ats_invalidations = 5;
        r.set_device(
            &counters,
            &Default::default(),
            &device_model::counters::FaultLatency::default(),
        );
        r
    }

    fn console(body: &str, end: Option<i32>) -> String {
        let mut s = format!("VGPU-INIT\nVGPU-KSELFTEST-BEGIN hmm\n{body}");
        if let Some(code) = end {
            s.push_str(&format!("VGPU-KSELFTEST-END hmm {code}\n"));
        }
        let exit = end.unwrap_or(1);
        s.push_str(&format!(
            "VGPU-RESULT {{\"name\":\"hmm-tests\",\"exit\":{exit}}}\n\
             VGPU-DONE {{\"failed\":{}}}\n",
            u32::from(exit != 0)
        ));
        s
    }

    #[test]
    fn only_unsupported_failures_pass_and_the_report_has_the_selftest_keys() {
        let mut r = run_report(&console(&full_run(), Some(1)));
        assert_eq!(
            r.errors,
            vec![program_exit_error("hmm-tests", 1)],
            "what the run saw"
        );
        apply(&mut r, Suite::Hmm, Policy::Naive);
        assert_eq!(r.errors, Vec::<String>::new());
        assert_eq!(r.verdict, Verdict::Pass);
        assert!(r.console_tail.is_empty());
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["selftest"], "hmm");
        assert_eq!(v["policy"], "naive");
        assert_eq!(v["tests"].as_array().unwrap().len(), 58);
        assert_eq!(
            v["tests"][0],
            serde_json::json!({"name": "hmm.hmm_device_private.open_close",
                               "result": "pass", "harness": "pass"})
        );
        let unsupported = v["tests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == "hmm.hmm_device_private.exclusive")
            .unwrap();
        assert_eq!(unsupported["result"], "unsupported");
        assert!(unsupported["reason"]
            .as_str()
            .unwrap()
            .contains("exclusive"));
        assert_eq!(
            v["summary"],
            serde_json::json!({"passed": 15, "failed": 0, "skipped": 0, "unsupported": 43,
                               "device_faults": 40, "ats_invalidations": 12, "violations": 0})
        );
        for key in ["host", "kernel", "boot_ms", "verdict", "device"] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert_eq!(v["device"]["events"]["UNMAP"]["ats_invalidations"], 7);
        // The nested relay reads it back.
        let back: Report = serde_json::from_value(v).unwrap();
        assert_eq!(back.tests, r.tests);
        let s = r.summary();
        assert!(
            s.contains("== vmm selftest hmm (policy naive): PASS"),
            "{s}"
        );
        assert!(
            s.contains("hmm selftests: 15 passed, 0 failed, 0 skipped, 43 unsupported"),
            "{s}"
        );
        assert!(
            s.contains("device faults 40, ATS invalidations 12 (UNMAP 7, CLEAR 5)"),
            "{s}"
        );
        assert!(s.contains("coherence oracle: 0 violations (pass)"), "{s}");
        assert!(s.contains("unsupported 29: needs device-coherent"), "{s}");
        assert!(!s.contains("program hmm-tests"), "{s}");
        assert!(s.lines().count() < 15, "compact: {s}");
    }

    #[test]
    fn a_mirror_failure_fails_the_run_and_is_listed() {
        let body = format!(
            "1..2\n{}{}# Totals: pass:1 fail:1 xfail:0 xpass:0 skip:0 error:0\n",
            harness_test(1, "hmm.hmm_device_private.open_close", "pass"),
            harness_test(2, "hmm.hmm_device_private.anon_write", "fail"),
        );
        let mut r = run_report(&console(&body, Some(1)));
        apply(&mut r, Suite::Hmm, Policy::EventAware);
        assert_eq!(r.verdict, Verdict::Fail);
        assert_eq!(
            r.errors,
            vec!["hmm selftests failed: hmm.hmm_device_private.anon_write"]
        );
        assert_eq!(r.console_tail, vec!["kept for a failure"]);
        let s = r.summary();
        assert!(
            s.contains(
                "FAIL hmm.hmm_device_private.anon_write: hmm-tests.c:982:anon_write:Expected"
            ),
            "{s}"
        );
        assert!(s.contains("1 passed, 1 failed"), "{s}");
    }

    #[test]
    fn an_unfinished_suite_fails_and_keeps_the_exit_error() {
        let body = format!(
            "1..58\n{}",
            harness_test(1, "hmm.hmm_device_private.open_close", "pass")
        );
        let mut r = run_report(&console(&body, None));
        apply(&mut r, Suite::Hmm, Policy::EventAware);
        assert_eq!(r.verdict, Verdict::Fail);
        let errors = r.errors.join("\n");
        assert!(errors.contains("exited with 1"), "{errors}");
        assert!(errors.contains("did not finish"), "{errors}");
        let raw = raw_output(&r, Suite::Hmm).unwrap();
        assert!(raw.starts_with("1..58\n#  RUN"), "{raw}");
        assert!(raw.ends_with("the suite did not finish)\n"), "{raw}");
    }

    #[test]
    fn violations_fail_a_suite_whose_tests_passed() {
        let body = format!(
            "1..1\n{}# Totals: pass:1 fail:0 xfail:0 xpass:0 skip:0 error:0\n",
            harness_test(1, "hmm.hmm_device_private.open_close", "pass")
        );
        let mut r = run_report(&console(&body, Some(0)));
        let mut d = r.device.take().unwrap();
        d.counters.global.violations = 3;
        r.device = Some(d);
        apply(&mut r, Suite::Hmm, Policy::EventAware);
        assert_eq!(r.verdict, Verdict::Fail);
        assert_eq!(r.selftest_summary.unwrap().violations, 3);
        assert!(r.errors[0].contains("3 violations"), "{:?}", r.errors);
        assert!(r
            .summary()
            .contains("coherence oracle: 3 violations (FAIL)"));
    }

    #[test]
    fn no_selftest_output_is_a_clear_failure() {
        let text = "VGPU-INIT\nVGPU-ERROR no program hmm-tests\n\
                    VGPU-RESULT {\"name\":\"hmm-tests\",\"exit\":127}\nVGPU-DONE {\"failed\":1}\n";
        let mut r = run_report(text);
        apply(&mut r, Suite::Hmm, Policy::EventAware);
        assert_eq!(r.verdict, Verdict::Fail);
        assert!(
            r.errors
                .iter()
                .any(|e| e.contains("no VGPU-KSELFTEST-BEGIN hmm")),
            "{:?}",
            r.errors
        );
        assert_eq!(raw_output(&r, Suite::Hmm), None);
    }

    #[test]
    fn raw_output_goes_beside_the_report() {
        assert_eq!(
            raw_output_path(Path::new("out/hmm.json")),
            Path::new("out/hmm.kselftest.txt")
        );
        assert_eq!(
            raw_output_path(Path::new("report")),
            Path::new("report.kselftest.txt")
        );
    }
}
