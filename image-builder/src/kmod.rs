//! The guest driver module: `guest-driver/kmod` built against the guest kernel's Debian headers.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cache::temp_dir;
use crate::command::{run, tail};
use crate::hash::is_ignored;
use crate::{io_err, ImageError, Result};

/// The guest driver (`guest-driver/kmod`), built against the kernel's headers and loaded
/// after the virtio modules.
pub(crate) const DRIVER_MODULE: &str = "vgpu_mirror";

/// The compiler the Debian 6.1 kernel headers were configured with.
pub(crate) const KERNEL_CC: &str = "gcc-12";

/// Copies the source files of `from` (as the input hash sees them) into `to`.
fn copy_sources(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to).map_err(io_err(to))?;
    for entry in fs::read_dir(from).map_err(io_err(from))? {
        let path = entry.map_err(io_err(from))?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with('.') || is_ignored(&name) {
            continue;
        }
        let ty = fs::symlink_metadata(&path)
            .map_err(io_err(&path))?
            .file_type();
        let dest = to.join(path.file_name().unwrap_or_default());
        if ty.is_dir() {
            copy_sources(&path, &dest)?;
        } else if ty.is_file() {
            fs::copy(&path, &dest).map_err(io_err(&path))?;
        }
    }
    Ok(())
}

/// Builds `guest-driver/kmod` against `kdir` in a fresh directory below `cache` (the
/// source tree stays clean) with `-Werror`; a modpost warning fails the build too.
/// `hmm_uapi` is the directory holding the kernel's `test_hmm_uapi.h`. The module is
/// stripped of debug info. Returns the build directory (remove it when done) and the
/// module.
pub(crate) fn build_driver_module(
    workspace: &Path,
    kdir: &Path,
    hmm_uapi: &Path,
    cache: &Path,
) -> Result<(PathBuf, PathBuf)> {
    let err = |reason: String| ImageError::Module {
        name: DRIVER_MODULE.into(),
        reason,
    };
    // The Debian headers name gcc-12 as CC (.kernelvariables).
    run(Command::new(KERNEL_CC).arg("--version"))?;
    let dir = temp_dir(cache, "kmod")?;
    let src = workspace.join("guest-driver");
    copy_sources(&src.join("kmod"), &dir.join("kmod"))?;
    copy_sources(&src.join("include"), &dir.join("include"))?;
    let out = Command::new("make")
        .arg("-C")
        .arg(kdir)
        .arg(format!("M={}", dir.join("kmod").display()))
        .arg(format!("HMM_UAPI_DIR={}", hmm_uapi.display()))
        .args(["KCFLAGS=-Werror", "modules"])
        .output()
        .map_err(|source| ImageError::MissingTool {
            tool: "make".into(),
            source,
        })?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        return Err(err(format!(
            "make failed ({}), sources in {}:\n{}",
            out.status,
            dir.display(),
            tail(&text, 40)
        )));
    }
    let warnings: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("warning:") || l.contains("WARNING:"))
        .collect();
    if !warnings.is_empty() {
        return Err(err(format!("build warnings:\n{}", warnings.join("\n"))));
    }
    let ko = dir.join("kmod").join(format!("{DRIVER_MODULE}.ko"));
    if !ko.is_file() {
        return Err(err(format!("make produced no {}", ko.display())));
    }
    // The headers build with debug info; the initramfs does not need it.
    run(Command::new("strip").arg("--strip-debug").arg(&ko))?;
    Ok((dir, ko))
}
