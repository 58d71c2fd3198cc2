//! The value types of a run: what `vmm run`, `vmm selftest` and `vmm matrix` ask for, after
//! the command line and before any host, image or VM. Nothing here depends on the rest of the
//! application.

use std::time::Duration;

use device_model::VgpuConfig;

/// The guest programs of a run without `--run` or `--workload`.
pub const DEFAULT_PROGRAMS: &[&str] = &["selfcheck", "touch", "protect", "race"];

/// The device workloads (guest programs that print a `VGPU-WORKLOAD` report).
pub const WORKLOADS: &[&str] = &["touch", "protect", "race"];

/// The host kind, as requested on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum HostChoice {
    /// KVM where hardware virtualization works, the virtual host otherwise.
    Auto,
    /// KVM on this machine; fails at once where it cannot work.
    Kvm,
    /// The virtual host: QEMU TCG with an emulated AMD CPU with SVM, running this VMM inside.
    Nested,
}

/// The guest driver's invalidation policy (`guest-driver/kmod/README.md`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Policy {
    /// Every event drops the whole range.
    Naive,
    /// Drop, downgrade or skip by event and vma.
    #[default]
    EventAware,
}

impl Policy {
    /// The name the guest driver's `policy` module parameter takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Naive => "naive",
            Policy::EventAware => "event-aware",
        }
    }
}

/// The programs a run executes: `--run` then `--workload`, or the defaults when both are empty.
pub fn programs_to_run(run: &[String], workloads: &[String]) -> Vec<String> {
    if run.is_empty() && workloads.is_empty() {
        DEFAULT_PROGRAMS.iter().map(|s| s.to_string()).collect()
    } else {
        run.iter().chain(workloads).cloned().collect()
    }
}

/// What `vmm run` does, after host and images are resolved.
#[derive(Clone, Debug)]
pub struct RunSpec {
    /// vCPUs.
    pub cpus: u8,
    /// Guest RAM in bytes.
    pub mem_size: u64,
    /// Guest programs to run, in order.
    pub programs: Vec<String>,
    /// The guest driver's policy.
    pub policy: Policy,
    /// Repeat the programs until this much guest time has passed (zero: run them once).
    pub repeat_for: Duration,
    /// The whole run's time limit.
    pub timeout: Duration,
    /// Show the kernel's boot messages.
    pub verbose: bool,
    /// Appended to the kernel command line.
    pub extra_cmdline: Option<String>,
    /// How the virtual GPU is built (`--device`).
    pub device: VgpuConfig,
    /// A guest-driver bug injection (`vmm::injections`), if any.
    pub inject: Option<String>,
    /// Set for `vmm selftest`: the suite whose guest program `programs` holds (the virtual
    /// host runs the inner VMM as `vmm selftest` too, so its report and summary judge tests).
    pub selftest: Option<Suite>,
}

/// A kernel selftest suite that `vmm selftest` can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Suite {
    /// `tools/testing/selftests/vm/hmm-tests.c` (6.1) against the virtual GPU's
    /// dmirror-compatible `/dev/hmm_dmirror0` and `/dev/hmm_dmirror1`.
    Hmm,
}

/// Why the device-private tests of hmm-tests cannot run here.
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
}

/// Parses a memory size: a number with an optional K, M or G suffix (binary units); a bare
/// number is MiB.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, shift) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 10),
        Some((i, 'M' | 'm')) => (&s[..i], 20),
        Some((i, 'G' | 'g')) => (&s[..i], 30),
        _ => (s, 20),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size (examples: 512M, 2G, 1024)"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Errors in a run's parameters.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    /// The vCPU count is out of range.
    #[error("--cpus {0}: must be between 1 and {max}", max = vm::boot::MAX_VCPUS)]
    Cpus(u8),
    /// Less RAM than a guest can boot in.
    #[error("--mem {got} MiB is too little: the guest needs at least {min} MiB")]
    TooLittleMemory {
        /// Requested MiB.
        got: u64,
        /// Minimum MiB.
        min: u64,
    },
    /// A program name the guest cannot run.
    #[error("--run {0:?}: program names are letters, digits, '-' and '_'")]
    BadProgram(String),
}

/// Least RAM a run accepts; the guest image unpacks into RAM.
pub const MIN_MEM_SIZE: u64 = 128 << 20;

/// Checks a spec before anything slow happens.
pub fn validate(spec: &RunSpec) -> Result<(), SpecError> {
    if spec.cpus == 0 || spec.cpus > vm::boot::MAX_VCPUS {
        return Err(SpecError::Cpus(spec.cpus));
    }
    if spec.mem_size < MIN_MEM_SIZE {
        return Err(SpecError::TooLittleMemory {
            got: spec.mem_size >> 20,
            min: MIN_MEM_SIZE >> 20,
        });
    }
    for p in &spec.programs {
        if p.is_empty()
            || !p
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(SpecError::BadProgram(p.clone()));
        }
    }
    Ok(())
}

#[cfg(test)]
impl RunSpec {
    /// A valid spec for tests: two vCPUs, 512 MiB, the self check.
    pub(crate) fn example() -> RunSpec {
        RunSpec {
            cpus: 2,
            mem_size: 512 << 20,
            programs: vec!["selfcheck".into()],
            policy: Policy::EventAware,
            repeat_for: Duration::ZERO,
            timeout: Duration::from_secs(1),
            verbose: false,
            extra_cmdline: None,
            device: VgpuConfig::default(),
            inject: None,
            selftest: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert_eq!(validate(&RunSpec::example()), Ok(()));
        let s = RunSpec {
            mem_size: 64 << 20,
            ..RunSpec::example()
        };
        assert!(matches!(
            validate(&s),
            Err(SpecError::TooLittleMemory { got: 64, .. })
        ));
        let s = RunSpec {
            cpus: 0,
            ..RunSpec::example()
        };
        assert_eq!(validate(&s), Err(SpecError::Cpus(0)));
        let s = RunSpec {
            programs: vec!["a b".into()],
            ..RunSpec::example()
        };
        assert!(validate(&s).is_err());
    }

    #[test]
    fn default_programs_unless_asked() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(programs_to_run(&[], &[]), v(DEFAULT_PROGRAMS));
        assert_eq!(programs_to_run(&[], &v(&["touch"])), v(&["touch"]));
        assert_eq!(
            programs_to_run(&v(&["selfcheck"]), &v(&["touch"])),
            v(&["selfcheck", "touch"])
        );
        assert!(DEFAULT_PROGRAMS.iter().any(|p| WORKLOADS.contains(p)));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("1024"), Ok(1024 << 20));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999G").is_err());
    }
}
