//! How a test that cannot run here says so: the `SKIP` record between a test and the CI
//! summary line (`ci/test.sh` counts the skips it finds in `$VGPU_SKIP_LOG`).
//!
//! In CI (`CI` set to anything but `false`), where every dependency is installed, a test that
//! cannot run is a defect that would otherwise hide as a pass: [`skip`] panics there.

use std::io::Write;
use std::path::Path;
use std::process::Command;

/// Gives up on the calling test because `why`: panics in CI, else prints `SKIP: <why>` and
/// appends `<test> <why>` to `$VGPU_SKIP_LOG` (when set). The caller returns right after.
pub fn skip(why: &str) {
    if in_ci() {
        panic!("this test cannot run, and CI has every dependency: {why}");
    }
    println!("SKIP: {why}");
    if let Some(log) = std::env::var_os("VGPU_SKIP_LOG") {
        let test = std::thread::current()
            .name()
            .unwrap_or("unnamed test")
            .to_string();
        let line = format!("{test}: {}\n", why.replace('\n', " "));
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = appended {
            eprintln!("cannot record the skip in {}: {e}", log.to_string_lossy());
        }
    }
}

/// True when running in CI.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Compiles the C program `source` against the headers in `include` (with `-Wall -Werror`,
/// by `$CC` or `cc`), runs it and returns what it printed. `None` after [`skip`] when no
/// compiler or no kernel uapi headers are installed; any other failure panics.
pub fn run_c_program(name: &str, source: &str, include: &Path) -> Option<String> {
    let dir = std::env::temp_dir().join(format!("vgpu-c-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary directory");
    let src = dir.join(format!("{name}.c"));
    let exe = dir.join(name);
    std::fs::write(&src, source).expect("write the C program");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let built = Command::new(&cc)
        .args(["-Wall", "-Werror", "-I"])
        .arg(include)
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .output();
    let built = match built {
        Ok(o) => o,
        Err(e) => {
            skip(&format!("cannot run the C compiler {cc:?}: {e}"));
            return None;
        }
    };
    if !built.status.success() {
        let err = String::from_utf8_lossy(&built.stderr);
        if err.contains("linux/types.h") || err.contains("linux/ioctl.h") {
            skip(&format!("kernel uapi headers are not installed: {err}"));
            return None;
        }
        panic!(
            "compiling {name}.c against {} failed:\n{err}",
            include.display()
        );
    }
    let out = Command::new(&exe).output().expect("run the C program");
    assert!(out.status.success(), "{name} failed: {out:?}");
    let _ = std::fs::remove_dir_all(&dir);
    Some(String::from_utf8(out.stdout).expect("ASCII output"))
}
