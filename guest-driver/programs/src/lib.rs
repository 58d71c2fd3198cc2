//! The guest side of the virtual GPU in Rust: the ioctl bindings of `/dev/vgpu0`
//! ([`uapi`]), a safe handle on it ([`device`]) and the pieces the workloads share.

#![deny(missing_docs)]

pub mod device;

/// The records shared with the device and the VMM.
pub use protocol;

/// Prints `check <name>: ok` or `check <name>: FAIL <why>` for each check and returns how
/// many failed (the line format the guest tests look for).
pub fn print_checks(checks: &[(&str, Result<(), String>)]) -> u32 {
    let mut failed = 0;
    for (name, result) in checks {
        match result {
            Ok(()) => println!("check {name}: ok"),
            Err(why) => {
                failed += 1;
                println!("check {name}: FAIL {why}");
            }
        }
    }
    failed
}
pub mod uapi;
pub mod workload;
