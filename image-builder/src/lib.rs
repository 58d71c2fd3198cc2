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
//!
//! This file is the API and puts the images together; one module per concern does the work:
//! `debian` (resolve, download and unpack the kernel, header and source packages), `kmod`
//! (the guest driver module), `hmm_tests` (the kernel's HMM selftest), `modules` (which
//! kernel modules, in which order), `programs` (the guest programs and the `vmm`'s shared
//! libraries), `elf` (what is read from ELF files), `cpio` (the initramfs writer), `cache`
//! (the output directories), `hash` (the input hash) and `command` (running host tools).

#![deny(missing_docs)]

mod cache;
mod command;
mod cpio;
mod debian;
mod elf;
mod hash;
mod hmm_tests;
mod kmod;
mod modules;
mod programs;

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cache::{prune, publish, set_latest, temp_dir};
use command::run;
use cpio::{Initramfs, Source};
use debian::{KERNEL_META, KERNEL_SOURCE};
use hash::Fnv64;
use kmod::DRIVER_MODULE;

/// Modules of the guest image: virtio over PCI and virtio-rng (dependencies are added).
const GUEST_MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_rng",
];
/// Modules of the virtual host (dependencies are added).
const HOST_MODULES: &[&str] = &["kvm_amd"];
/// The static busybox of the host (busybox-static), the shell and tools of both images.
const BUSYBOX: &str = "/bin/busybox";
/// The builder's own sources are an input of every image: a change in how images are built
/// rebuilds them. Every file of `src/` is listed (a test checks).
const BUILDER_SOURCES: &[(&str, &[u8])] = &[
    ("cache.rs", include_bytes!("cache.rs")),
    ("command.rs", include_bytes!("command.rs")),
    ("cpio.rs", include_bytes!("cpio.rs")),
    ("debian.rs", include_bytes!("debian.rs")),
    ("elf.rs", include_bytes!("elf.rs")),
    ("hash.rs", include_bytes!("hash.rs")),
    ("hmm_tests.rs", include_bytes!("hmm_tests.rs")),
    ("kmod.rs", include_bytes!("kmod.rs")),
    ("lib.rs", include_bytes!("lib.rs")),
    ("modules.rs", include_bytes!("modules.rs")),
    ("programs.rs", include_bytes!("programs.rs")),
];

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
    /// The kernel (bzImage).
    pub kernel: PathBuf,
    /// The initramfs (`newc` cpio).
    pub initrd: PathBuf,
    /// `uname -r` of the kernel, e.g. `6.1.0-56-cloud-amd64`.
    pub kernel_release: String,
    /// How long [`build_guest_image`] took: the whole build, or only resolving the kernel and
    /// hashing the inputs when the image was up to date. Zero for an image built elsewhere.
    pub build_time: Duration,
}

/// A built virtual-host image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostImage {
    /// The kernel (bzImage).
    pub kernel: PathBuf,
    /// The initramfs, with the `vmm` binary and the guest image in it.
    pub initrd: PathBuf,
    /// How long [`build_host_image`] took (as [`GuestImage::build_time`]).
    pub build_time: Duration,
}

/// Why an image could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A package could not be resolved, downloaded or unpacked, or lacks a file it should have.
    #[error("apt cannot provide package {package}: {message}")]
    Apt {
        /// The package.
        package: String,
        /// What apt said, or what is missing.
        message: String,
    },
    /// The kernel meta package names no 6.1 cloud kernel.
    #[error("no 6.1 cloud kernel (linux-image-6.1.0-N-cloud-amd64) among the Depends of the candidate of {KERNEL_META}; apt-cache said: {0}")]
    NoKernel(String),
    /// The host has no static busybox.
    #[error("busybox-static missing ({BUSYBOX} absent or not static): run ci/install-deps.sh")]
    NoBusybox,
    /// A host tool could not be started.
    #[error("{tool} missing: run ci/install-deps.sh ({source})")]
    MissingTool {
        /// The program.
        tool: String,
        /// Why it could not be run.
        #[source]
        source: io::Error,
    },
    /// A host tool failed.
    #[error("`{command}` failed ({status}): {output}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// The last lines of its error output (or of its output).
        output: String,
    },
    /// `cargo build` of the guest programs failed.
    #[error("guest program build failed: {0}")]
    GuestBuild(String),
    /// A kernel module could not be built or found, or its dependencies not resolved.
    #[error("kernel module {name}: {reason}")]
    Module {
        /// The module.
        name: String,
        /// What went wrong.
        reason: String,
    },
    /// An executable that goes into the guest is not static.
    #[error("{0} is not a static executable")]
    NotStatic(PathBuf),
    /// The shared libraries of the `vmm` binary could not be listed.
    #[error("cannot find the shared libraries of {path}: {reason}")]
    Libraries {
        /// The binary.
        path: PathBuf,
        /// What `ldd` said, or what is wrong with the binary.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

type Result<T> = std::result::Result<T, ImageError>;

/// Turns an I/O error on `path` into an [`ImageError::Io`].
fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The repository root: `$VGPU_WORKSPACE`, else the checkout this crate was built from.
pub fn default_workspace() -> PathBuf {
    match std::env::var_os("VGPU_WORKSPACE") {
        Some(w) if !w.is_empty() => PathBuf::from(w),
        _ => build_checkout(),
    }
}

/// The repository this crate was built in: the parent of its manifest directory
/// (`<repo>/image-builder`).
fn build_checkout() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Builds (or finds in the cache) the guest image.
pub fn build_guest_image(opts: &ImageOptions) -> Result<GuestImage> {
    let start = Instant::now();
    let image = guest_image(opts)?;
    Ok(GuestImage {
        build_time: start.elapsed(),
        ..image
    })
}

/// Builds (or finds in the cache) the virtual-host image around `guest`.
pub fn build_host_image(opts: &ImageOptions, guest: &GuestImage) -> Result<HostImage> {
    let start = Instant::now();
    let image = host_image(opts, guest)?;
    Ok(HostImage {
        build_time: start.elapsed(),
        ..image
    })
}

/// The guest image, without its build time.
fn guest_image(opts: &ImageOptions) -> Result<GuestImage> {
    let kp = step("guest", "resolving kernel package", || {
        let kp = debian::resolve_kernel()?;
        let summary = format!("{} ({})", kp.release, kp.version);
        Ok((kp, summary))
    })?;
    let source = step("guest", "resolving kernel source", || {
        let version = debian::resolve_kernel_source(&kp)?;
        let summary = format!("{KERNEL_SOURCE} {version}");
        Ok((version, summary))
    })?;
    let init = opts.workspace.join("images").join("guest-init.sh");
    let hash = step("guest", "hashing inputs", || {
        let mut h = common_inputs(&kp)?;
        // The headers are taken at the kernel's version (resolve_headers).
        h.field(
            b"headers",
            format!("linux-headers-{} {}", kp.release, kp.version).as_bytes(),
        );
        h.field(b"source", format!("{KERNEL_SOURCE} {source}").as_bytes());
        h.tree(&opts.workspace.join("images"), &opts.workspace)?;
        h.tree(&opts.workspace.join("guest-driver"), &opts.workspace)?;
        // The guest programs are built from their path dependencies too.
        for dir in programs::path_dependencies(&opts.workspace)? {
            if !dir.starts_with("guest-driver") {
                h.tree(&opts.workspace.join(dir), &opts.workspace)?;
            }
        }
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
        build_time: Duration::ZERO,
    };
    if reuse(opts, "guest", &dir)? {
        return Ok(image);
    }

    check_busybox()?;
    let tree = kernel_tree(opts, "guest", &kp)?;
    let cache = opts.out_dir.join("cache");
    let header_pkgs = step("guest", "resolving kernel headers", || {
        let pkgs = debian::resolve_headers(&kp)?;
        let names: Vec<_> = pkgs.iter().map(|(p, _)| p.as_str()).collect();
        let summary = format!("{} ({})", names.join(" "), kp.version);
        Ok((pkgs, summary))
    })?;
    let kdir = step("guest", "fetching kernel headers", || {
        let kdir = debian::fetch_headers(&kp, &header_pkgs, &cache)?;
        let summary = kdir.display().to_string();
        Ok((kdir, summary))
    })?;
    let hmm_src = step("guest", "fetching HMM selftest sources", || {
        let dir = debian::fetch_hmm_sources(&source, &cache)?;
        let summary = dir.display().to_string();
        Ok((dir, summary))
    })?;
    let hmm_tests = step("guest", "building hmm-tests", || {
        let exe = hmm_tests::build_hmm_tests(&hmm_src, &cache)?;
        let size = fs::metadata(&exe).map_err(io_err(&exe))?.len();
        let summary = format!("{} ({} KiB)", exe.display(), size.div_ceil(1024));
        Ok((exe, summary))
    })?;
    let (kmod_dir, kmod) = step("guest", "building kernel module", || {
        let uapi = hmm_src.join("lib");
        let (dir, ko) = kmod::build_driver_module(&opts.workspace, &kdir, &uapi, &cache)?;
        let size = fs::metadata(&ko).map_err(io_err(&ko))?.len();
        let summary = format!("{DRIVER_MODULE}.ko {} KiB", size.div_ceil(1024));
        Ok(((dir, ko), summary))
    })?;
    let programs = step("guest", "building guest programs", || {
        let programs = programs::build_guest_programs(&opts.workspace)?;
        let summary = names_of(&programs);
        Ok((programs, summary))
    })?;
    let modules = step("guest", "resolving modules", || {
        let mut m =
            modules::module_load_order(&tree.join("lib/modules").join(&kp.release), GUEST_MODULES)?;
        m.push((DRIVER_MODULE.to_string(), kmod.clone()));
        let summary = names_of(&m);
        Ok((m, summary))
    })?;
    step("guest", "writing image", || {
        let tmp = temp_dir(&opts.out_dir, "guest")?;
        copy_kernel(&tree, &kp, &tmp)?;
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
        publish_image(opts, "guest", &tmp, &dir, size)
    })?;
    Ok(image)
}

/// The virtual-host image around `guest`, without its build time.
fn host_image(opts: &ImageOptions, guest: &GuestImage) -> Result<HostImage> {
    let kp = step("host", "resolving kernel package", || {
        let kp = debian::kernel_package(&guest.kernel_release)?;
        let summary = format!("{} ({})", kp.release, kp.version);
        Ok((kp, summary))
    })?;
    let init = opts.workspace.join("images").join("host-init.sh");
    let vmm = &opts.vmm_binary;
    let libs = step("host", "listing vmm libraries", || {
        let libs = programs::shared_libraries(vmm)?;
        let n = libs.len();
        Ok((libs, format!("{n} files")))
    })?;
    let hash = step("host", "hashing inputs", || {
        let mut h = common_inputs(&kp)?;
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
        build_time: Duration::ZERO,
    };
    if reuse(opts, "host", &dir)? {
        return Ok(image);
    }

    check_busybox()?;
    let tree = kernel_tree(opts, "host", &kp)?;
    let modules = step("host", "resolving modules", || {
        let m =
            modules::module_load_order(&tree.join("lib/modules").join(&kp.release), HOST_MODULES)?;
        let summary = names_of(&m);
        Ok((m, summary))
    })?;
    step("host", "writing image", || {
        let tmp = temp_dir(&opts.out_dir, "host")?;
        copy_kernel(&tree, &kp, &tmp)?;
        let mut fsroot = base_initramfs(&init, &modules)?;
        fsroot.file("bin/vmm", vmm, 0o755);
        for lib in &libs {
            let path = lib.to_string_lossy();
            fsroot.file(path.trim_start_matches('/'), lib, 0o755);
        }
        fsroot.file("guest/vmlinuz", &guest.kernel, 0o644);
        fsroot.file("guest/initrd.img", &guest.initrd, 0o644);
        let size = fsroot.write(&tmp.join("initrd.img"))?;
        publish_image(opts, "host", &tmp, &dir, size)
    })?;
    Ok(image)
}

/// The input hash over what both images are built from: the builder's own sources, the
/// kernel package and busybox.
fn common_inputs(kp: &debian::KernelPackage) -> Result<Fnv64> {
    let mut h = Fnv64::new();
    for (name, data) in BUILDER_SOURCES {
        h.field(name.as_bytes(), data);
    }
    h.field(
        b"kernel",
        format!("{} {}", kp.package, kp.version).as_bytes(),
    );
    h.file(Path::new(BUSYBOX))?;
    Ok(h)
}

/// Whether image `name` is complete in `dir` and may be kept (no `--force`); if so it is
/// made `<name>-latest`.
fn reuse(opts: &ImageOptions, name: &str, dir: &Path) -> Result<bool> {
    let complete = ["vmlinuz", "initrd.img"]
        .iter()
        .all(|f| dir.join(f).is_file());
    if opts.force || !complete {
        return Ok(false);
    }
    eprintln!("[image] {name}: up to date in {}", dir.display());
    set_latest(&opts.out_dir, name, dir)?;
    Ok(true)
}

/// The step that downloads and unpacks the kernel package (once, into the cache).
fn kernel_tree(opts: &ImageOptions, name: &str, kp: &debian::KernelPackage) -> Result<PathBuf> {
    step(name, "fetching kernel package", || {
        let tree = debian::fetch_kernel(kp, &opts.out_dir.join("cache"))?;
        Ok((tree, format!("{} {}", kp.package, kp.version)))
    })
}

/// Copies the kernel of the unpacked package `tree` into the image directory `tmp`.
fn copy_kernel(tree: &Path, kp: &debian::KernelPackage, tmp: &Path) -> Result<()> {
    let vmlinuz = tree.join("boot").join(format!("vmlinuz-{}", kp.release));
    fs::copy(&vmlinuz, tmp.join("vmlinuz")).map_err(io_err(&vmlinuz))?;
    Ok(())
}

/// Moves the finished image `tmp` to `dir`, makes it `<name>-latest` and prunes old images;
/// returns the summary of the writing step.
fn publish_image(
    opts: &ImageOptions,
    name: &str,
    tmp: &Path,
    dir: &Path,
    initrd_size: u64,
) -> Result<((), String)> {
    publish(tmp, dir, opts.force)?;
    set_latest(&opts.out_dir, name, dir)?;
    prune(&opts.out_dir, name, dir);
    let summary = format!("initrd {} KiB in {}", initrd_size / 1024, dir.display());
    Ok(((), summary))
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

/// The names of named files, space-separated, for a progress line.
fn names_of(items: &[(String, PathBuf)]) -> String {
    items
        .iter()
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Writes `data` to `path`.
fn write_file(path: &Path, data: &[u8]) -> Result<()> {
    fs::write(path, data).map_err(io_err(path))
}

/// Checks that the host's busybox is there and static.
fn check_busybox() -> Result<()> {
    let data = fs::read(BUSYBOX).map_err(|_| ImageError::NoBusybox)?;
    match elf::has_interp(&data) {
        Some(false) => Ok(()),
        _ => Err(ImageError::NoBusybox),
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_checkout_is_the_repository_root() {
        let root = build_checkout();
        for input in ["images/guest-init.sh", "images/host-init.sh", "Cargo.lock"] {
            assert!(root.join(input).is_file(), "{}", root.join(input).display());
        }
        assert!(root.join("guest-driver/kmod").is_dir());
    }

    #[test]
    fn the_builder_hashes_every_file_of_its_source() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files: Vec<String> = fs::read_dir(&src)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        let listed: Vec<&str> = BUILDER_SOURCES.iter().map(|(name, _)| *name).collect();
        assert_eq!(
            files,
            listed,
            "BUILDER_SOURCES must list every file of {}",
            src.display()
        );
        for (name, data) in BUILDER_SOURCES {
            assert_eq!(fs::read(src.join(name)).unwrap(), *data, "{name}");
        }
    }
}
