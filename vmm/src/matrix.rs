//! `vmm matrix`: every workload under every guest-driver bug injection, and what the
//! coherence oracle saw in each run, read from the typed reports.
//!
//! The first row is the correct driver, which must show 0 everywhere; an injection no
//! workload catches is listed below the table with the reason where it is known.

use protocol::Report;

/// What one run showed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cell {
    /// The workload reported no violation.
    Clean,
    /// The workload reported violations; `audit` of them were found by the phase-end
    /// device audits (the rest are stale translations a job used).
    Caught {
        /// Violations the workload reported.
        violations: u64,
        /// Disagreements its audits found.
        audit: u64,
    },
    /// The run left no entry for the workload (the guest died first, or there was no
    /// report); the device's own count says whether the oracle saw anything.
    NoEntry {
        /// The device's violations over the whole run, if the VMM read them.
        device_violations: Option<u64>,
    },
}

impl Cell {
    /// The cell of `workload` in the run that produced `report` (`None`: no report at all).
    pub fn of(report: Option<&Report>, workload: &str) -> Cell {
        let Some(r) = report else {
            return Cell::NoEntry {
                device_violations: None,
            };
        };
        let runs: Vec<_> = r.workloads_named(workload).collect();
        if runs.is_empty() {
            return Cell::NoEntry {
                device_violations: r.device_counters().map(|c| c.global.violations),
            };
        }
        let violations = runs.iter().map(|w| w.violations).sum();
        let audit = runs.iter().map(|w| w.audit.disagreements).sum();
        if violations == 0 {
            Cell::Clean
        } else {
            Cell::Caught { violations, audit }
        }
    }

    /// The oracle saw the bug in this run.
    pub fn caught(self) -> bool {
        match self {
            Cell::Clean => false,
            Cell::Caught { .. } => true,
            Cell::NoEntry { device_violations } => device_violations.is_some_and(|n| n > 0),
        }
    }
}

impl std::fmt::Display for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Cell::Clean => write!(f, "0"),
            Cell::Caught {
                violations,
                audit: 0,
            } => write!(f, "{violations} caught"),
            Cell::Caught { violations, audit } => {
                write!(f, "{violations} caught (audit {audit})")
            }
            Cell::NoEntry {
                device_violations: Some(n),
            } if n > 0 => write!(f, "{n} caught (device; no workload entry)"),
            Cell::NoEntry { .. } => write!(f, "? (no workload entry)"),
        }
    }
}

/// One row: an injection (`None`: the correct driver) and its cell per workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// The injection, or `None` for the correct driver.
    pub injection: Option<String>,
    /// One cell per workload, in the table's order.
    pub cells: Vec<Cell>,
}

/// Why an injection cannot be caught here, where it is known.
fn why_not_caught(injection: &str) -> &'static str {
    match injection {
        "skip-event:EXCLUSIVE" => {
            "this guest kernel never sends EXCLUSIVE: make_device_exclusive_range() needs \
             CONFIG_DEVICE_PRIVATE, which Debian's 6.1 kernels leave unset"
        }
        _ => "no workload makes this mistake visible yet",
    }
}

/// The matrix as a Markdown table, then the injections no workload caught.
pub fn render(workloads: &[String], rows: &[Row]) -> String {
    let mut s = String::from("| injection |");
    for w in workloads {
        s.push_str(&format!(" {w} |"));
    }
    s.push_str("\n|---|");
    s.push_str(&"---|".repeat(workloads.len()));
    s.push('\n');
    for row in rows {
        s.push_str(&format!(
            "| {} |",
            row.injection.as_deref().unwrap_or("none")
        ));
        for c in &row.cells {
            s.push_str(&format!(" {c} |"));
        }
        s.push('\n');
    }
    for row in rows {
        let Some(inj) = &row.injection else { continue };
        if !row.cells.iter().any(|c| c.caught()) {
            s.push_str(&format!(
                "\nNot caught: `{inj}`: {}.\n",
                why_not_caught(inj)
            ));
        }
    }
    s
}

/// True when the correct driver showed no violation in any workload.
pub fn correct_driver_is_clean(rows: &[Row]) -> bool {
    rows.iter()
        .filter(|r| r.injection.is_none())
        .all(|r| r.cells.iter().all(|c| *c == Cell::Clean))
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::report::DeviceReport;
    use protocol::WorkloadRecord;

    fn report(workloads: Vec<WorkloadRecord>, device_violations: Option<u64>) -> Report {
        let mut r = Report {
            workloads,
            ..Default::default()
        };
        if let Some(n) = device_violations {
            let mut d = DeviceReport::default();
            d.counters.global.violations = n;
            r.device = Some(d);
        }
        r
    }

    fn workload(name: &str, violations: u64, audit: u64) -> WorkloadRecord {
        let mut w = WorkloadRecord {
            name: name.into(),
            violations,
            ..Default::default()
        };
        w.audit.disagreements = audit;
        w
    }

    #[test]
    fn cells_read_the_workload_entry_and_fall_back_to_the_device() {
        let r = report(
            vec![workload("touch", 208, 192), workload("race", 0, 0)],
            Some(208),
        );
        assert_eq!(
            Cell::of(Some(&r), "touch"),
            Cell::Caught {
                violations: 208,
                audit: 192
            }
        );
        assert_eq!(Cell::of(Some(&r), "race"), Cell::Clean);
        let died = report(vec![], Some(5));
        assert!(Cell::of(Some(&died), "touch").caught());
        assert!(!Cell::of(None, "touch").caught());
        assert_eq!(Cell::of(None, "touch").to_string(), "? (no workload entry)");
        // Rounds of a stress run add up.
        let r = report(vec![workload("touch", 1, 0), workload("touch", 2, 1)], None);
        assert_eq!(
            Cell::of(Some(&r), "touch").to_string(),
            "3 caught (audit 1)"
        );
    }

    #[test]
    fn the_table_lists_what_no_workload_caught() {
        let workloads = vec!["touch".to_string(), "race".to_string()];
        let rows = vec![
            Row {
                injection: None,
                cells: vec![Cell::Clean, Cell::Clean],
            },
            Row {
                injection: Some("skip-event:CLEAR".into()),
                cells: vec![
                    Cell::Caught {
                        violations: 176,
                        audit: 144,
                    },
                    Cell::Clean,
                ],
            },
            Row {
                injection: Some("skip-event:EXCLUSIVE".into()),
                cells: vec![Cell::Clean, Cell::Clean],
            },
        ];
        let t = render(&workloads, &rows);
        assert!(t.starts_with("| injection | touch | race |\n|---|---|---|\n| none | 0 | 0 |\n"));
        assert!(
            t.contains("| skip-event:CLEAR | 176 caught (audit 144) | 0 |"),
            "{t}"
        );
        assert!(
            t.contains("Not caught: `skip-event:EXCLUSIVE`: this guest kernel"),
            "{t}"
        );
        assert!(!t.contains("Not caught: `skip-event:CLEAR`"), "{t}");
        assert!(correct_driver_is_clean(&rows));
        let mut dirty = rows.clone();
        dirty[0].cells[1] = Cell::Caught {
            violations: 1,
            audit: 0,
        };
        assert!(!correct_driver_is_clean(&dirty));
    }
}
