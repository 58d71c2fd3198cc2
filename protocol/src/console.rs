//! The console protocol: the `VGPU-*` lines the guest (init script and programs) and the
//! virtual host's init print on their serial consoles, one type for printing and parsing.
//!
//! A line is `VGPU-<TAG>` followed by one space and the tag's argument, if it has one.
//! Everything else on the console (kernel messages, program output) is not protocol.
//! `images/README.md` documents every tag; a test checks it names exactly [`Tag::ALL`], and
//! that the init scripts print no other tag.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::report::Report;
pub use crate::report::{ProgramResult, SelftestCapture};
use crate::workload::WorkloadRecord;

/// The prefix of every protocol line.
pub const PREFIX: &str = "VGPU-";

/// The tags, in the order a run prints them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tag {
    /// The guest init mounted its file systems (the boot time stamp).
    Init,
    /// `uname -r` of the guest.
    Kernel,
    /// The guest init could not do something (a module, a program).
    Error,
    /// A workload's result.
    Workload,
    /// A kernel selftest starts; its raw output follows.
    KselftestBegin,
    /// A kernel selftest ended with an exit status.
    KselftestEnd,
    /// A guest program exited.
    Result,
    /// The guest ran all its programs.
    Done,
    /// The virtual host's init mounted its file systems.
    HostInit,
    /// The virtual host's init could not do something.
    HostError,
    /// The inner VMM's report, relayed by the virtual host.
    HostReport,
    /// The inner VMM's exit status.
    HostExit,
}

impl Tag {
    /// Every tag.
    pub const ALL: [Tag; 12] = [
        Tag::Init,
        Tag::Kernel,
        Tag::Error,
        Tag::Workload,
        Tag::KselftestBegin,
        Tag::KselftestEnd,
        Tag::Result,
        Tag::Done,
        Tag::HostInit,
        Tag::HostError,
        Tag::HostReport,
        Tag::HostExit,
    ];

    /// The tag as printed after [`PREFIX`].
    pub fn as_str(self) -> &'static str {
        match self {
            Tag::Init => "INIT",
            Tag::Kernel => "KERNEL",
            Tag::Error => "ERROR",
            Tag::Workload => "WORKLOAD",
            Tag::KselftestBegin => "KSELFTEST-BEGIN",
            Tag::KselftestEnd => "KSELFTEST-END",
            Tag::Result => "RESULT",
            Tag::Done => "DONE",
            Tag::HostInit => "HOST-INIT",
            Tag::HostError => "HOST-ERROR",
            Tag::HostReport => "HOST-REPORT",
            Tag::HostExit => "HOST-EXIT",
        }
    }

    /// The tag printed as `s`.
    pub fn named(s: &str) -> Option<Tag> {
        Tag::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// The end of the guest's program list (`VGPU-DONE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {
    /// Programs that failed, over all rounds.
    pub failed: u32,
    /// Times the guest ran its program list (`--repeat-for`); absent means once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rounds: Option<u64>,
}

/// A protocol line, parsed.
#[derive(Clone, Debug, PartialEq)]
pub enum ConsoleLine {
    /// `VGPU-INIT`
    Init,
    /// `VGPU-KERNEL <release>`
    Kernel(String),
    /// `VGPU-ERROR <message>`
    Error(String),
    /// `VGPU-WORKLOAD <json>`
    Workload(Box<WorkloadRecord>),
    /// `VGPU-KSELFTEST-BEGIN <suite>`
    KselftestBegin(String),
    /// `VGPU-KSELFTEST-END <suite> <exit>`; `None` when the status is missing or no number.
    KselftestEnd {
        /// The suite of the BEGIN line.
        suite: String,
        /// Its exit status.
        exit: Option<i32>,
    },
    /// `VGPU-RESULT <json>`
    Result(ProgramResult),
    /// `VGPU-DONE <json>`
    Done(Done),
    /// `VGPU-HOST-INIT`
    HostInit,
    /// `VGPU-HOST-ERROR <message>`
    HostError(String),
    /// `VGPU-HOST-REPORT <report json>`
    HostReport(Box<Report>),
    /// `VGPU-HOST-EXIT <code>`; `None` when the code is no number.
    HostExit(Option<i32>),
}

/// A protocol line whose argument could not be read.
#[derive(Debug, PartialEq, Eq)]
pub struct LineError {
    /// The line's tag.
    pub tag: Tag,
    /// What was wrong.
    pub message: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bad {}{} line: {}",
            PREFIX,
            self.tag.as_str(),
            self.message
        )
    }
}

impl std::error::Error for LineError {}

impl ConsoleLine {
    /// The line's tag.
    pub fn tag(&self) -> Tag {
        match self {
            ConsoleLine::Init => Tag::Init,
            ConsoleLine::Kernel(_) => Tag::Kernel,
            ConsoleLine::Error(_) => Tag::Error,
            ConsoleLine::Workload(_) => Tag::Workload,
            ConsoleLine::KselftestBegin(_) => Tag::KselftestBegin,
            ConsoleLine::KselftestEnd { .. } => Tag::KselftestEnd,
            ConsoleLine::Result(_) => Tag::Result,
            ConsoleLine::Done(_) => Tag::Done,
            ConsoleLine::HostInit => Tag::HostInit,
            ConsoleLine::HostError(_) => Tag::HostError,
            ConsoleLine::HostReport(_) => Tag::HostReport,
            ConsoleLine::HostExit(_) => Tag::HostExit,
        }
    }

    /// Reads one console line (without its newline): `None` when it is no protocol line
    /// (no [`PREFIX`], or an unknown tag), `Some(Err)` when its argument is malformed.
    pub fn parse(line: &str) -> Option<Result<ConsoleLine, LineError>> {
        let rest = line.trim_end_matches('\r').strip_prefix(PREFIX)?;
        let (tag, arg) = rest.split_once(' ').unwrap_or((rest, ""));
        let tag = Tag::named(tag)?;
        let arg = arg.trim();
        let json = |what: &str| -> LineError {
            LineError {
                tag,
                message: format!("{what} in {arg:?}"),
            }
        };
        Some(match tag {
            Tag::Init => Ok(ConsoleLine::Init),
            Tag::Kernel => Ok(ConsoleLine::Kernel(arg.to_string())),
            Tag::Error => Ok(ConsoleLine::Error(arg.to_string())),
            Tag::Workload => serde_json::from_str(arg)
                .map(|w| ConsoleLine::Workload(Box::new(w)))
                .map_err(|e| json(&e.to_string())),
            Tag::KselftestBegin => Ok(ConsoleLine::KselftestBegin(arg.to_string())),
            Tag::KselftestEnd => {
                let mut words = arg.split_whitespace();
                let suite = words.next().unwrap_or("").to_string();
                let exit = words.next().and_then(|w| w.parse().ok());
                Ok(ConsoleLine::KselftestEnd { suite, exit })
            }
            Tag::Result => serde_json::from_str(arg)
                .map(ConsoleLine::Result)
                .map_err(|e| json(&e.to_string())),
            Tag::Done => serde_json::from_str(arg)
                .map(ConsoleLine::Done)
                .map_err(|e| json(&e.to_string())),
            Tag::HostInit => Ok(ConsoleLine::HostInit),
            Tag::HostError => Ok(ConsoleLine::HostError(arg.to_string())),
            Tag::HostReport => serde_json::from_str(arg)
                .map(|r| ConsoleLine::HostReport(Box::new(r)))
                .map_err(|e| json(&e.to_string())),
            Tag::HostExit => Ok(ConsoleLine::HostExit(arg.parse().ok())),
        })
    }
}

impl fmt::Display for ConsoleLine {
    /// The line as printed (without its newline); JSON arguments on one line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = self.tag().as_str();
        match self {
            ConsoleLine::Init | ConsoleLine::HostInit => write!(f, "{PREFIX}{tag}"),
            ConsoleLine::Kernel(s)
            | ConsoleLine::Error(s)
            | ConsoleLine::KselftestBegin(s)
            | ConsoleLine::HostError(s) => write!(f, "{PREFIX}{tag} {}", one_line(s)),
            ConsoleLine::KselftestEnd { suite, exit } => match exit {
                Some(code) => write!(f, "{PREFIX}{tag} {suite} {code}"),
                None => write!(f, "{PREFIX}{tag} {suite}"),
            },
            ConsoleLine::HostExit(code) => match code {
                Some(code) => write!(f, "{PREFIX}{tag} {code}"),
                None => write!(f, "{PREFIX}{tag}"),
            },
            ConsoleLine::Workload(w) => write!(f, "{PREFIX}{tag} {}", to_line(w.as_ref())),
            ConsoleLine::Result(r) => write!(f, "{PREFIX}{tag} {}", to_line(r)),
            ConsoleLine::Done(d) => write!(f, "{PREFIX}{tag} {}", to_line(d)),
            ConsoleLine::HostReport(r) => write!(f, "{PREFIX}{tag} {}", to_line(r.as_ref())),
        }
    }
}

/// `s` with line breaks replaced, so that it stays one console line.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// A JSON argument, compact and on one line (serde_json escapes newlines inside strings).
fn to_line<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|e| format!("{{\"error\":{:?}}}", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::Counters;
    use crate::workload::AuditSums;

    fn round_trip(line: ConsoleLine) {
        let text = line.to_string();
        assert!(!text.contains('\n'), "{text}");
        assert_eq!(ConsoleLine::parse(&text), Some(Ok(line)), "{text}");
    }

    #[test]
    fn every_line_prints_as_it_parses() {
        round_trip(ConsoleLine::Init);
        round_trip(ConsoleLine::Kernel("6.1.0-40-cloud-amd64".into()));
        round_trip(ConsoleLine::Error(
            "module vgpu_mirror: no such device".into(),
        ));
        let w = WorkloadRecord::new(
            "race",
            "event-aware",
            vec![],
            &Counters::default(),
            AuditSums::default(),
        );
        round_trip(ConsoleLine::Workload(Box::new(w)));
        round_trip(ConsoleLine::KselftestBegin("hmm".into()));
        round_trip(ConsoleLine::KselftestEnd {
            suite: "hmm".into(),
            exit: Some(1),
        });
        round_trip(ConsoleLine::Result(ProgramResult {
            name: "touch".into(),
            exit: 0,
        }));
        round_trip(ConsoleLine::Done(Done {
            failed: 0,
            rounds: Some(3),
        }));
        round_trip(ConsoleLine::HostInit);
        round_trip(ConsoleLine::HostError("no /dev/kvm".into()));
        round_trip(ConsoleLine::HostReport(Box::default()));
        round_trip(ConsoleLine::HostExit(Some(125)));
    }

    #[test]
    fn what_the_init_scripts_print_parses() {
        // images/guest-init.sh writes these with printf.
        assert_eq!(
            ConsoleLine::parse("VGPU-RESULT {\"name\":\"touch\",\"exit\":0}\r"),
            Some(Ok(ConsoleLine::Result(ProgramResult {
                name: "touch".into(),
                exit: 0
            })))
        );
        assert_eq!(
            ConsoleLine::parse("VGPU-DONE {\"failed\":2}"),
            Some(Ok(ConsoleLine::Done(Done {
                failed: 2,
                rounds: None
            })))
        );
        assert_eq!(
            ConsoleLine::parse("VGPU-KSELFTEST-END hmm"),
            Some(Ok(ConsoleLine::KselftestEnd {
                suite: "hmm".into(),
                exit: None
            }))
        );
    }

    #[test]
    fn other_lines_are_not_protocol_and_bad_arguments_are_errors() {
        assert_eq!(ConsoleLine::parse("[    0.1] Linux version 6.1"), None);
        assert_eq!(ConsoleLine::parse("VGPU-NOPE x"), None);
        let err = ConsoleLine::parse("VGPU-WORKLOAD {not json")
            .unwrap()
            .unwrap_err();
        assert_eq!(err.tag, Tag::Workload);
        assert!(
            err.to_string().starts_with("bad VGPU-WORKLOAD line"),
            "{err}"
        );
        assert!(ConsoleLine::parse("VGPU-DONE").unwrap().is_err());
    }

    /// The tags `text` names: every `VGPU-` word.
    fn tags_in(text: &str) -> std::collections::BTreeSet<String> {
        text.match_indices(PREFIX)
            .map(|(i, _)| {
                text[i + PREFIX.len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || *c == '-')
                    .collect::<String>()
                    .trim_end_matches('-')
                    .to_string()
            })
            .filter(|t| !t.is_empty())
            .collect()
    }

    #[test]
    fn the_image_readme_and_init_scripts_name_exactly_these_tags() {
        let images = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../images");
        let read = |f: &str| std::fs::read_to_string(images.join(f)).unwrap();
        let all: std::collections::BTreeSet<String> =
            Tag::ALL.iter().map(|t| t.as_str().to_string()).collect();
        assert_eq!(
            tags_in(&read("README.md")),
            all,
            "images/README.md vs console::Tag"
        );
        for script in ["guest-init.sh", "host-init.sh", "hmm-tests.sh"] {
            let used = tags_in(&read(script));
            let unknown: Vec<_> = used.difference(&all).collect();
            assert!(
                unknown.is_empty(),
                "{script} prints unknown tags {unknown:?}"
            );
        }
    }
}
