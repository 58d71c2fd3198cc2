//! `vmm run`: boot the guest on the chosen host, run its programs, report.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use device_model::VgpuConfig;
use vm::{Vm, VmConfig};

use crate::console::ConsoleSink;
use crate::host::HostKind;
use crate::report::{Report, RunReport};

/// The guest programs of a run without `--run` or `--workload`.
pub const DEFAULT_PROGRAMS: &[&str] = &["selfcheck", "touch", "protect", "race"];

/// The device workloads (guest programs that print a `VGPU-WORKLOAD` report).
pub const WORKLOADS: &[&str] = &["touch", "protect", "race"];

/// The guest driver's invalidation policy (device-model/SPEC.md, "Policies" in the guest driver README).
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
    pub selftest: Option<crate::selftest::Suite>,
}

/// The kernel command line for a run.
pub fn kernel_cmdline(spec: &RunSpec) -> String {
    let mut c = vec![
        "console=ttyS0".to_string(),
        // Without a keyboard controller `reboot=k` makes a reboot a port write we catch.
        "reboot=k".into(),
        "panic=-1".into(),
        // The DSDT has no PCI host bridge, so ACPI finds no root bus; `lastbus=1` makes Linux
        // scan buses 0..=1 through configuration mechanism #1 itself. (`pci=noacpi` would do
        // it too, but on a kernel without MPPARSE it also turns the local APIC off.)
        "pci=conf1,lastbus=1".into(),
        "i8042.noaux".into(),
        "i8042.nomux".into(),
        "i8042.nopnp".into(),
        "io_delay=none".into(),
        "no_timer_check".into(),
        // Each console byte is a VM exit (very costly nested): keep the boot quiet by default.
        if spec.verbose {
            "loglevel=7"
        } else {
            "loglevel=4"
        }
        .into(),
        format!("vgpu.run={}", spec.programs.join(",")),
        format!("vgpu.policy={}", spec.policy.as_str()),
        format!("vgpu.repeat_for={}", spec.repeat_for.as_secs()),
        format!("vgpu.expect_cpus={}", spec.cpus),
        format!("vgpu.expect_mem_mib={}", spec.mem_size >> 20),
    ];
    if let Some(name) = &spec.inject {
        c.push(format!("vgpu.inject={name}"));
    }
    if let Some(extra) = &spec.extra_cmdline {
        c.push(extra.clone());
    }
    c.join(" ")
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

/// Boots the guest directly on this machine's KVM and waits for it to end.
pub fn run_direct(
    spec: &RunSpec,
    kernel: PathBuf,
    initrd: Option<PathBuf>,
    start: Instant,
) -> Result<Report, vm::VmError> {
    let echo: Arc<Mutex<dyn std::io::Write + Send>> = Arc::new(Mutex::new(std::io::stdout()));
    let sink = ConsoleSink::new(Some(echo));
    let cfg = VmConfig {
        cpus: spec.cpus,
        mem_size: spec.mem_size,
        kernel,
        initrd,
        cmdline: kernel_cmdline(spec),
        device: spec.device.clone(),
    };
    let vm = Vm::new(&cfg, sink.clone())?;
    let vgpu = vm.vgpu();
    let control = vm.control();
    let running = vm.start().map_err(|source| vm::VmError::Device {
        name: "vcpu threads",
        source,
    })?;
    let remaining = spec.timeout.saturating_sub(start.elapsed());
    let reason = control.wait(remaining);
    running.stop();
    sink.finish();

    let state = sink.state();
    let console = state.lock().unwrap();
    let mut report = Report {
        host: HostKind::Kvm,
        boot_ms: console
            .init_at
            .map(|t| t.duration_since(start).as_millis() as u64),
        exit_reason: reason.clone(),
        cpus: spec.cpus,
        mem_mib: spec.mem_size >> 20,
        run_ms: start.elapsed().as_millis() as u64,
        ..Default::default()
    };
    report.absorb_console(&console);
    report.set_device_config(&spec.device);
    report.set_device(
        &vgpu.counters(),
        &vgpu.pasid_counters(),
        &vgpu.fault_latency(),
    );
    report.set_violations(&vgpu.violation_samples());
    let clean_end = reason.is_clean();
    if !clean_end {
        report.errors.push(format!("VM ended abnormally: {reason}"));
    }
    let passed = clean_end && console.guest_passed() && report.errors.is_empty();
    report.verdict = protocol::Verdict::of(passed);
    if !passed {
        report.console_tail = console.tail_lines();
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RunSpec {
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

    #[test]
    fn validation() {
        assert_eq!(validate(&spec()), Ok(()));
        let s = RunSpec {
            mem_size: 64 << 20,
            ..spec()
        };
        assert!(matches!(
            validate(&s),
            Err(SpecError::TooLittleMemory { got: 64, .. })
        ));
        let s = RunSpec { cpus: 0, ..spec() };
        assert_eq!(validate(&s), Err(SpecError::Cpus(0)));
        let s = RunSpec {
            programs: vec!["a b".into()],
            ..spec()
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

    #[test]
    fn cmdline_carries_the_programs_and_expectations() {
        let spec = RunSpec {
            cpus: 2,
            mem_size: 512 << 20,
            programs: vec!["selfcheck".into(), "touch".into()],
            policy: Policy::Naive,
            repeat_for: Duration::ZERO,
            timeout: Duration::from_secs(1),
            verbose: false,
            extra_cmdline: Some("foo=bar".into()),
            device: VgpuConfig::default(),
            inject: None,
            selftest: None,
        };
        let c = kernel_cmdline(&spec);
        assert!(c.contains("console=ttyS0"));
        assert!(c.contains("vgpu.run=selfcheck,touch"));
        assert!(c.contains("vgpu.policy=naive"));
        assert!(!c.contains("vgpu.inject"));
        let c = kernel_cmdline(&RunSpec {
            inject: Some("thp-truncate".into()),
            ..spec
        });
        assert!(c.contains(" vgpu.inject=thp-truncate"), "{c}");
        assert!(c.contains("vgpu.expect_cpus=2"));
        assert!(c.contains("vgpu.expect_mem_mib=512"));
        assert!(c.ends_with("foo=bar"));
        assert!(c.len() < 2048, "x86 COMMAND_LINE_SIZE");
    }
}
