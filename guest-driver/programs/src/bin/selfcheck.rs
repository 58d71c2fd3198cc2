//! `vgpu-selfcheck`: checks that the guest sees what the VMM promised.
//!
//! Prints one line per check, `check <name>: ok` or `check <name>: FAIL <why>`, and exits
//! with 1 if any check failed. Checks:
//! - `rng`: a virtio-rng device is the current hw_random source and /dev/hwrng delivers
//!   64 bytes that are not all equal;
//! - `cpus`: with `vgpu.expect_cpus=N` on the kernel command line, N CPUs are online;
//! - `mem`: with `vgpu.expect_mem_mib=M`, MemTotal lies within [0.8 M, M] MiB.

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
}
