//! The guest console, read as a protocol.
//!
//! Everything the guest writes to COM1 is echoed (when asked) and split into lines. The guest
//! init marks its progress with lines that start with `VGPU-` (see `images/README.md`): the
//! VMM timestamps `VGPU-INIT` for `boot_ms`, collects program results, and keeps the last
//! [`TAIL_LINES`] lines to show when a guest fails. The virtual host's init uses the same
//! framing with `VGPU-HOST-` lines, so the outer VMM parses the inner one's output with
//! this same code.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use protocol::console::{ConsoleLine, Done};
pub use protocol::console::{ProgramResult, SelftestCapture};
use protocol::{Report, WorkloadRecord};

/// Lines kept for the failure report.
pub const TAIL_LINES: usize = 40;
/// Longest line kept; a guest that never sends a newline cannot grow our memory.
const MAX_LINE: usize = 64 * 1024;
/// Most lines kept of one selftest's output (the 6.1 HMM suite prints about 200); the rest
/// is dropped and the capture marked truncated.
pub const MAX_SELFTEST_LINES: usize = 20_000;

/// What the console has told us so far.
#[derive(Debug, Default)]
pub struct ConsoleState {
    /// When the guest init announced itself.
    pub init_at: Option<Instant>,
    /// The guest kernel release.
    pub kernel: Option<String>,
    /// Results of the programs the guest ran.
    pub results: Vec<ProgramResult>,
    /// Workload reports from the guest programs.
    pub workloads: Vec<WorkloadRecord>,
    /// The failure count of the final `VGPU-DONE` line, once seen.
    pub done_failed: Option<u32>,
    /// How many times the guest ran its program list (`--repeat-for`), from `VGPU-DONE`.
    pub rounds: Option<u64>,
    /// `VGPU-ERROR` messages.
    pub errors: Vec<String>,
    /// True once the kernel printed a panic.
    pub panicked: bool,
    /// The virtual host's init started.
    pub host_init_at: Option<Instant>,
    /// The inner VMM's report, relayed by the virtual host.
    pub host_report: Option<Report>,
    /// The inner VMM's exit status, relayed by the virtual host.
    pub host_exit: Option<i32>,
    /// `VGPU-HOST-ERROR` messages.
    pub host_errors: Vec<String>,
    /// The last lines of output.
    pub tail: VecDeque<String>,
    /// Kernel selftest output, one capture per BEGIN line.
    pub selftests: Vec<SelftestCapture>,
}

impl ConsoleState {
    /// Applies one complete line of console output.
    pub fn handle_line(&mut self, line: &str, now: Instant) {
        let line = line.trim_end_matches('\r');
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line.to_string());
        if line.contains("Kernel panic - not syncing") {
            self.panicked = true;
        }
        let parsed = match ConsoleLine::parse(line) {
            None => {
                self.capture_selftest_line(line);
                return;
            }
            Some(Ok(parsed)) => parsed,
            Some(Err(e)) => {
                // A malformed DONE still ends the program list, with every program failed.
                if e.tag == protocol::console::Tag::Done {
                    self.done_failed = Some(u32::MAX);
                }
                match e.tag {
                    protocol::console::Tag::HostReport => self.host_errors.push(e.to_string()),
                    _ => self.errors.push(e.to_string()),
                }
                return;
            }
        };
        match parsed {
            ConsoleLine::Init => {
                self.init_at.get_or_insert(now);
            }
            ConsoleLine::Kernel(k) => self.kernel = Some(k),
            ConsoleLine::Result(r) => self.results.push(r),
            ConsoleLine::Workload(w) => self.workloads.push(*w),
            ConsoleLine::Done(Done { failed, rounds }) => {
                self.done_failed = Some(failed);
                self.rounds = rounds;
            }
            ConsoleLine::Error(e) => self.errors.push(e),
            ConsoleLine::HostInit => {
                self.host_init_at.get_or_insert(now);
            }
            ConsoleLine::HostReport(r) => self.host_report = Some(*r),
            ConsoleLine::HostExit(code) => self.host_exit = code,
            ConsoleLine::HostError(e) => self.host_errors.push(e),
            ConsoleLine::KselftestBegin(suite) => self.selftests.push(SelftestCapture {
                suite,
                ..Default::default()
            }),
            ConsoleLine::KselftestEnd { suite, exit } => match self.open_selftest() {
                Some(c) if c.suite == suite => c.exit = Some(exit.unwrap_or(-1)),
                _ => self.errors.push(format!(
                    "selftest end line without its begin line: {line:?}"
                )),
            },
        }
    }

    /// The selftest capture still waiting for its END line, if any.
    fn open_selftest(&mut self) -> Option<&mut SelftestCapture> {
        self.selftests.last_mut().filter(|c| c.exit.is_none())
    }

    /// Keeps a line for the selftest that is running, if one is.
    fn capture_selftest_line(&mut self, line: &str) {
        if let Some(c) = self.open_selftest() {
            if c.lines.len() < MAX_SELFTEST_LINES {
                c.lines.push(line.to_string());
            } else {
                c.truncated = true;
            }
        }
    }

    /// The last lines of output (at most [`TAIL_LINES`]), oldest first, for a failure report.
    pub fn tail_lines(&self) -> Vec<String> {
        self.tail.iter().cloned().collect()
    }

    /// True when the guest finished its programs and every one passed.
    pub fn guest_passed(&self) -> bool {
        self.done_failed == Some(0)
            && !self.panicked
            && self.errors.is_empty()
            && self.results.iter().all(|r| r.exit == 0)
    }
}

/// A `Write` sink for console bytes: echoes them and feeds [`ConsoleState`].
#[derive(Clone)]
pub struct ConsoleSink {
    state: Arc<Mutex<ConsoleState>>,
    partial: Arc<Mutex<Vec<u8>>>,
    echo: Option<Arc<Mutex<dyn Write + Send>>>,
}

impl ConsoleSink {
    /// A sink that echoes to `echo` (if any).
    pub fn new(echo: Option<Arc<Mutex<dyn Write + Send>>>) -> Self {
        ConsoleSink {
            state: Arc::default(),
            partial: Arc::default(),
            echo,
        }
    }

    /// The parsed state, shared with the sink.
    pub fn state(&self) -> Arc<Mutex<ConsoleState>> {
        self.state.clone()
    }

    /// Feeds the unterminated last line, if any (call at the end of the run).
    pub fn finish(&self) {
        let rest = std::mem::take(&mut *self.partial.lock().unwrap());
        if !rest.is_empty() {
            let line = String::from_utf8_lossy(&rest).into_owned();
            self.state
                .lock()
                .unwrap()
                .handle_line(&line, Instant::now());
        }
    }
}

impl Write for ConsoleSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(echo) = &self.echo {
            let mut e = echo.lock().unwrap();
            // The console must never stop the guest: a closed stdout loses the echo only.
            let _ = e.write_all(buf);
            if buf.contains(&b'\n') {
                let _ = e.flush();
            }
        }
        let now = Instant::now();
        let mut partial = self.partial.lock().unwrap();
        for &b in buf {
            if b == b'\n' {
                let line = String::from_utf8_lossy(&partial).into_owned();
                partial.clear();
                self.state.lock().unwrap().handle_line(&line, now);
            } else if partial.len() < MAX_LINE {
                partial.push(b);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if let Some(echo) = &self.echo {
            let _ = echo.lock().unwrap().flush();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(text: &str) -> ConsoleState {
        let mut sink = ConsoleSink::new(None);
        sink.write_all(text.as_bytes()).unwrap();
        sink.finish();
        let s = sink.state();
        let mut g = s.lock().unwrap();
        std::mem::take(&mut *g)
    }

    #[test]
    fn parses_a_passing_run() {
        let s = feed(
            "[    0.1] booting\nVGPU-INIT\r\nVGPU-KERNEL 6.1.0-56-cloud-amd64\n\
             check rng: ok\nVGPU-RESULT {\"name\":\"selfcheck\",\"exit\":0}\n\
             VGPU-DONE {\"failed\":0}\n",
        );
        assert!(s.init_at.is_some());
        assert_eq!(s.kernel.as_deref(), Some("6.1.0-56-cloud-amd64"));
        assert_eq!(
            s.results,
            vec![ProgramResult {
                name: "selfcheck".into(),
                exit: 0
            }]
        );
        assert_eq!(s.done_failed, Some(0));
        assert!(s.guest_passed());
    }

    #[test]
    fn failures_are_not_passes() {
        let s = feed("VGPU-RESULT {\"name\":\"x\",\"exit\":3}\nVGPU-DONE {\"failed\":1}\n");
        assert!(!s.guest_passed());
        // No DONE line at all: the guest never finished.
        let s = feed("VGPU-INIT\n");
        assert!(!s.guest_passed());
        // A malformed result line is an error, not a silent pass.
        let s = feed("VGPU-RESULT {oops\nVGPU-DONE {\"failed\":0}\n");
        assert_eq!(s.errors.len(), 1);
        assert!(!s.guest_passed());
        let s =
            feed("Kernel panic - not syncing: Attempted to kill init!\nVGPU-DONE {\"failed\":0}\n");
        assert!(s.panicked);
        assert!(!s.guest_passed());
    }

    #[test]
    fn keeps_the_last_lines_and_bounds_line_length() {
        let mut text = String::new();
        for i in 0..100 {
            text.push_str(&format!("line {i}\n"));
        }
        text.push_str(&"x".repeat(MAX_LINE * 2));
        let s = feed(&text);
        assert_eq!(s.tail.len(), TAIL_LINES);
        assert_eq!(s.tail[0], "line 61");
        assert_eq!(s.tail.back().unwrap().len(), MAX_LINE);
    }

    #[test]
    fn selftest_output_is_captured_between_its_markers() {
        let s = feed(
            "VGPU-INIT\nbefore\nVGPU-KSELFTEST-BEGIN hmm\nTAP version 13\n\
             [   12.5] kernel says hi\nVGPU-WORKLOAD {\"name\":\"x\",\"policy\":\"naive\",\
             \"ok\":true,\"device_faults\":0,\"violations\":0}\nok 1 a.b\n\
             VGPU-KSELFTEST-END hmm 1\nafter\nVGPU-DONE {\"failed\":1}\n",
        );
        assert_eq!(
            s.selftests,
            vec![SelftestCapture {
                suite: "hmm".into(),
                lines: vec![
                    "TAP version 13".into(),
                    "[   12.5] kernel says hi".into(),
                    "ok 1 a.b".into()
                ],
                exit: Some(1),
                truncated: false,
            }]
        );
        assert_eq!(s.workloads.len(), 1, "protocol lines still count");
        // No END line: the capture stays open (exit None) and keeps what came.
        let s = feed("VGPU-KSELFTEST-BEGIN hmm\nok 1 a.b\nKernel panic - not syncing: x\n");
        assert_eq!(s.selftests[0].exit, None);
        assert_eq!(s.selftests[0].lines.len(), 2);
        // An END for another suite, or without a BEGIN, is an error, not a result.
        let s = feed("VGPU-KSELFTEST-END hmm 0\n");
        assert!(s.selftests.is_empty());
        assert_eq!(s.errors.len(), 1);
        // A garbled exit status is not a success.
        let s = feed("VGPU-KSELFTEST-BEGIN hmm\nVGPU-KSELFTEST-END hmm zero\n");
        assert_eq!(s.selftests[0].exit, Some(-1));
    }

    #[test]
    fn selftest_capture_is_bounded() {
        let mut text = String::from("VGPU-KSELFTEST-BEGIN hmm\n");
        for i in 0..MAX_SELFTEST_LINES + 5 {
            text.push_str(&format!("# line {i}\n"));
        }
        let s = feed(&text);
        assert_eq!(s.selftests[0].lines.len(), MAX_SELFTEST_LINES);
        assert!(s.selftests[0].truncated);
    }

    #[test]
    fn host_lines() {
        let inner = Report {
            boot_ms: Some(12),
            ..Default::default()
        };
        let line = ConsoleLine::HostReport(Box::new(inner));
        let s = feed(&format!("VGPU-HOST-INIT\n{line}\nVGPU-HOST-EXIT 0\n"));
        assert!(s.host_init_at.is_some());
        assert_eq!(s.host_report.unwrap().boot_ms, Some(12));
        assert_eq!(s.host_exit, Some(0));
    }
}
