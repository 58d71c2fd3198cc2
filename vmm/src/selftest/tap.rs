//! The 6.1 `kselftest_harness.h` output (TAP 13), read line by line from the console: see
//! the module doc of `selftest` for the format and the harness's quirks.

use protocol::report::HarnessOutcome;

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
pub(crate) const MAX_NOTES: usize = 6;
/// Longest diagnostic line kept.
pub(crate) const MAX_NOTE_LEN: usize = 300;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
