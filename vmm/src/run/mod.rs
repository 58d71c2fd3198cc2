//! A run of a guest, wherever it happens: the host is chosen ([`host`]), the images are
//! built, and the guest boots directly on KVM ([`direct`]) or inside the virtual host
//! ([`virtual_host`]); either way the result is one [`Report`].

pub mod direct;
pub mod host;
pub mod virtual_host;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use image_builder::{GuestImage, ImageOptions};

use crate::cli::GuestArgs;
use crate::report::Report;
use crate::spec::{self, RunSpec, Suite};
use host::HostKind;

/// Where images live and how they are built: `images_dir` or `<workspace>/build/images`.
pub fn image_options(images_dir: Option<PathBuf>, force: bool) -> Result<ImageOptions, String> {
    let workspace = image_builder::default_workspace();
    Ok(ImageOptions {
        out_dir: images_dir.unwrap_or_else(|| workspace.join("build/images")),
        workspace,
        vmm_binary: std::env::current_exe().map_err(|e| format!("cannot find own binary: {e}"))?,
        force,
    })
}

/// Checks that `p` is a readable file; `what` names it in the error.
fn check_file(what: &str, p: &Path) -> Result<(), String> {
    match std::fs::metadata(p) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(format!("{what} {} is not a file", p.display())),
        Err(e) => Err(format!("{what} {}: {e}", p.display())),
    }
}

/// Boots the guest with `programs` (repeated for `repeat_for`) on the host `args` choose
/// and returns the run's report. The run's clock (boot and run times, the timeout) starts
/// when the images are ready; building them is timed apart (`image_build_ms`).
pub fn run_guest(
    args: &GuestArgs,
    programs: Vec<String>,
    selftest: Option<Suite>,
    repeat_for: Duration,
) -> Result<Report, String> {
    let mem_size = spec::parse_size(&args.mem).map_err(|e| format!("--mem: {e}"))?;
    let kind = host::resolve(args.host).map_err(|e| format!("--host kvm cannot work here: {e}"))?;
    let device = device_model::VgpuConfig::from_options(&args.device)
        .map_err(|e| format!("--device: {e}"))?;
    let spec = RunSpec {
        device,
        cpus: args.cpus,
        mem_size,
        programs,
        policy: args.policy,
        repeat_for,
        timeout: Duration::from_secs(args.timeout) + repeat_for,
        verbose: args.verbose,
        extra_cmdline: args.cmdline_extra.clone(),
        inject: args.inject.clone(),
        selftest,
    };
    spec::validate(&spec).map_err(|e| e.to_string())?;
    if kind == HostKind::VirtualHost && spec.extra_cmdline.is_some() {
        return Err("--cmdline-extra is only supported with --host kvm".into());
    }

    // Everything that can be checked quickly is checked before anything slow happens.
    if kind == HostKind::VirtualHost {
        virtual_host::find_in_path(virtual_host::QEMU)
            .ok_or_else(|| virtual_host::VirtualHostError::QemuMissing.to_string())?;
    }
    let opts = image_options(args.images_dir.clone(), false)?;
    let (guest, mut image_build) = match (&args.kernel, &args.initrd) {
        (Some(kernel), initrd) => {
            check_file("kernel", kernel)?;
            vm::boot::check_bzimage(kernel).map_err(|e| e.to_string())?;
            if let Some(i) = initrd {
                check_file("initrd", i)?;
            }
            let image = GuestImage {
                kernel: kernel.clone(),
                initrd: initrd.clone().unwrap_or_default(),
                kernel_release: "custom".into(),
                build_time: Duration::ZERO,
            };
            (image, None)
        }
        (None, Some(_)) => return Err("--initrd needs --kernel".into()),
        (None, None) => {
            let image = image_builder::build_guest_image(&opts).map_err(|e| e.to_string())?;
            let took = image.build_time;
            (image, Some(took))
        }
    };

    let mut report = match kind {
        HostKind::Kvm => {
            let initrd = (!guest.initrd.as_os_str().is_empty()).then(|| guest.initrd.clone());
            let start = Instant::now();
            direct::run_direct(&spec, guest.kernel.clone(), initrd, start)
                .map_err(|e| e.to_string())?
        }
        HostKind::VirtualHost => {
            let host = image_builder::build_host_image(&opts, &guest).map_err(|e| e.to_string())?;
            image_build = Some(image_build.unwrap_or_default() + host.build_time);
            let start = Instant::now();
            virtual_host::run_virtual_host(&spec, &host.kernel, &host.initrd, start)
                .map_err(|e| e.to_string())?
        }
    };
    report.image_build_ms = image_build.map(|t| t.as_millis() as u64);
    Ok(report)
}
