//! How a test that cannot run here says so: the `SKIP` record between a test and the CI
//! summary line (`ci/test.sh` counts the skips it finds in `$VGPU_SKIP_LOG`).
//!
//! In CI (`CI` set to anything but `false`), where every dependency is installed, a test that
//! cannot run is a defect that would otherwise hide as a pass: [`skip`] panics there.

use std::io::Write;

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
