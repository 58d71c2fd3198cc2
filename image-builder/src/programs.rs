//! What the images take from this workspace's builds: the guest programs (static) and the
//! shared libraries of the `vmm` binary for the virtual host.

use std::fs;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use crate::command::tail;
use crate::{elf, io_err, ImageError, Result};

/// The target the guest programs are built for (statically, `+crt-static`).
const GUEST_TARGET: &str = "x86_64-unknown-linux-gnu";

/// Builds the guest programs statically; returns (file name, path) of each binary.
pub(crate) fn build_guest_programs(workspace: &Path) -> Result<Vec<(String, PathBuf)>> {
    let out = Command::new("cargo")
        .args([
            "build",
            "--release",
            "-p",
            "guest-programs",
            "--target",
            GUEST_TARGET,
        ])
        .args(["--message-format", "json-render-diagnostics"])
        .current_dir(workspace)
        .env("CARGO_TARGET_DIR", workspace.join("target").join("guest"))
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        // The workspace release profile keeps debug info; the initramfs does not need it.
        .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo")
        .output()
        .map_err(|e| ImageError::GuestBuild(format!("cannot run cargo: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(ImageError::GuestBuild(tail(&stderr, 40)));
    }
    let mut programs = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        if let Some(exe) = msg["executable"].as_str() {
            let exe = PathBuf::from(exe);
            let data = fs::read(&exe).map_err(io_err(&exe))?;
            if elf::has_interp(&data) != Some(false) {
                return Err(ImageError::NotStatic(exe));
            }
            let name = exe
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            programs.push((name, exe));
        }
    }
    if programs.is_empty() {
        return Err(ImageError::GuestBuild(
            "cargo reported no executables".into(),
        ));
    }
    programs.sort();
    Ok(programs)
}

/// The shared libraries and the loader `binary` needs (absolute paths), from `ldd`.
pub(crate) fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let err = |reason: String| ImageError::Libraries {
        path: binary.to_path_buf(),
        reason,
    };
    let data = fs::read(binary).map_err(io_err(binary))?;
    match elf::has_interp(&data) {
        None => return Err(err("not an ELF64 executable".into())),
        Some(false) => return Ok(Vec::new()),
        Some(true) => {}
    }
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|e| err(format!("cannot run ldd: {e}")))?;
    if !out.status.success() {
        return Err(err(String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    parse_ldd(&String::from_utf8_lossy(&out.stdout)).map_err(err)
}

/// The absolute paths in `ldd` output; an error names libraries that were not found.
fn parse_ldd(text: &str) -> std::result::Result<Vec<PathBuf>, String> {
    let mut libs = Vec::new();
    let mut missing = Vec::new();
    for line in text.lines().map(str::trim) {
        let (name, target) = match line.split_once("=>") {
            Some((n, t)) => (n.trim(), t.trim()),
            None => ("", line),
        };
        if target.starts_with("not found") {
            missing.push(name.to_string());
        } else if target.starts_with('/') {
            let path = target.split(" (").next().unwrap_or(target).trim();
            libs.push(PathBuf::from(path));
        }
    }
    if !missing.is_empty() {
        return Err(format!("not found: {}", missing.join(", ")));
    }
    libs.sort();
    libs.dedup();
    Ok(libs)
}

/// Where the guest programs' crate lives in the workspace.
const GUEST_PROGRAMS_DIR: &str = "guest-driver/programs";

/// The directories of the crates the guest programs are built from, relative to
/// `workspace`: the path dependencies of [`GUEST_PROGRAMS_DIR`] and theirs (for instance
/// `protocol`, for the wire structs, counters and console lines), read from their manifests. A dependency declared
/// `workspace = true` is not followed.
pub(crate) fn path_dependencies(workspace: &Path) -> Result<Vec<PathBuf>> {
    let start = PathBuf::from(GUEST_PROGRAMS_DIR);
    let mut found = vec![start.clone()];
    let mut todo = vec![start];
    while let Some(dir) = todo.pop() {
        let manifest = workspace.join(&dir).join("Cargo.toml");
        let text = fs::read_to_string(&manifest).map_err(io_err(&manifest))?;
        for path in manifest_path_dependencies(&text) {
            let dep = normalize(&dir.join(path));
            if !found.contains(&dep) {
                found.push(dep.clone());
                todo.push(dep);
            }
        }
    }
    found.remove(0);
    found.sort();
    Ok(found)
}

/// The `path` of every dependency in a Cargo manifest's `[dependencies]` and
/// `[build-dependencies]` tables (also per target, and as `[dependencies.NAME]` tables).
/// Dev-dependencies do not go into a build of the programs and are left out.
fn manifest_path_dependencies(text: &str) -> Vec<&str> {
    let mut in_dependencies = false;
    let mut paths = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            let table = line.trim_matches(|c| c == '[' || c == ']');
            in_dependencies = table
                .split('.')
                .any(|part| part == "dependencies" || part == "build-dependencies");
        } else if in_dependencies && !line.starts_with('#') {
            paths.extend(path_value(line));
        }
    }
    paths
}

/// The string value of a `path = "..."` key in a manifest line (an inline table or a
/// dependency table of its own).
fn path_value(line: &str) -> Option<&str> {
    let mut at = 0;
    while let Some(i) = line[at..].find("path").map(|i| at + i) {
        at = i + "path".len();
        let key_starts = line[..i]
            .chars()
            .next_back()
            .is_none_or(|c| c == '{' || c == ',' || c.is_whitespace());
        let Some(value) = line[at..].trim_start().strip_prefix('=') else {
            continue;
        };
        if key_starts {
            return value.trim_start().strip_prefix('"')?.split('"').next();
        }
    }
    None
}

/// `path` with `.` and `dir/..` taken out, without asking the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir
                if out
                    .components()
                    .next_back()
                    .is_some_and(|l| matches!(l, Component::Normal(_))) =>
            {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_path_dependencies_are_found() {
        let manifest = r#"
[package]
name = "x"

[dependencies]
libc.workspace = true
# a = { path = "../commented" }
device-model = { path = "../../device-model" }
wire = { version = "1", path = "../wire", features = ["a"] }
xpath = "1"

[dependencies.named]
path = "../named"

[target.'cfg(unix)'.dependencies]
unixy = { path = "../unixy" }

[dev-dependencies]
testing = { path = "../testing" }

[[bin]]
name = "vgpu-touch"
path = "src/bin/touch.rs"
"#;
        assert_eq!(
            manifest_path_dependencies(manifest),
            ["../../device-model", "../wire", "../named", "../unixy"]
        );
        assert_eq!(
            normalize(Path::new("guest-driver/programs/../../device-model")),
            PathBuf::from("device-model")
        );
        assert_eq!(normalize(Path::new("./a/../../b")), PathBuf::from("../b"));
    }

    #[test]
    fn the_guest_programs_are_built_from_the_protocol_crate() {
        let deps = path_dependencies(&crate::build_checkout()).unwrap();
        assert!(deps.contains(&PathBuf::from("protocol")), "{deps:?}");
        assert!(deps.iter().all(|d| !d.starts_with("..")), "{deps:?}");
    }

    #[test]
    fn ldd_parsing() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd1a5f1000)\n\
            \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f0)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f1)\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x00007f2)\n";
        let libs = parse_ldd(text).unwrap();
        assert_eq!(
            libs,
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        let err = parse_ldd("\tlibfoo.so.1 => not found\n").unwrap_err();
        assert!(err.contains("libfoo.so.1"), "{err}");
    }
}
