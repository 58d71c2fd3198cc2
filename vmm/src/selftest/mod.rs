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
use protocol::Verdict;

mod catalogue;
pub mod tap;

pub use catalogue::HMM_MUST_PASS;
use tap::parse;
pub use tap::{Parsed, RawTest, Totals};

use crate::console::SelftestCapture;
use crate::report::{program_exit_error, Report};
use crate::spec::Policy;
pub use crate::spec::Suite;

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

#[cfg(test)]
mod tests {
    use super::catalogue::HMM_UNSUPPORTED;
    use super::tap::{MAX_NOTES, MAX_NOTE_LEN};
    use super::*;
    use crate::report::summary::totals_line;
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
