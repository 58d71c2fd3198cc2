//! Builds the guest image and the virtual-host image from Debian packages.
//!
//! Both images use the Debian 6.1 cloud kernel (resolved through apt at build time, since
//! the ABI number moves with security updates) and an initramfs written here as a
//! `newc` cpio archive. The guest initramfs holds busybox, the virtio modules, the guest
//! driver `vgpu_mirror.ko` (built here against the kernel's Debian header packages), the
//! guest programs, the kernel's HMM selftest `hmm-tests` (built statically from the few
//! files it needs out of Debian's `linux-source-6.1`, which never leaves the cache) with
//! its runner `images/hmm-tests.sh` as `/bin/vgpu-hmm-tests`, and `images/guest-init.sh`
//! as `/init`; the virtual-host initramfs holds
//! busybox, kvm_amd and its dependencies, the `vmm` binary with its shared libraries, the
//! guest image under `/guest` and `images/host-init.sh` as `/init`.
//!
//! Every image lands in `<out_dir>/<name>-<hash>/`, where the hash covers all inputs, so an
//! unchanged rebuild only re-hashes. Images are written to a temporary directory and
//! renamed into place; `<out_dir>/<name>-latest` points at the newest one. Downloaded and
//! unpacked packages are kept in `<out_dir>/cache/`. See images/README.md.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The meta package whose candidate names the current 6.1 cloud kernel.
const KERNEL_META: &str = "linux-image-cloud-amd64";
/// Modules of the guest image: virtio over PCI and virtio-rng (dependencies are added).
const GUEST_MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_rng",
];
/// The guest driver (`guest-driver/kmod`), built against the kernel's headers and loaded
/// after the virtio modules.
const DRIVER_MODULE: &str = "vgpu_mirror";
/// The compiler the Debian 6.1 kernel headers were configured with.
const KERNEL_CC: &str = "gcc-12";
/// The kernel source package, for the HMM selftest and the dmirror uapi header.
const KERNEL_SOURCE: &str = "linux-source-6.1";
/// The files of the kernel tree that `hmm-tests` needs (it includes the rest from libc
/// and the system's kernel uapi headers); `lib/test_hmm_uapi.h` is also the ABI of the
/// driver's dmirror devices.
const HMM_SOURCES: &[&str] = &[
    "tools/testing/selftests/vm/hmm-tests.c",
    "tools/testing/selftests/kselftest_harness.h",
    "tools/testing/selftests/kselftest.h",
    "lib/test_hmm_uapi.h",
    "mm/gup_test.h",
];
/// How `hmm-tests` is compiled (besides `-I` and `-o`): static, as the guest has no libc.
const HMM_TESTS_CFLAGS: &[&str] = &["-static", "-O2", "-s"];
const HMM_TESTS_LIBS: &[&str] = &["-lpthread", "-lrt"];
/// Modules of the virtual host (dependencies are added).
const HOST_MODULES: &[&str] = &["kvm_amd"];
const GUEST_TARGET: &str = "x86_64-unknown-linux-gnu";
const BUSYBOX: &str = "/bin/busybox";
/// This file is an input of every image: a change in how images are built rebuilds them.
const BUILDER_SOURCE: &[u8] = include_bytes!("lib.rs");

/// Where and how to build images.
#[derive(Debug, Clone)]
pub struct ImageOptions {
    /// The repository root (holds `images/` and `guest-driver/`).
    pub workspace: PathBuf,
    /// Output directory, by default `<workspace>/build/images`.
    pub out_dir: PathBuf,
    /// The `vmm` binary to put into the virtual host (normally the running one).
    pub vmm_binary: PathBuf,
    /// Rebuild even if an image with the same input hash exists.
    pub force: bool,
}

impl ImageOptions {
    /// Defaults for `workspace`: `build/images` below it and the running executable.
    pub fn new(workspace: PathBuf) -> Self {
        let out_dir = workspace.join("build").join("images");
        let vmm_binary = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("vmm"));
        ImageOptions {
            workspace,
            out_dir,
            vmm_binary,
            force: false,
        }
    }
}

/// A built guest image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestImage {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// `uname -r` of the kernel, e.g. `6.1.0-56-cloud-amd64`.
    pub kernel_release: String,
}

/// A built virtual-host image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostImage {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

/// Why an image could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("apt cannot provide package {package}: {message}")]
    Apt { package: String, message: String },
    #[error("no 6.1 cloud kernel (linux-image-6.1.0-N-cloud-amd64) among the Depends of the candidate of {KERNEL_META}; apt-cache said: {0}")]
    NoKernel(String),
    #[error("busybox-static missing ({BUSYBOX} absent or not static): run ci/install-deps.sh")]
    NoBusybox,
    #[error("{tool} missing: run ci/install-deps.sh ({source})")]
    MissingTool {
        tool: String,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` failed ({status}): {output}")]
    Command {
        command: String,
        status: String,
        output: String,
    },
    #[error("guest program build failed: {0}")]
    GuestBuild(String),
    #[error("kernel module {name}: {reason}")]
    Module { name: String, reason: String },
    #[error("{0} is not a static executable")]
    NotStatic(PathBuf),
    #[error("cannot find the shared libraries of {path}: {reason}")]
    Libraries { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

type Result<T> = std::result::Result<T, ImageError>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The repository root: `$VGPU_WORKSPACE`, else the parent of this crate's manifest dir.
pub fn default_workspace() -> PathBuf {
    match std::env::var_os("VGPU_WORKSPACE") {
        Some(w) if !w.is_empty() => PathBuf::from(w),
        _ => Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(".")),
    }
}

/// Builds (or finds in the cache) the guest image.
pub fn build_guest_image(opts: &ImageOptions) -> Result<GuestImage> {
    let kp = step("guest", "resolving kernel package", || {
        let kp = resolve_kernel()?;
        let summary = format!("{} ({})", kp.release, kp.version);
        Ok((kp, summary))
    })?;
    let source = step("guest", "resolving kernel source", || {
        let version = resolve_kernel_source(&kp)?;
        let summary = format!("{KERNEL_SOURCE} {version}");
        Ok((version, summary))
    })?;
    let init = opts.workspace.join("images").join("guest-init.sh");
    let hash = step("guest", "hashing inputs", || {
        let mut h = Fnv64::new();
        h.field(b"builder", BUILDER_SOURCE);
        h.field(
            b"kernel",
            format!("{} {}", kp.package, kp.version).as_bytes(),
        );
        // The headers are taken at the kernel's version (resolve_headers).
        h.field(
            b"headers",
            format!("linux-headers-{} {}", kp.release, kp.version).as_bytes(),
        );
        h.field(b"source", format!("{KERNEL_SOURCE} {source}").as_bytes());
        h.file(Path::new(BUSYBOX))?;
        h.tree(&opts.workspace.join("images"), &opts.workspace)?;
        h.tree(&opts.workspace.join("guest-driver"), &opts.workspace)?;
        for f in ["Cargo.toml", "Cargo.lock"] {
            let p = opts.workspace.join(f);
            if p.exists() {
                h.file(&p)?;
            }
        }
        let hash = h.hex();
        Ok((hash.clone(), hash))
    })?;
    let dir = opts.out_dir.join(format!("guest-{hash}"));
    let image = GuestImage {
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initrd.img"),
        kernel_release: kp.release.clone(),
    };
    if !opts.force && image.kernel.is_file() && image.initrd.is_file() {
        eprintln!("[image] guest: up to date in {}", dir.display());
        set_latest(&opts.out_dir, "guest", &dir)?;
        return Ok(image);
    }

    check_busybox()?;
    let tree = step("guest", "fetching kernel package", || {
        let tree = fetch_kernel(&kp, &opts.out_dir.join("cache"))?;
        Ok((tree, format!("{} {}", kp.package, kp.version)))
    })?;
    let cache = opts.out_dir.join("cache");
    let header_pkgs = step("guest", "resolving kernel headers", || {
        let pkgs = resolve_headers(&kp)?;
        let names: Vec<_> = pkgs.iter().map(|(p, _)| p.as_str()).collect();
        let summary = format!("{} ({})", names.join(" "), kp.version);
        Ok((pkgs, summary))
    })?;
    let kdir = step("guest", "fetching kernel headers", || {
        let kdir = fetch_headers(&kp, &header_pkgs, &cache)?;
        let summary = kdir.display().to_string();
        Ok((kdir, summary))
    })?;
    let hmm_src = step("guest", "fetching HMM selftest sources", || {
        let dir = fetch_hmm_sources(&source, &cache)?;
        let summary = dir.display().to_string();
        Ok((dir, summary))
    })?;
    let hmm_tests = step("guest", "building hmm-tests", || {
        let exe = build_hmm_tests(&hmm_src, &cache)?;
        let size = fs::metadata(&exe).map_err(io_err(&exe))?.len();
        let summary = format!("{} ({} KiB)", exe.display(), size.div_ceil(1024));
        Ok((exe, summary))
    })?;
    let (kmod_dir, kmod) = step("guest", "building kernel module", || {
        let uapi = hmm_src.join("lib");
        let (dir, ko) = build_driver_module(&opts.workspace, &kdir, &uapi, &cache)?;
        let size = fs::metadata(&ko).map_err(io_err(&ko))?.len();
        let summary = format!("{DRIVER_MODULE}.ko {} KiB", size.div_ceil(1024));
        Ok(((dir, ko), summary))
    })?;
    let programs = step("guest", "building guest programs", || {
        let programs = build_guest_programs(&opts.workspace)?;
        let summary = names_of(&programs);
        Ok((programs, summary))
    })?;
    let modules = step("guest", "resolving modules", || {
        let mut m = module_load_order(&tree.join("lib/modules").join(&kp.release), GUEST_MODULES)?;
        m.push((DRIVER_MODULE.to_string(), kmod.clone()));
        let summary = names_of(&m);
        Ok((m, summary))
    })?;
    step("guest", "writing image", || {
        let tmp = temp_dir(&opts.out_dir, "guest")?;
        let vmlinuz = tree.join("boot").join(format!("vmlinuz-{}", kp.release));
        fs::copy(&vmlinuz, tmp.join("vmlinuz")).map_err(io_err(&vmlinuz))?;
        let mut fsroot = base_initramfs(&init, &modules)?;
        for (name, path) in &programs {
            fsroot.file(&format!("bin/{name}"), path, 0o755);
        }
        fsroot.file("bin/hmm-tests", &hmm_tests, 0o755);
        let runner = opts.workspace.join("images").join("hmm-tests.sh");
        fsroot.file("bin/vgpu-hmm-tests", &runner, 0o755);
        let size = fsroot.write(&tmp.join("initrd.img"))?;
        write_file(&tmp.join("kernel_release"), kp.release.as_bytes())?;
        let ko = tmp.join(format!("{DRIVER_MODULE}.ko"));
        fs::copy(&kmod, &ko).map_err(io_err(&kmod))?;
        fs::remove_dir_all(&kmod_dir).map_err(io_err(&kmod_dir))?;
        publish(&tmp, &dir, opts.force)?;
        set_latest(&opts.out_dir, "guest", &dir)?;
        prune(&opts.out_dir, "guest", &dir);
        Ok((
            (),
            format!("initrd {} KiB in {}", size / 1024, dir.display()),
        ))
    })?;
    Ok(image)
}

/// Builds (or finds in the cache) the virtual-host image around `guest`.
pub fn build_host_image(opts: &ImageOptions, guest: &GuestImage) -> Result<HostImage> {
    let kp = step("host", "resolving kernel package", || {
        let kp = kernel_package(&guest.kernel_release)?;
        let summary = format!("{} ({})", kp.release, kp.version);
        Ok((kp, summary))
    })?;
    let init = opts.workspace.join("images").join("host-init.sh");
    let vmm = &opts.vmm_binary;
    let libs = step("host", "listing vmm libraries", || {
        let libs = shared_libraries(vmm)?;
        let n = libs.len();
        Ok((libs, format!("{n} files")))
    })?;
    let hash = step("host", "hashing inputs", || {
        let mut h = Fnv64::new();
        h.field(b"builder", BUILDER_SOURCE);
        h.field(
            b"kernel",
            format!("{} {}", kp.package, kp.version).as_bytes(),
        );
        h.file(Path::new(BUSYBOX))?;
        h.file(&init)?;
        h.file(vmm)?;
        for lib in &libs {
            h.field(b"lib", lib.as_os_str().as_encoded_bytes());
            h.file(lib)?;
        }
        h.file(&guest.kernel)?;
        h.file(&guest.initrd)?;
        let hash = h.hex();
        Ok((hash.clone(), hash))
    })?;
    let dir = opts.out_dir.join(format!("host-{hash}"));
    let image = HostImage {
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initrd.img"),
    };
    if !opts.force && image.kernel.is_file() && image.initrd.is_file() {
        eprintln!("[image] host: up to date in {}", dir.display());
        set_latest(&opts.out_dir, "host", &dir)?;
        return Ok(image);
    }

    check_busybox()?;
    let tree = step("host", "fetching kernel package", || {
        let tree = fetch_kernel(&kp, &opts.out_dir.join("cache"))?;
        Ok((tree, format!("{} {}", kp.package, kp.version)))
    })?;
    let modules = step("host", "resolving modules", || {
        let m = module_load_order(&tree.join("lib/modules").join(&kp.release), HOST_MODULES)?;
        let summary = names_of(&m);
        Ok((m, summary))
    })?;
    step("host", "writing image", || {
        let tmp = temp_dir(&opts.out_dir, "host")?;
        let vmlinuz = tree.join("boot").join(format!("vmlinuz-{}", kp.release));
        fs::copy(&vmlinuz, tmp.join("vmlinuz")).map_err(io_err(&vmlinuz))?;
        let mut fsroot = base_initramfs(&init, &modules)?;
        fsroot.file("bin/vmm", vmm, 0o755);
        for lib in &libs {
            let path = lib.to_string_lossy();
            fsroot.file(path.trim_start_matches('/'), lib, 0o755);
        }
        fsroot.file("guest/vmlinuz", &guest.kernel, 0o644);
        fsroot.file("guest/initrd.img", &guest.initrd, 0o644);
        let size = fsroot.write(&tmp.join("initrd.img"))?;
        publish(&tmp, &dir, opts.force)?;
        set_latest(&opts.out_dir, "host", &dir)?;
        prune(&opts.out_dir, "host", &dir);
        Ok((
            (),
            format!("initrd {} KiB in {}", size / 1024, dir.display()),
        ))
    })?;
    Ok(image)
}

/// Runs one build step, printing `[image] <image>: <what> ... <summary> (<secs> s)`.
fn step<T>(image: &str, what: &str, f: impl FnOnce() -> Result<(T, String)>) -> Result<T> {
    eprint!("[image] {image}: {what} ... ");
    let _ = io::stderr().flush();
    let start = Instant::now();
    let result = f();
    let secs = start.elapsed().as_secs_f64();
    match result {
        Ok((value, summary)) => {
            eprintln!("{summary} ({secs:.1} s)");
            Ok(value)
        }
        Err(e) => {
            eprintln!("failed ({secs:.1} s)");
            Err(e)
        }
    }
}

/// Runs a command and returns its stdout; a failure carries stderr (or stdout).
fn run(cmd: &mut Command) -> Result<String> {
    let command = format!("{cmd:?}").replace('"', "");
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd.output().map_err(|source| ImageError::MissingTool {
        tool: program,
        source,
    })?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let text = if out.stderr.is_empty() {
        &out.stdout
    } else {
        &out.stderr
    };
    Err(ImageError::Command {
        command,
        status: out.status.to_string(),
        output: tail(&String::from_utf8_lossy(text), 40),
    })
}

/// The last `n` lines of `s`.
/// The names of named files, space-separated, for a progress line.
fn names_of(items: &[(String, PathBuf)]) -> String {
    items
        .iter()
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.trim_end().lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn write_file(path: &Path, data: &[u8]) -> Result<()> {
    fs::write(path, data).map_err(io_err(path))
}

fn check_busybox() -> Result<()> {
    let data = fs::read(BUSYBOX).map_err(|_| ImageError::NoBusybox)?;
    match elf_has_interp(&data) {
        Some(false) => Ok(()),
        _ => Err(ImageError::NoBusybox),
    }
}

// ---------------------------------------------------------------------------------------
// The kernel package

/// The Debian package that carries the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KernelPackage {
    /// `linux-image-6.1.0-N-cloud-amd64`
    package: String,
    /// The candidate version, e.g. `6.1.192-2`.
    version: String,
    /// `6.1.0-N-cloud-amd64`
    release: String,
}

/// Resolves the kernel from the candidate of the meta package, whose Depends names the
/// ABI package and normally pins its version (`(= 6.1.192-2)`), so one apt call suffices.
fn resolve_kernel() -> Result<KernelPackage> {
    let show = run(Command::new("apt-cache").args(["show", "--no-all-versions", KERNEL_META]))
        .map_err(|e| ImageError::Apt {
            package: KERNEL_META.into(),
            message: e.to_string(),
        })?;
    let depends = control_field(&show, "Depends").unwrap_or_default();
    let (release, version) =
        kernel_from_depends(depends).ok_or_else(|| ImageError::NoKernel(depends.to_string()))?;
    match version {
        Some(version) => Ok(KernelPackage {
            package: format!("linux-image-{release}"),
            version,
            release,
        }),
        None => kernel_package(&release),
    }
}

fn kernel_package(release: &str) -> Result<KernelPackage> {
    let package = format!("linux-image-{release}");
    let show = run(Command::new("apt-cache").args(["show", "--no-all-versions", &package]))
        .map_err(|e| ImageError::Apt {
            package: package.clone(),
            message: e.to_string(),
        })?;
    let version = control_field(&show, "Version").ok_or_else(|| ImageError::Apt {
        package: package.clone(),
        message: "no Version in apt-cache show".into(),
    })?;
    Ok(KernelPackage {
        package,
        version: version.to_string(),
        release: release.to_string(),
    })
}

/// The release `6.1.0-N-cloud-amd64` of a package name `linux-image-6.1.0-N-cloud-amd64`.
fn kernel_release_of(package: &str) -> Option<&str> {
    let release = package.strip_prefix("linux-image-")?;
    let abi = release
        .strip_prefix("6.1.0-")?
        .strip_suffix("-cloud-amd64")?;
    (!abi.is_empty() && abi.bytes().all(|b| b.is_ascii_digit())).then_some(release)
}

/// The 6.1 cloud kernel release named in a Depends field, with the version it pins
/// (`= V`) if any. Among several alternatives the highest ABI wins.
fn kernel_from_depends(depends: &str) -> Option<(String, Option<String>)> {
    depends
        .split([',', '|'])
        .filter_map(|dep| {
            let dep = dep.trim();
            let (name, constraint) = match dep.split_once('(') {
                Some((n, c)) => (n.trim(), Some(c.trim_end_matches(')').trim())),
                None => (dep, None),
            };
            let release = kernel_release_of(name)?;
            let version = constraint
                .and_then(|c| c.strip_prefix('='))
                .map(|v| v.trim().to_string());
            let abi: u64 = release
                .strip_prefix("6.1.0-")?
                .split('-')
                .next()?
                .parse()
                .ok()?;
            Some((abi, release.to_string(), version))
        })
        .max_by_key(|(abi, _, _)| *abi)
        .map(|(_, release, version)| (release, version))
}

/// The value of `Field: value` in a Debian control stanza.
fn control_field<'a>(text: &'a str, field: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(str::trim)
}

/// Downloads and unpacks the kernel package below `cache`, once; returns the tree.
fn fetch_kernel(kp: &KernelPackage, cache: &Path) -> Result<PathBuf> {
    let tree = cache.join(format!("{}_{}", kp.package, kp.version.replace(':', "%3a")));
    let vmlinuz = tree.join("boot").join(format!("vmlinuz-{}", kp.release));
    if vmlinuz.is_file() {
        return Ok(tree);
    }
    let deb = download_deb(&kp.package, &kp.version, &cache.join("debs"))?;
    let tmp = temp_dir(cache, "unpack")?;
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp))?;
    if !tmp
        .join("boot")
        .join(format!("vmlinuz-{}", kp.release))
        .is_file()
    {
        return Err(ImageError::Apt {
            package: kp.package.clone(),
            message: format!("the package has no boot/vmlinuz-{}", kp.release),
        });
    }
    publish(&tmp, &tree, false)?;
    Ok(tree)
}

/// `apt-get download package=version` into `debs` unless the `.deb` is already there;
/// returns its path (`<package>_<version>_<arch>.deb`, arch `amd64` or `all`).
fn download_deb(package: &str, version: &str, debs: &Path) -> Result<PathBuf> {
    let prefix = format!("{package}_{}_", version.replace(':', "%3a"));
    let find = || -> Result<Option<PathBuf>> {
        let mut found = None;
        for entry in fs::read_dir(debs).map_err(io_err(debs))? {
            let path = entry.map_err(io_err(debs))?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if name.starts_with(&prefix) && name.ends_with(".deb") {
                found = Some(path);
            }
        }
        Ok(found)
    };
    fs::create_dir_all(debs).map_err(io_err(debs))?;
    if let Some(deb) = find()? {
        return Ok(deb);
    }
    let apt_err = |message: String| ImageError::Apt {
        package: package.to_string(),
        message,
    };
    run(Command::new("apt-get")
        .args(["download", "-q", &format!("{package}={version}")])
        .current_dir(debs))
    .map_err(|e| apt_err(e.to_string()))?;
    find()?.ok_or_else(|| apt_err(format!("apt-get download did not produce {prefix}*.deb")))
}

// ---------------------------------------------------------------------------------------
// Kernel headers and the guest driver module

/// The packages that make the guest kernel's Kbuild tree, all at the kernel's version:
/// `linux-headers-<release>`, the `-common` headers it names and `linux-kbuild-6.1`.
fn resolve_headers(kp: &KernelPackage) -> Result<Vec<(String, String)>> {
    let headers = format!("linux-headers-{}", kp.release);
    let apt_err = |message: String| ImageError::Apt {
        package: headers.clone(),
        message,
    };
    let show = run(Command::new("apt-cache").args([
        "show",
        "--no-all-versions",
        &format!("{headers}={}", kp.version),
    ]))
    .map_err(|e| apt_err(e.to_string()))?;
    let depends = control_field(&show, "Depends").unwrap_or_default();
    let (common, kbuild) = headers_depends(depends).ok_or_else(|| {
        apt_err(format!(
            "Depends names no -common or linux-kbuild package: {depends}"
        ))
    })?;
    Ok([headers.clone(), common, kbuild]
        .into_iter()
        .map(|p| (p, kp.version.clone()))
        .collect())
}

/// The `linux-headers-*-common` and `linux-kbuild-*` package names in a Depends field.
fn headers_depends(depends: &str) -> Option<(String, String)> {
    let names: Vec<&str> = depends
        .split([',', '|'])
        .map(|d| d.split('(').next().unwrap_or("").trim())
        .collect();
    let common = names
        .iter()
        .find(|n| n.starts_with("linux-headers-") && n.ends_with("-common"))?;
    let kbuild = names.iter().find(|n| n.starts_with("linux-kbuild-"))?;
    Some((common.to_string(), kbuild.to_string()))
}

/// Downloads and unpacks the header packages into one prefix below `cache`, once, and
/// returns the Kbuild directory (`<prefix>/usr/src/linux-headers-<release>`).
///
/// The packages expect to live in `/usr/src` and `/usr/lib`: absolute symlinks are made
/// relative inside the prefix and the flavour's Makefile includes the `-common` one by
/// a path relative to itself (`make -C` runs there).
fn fetch_headers(
    kp: &KernelPackage,
    packages: &[(String, String)],
    cache: &Path,
) -> Result<PathBuf> {
    let tree_name = format!(
        "linux-headers-{}_{}",
        kp.release,
        kp.version.replace(':', "%3a")
    );
    let tree = cache.join(tree_name);
    let kdir_rel = Path::new("usr/src").join(format!("linux-headers-{}", kp.release));
    if tree.join(&kdir_rel).join("Makefile").is_file() {
        return Ok(tree.join(kdir_rel));
    }
    let mut debs = Vec::new();
    for (package, version) in packages {
        debs.push(download_deb(package, version, &cache.join("debs"))?);
    }
    let tmp = temp_dir(cache, "unpack")?;
    for deb in &debs {
        run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&tmp))?;
    }
    relativize_symlinks(&tmp, &tmp)?;
    let makefile = tmp.join(&kdir_rel).join("Makefile");
    let missing = |what: &str| ImageError::Apt {
        package: packages[0].0.clone(),
        message: format!("the unpacked headers have no {what}"),
    };
    let text = fs::read_to_string(&makefile).map_err(|_| missing("Makefile"))?;
    write_file(
        &makefile,
        text.replace("include /usr/src/", "include ../").as_bytes(),
    )?;
    for f in ["Module.symvers", ".config", "scripts/mod/modpost"] {
        if !tmp.join(&kdir_rel).join(f).exists() {
            return Err(missing(&format!("{}/{f}", kdir_rel.display())));
        }
    }
    publish(&tmp, &tree, false)?;
    Ok(tree.join(kdir_rel))
}

/// Rewrites every absolute symlink below `dir` to a relative one that points at the same
/// path inside `root`.
fn relativize_symlinks(root: &Path, dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        let ty = fs::symlink_metadata(&path)
            .map_err(io_err(&path))?
            .file_type();
        if ty.is_dir() {
            relativize_symlinks(root, &path)?;
        } else if ty.is_symlink() {
            let target = fs::read_link(&path).map_err(io_err(&path))?;
            let Ok(inside) = target.strip_prefix("/") else {
                continue;
            };
            let depth = path
                .parent()
                .and_then(|p| p.strip_prefix(root).ok())
                .map_or(0, |p| p.components().count());
            let mut rel = PathBuf::new();
            for _ in 0..depth {
                rel.push("..");
            }
            rel.push(inside);
            fs::remove_file(&path).map_err(io_err(&path))?;
            std::os::unix::fs::symlink(&rel, &path).map_err(io_err(&path))?;
        }
    }
    Ok(())
}

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
fn build_driver_module(
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

// ---------------------------------------------------------------------------------------
// The kernel's HMM selftest

/// The version of `linux-source-6.1` to take: the kernel's own source version when apt
/// has it, else the candidate (the newest).
fn resolve_kernel_source(kp: &KernelPackage) -> Result<String> {
    let exact = format!("{KERNEL_SOURCE}={}", kp.version);
    if run(Command::new("apt-cache").args(["show", "--no-all-versions", &exact])).is_ok() {
        return Ok(kp.version.clone());
    }
    let show = run(Command::new("apt-cache").args(["show", "--no-all-versions", KERNEL_SOURCE]))
        .map_err(|e| ImageError::Apt {
            package: KERNEL_SOURCE.into(),
            message: e.to_string(),
        })?;
    control_field(&show, "Version")
        .map(str::to_string)
        .ok_or_else(|| ImageError::Apt {
            package: KERNEL_SOURCE.into(),
            message: "no Version in apt-cache show".into(),
        })
}

/// Extracts [`HMM_SOURCES`] from the kernel source package below `cache`, once, and
/// returns the directory that holds them as in the kernel tree. The package (a 140 MB
/// `.deb` with the tree as one `.tar.xz`) stays in `cache/debs`; nothing else of it is
/// unpacked.
fn fetch_hmm_sources(version: &str, cache: &Path) -> Result<PathBuf> {
    let dir = cache.join(format!(
        "{KERNEL_SOURCE}_{}-hmm",
        version.replace(':', "%3a")
    ));
    if HMM_SOURCES.iter().all(|f| dir.join(f).is_file()) {
        return Ok(dir);
    }
    let deb = download_deb(KERNEL_SOURCE, version, &cache.join("debs"))?;
    let tmp = temp_dir(cache, "hmm-src")?;
    let top = KERNEL_SOURCE;
    let members: Vec<String> = HMM_SOURCES.iter().map(|f| format!("{top}/{f}")).collect();
    // dpkg-deb streams the package's data archive, tar takes the tree's .tar.xz out of
    // it, and the inner tar extracts only the members named, without their top directory.
    let script = format!(
        "set -o pipefail; dpkg-deb --fsys-tarfile \"$1\" \
         | tar -xO ./usr/src/{top}.tar.xz | xz -dc \
         | tar -x -C \"$2\" --strip-components=1 \"${{@:3}}\""
    );
    run(Command::new("bash")
        .arg("-c")
        .arg(script)
        .arg("extract")
        .arg(&deb)
        .arg(&tmp)
        .args(&members))?;
    if let Some(missing) = HMM_SOURCES.iter().find(|f| !tmp.join(f).is_file()) {
        return Err(ImageError::Apt {
            package: KERNEL_SOURCE.into(),
            message: format!("the source tree has no {missing}"),
        });
    }
    publish(&tmp, &dir, false)?;
    Ok(dir)
}

/// Builds `hmm-tests` statically from the sources in `src` (as [`fetch_hmm_sources`] left
/// them) with the kernel's compiler, once per content hash of the sources, the flags and
/// the compiler; returns the executable (`cache/hmm-tests-<hash>/hmm-tests`).
fn build_hmm_tests(src: &Path, cache: &Path) -> Result<PathBuf> {
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
    if elf_has_interp(&data) != Some(false) {
        return Err(ImageError::NotStatic(built));
    }
    publish(&tmp, &dir, false)?;
    Ok(exe)
}

// ---------------------------------------------------------------------------------------
// Kernel modules

/// The module name of a file name: `virtio-rng.ko` -> `virtio_rng`.
fn module_name(file: &str) -> Option<String> {
    file.strip_suffix(".ko").map(|s| s.replace('-', "_"))
}

/// All `.ko` files below `dir`, by module name.
fn index_modules(dir: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let mut index = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).map_err(io_err(&d))? {
            let path = entry.map_err(io_err(&d))?.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(module_name)
            {
                index.insert(name, path);
            }
        }
    }
    Ok(index)
}

/// The `depends=` list of a module's `.modinfo` section.
fn module_depends(data: &[u8]) -> Option<Vec<String>> {
    let modinfo = elf_section(data, ".modinfo")?;
    let deps = modinfo
        .split(|&b| b == 0)
        .find_map(|s| s.strip_prefix(b"depends="))
        .unwrap_or(b"");
    Some(
        String::from_utf8_lossy(deps)
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.replace('-', "_"))
            .collect(),
    )
}

/// `wanted` and their dependencies below `dir`, dependencies first.
fn module_load_order(dir: &Path, wanted: &[&str]) -> Result<Vec<(String, PathBuf)>> {
    let index = index_modules(dir)?;
    let mut order = Vec::new();
    for name in wanted {
        visit_module(name, &index, &mut order, &mut Vec::new())?;
    }
    Ok(order)
}

fn visit_module(
    name: &str,
    index: &BTreeMap<String, PathBuf>,
    order: &mut Vec<(String, PathBuf)>,
    path: &mut Vec<String>,
) -> Result<()> {
    if order.iter().any(|(n, _)| n == name) {
        return Ok(());
    }
    let err = |reason: String| ImageError::Module {
        name: name.to_string(),
        reason,
    };
    if path.iter().any(|n| n == name) {
        return Err(err(format!("dependency cycle via {}", path.join(" -> "))));
    }
    let file = index
        .get(name)
        .ok_or_else(|| err("not in the kernel package (built in, or not built?)".into()))?;
    let data = fs::read(file).map_err(io_err(file))?;
    let deps =
        module_depends(&data).ok_or_else(|| err(format!("{} has no .modinfo", file.display())))?;
    path.push(name.to_string());
    for dep in &deps {
        visit_module(dep, index, order, path)?;
    }
    path.pop();
    order.push((name.to_string(), file.clone()));
    Ok(())
}

// ---------------------------------------------------------------------------------------
// ELF

fn le16(d: &[u8], at: usize) -> Option<u64> {
    Some(u16::from_le_bytes(d.get(at..at + 2)?.try_into().ok()?).into())
}
fn le32(d: &[u8], at: usize) -> Option<u64> {
    Some(u32::from_le_bytes(d.get(at..at + 4)?.try_into().ok()?).into())
}
fn le64(d: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(d.get(at..at + 8)?.try_into().ok()?))
}

fn is_elf64le(d: &[u8]) -> bool {
    d.len() >= 64 && d[..4] == *b"\x7fELF" && d[4] == 2 && d[5] == 1
}

/// Whether an ELF64 file asks for a program interpreter (PT_INTERP); None if not ELF64.
fn elf_has_interp(d: &[u8]) -> Option<bool> {
    const PT_INTERP: u64 = 3;
    if !is_elf64le(d) {
        return None;
    }
    let (phoff, phentsize, phnum) = (le64(d, 0x20)?, le16(d, 0x36)?, le16(d, 0x38)?);
    for i in 0..phnum {
        let at = usize::try_from(phoff + i * phentsize).ok()?;
        if le32(d, at)? == PT_INTERP {
            return Some(true);
        }
    }
    Some(false)
}

/// The contents of a named section of an ELF64 file.
fn elf_section<'a>(d: &'a [u8], name: &str) -> Option<&'a [u8]> {
    if !is_elf64le(d) {
        return None;
    }
    let (shoff, shentsize, shnum, shstrndx) = (
        le64(d, 0x28)?,
        le16(d, 0x3a)?,
        le16(d, 0x3c)?,
        le16(d, 0x3e)?,
    );
    let header = |i: u64| usize::try_from(shoff + i * shentsize).ok();
    let section = |i: u64| -> Option<&'a [u8]> {
        let h = header(i)?;
        let (off, size) = (le64(d, h + 24)?, le64(d, h + 32)?);
        d.get(usize::try_from(off).ok()?..usize::try_from(off + size).ok()?)
    };
    let strtab = section(shstrndx)?;
    (0..shnum).find_map(|i| {
        let name_off = usize::try_from(le32(d, header(i)?)?).ok()?;
        let s = strtab.get(name_off..)?;
        let end = s.iter().position(|&b| b == 0)?;
        (&s[..end] == name.as_bytes()).then(|| section(i)).flatten()
    })
}

// ---------------------------------------------------------------------------------------
// Guest programs and the vmm's libraries

/// Builds the guest programs statically; returns (file name, path) of each binary.
fn build_guest_programs(workspace: &Path) -> Result<Vec<(String, PathBuf)>> {
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
            if elf_has_interp(&data) != Some(false) {
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
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let err = |reason: String| ImageError::Libraries {
        path: binary.to_path_buf(),
        reason,
    };
    let data = fs::read(binary).map_err(io_err(binary))?;
    match elf_has_interp(&data) {
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

// ---------------------------------------------------------------------------------------
// The initramfs

/// The parts both images share: busybox and its applets, device nodes, modules, /init.
fn base_initramfs(init: &Path, modules: &[(String, PathBuf)]) -> Result<Initramfs> {
    let mut fs = Initramfs::default();
    for d in [
        "dev", "proc", "sys", "tmp", "bin", "sbin", "usr/bin", "usr/sbin", "etc/vgpu",
    ] {
        fs.dir(d);
    }
    fs.node("dev/console", 0o020600, Source::Device(5, 1));
    fs.node("dev/null", 0o020666, Source::Device(1, 3));
    fs.file("bin/busybox", Path::new(BUSYBOX), 0o755);
    let applets = run(Command::new(BUSYBOX).arg("--list-full"))?;
    for applet in applets.lines().map(str::trim).filter(|a| !a.is_empty()) {
        if applet != "bin/busybox" {
            fs.node(applet, 0o120777, Source::Symlink("/bin/busybox".into()));
        }
    }
    let mut order = String::new();
    for (name, path) in modules {
        fs.file(&format!("lib/modules/{name}.ko"), path, 0o644);
        let _ = writeln!(order, "{name}");
    }
    fs.node(
        "etc/vgpu/modules",
        0o100644,
        Source::Bytes(order.into_bytes()),
    );
    if !init.is_file() {
        return Err(ImageError::Io {
            path: init.to_path_buf(),
            source: io::Error::new(io::ErrorKind::NotFound, "init script missing"),
        });
    }
    fs.file("init", init, 0o755);
    Ok(fs)
}

/// Where the bytes of an archive entry come from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    Dir,
    File(PathBuf),
    Bytes(Vec<u8>),
    Symlink(String),
    /// Major, minor.
    Device(u32, u32),
}

/// An initramfs in the making: entries by path (no leading `/`), written as `newc` cpio.
#[derive(Debug, Default)]
struct Initramfs {
    entries: BTreeMap<String, (u32, Source)>,
}

impl Initramfs {
    /// Adds an entry (full mode including the file type) and any missing parent directories.
    fn node(&mut self, path: &str, mode: u32, source: Source) {
        let path = path.trim_matches('/');
        let mut parent = path;
        while let Some((p, _)) = parent.rsplit_once('/') {
            self.entries
                .entry(p.to_string())
                .or_insert((0o040755, Source::Dir));
            parent = p;
        }
        self.entries.insert(path.to_string(), (mode, source));
    }

    fn dir(&mut self, path: &str) {
        self.node(path, 0o040755, Source::Dir);
    }

    fn file(&mut self, path: &str, src: &Path, perm: u32) {
        self.node(path, 0o100000 | perm, Source::File(src.to_path_buf()));
    }

    /// Writes the archive (temp file + rename); returns its size.
    fn write(&self, out: &Path) -> Result<u64> {
        let tmp = out.with_extension("part");
        let file = fs::File::create(&tmp).map_err(io_err(&tmp))?;
        let mut w = BufWriter::new(file);
        // BTreeMap order puts every directory before its contents.
        for (ino, (path, (mode, source))) in (1..).zip(&self.entries) {
            let (data, rdev) = match source {
                Source::Dir => (Vec::new(), (0, 0)),
                Source::File(src) => (fs::read(src).map_err(io_err(src))?, (0, 0)),
                Source::Bytes(b) => (b.clone(), (0, 0)),
                Source::Symlink(t) => (t.clone().into_bytes(), (0, 0)),
                Source::Device(maj, min) => (Vec::new(), (*maj, *min)),
            };
            write_cpio_entry(&mut w, ino, *mode, rdev, path, &data).map_err(io_err(&tmp))?;
        }
        write_cpio_entry(&mut w, 0, 0, (0, 0), "TRAILER!!!", &[]).map_err(io_err(&tmp))?;
        let file = w.into_inner().map_err(|e| io_err(&tmp)(e.into_error()))?;
        let size = file.metadata().map_err(io_err(&tmp))?.len();
        drop(file);
        fs::rename(&tmp, out).map_err(io_err(out))?;
        Ok(size)
    }
}

/// Writes one `newc` cpio entry (uid/gid/mtime 0, so archives are reproducible).
fn write_cpio_entry(
    w: &mut impl Write,
    ino: u32,
    mode: u32,
    rdev: (u32, u32),
    name: &str,
    data: &[u8],
) -> io::Result<()> {
    let too_big = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name} too large for cpio"),
        )
    };
    let size = u32::try_from(data.len()).map_err(|_| too_big())?;
    let namesize = u32::try_from(name.len() + 1).map_err(|_| too_big())?;
    let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
    let fields = [
        ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, namesize, 0,
    ];
    let mut header = String::with_capacity(110);
    header.push_str("070701");
    for f in fields {
        let _ = write!(header, "{f:08x}");
    }
    w.write_all(header.as_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    w.write_all(&[0; 3][..pad4(110 + name.len() + 1)])?;
    w.write_all(data)?;
    w.write_all(&[0; 3][..pad4(data.len())])
}

/// Bytes needed to pad `n` to a multiple of 4.
fn pad4(n: usize) -> usize {
    (4 - n % 4) % 4
}

// ---------------------------------------------------------------------------------------
// Output directories

/// A fresh temporary directory in `parent` (same file system, so it can be renamed).
fn temp_dir(parent: &Path, name: &str) -> Result<PathBuf> {
    fs::create_dir_all(parent).map_err(io_err(parent))?;
    let tmp = parent.join(format!(".tmp-{name}-{}", std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
    }
    fs::create_dir(&tmp).map_err(io_err(&tmp))?;
    Ok(tmp)
}

/// Moves a finished directory into place. An existing directory of the same name is
/// replaced only with `replace` (`--force`); otherwise it won (a concurrent build of the
/// same inputs) and `tmp` is dropped.
fn publish(tmp: &Path, dir: &Path, replace: bool) -> Result<()> {
    if dir.exists() {
        if !replace {
            return fs::remove_dir_all(tmp).map_err(io_err(tmp));
        }
        let old = dir.with_extension(format!("old-{}", std::process::id()));
        fs::rename(dir, &old).map_err(io_err(dir))?;
        fs::remove_dir_all(&old).map_err(io_err(&old))?;
    }
    fs::rename(tmp, dir).map_err(io_err(dir))
}

/// Keeps the newest `KEEP_IMAGES` images called `name` (never `current`) and removes
/// temporary directories left by build processes that no longer exist. Best effort.
fn prune(out_dir: &Path, name: &str, current: &Path) {
    const KEEP_IMAGES: usize = 3;
    let Ok(entries) = fs::read_dir(out_dir) else {
        return;
    };
    let mut images = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let file_name = entry.file_name().to_string_lossy().into_owned();
        if let Some(hash) = file_name.strip_prefix(&format!("{name}-")) {
            let is_image = hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit());
            if is_image && path != current {
                let mtime = entry.metadata().and_then(|m| m.modified()).ok();
                images.push((mtime, path));
            }
        } else if let Some(pid) = file_name.strip_prefix(&format!(".tmp-{name}-")) {
            if !Path::new("/proc").join(pid).exists() {
                let _ = fs::remove_dir_all(&path);
            }
        }
    }
    images.sort_by_key(|(mtime, _)| std::cmp::Reverse(*mtime));
    for (_, path) in images.into_iter().skip(KEEP_IMAGES - 1) {
        let _ = fs::remove_dir_all(path);
    }
}

/// Points `<out_dir>/<name>-latest` at `dir` (a relative symlink, replaced atomically).
fn set_latest(out_dir: &Path, name: &str, dir: &Path) -> Result<()> {
    let link = out_dir.join(format!("{name}-latest"));
    let tmp = out_dir.join(format!(".{name}-latest.{}", std::process::id()));
    let target = dir.file_name().unwrap_or_default();
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).map_err(io_err(&tmp))?;
    fs::rename(&tmp, &link).map_err(io_err(&link))
}

// ---------------------------------------------------------------------------------------
// Input hashing

/// FNV-1a, 64 bit: stable across Rust versions and platforms (unlike `DefaultHasher`).
/// Every field is length-prefixed so that moving bytes between fields changes the hash.
#[derive(Debug, Clone)]
struct Fnv64(u64);

impl Fnv64 {
    fn new() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }

    fn bytes(&mut self, data: &[u8]) {
        for &b in data {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn field(&mut self, tag: &[u8], data: &[u8]) {
        for part in [tag, data] {
            self.bytes(&(part.len() as u64).to_le_bytes());
            self.bytes(part);
        }
    }

    /// A file's path (as given) and contents.
    fn file(&mut self, path: &Path) -> Result<()> {
        let mut f = fs::File::open(path).map_err(io_err(path))?;
        let len = f.metadata().map_err(io_err(path))?.len();
        self.field(b"file", path.as_os_str().as_encoded_bytes());
        self.bytes(&len.to_le_bytes());
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = f.read(&mut buf).map_err(io_err(path))?;
            if n == 0 {
                return Ok(());
            }
            self.bytes(&buf[..n]);
        }
    }

    /// The source files below `root` (paths relative to `base`), in a stable order; skips
    /// hidden entries, `target/` and build outputs (Kbuild's `.o`, `.ko`, `.mod*`, ...).
    fn tree(&mut self, root: &Path, base: &Path) -> Result<()> {
        let mut entries: Vec<PathBuf> = fs::read_dir(root)
            .map_err(io_err(root))?
            .map(|e| e.map(|e| e.path()))
            .collect::<io::Result<_>>()
            .map_err(io_err(root))?;
        entries.sort();
        for path in entries {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if name.starts_with('.') || name == "target" || is_ignored(&name) {
                continue;
            }
            let ty = fs::symlink_metadata(&path)
                .map_err(io_err(&path))?
                .file_type();
            if ty.is_dir() {
                self.tree(&path, base)?;
            } else if ty.is_file() {
                let rel = path.strip_prefix(base).unwrap_or(&path);
                self.field(b"path", rel.as_os_str().as_encoded_bytes());
                let data = fs::read(&path).map_err(io_err(&path))?;
                self.field(b"data", &data);
            }
        }
        Ok(())
    }

    fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

/// Build outputs (Kbuild's `.o`, `.ko`, `.mod*`, ...) and documentation.
fn is_ignored(name: &str) -> bool {
    const SUFFIXES: &[&str] = &[
        ".o", ".ko", ".mod", ".mod.c", ".symvers", ".order", ".cmd", ".md",
    ];
    SUFFIXES.iter().any(|s| name.ends_with(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash_of(fields: &[(&[u8], &[u8])]) -> String {
        let mut h = Fnv64::new();
        for (t, d) in fields {
            h.field(t, d);
        }
        h.hex()
    }

    #[test]
    fn fnv_known_values() {
        // Published FNV-1a 64 test vectors.
        let mut h = Fnv64::new();
        h.bytes(b"");
        assert_eq!(h.hex(), "cbf29ce484222325");
        h.bytes(b"a");
        assert_eq!(h.hex(), "af63dc4c8601ec8c");
        let mut h = Fnv64::new();
        h.bytes(b"foobar");
        assert_eq!(h.hex(), "85944171f73967e8");
    }

    #[test]
    fn hash_changes_with_inputs() {
        let a = hash_of(&[(b"kernel", b"6.1.192-2"), (b"init", b"echo")]);
        assert_eq!(a, hash_of(&[(b"kernel", b"6.1.192-2"), (b"init", b"echo")]));
        assert_ne!(a, hash_of(&[(b"kernel", b"6.1.192-3"), (b"init", b"echo")]));
        // Moving a byte from one field to the next must change the hash.
        assert_ne!(a, hash_of(&[(b"kernel", b"6.1.192-"), (b"init", b"2echo")]));
    }

    #[test]
    fn tree_hash_skips_build_outputs() {
        let dir = std::env::temp_dir().join(format!("vgpu-images-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("src")).unwrap();
        fs::write(dir.join("src/a.c"), "int a;").unwrap();
        let h = |dir: &Path| {
            let mut h = Fnv64::new();
            h.tree(dir, dir).unwrap();
            h.hex()
        };
        let first = h(&dir);
        fs::write(dir.join("src/a.o"), "obj").unwrap();
        fs::write(dir.join("src/.a.o.cmd"), "cmd").unwrap();
        fs::create_dir_all(dir.join("target")).unwrap();
        fs::write(dir.join("target/x"), "x").unwrap();
        assert_eq!(first, h(&dir));
        fs::write(dir.join("src/a.c"), "int b;").unwrap();
        assert_ne!(first, h(&dir));
        fs::remove_dir_all(&dir).unwrap();
    }

    /// Reads back (name, mode, rdev major, rdev minor, data) from a newc archive.
    fn read_cpio(mut d: &[u8]) -> Vec<(String, u32, u32, u32, Vec<u8>)> {
        let mut out = Vec::new();
        loop {
            assert_eq!(&d[..6], b"070701");
            let field = |i: usize| {
                u32::from_str_radix(std::str::from_utf8(&d[6 + 8 * i..14 + 8 * i]).unwrap(), 16)
                    .unwrap()
            };
            let (mode, size, rmaj, rmin, namesize) = (
                field(1),
                field(6) as usize,
                field(9),
                field(10),
                field(11) as usize,
            );
            let name = std::str::from_utf8(&d[110..110 + namesize - 1])
                .unwrap()
                .to_string();
            assert_eq!(d[110 + namesize - 1], 0);
            let start = 110 + namesize + pad4(110 + namesize);
            let data = d[start..start + size].to_vec();
            d = &d[start + size + pad4(size)..];
            if name == "TRAILER!!!" {
                assert!(d.is_empty());
                return out;
            }
            out.push((name, mode, rmaj, rmin, data));
        }
    }

    #[test]
    fn cpio_round_trip() {
        let dir = std::env::temp_dir().join(format!("vgpu-cpio-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let src = dir.join("src");
        fs::write(&src, b"hello").unwrap();
        let mut fsroot = Initramfs::default();
        fsroot.file("bin/prog", &src, 0o755);
        fsroot.node("dev/console", 0o020600, Source::Device(5, 1));
        fsroot.node("bin/sh", 0o120777, Source::Symlink("/bin/busybox".into()));
        fsroot.node("etc/x", 0o100644, Source::Bytes(b"abc".to_vec()));
        let out = dir.join("initrd.img");
        let size = fsroot.write(&out).unwrap();
        let data = fs::read(&out).unwrap();
        assert_eq!(size as usize, data.len());
        assert_eq!(data.len() % 4, 0);
        let entries = read_cpio(&data);
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "bin/prog",
                "bin/sh",
                "dev",
                "dev/console",
                "etc",
                "etc/x"
            ]
        );
        assert_eq!(entries[0].1, 0o040755);
        assert_eq!(entries[1].1, 0o100755);
        assert_eq!(entries[1].4, b"hello");
        assert_eq!(entries[2].4, b"/bin/busybox");
        assert_eq!((entries[4].1, entries[4].2, entries[4].3), (0o020600, 5, 1));
        assert_eq!(entries[6].4, b"abc");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn kernel_release_parsing() {
        let r = |s: &str| Some(s.to_string());
        assert_eq!(
            kernel_from_depends("linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)"),
            Some(("6.1.0-56-cloud-amd64".into(), r("6.1.192-2")))
        );
        assert_eq!(
            kernel_from_depends("linux-image-6.1.0-56-cloud-amd64"),
            Some(("6.1.0-56-cloud-amd64".into(), None))
        );
        // A 6.12 backport and the generic flavour do not match.
        assert_eq!(
            kernel_from_depends("linux-image-6.12.38+deb12-cloud-amd64 (= 6.12.38-1~bpo12+1)"),
            None
        );
        assert_eq!(kernel_from_depends("linux-image-6.1.0-56-amd64"), None);
        assert_eq!(
            kernel_from_depends(
                "linux-image-6.1.0-9-cloud-amd64 | linux-image-6.1.0-10-cloud-amd64 (>= 1)"
            ),
            Some(("6.1.0-10-cloud-amd64".into(), None))
        );
        assert_eq!(kernel_release_of("linux-image-6.1.0--cloud-amd64"), None);
        let show =
            "Package: linux-image-6.1.0-56-cloud-amd64\nVersion: 6.1.192-2\nSection: kernel\n";
        assert_eq!(control_field(show, "Version"), Some("6.1.192-2"));
        assert_eq!(control_field(show, "Depends"), None);
    }

    #[test]
    fn headers_depends_parsing() {
        let dep = "linux-headers-6.1.0-56-common (= 6.1.192-2), linux-kbuild-6.1 (>= 6.1.192-2), \
                   linux-compiler-gcc-12-x86";
        assert_eq!(
            headers_depends(dep),
            Some((
                "linux-headers-6.1.0-56-common".into(),
                "linux-kbuild-6.1".into()
            ))
        );
        assert_eq!(headers_depends("linux-kbuild-6.1"), None);
        assert_eq!(headers_depends(""), None);
    }

    #[test]
    fn symlinks_made_relative() {
        let dir = std::env::temp_dir().join(format!("vgpu-symlink-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("usr/src/common")).unwrap();
        fs::create_dir_all(dir.join("lib/modules/6.1")).unwrap();
        fs::write(dir.join("usr/src/common/Makefile"), "x").unwrap();
        let link = dir.join("lib/modules/6.1/source");
        std::os::unix::fs::symlink("/usr/src/common", &link).unwrap();
        let rel = dir.join("usr/src/scripts");
        std::os::unix::fs::symlink("common", &rel).unwrap();
        relativize_symlinks(&dir, &dir).unwrap();
        assert_eq!(
            fs::read_link(&link).unwrap(),
            PathBuf::from("../../../usr/src/common")
        );
        assert_eq!(fs::read_to_string(link.join("Makefile")).unwrap(), "x");
        assert_eq!(fs::read_link(&rel).unwrap(), PathBuf::from("common"));
        fs::remove_dir_all(&dir).unwrap();
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

    #[test]
    fn elf_checks() {
        let me = fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(elf_has_interp(&me).is_some());
        assert_eq!(elf_has_interp(b"#!/bin/sh\n"), None);
        assert_eq!(module_name("virtio-rng.ko").as_deref(), Some("virtio_rng"));
        assert_eq!(module_name("virtio.ko.xz"), None);
    }
}
