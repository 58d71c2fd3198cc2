//! The kernel's HMM selftest `hmm-tests`, built statically from the few files of the kernel
//! tree it needs (fetched by [`crate::debian::fetch_hmm_sources`]).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cache::{publish, temp_dir};
use crate::command::run;
use crate::hash::Fnv64;
use crate::kmod::KERNEL_CC;
use crate::{elf, io_err, ImageError, Result};

/// The files of the kernel tree that `hmm-tests` needs (it includes the rest from libc
/// and the system's kernel uapi headers); `lib/test_hmm_uapi.h` is also the ABI of the
/// driver's dmirror devices.
pub(crate) const HMM_SOURCES: &[&str] = &[
    "tools/testing/selftests/vm/hmm-tests.c",
    "tools/testing/selftests/kselftest_harness.h",
    "tools/testing/selftests/kselftest.h",
    "lib/test_hmm_uapi.h",
    "mm/gup_test.h",
];

/// How `hmm-tests` is compiled (besides `-I` and `-o`): static, as the guest has no libc.
const HMM_TESTS_CFLAGS: &[&str] = &["-static", "-O2", "-s"];
const HMM_TESTS_LIBS: &[&str] = &["-lpthread", "-lrt"];

/// Builds `hmm-tests` statically from the sources in `src` (as [`crate::debian::fetch_hmm_sources`] left
/// them) with the kernel's compiler, once per content hash of the sources, the flags and
/// the compiler; returns the executable (`cache/hmm-tests-<hash>/hmm-tests`).
pub(crate) fn build_hmm_tests(src: &Path, cache: &Path) -> Result<PathBuf> {
    let cc_version = run(Command::new(KERNEL_CC).arg("--version"))?;
    let mut h = Fnv64::new();
    h.field(b"cc", cc_version.as_bytes());
    h.field(b"cflags", HMM_TESTS_CFLAGS.join(" ").as_bytes());
    h.field(b"libs", HMM_TESTS_LIBS.join(" ").as_bytes());
    for f in HMM_SOURCES {
        let path = src.join(f);
        let data = fs::read(&path).map_err(io_err(&path))?;
        h.field(f.as_bytes(), &data);
    }
    let dir = cache.join(format!("hmm-tests-{}", h.hex()));
    let exe = dir.join("hmm-tests");
    if exe.is_file() {
        return Ok(exe);
    }
    let tmp = temp_dir(cache, "hmm-tests")?;
    let built = tmp.join("hmm-tests");
    run(Command::new(KERNEL_CC)
        .args(HMM_TESTS_CFLAGS)
        .arg("-I")
        .arg(src)
        .arg("-I")
        .arg(src.join("tools/testing/selftests"))
        .arg("-o")
        .arg(&built)
        .arg(src.join(HMM_SOURCES[0]))
        .args(HMM_TESTS_LIBS))?;
    let data = fs::read(&built).map_err(io_err(&built))?;
    if elf::has_interp(&data) != Some(false) {
        return Err(ImageError::NotStatic(built));
    }
    publish(&tmp, &dir, false)?;
    Ok(exe)
}
