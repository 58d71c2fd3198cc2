//! The guest driver's bug injections: each name is a value of the `vgpu_mirror` module
//! parameter `inject=` (`guest-driver/kmod/vgpu_main.c` parses them; the guest's `/init`
//! passes `vgpu.inject=NAME` from the kernel command line). Each re-creates a classic
//! mirroring mistake, so that the device's coherence oracle can be shown to catch it:
//!
//! - `skip-event:<EVENT>`: the notifier ignores that mmu-notifier event entirely (no
//!   sequence bump, no device invalidation);
//! - `thp-truncate`: every device invalidation covers only the first 4 KiB of its range;
//! - `late-invalidate`: the callback returns at once and the device invalidation goes out a
//!   few milliseconds later from a work item, after the CPU page table changed;
//! - `no-seq-retry`: the fault path maps its `hmm_range_fault` snapshot without checking
//!   `mmu_interval_read_retry`;
//! - `early-complete`: the callback sends INVALIDATE and returns before the device
//!   answered it.
//!
//! The events are the kernel's `enum mmu_notifier_event` names, as SPEC.md numbers them.

/// Every injection, one `skip-event` per event, in the order `--list-injections` prints.
pub const INJECTIONS: &[&str] = &[
    "skip-event:UNMAP",
    "skip-event:CLEAR",
    "skip-event:PROTECTION_VMA",
    "skip-event:PROTECTION_PAGE",
    "skip-event:SOFT_DIRTY",
    "skip-event:RELEASE",
    "skip-event:MIGRATE",
    "skip-event:EXCLUSIVE",
    "thp-truncate",
    "late-invalidate",
    "no-seq-retry",
    "early-complete",
];

/// Whether `name` is an injection the driver accepts.
pub fn is_injection(name: &str) -> bool {
    INJECTIONS.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_safe_on_a_kernel_command_line() {
        for (i, a) in INJECTIONS.iter().enumerate() {
            assert!(!INJECTIONS[..i].contains(a), "{a} twice");
            assert!(
                a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_:".contains(&b)),
                "{a}"
            );
        }
        assert!(is_injection("thp-truncate"));
        assert!(!is_injection("none"));
        assert!(!is_injection("skip-event:"));
    }

    #[test]
    fn skip_event_covers_every_event_the_driver_names() {
        let driver = include_str!("../../guest-driver/kmod/vgpu_main.c");
        for name in INJECTIONS {
            match name.strip_prefix("skip-event:") {
                Some(event) => assert!(driver.contains(&format!("= \"{event}\"")), "{event}"),
                None => assert!(driver.contains(&format!("{{ \"{name}\", ")), "{name}"),
            }
        }
    }
}
