//! The virtual host: where this machine has no hardware virtualization, QEMU (TCG, with an
//! emulated AMD CPU that has SVM and nested paging) boots a small Linux with kvm_amd, and this
//! same `vmm` binary runs inside it on a working `/dev/kvm`.
//!
//! QEMU is only the virtual host's hardware: the guest, its devices and the virtual GPU live in
//! the inner VMM. The virtual host's init (`images/host-init.sh`) starts the inner `vmm run
//! --host kvm` with the arguments passed here on the kernel command line, relays its console,
//! then prints the inner report on a `VGPU-HOST-REPORT` line and powers off.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::host::HostKind;
use crate::console::ConsoleState;
use crate::report::Report;
use device_model::VgpuConfig;
use protocol::{ExitReason, Verdict};

use crate::spec::RunSpec;

/// The QEMU binary of the virtual host.
pub const QEMU: &str = "qemu-system-x86_64";

/// Errors of the virtual host.
#[derive(Debug, thiserror::Error)]
pub enum VirtualHostError {
    /// QEMU is not installed.
    #[error(
        "{QEMU} not found: the virtual host needs QEMU. Install it with \
         `apt-get install qemu-system-x86` (QEMU 10 from bookworm-backports is preferred; \
         `bash ci/install-deps.sh` does both)"
    )]
    QemuMissing,
    /// QEMU could not be started.
    #[error("cannot start {QEMU}: {0}")]
    Spawn(#[source] std::io::Error),
}

/// Finds `name` on PATH.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The inner VMM's subcommand, comma-joined for the kernel command line (`vgpu.command`).
pub fn inner_command(spec: &RunSpec) -> String {
    match spec.selftest {
        Some(suite) => format!("selftest,{}", suite.name()),
        None => "run".into(),
    }
}

/// The arguments of the inner `vmm run` (or `vmm selftest`), comma-joined for the kernel
/// command line.
pub fn inner_args(spec: &RunSpec) -> String {
    let mut a = vec![
        "--cpus".to_string(),
        spec.cpus.to_string(),
        "--mem".into(),
        format!("{}M", spec.mem_size >> 20),
        "--timeout".into(),
        // The inner `vmm` adds --repeat-for back, as ours did.
        spec.timeout
            .saturating_sub(spec.repeat_for)
            .as_secs()
            .to_string(),
        "--policy".into(),
        spec.policy.as_str().into(),
    ];
    if spec.selftest.is_none() {
        for p in &spec.programs {
            a.push("--run".into());
            a.push(p.clone());
        }
    }
    if !spec.repeat_for.is_zero() {
        a.push("--repeat-for".into());
        a.push(spec.repeat_for.as_secs().to_string());
    }
    if spec.verbose {
        a.push("--verbose".into());
    }
    if let Some(name) = &spec.inject {
        a.push("--inject".into());
        a.push(name.clone());
    }
    // The device options are comma-separated on our command line, but this list is
    // comma-joined into one kernel argument and split on commas by host-init.sh: send
    // them `+`-separated, which `VgpuConfig::from_options` also accepts.
    if spec.device != VgpuConfig::default() {
        a.push("--device".into());
        a.push(spec.device.to_options('+'));
    }
    a.join(",")
}

/// Virtual-host RAM: the guest's plus room for the host kernel, its initramfs (which holds
/// the guest image) and the inner VMM.
pub fn host_mem_mib(spec: &RunSpec) -> u64 {
    (spec.mem_size >> 20) + 1024
}

/// Boots the virtual host from `kernel` and `initrd` and runs the inner VMM with `spec`.
pub fn run_virtual_host(
    spec: &RunSpec,
    kernel: &Path,
    initrd: &Path,
    start: Instant,
) -> Result<Report, VirtualHostError> {
    let qemu = find_in_path(QEMU).ok_or(VirtualHostError::QemuMissing)?;
    let append = format!(
        "console=ttyS0 panic=-1 loglevel={} vgpu.command={} vgpu.args={}",
        if spec.verbose { 7 } else { 4 },
        inner_command(spec),
        inner_args(spec)
    );
    let host_cpus = spec.cpus.clamp(1, 2).max(2);
    let mut child = Command::new(qemu)
        .args(["-M", "q35", "-cpu", "EPYC,+svm,+npt"])
        .args(["-accel", "tcg,thread=multi"])
        .args(["-smp", &host_cpus.to_string()])
        .args(["-m", &host_mem_mib(spec).to_string()])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", &append])
        .args(["-display", "none", "-serial", "stdio", "-monitor", "none"])
        .args(["-nodefaults", "-no-reboot"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(VirtualHostError::Spawn)?;
    log::info!("virtual host started (QEMU pid {})", child.id());

    let (tx, rx) = mpsc::channel::<String>();
    let stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
            if tx
                .send(String::from_utf8_lossy(&line).into_owned())
                .is_err()
            {
                break;
            }
        }
    });
    let stderr = child.stderr.take().expect("piped stderr");
    let err_reader = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if text.len() < 16 * 1024 {
                text.push_str(&line);
                text.push('\n');
            }
        }
        text
    });

    let deadline = start + spec.timeout + Duration::from_secs(60);
    let mut console = ConsoleState::default();
    let mut timed_out = false;
    let out = std::io::stdout();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                // The relayed report is for this process, not for the reader (unless asked).
                if spec.verbose || !line.starts_with("VGPU-HOST-REPORT") {
                    let mut o = out.lock();
                    let _ = writeln!(o, "{}", line.trim_end_matches('\r'));
                }
                console.handle_line(&line, Instant::now());
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                let _ = child.kill();
                break;
            }
        }
    }
    let status = child.wait();
    let _ = reader.join();
    let qemu_stderr = err_reader.join().unwrap_or_default();

    let mut report = match console.host_report.clone() {
        Some(r) => r,
        None => Report {
            errors: vec!["the virtual host returned no report".into()],
            ..Default::default()
        },
    };
    report.host = HostKind::VirtualHost;
    report.cpus = spec.cpus;
    report.mem_mib = spec.mem_size >> 20;
    report.virtual_host_boot_ms = console
        .host_init_at
        .map(|t| t.duration_since(start).as_millis() as u64);
    report.virtual_host_run_ms = Some(start.elapsed().as_millis() as u64);
    report.errors.extend(console.host_errors.iter().cloned());
    // The inner VMM echoed the guest console, so selftest output reached this console too.
    report.selftest_captures = console.selftests.clone();
    if timed_out {
        report
            .errors
            .push(format!("virtual host timed out after {:?}", spec.timeout));
        report.exit_reason = ExitReason::Timeout;
    }
    match status {
        Ok(s) if !s.success() && !timed_out => report
            .errors
            .push(format!("QEMU exited with {s}: {}", qemu_stderr.trim())),
        Err(e) => report.errors.push(format!("waiting for QEMU: {e}")),
        _ => {}
    }
    let inner_ok = console.host_exit == Some(0) && report.passed();
    if !inner_ok || !report.errors.is_empty() {
        report.verdict = Verdict::Fail;
        if report.console_tail.is_empty() {
            report.console_tail = console.tail_lines();
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inner_args_round_trip_through_commas() {
        let spec = RunSpec {
            cpus: 2,
            mem_size: 512 << 20,
            programs: vec!["selfcheck".into(), "touch".into()],
            policy: crate::spec::Policy::Naive,
            repeat_for: Duration::ZERO,
            timeout: Duration::from_secs(300),
            verbose: true,
            extra_cmdline: None,
            device: VgpuConfig::default(),
            inject: None,
            selftest: None,
        };
        let a = inner_args(&spec);
        assert_eq!(
            a,
            "--cpus,2,--mem,512M,--timeout,300,--policy,naive,--run,selfcheck,--run,touch,--verbose"
        );
        assert!(!a.contains(' '));
        assert_eq!(host_mem_mib(&spec), 1536);
        assert_eq!(inner_command(&spec), "run");
    }

    #[test]
    fn a_selftest_runs_as_a_selftest_in_the_virtual_host() {
        use clap::Parser;
        let spec = RunSpec {
            cpus: 2,
            mem_size: 512 << 20,
            programs: vec!["hmm-tests".into()],
            policy: crate::spec::Policy::Naive,
            repeat_for: Duration::ZERO,
            timeout: Duration::from_secs(300),
            verbose: false,
            extra_cmdline: None,
            device: VgpuConfig::default(),
            inject: None,
            selftest: Some(crate::spec::Suite::Hmm),
        };
        assert_eq!(inner_command(&spec), "selftest,hmm");
        let command = inner_command(&spec);
        let args = inner_args(&spec);
        assert!(!args.contains("--run"), "{args}");
        // What images/host-init.sh runs: the command, its fixed options, then the args.
        let argv = ["vmm"]
            .into_iter()
            .chain(command.split(','))
            .chain(["--host", "kvm", "--report", "/tmp/report.json"])
            .chain(args.split(','));
        let cli = crate::cli::Cli::try_parse_from(argv).unwrap();
        let crate::cli::Command::Selftest(a) = cli.command else {
            panic!("not a selftest");
        };
        assert_eq!(a.suite, crate::spec::Suite::Hmm);
        assert_eq!(a.guest.policy, crate::spec::Policy::Naive);
    }

    #[test]
    fn device_options_survive_the_comma_split_of_the_inner_hop() {
        use clap::Parser;
        let device =
            VgpuConfig::from_options("atc_entries=64,atc_ways=4,fault_ahead=64K,fault_batch=4")
                .unwrap();
        let spec = RunSpec {
            cpus: 1,
            mem_size: 256 << 20,
            programs: vec!["touch".into()],
            policy: crate::spec::Policy::EventAware,
            repeat_for: Duration::ZERO,
            timeout: Duration::from_secs(60),
            verbose: false,
            extra_cmdline: None,
            device: device.clone(),
            inject: None,
            selftest: None,
        };
        let a = inner_args(&spec);
        assert!(!a.contains(' '));
        // What images/host-init.sh does: split the kernel argument on commas.
        let argv = ["vmm", "run"].into_iter().chain(a.split(','));
        let cli = crate::cli::Cli::try_parse_from(argv).unwrap();
        let crate::cli::Command::Run(args) = cli.command else {
            panic!("not a run");
        };
        assert_eq!(VgpuConfig::from_options(&args.guest.device), Ok(device));
    }
}
