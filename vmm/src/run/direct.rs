//! A run directly on this machine's KVM: the VM, its console and the report.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use vm::{Vm, VmConfig};

use super::host::HostKind;
use crate::console::ConsoleSink;
use crate::report::{Report, RunReport};
use crate::spec::RunSpec;

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
    use crate::spec::Policy;

    #[test]
    fn cmdline_carries_the_programs_and_expectations() {
        let spec = RunSpec {
            programs: vec!["selfcheck".into(), "touch".into()],
            policy: Policy::Naive,
            extra_cmdline: Some("foo=bar".into()),
            ..RunSpec::example()
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
