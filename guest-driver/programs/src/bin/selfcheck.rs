//! `vgpu-selfcheck`: checks that the guest sees what the VMM promised.
//!
//! Prints one line per check, `check <name>: ok` or `check <name>: FAIL <why>`, and exits
//! with 1 if any check failed. Checks:
//! - `rng`: a virtio-rng device is the current hw_random source and /dev/hwrng delivers
//!   64 bytes that are not all equal;
//! - `cpus`: with `vgpu.expect_cpus=N` on the kernel command line, N CPUs are online;
//! - `mem`: with `vgpu.expect_mem_mib=M`, MemTotal lies within [0.8 M, M] MiB;
//! - `topology`: /proc/cpuinfo shows one package (`physical id` 0 on every CPU) of N cores
//!   (`cpu cores` and `siblings` N), N from `vgpu.expect_cpus` or the CPUs listed;
//! - `timer`: /proc/timer_list shows the `lapic-deadline` clockevent as the per-CPU tick
//!   device of every CPU (the VMM advertises the TSC-deadline timer).

use std::fs;
use std::io::Read;
use std::process::ExitCode;

const RNG_CURRENT: &[&str] = &[
    "/sys/class/misc/hw_random/rng_current",
    "/sys/devices/virtual/misc/hw_random/rng_current",
];

fn main() -> ExitCode {
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let mut checks: Vec<(&str, Result<(), String>)> = vec![("rng", check_rng())];
    if let Some(n) = cmdline_param(&cmdline, "vgpu.expect_cpus") {
        checks.push(("cpus", check_cpus(n)));
    }
    if let Some(m) = cmdline_param(&cmdline, "vgpu.expect_mem_mib") {
        checks.push(("mem", check_mem(m)));
    }
    let expect_cpus = cmdline_param(&cmdline, "vgpu.expect_cpus").and_then(|n| n.parse().ok());
    checks.push(("topology", check_topology(expect_cpus)));
    checks.push(("timer", check_timer(expect_cpus)));
    let failed = guest_programs::print_checks(&checks);
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The value of `key=value` on a kernel command line (last one wins, like the kernel).
fn cmdline_param<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_whitespace()
        .filter_map(|arg| arg.strip_prefix(key)?.strip_prefix('='))
        .next_back()
}

fn check_rng() -> Result<(), String> {
    let current = RNG_CURRENT
        .iter()
        .find_map(|p| fs::read_to_string(p).ok())
        .ok_or("no hw_random device (rng_current missing)")?;
    let current = current.trim();
    if !current.starts_with("virtio_rng") {
        return Err(format!("rng_current is {current:?}, not virtio_rng"));
    }
    let mut buf = [0u8; 64];
    fs::File::open("/dev/hwrng")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| format!("reading 64 bytes from /dev/hwrng: {e}"))?;
    if buf.iter().all(|&b| b == buf[0]) {
        return Err(format!("/dev/hwrng gave 64 bytes of {:#04x}", buf[0]));
    }
    Ok(())
}

fn check_cpus(expected: &str) -> Result<(), String> {
    let expected: usize = expected
        .parse()
        .map_err(|_| format!("bad vgpu.expect_cpus={expected}"))?;
    let online = fs::read_to_string("/sys/devices/system/cpu/online")
        .map_err(|e| format!("/sys/devices/system/cpu/online: {e}"))?;
    let n = count_cpu_list(&online).ok_or(format!("cannot parse cpu list {online:?}"))?;
    if n == expected {
        Ok(())
    } else {
        Err(format!(
            "{n} CPUs online ({}), expected {expected}",
            online.trim()
        ))
    }
}

/// Counts the CPUs in a list like `0-3,5,7-8`.
fn count_cpu_list(list: &str) -> Option<usize> {
    let mut n = 0;
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        n += match part.split_once('-') {
            Some((a, b)) => b.parse::<usize>().ok()?.checked_sub(a.parse().ok()?)? + 1,
            None => part.parse::<usize>().map(|_| 1).ok()?,
        };
    }
    Some(n)
}

fn check_mem(expected: &str) -> Result<(), String> {
    let expected: u64 = expected
        .parse()
        .map_err(|_| format!("bad vgpu.expect_mem_mib={expected}"))?;
    let meminfo = fs::read_to_string("/proc/meminfo").map_err(|e| format!("/proc/meminfo: {e}"))?;
    let kib = meminfo_kib(&meminfo, "MemTotal").ok_or("no MemTotal in /proc/meminfo")?;
    let mib = kib / 1024;
    // MemTotal excludes what the firmware and the kernel image reserve.
    if mib * 10 >= expected * 8 && mib <= expected {
        Ok(())
    } else {
        Err(format!(
            "MemTotal {mib} MiB not within [80%, 100%] of {expected} MiB"
        ))
    }
}

/// A `Key: N kB` value of /proc/meminfo.
fn meminfo_kib(meminfo: &str, key: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// One CPU's fields of /proc/cpuinfo that describe the topology.
#[derive(Debug, Default, PartialEq, Eq)]
struct CpuTopology {
    processor: Option<u32>,
    physical_id: Option<u32>,
    cpu_cores: Option<u32>,
    siblings: Option<u32>,
}

/// The topology fields of every CPU in /proc/cpuinfo, in order.
fn parse_cpuinfo(cpuinfo: &str) -> Vec<CpuTopology> {
    let mut cpus = Vec::new();
    for block in cpuinfo.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let mut cpu = CpuTopology::default();
        for line in block.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim().parse().ok();
            match key.trim() {
                "processor" => cpu.processor = value,
                "physical id" => cpu.physical_id = value,
                "cpu cores" => cpu.cpu_cores = value,
                "siblings" => cpu.siblings = value,
                _ => {}
            }
        }
        cpus.push(cpu);
    }
    cpus
}

fn check_topology(expected: Option<usize>) -> Result<(), String> {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").map_err(|e| format!("/proc/cpuinfo: {e}"))?;
    topology_verdict(&parse_cpuinfo(&cpuinfo), expected)
}

/// One package of N single-thread cores: every CPU has `physical id` 0 and `cpu cores` =
/// `siblings` = N.
fn topology_verdict(cpus: &[CpuTopology], expected: Option<usize>) -> Result<(), String> {
    let n = expected.unwrap_or(cpus.len());
    if cpus.len() != n {
        return Err(format!(
            "/proc/cpuinfo lists {} CPUs, expected {n}",
            cpus.len()
        ));
    }
    let want = u32::try_from(n).map_err(|_| format!("{n} CPUs"))?;
    for (i, cpu) in cpus.iter().enumerate() {
        let name = cpu
            .processor
            .map_or(format!("entry {i}"), |p| format!("cpu {p}"));
        let fields = [
            ("physical id", cpu.physical_id, 0),
            ("cpu cores", cpu.cpu_cores, want),
            ("siblings", cpu.siblings, want),
        ];
        for (field, got, want) in fields {
            match got {
                Some(got) if got == want => {}
                Some(got) => return Err(format!("{name}: {field} {got}, expected {want}")),
                None => return Err(format!("{name}: no {field} in /proc/cpuinfo")),
            }
        }
    }
    Ok(())
}

/// The clockevent device of each CPU's tick device in /proc/timer_list, by CPU number (the
/// broadcast device is left out).
fn parse_timer_list(timer_list: &str) -> Vec<(u32, String)> {
    let mut devices = Vec::new();
    let mut cpu = None;
    for line in timer_list.lines() {
        let line = line.trim();
        if line.starts_with("Tick Device:") || line == "Broadcast device" {
            cpu = None;
        } else if let Some(n) = line.strip_prefix("Per CPU device:") {
            cpu = n.trim().parse().ok();
        } else if let Some(dev) = line.strip_prefix("Clock Event Device:") {
            if let Some(n) = cpu.take() {
                devices.push((n, dev.trim().to_string()));
            }
        }
    }
    devices
}

fn check_timer(expected: Option<usize>) -> Result<(), String> {
    let timer_list =
        fs::read_to_string("/proc/timer_list").map_err(|e| format!("/proc/timer_list: {e}"))?;
    timer_verdict(&parse_timer_list(&timer_list), expected)
}

/// Every CPU (N of them when `expected`) ticks with `lapic-deadline`.
fn timer_verdict(devices: &[(u32, String)], expected: Option<usize>) -> Result<(), String> {
    if devices.is_empty() {
        return Err("no per-CPU clockevent device in /proc/timer_list".into());
    }
    if let Some(n) = expected {
        if devices.len() != n {
            return Err(format!(
                "{} per-CPU clockevent devices in /proc/timer_list, expected {n}",
                devices.len()
            ));
        }
    }
    let wrong: Vec<String> = devices
        .iter()
        .filter(|(_, dev)| dev != "lapic-deadline")
        .map(|(cpu, dev)| format!("cpu {cpu} ticks with {dev}"))
        .collect();
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(format!("{}, not lapic-deadline", wrong.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline() {
        let c = "console=ttyS0 vgpu.expect_cpus=2 vgpu.expect_cpus_x=9 vgpu.run=a,b\n";
        assert_eq!(cmdline_param(c, "vgpu.expect_cpus"), Some("2"));
        assert_eq!(cmdline_param(c, "vgpu.run"), Some("a,b"));
        assert_eq!(cmdline_param(c, "vgpu.expect_mem_mib"), None);
        assert_eq!(cmdline_param("a=1 a=2", "a"), Some("2"));
    }

    #[test]
    fn cpu_list() {
        assert_eq!(count_cpu_list("0\n"), Some(1));
        assert_eq!(count_cpu_list("0-1\n"), Some(2));
        assert_eq!(count_cpu_list("0-3,5,7-8"), Some(7));
        assert_eq!(count_cpu_list("x"), None);
    }

    #[test]
    fn meminfo() {
        let m = "MemTotal:         497040 kB\nMemFree:          470000 kB\n";
        assert_eq!(meminfo_kib(m, "MemTotal"), Some(497040));
        assert_eq!(meminfo_kib(m, "MemAvailable"), None);
    }

    const CPUINFO_2: &str = "processor\t: 0\nvendor_id\t: AuthenticAMD\nphysical id\t: 0\n\
        siblings\t: 2\ncore id\t\t: 0\ncpu cores\t: 2\napicid\t\t: 0\n\n\
        processor\t: 1\nvendor_id\t: AuthenticAMD\nphysical id\t: 0\n\
        siblings\t: 2\ncore id\t\t: 1\ncpu cores\t: 2\napicid\t\t: 1\n\n";

    #[test]
    fn topology() {
        let cpus = parse_cpuinfo(CPUINFO_2);
        assert_eq!(cpus.len(), 2);
        assert_eq!(
            cpus[1],
            CpuTopology {
                processor: Some(1),
                physical_id: Some(0),
                cpu_cores: Some(2),
                siblings: Some(2),
            }
        );
        assert_eq!(topology_verdict(&cpus, Some(2)), Ok(()));
        assert_eq!(topology_verdict(&cpus, None), Ok(()));
        assert!(topology_verdict(&cpus, Some(1)).is_err());
        // Two packages of one core each, as a VMM without the topology leaves may show.
        let two_packages = "processor\t: 0\nphysical id\t: 0\nsiblings\t: 1\ncpu cores\t: 1\n\n\
            processor\t: 1\nphysical id\t: 1\nsiblings\t: 1\ncpu cores\t: 1\n";
        let err = topology_verdict(&parse_cpuinfo(two_packages), Some(2)).unwrap_err();
        assert_eq!(err, "cpu 0: cpu cores 1, expected 2");
        let mut one_package = parse_cpuinfo(two_packages);
        for cpu in &mut one_package {
            (cpu.cpu_cores, cpu.siblings) = (Some(2), Some(2));
        }
        let err = topology_verdict(&one_package, Some(2)).unwrap_err();
        assert_eq!(err, "cpu 1: physical id 1, expected 0");
        let no_ids = "processor\t: 0\nvendor_id\t: AuthenticAMD\n";
        let err = topology_verdict(&parse_cpuinfo(no_ids), Some(1)).unwrap_err();
        assert_eq!(err, "cpu 0: no physical id in /proc/cpuinfo");
    }

    /// The tick devices of /proc/timer_list as Linux 6.1 prints them (other fields cut).
    const TIMER_LIST: &str = "Timer List Version: v0.9\n\
        cpu: 0\n clock 0:\n  .base:       ffff\n\n\
        Tick Device: mode:     1\nBroadcast device\nClock Event Device: pit\n max_delta_ns:   1\n\n\
        Tick Device: mode:     1\nPer CPU device: 0\nClock Event Device: lapic-deadline\n mult: 1\n\n\
        Tick Device: mode:     1\nPer CPU device: 1\nClock Event Device: lapic-deadline\n mult: 1\n";

    #[test]
    fn timer() {
        let devices = parse_timer_list(TIMER_LIST);
        assert_eq!(
            devices,
            vec![
                (0, "lapic-deadline".to_string()),
                (1, "lapic-deadline".to_string())
            ]
        );
        assert_eq!(timer_verdict(&devices, Some(2)), Ok(()));
        assert!(timer_verdict(&devices, Some(3)).is_err());
        let old = TIMER_LIST.replacen("Device: lapic-deadline", "Device: lapic", 1);
        assert_eq!(
            timer_verdict(&parse_timer_list(&old), Some(2)),
            Err("cpu 0 ticks with lapic, not lapic-deadline".to_string())
        );
        let none = TIMER_LIST.replace("Device: lapic-deadline", "Device: <NULL>");
        let err = timer_verdict(&parse_timer_list(&none), None).unwrap_err();
        assert!(err.contains("cpu 1 ticks with <NULL>"), "{err}");
        assert!(timer_verdict(&[], None).is_err());
    }
}
