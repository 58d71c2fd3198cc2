//! Which host runs the VMM: KVM directly, or the virtual host.

use std::path::Path;

pub use crate::spec::HostChoice;

/// The host kind a run actually used (in the report).
pub use protocol::HostKind;

/// Checks that `/dev/kvm` is hardware virtualization (kvm_intel or kvm_amd). `Err` says why
/// not, in words a user can act on.
pub fn hardware_kvm_available(sys_module: &Path, dev_kvm: &Path) -> Result<(), String> {
    let vendor = ["kvm_intel", "kvm_amd"]
        .into_iter()
        .find(|m| sys_module.join(m).exists());
    match (vendor, dev_kvm.exists()) {
        (Some(_), true) => Ok(()),
        (Some(m), false) => Err(format!(
            "{m} is loaded but {} is missing",
            dev_kvm.display()
        )),
        (None, true) => Err(format!(
            "{} exists but neither kvm_intel nor kvm_amd is loaded (a software hypervisor such \
             as kvm_pvm cannot run a Linux guest); use --host nested",
            dev_kvm.display()
        )),
        (None, false) => Err(format!(
            "{} is missing and no hardware virtualization module is loaded; use --host nested",
            dev_kvm.display()
        )),
    }
}

/// Resolves `choice` on this machine.
pub fn resolve(choice: HostChoice) -> Result<HostKind, String> {
    let hw = hardware_kvm_available(Path::new("/sys/module"), Path::new("/dev/kvm"));
    match choice {
        HostChoice::Kvm => hw.map(|_| HostKind::Kvm),
        HostChoice::Nested => Ok(HostKind::VirtualHost),
        HostChoice::Auto => Ok(if hw.is_ok() {
            HostKind::Kvm
        } else {
            HostKind::VirtualHost
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_needs_a_vendor_module_and_the_device() {
        let dir = std::env::temp_dir().join(format!("vmm-host-test-{}", std::process::id()));
        let modules = dir.join("module");
        std::fs::create_dir_all(modules.join("kvm_pvm")).unwrap();
        let dev = dir.join("kvm");
        std::fs::write(&dev, b"").unwrap();
        let err = hardware_kvm_available(&modules, &dev).unwrap_err();
        assert!(err.contains("--host nested"), "{err}");
        std::fs::create_dir_all(modules.join("kvm_amd")).unwrap();
        assert!(hardware_kvm_available(&modules, &dev).is_ok());
        std::fs::remove_file(&dev).unwrap();
        assert!(hardware_kvm_available(&modules, &dev).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
