//! The `vmm` command. All the work is in the library; this file turns the command line into
//! calls and results into an exit status: 0 pass, 1 the guest's verdict was fail, 2 the run
//! could not be done (bad input, missing tools, VMM errors).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use image_builder::{self as images, GuestImage, ImageOptions};

use vmm::cli::{
    BenchWhat, Cli, Command, GuestArgs, ImageAction, ImageArgs, MatrixArgs, OracleBenchArgs,
    RunArgs, SelftestArgs,
};
use vmm::host::{self, HostKind};
use vmm::report::{Report, RunReport};
use vmm::run::{self, RunSpec};
use vmm::selftest::{self, Suite};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let verbose = match &cli.command {
        Command::Run(a) => a.guest.verbose,
        Command::Selftest(a) => a.guest.verbose,
        Command::Matrix(a) => a.guest.verbose,
        Command::Image { .. } | Command::Bench { .. } => false,
    };
    init_logging(verbose);
    let result = match cli.command {
        Command::Run(args) => cmd_run(*args),
        Command::Selftest(args) => cmd_selftest(*args),
        Command::Matrix(args) => cmd_matrix(*args),
        Command::Image {
            action: ImageAction::Build(args),
        } => cmd_image_build(args).map(|_| ExitCode::SUCCESS),
        Command::Bench {
            what: BenchWhat::Oracle(args),
        } => cmd_bench_oracle(&args).map(|_| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vmm: error: {e}");
            ExitCode::from(2)
        }
    }
}

fn init_logging(verbose: bool) {
    let level = match std::env::var("RUST_LOG").ok().as_deref() {
        Some("trace") => log::LevelFilter::Trace,
        Some("debug") => log::LevelFilter::Debug,
        Some("info") => log::LevelFilter::Info,
        _ if verbose => log::LevelFilter::Info,
        _ => log::LevelFilter::Warn,
    };
    vmm::logger::init(level);
}

fn image_options(images_dir: Option<PathBuf>, force: bool) -> Result<ImageOptions, String> {
    let workspace = images::default_workspace();
    Ok(ImageOptions {
        out_dir: images_dir.unwrap_or_else(|| workspace.join("build/images")),
        workspace,
        vmm_binary: std::env::current_exe().map_err(|e| format!("cannot find own binary: {e}"))?,
        force,
    })
}

fn cmd_image_build(args: ImageArgs) -> Result<(), String> {
    let opts = image_options(args.images_dir, args.force)?;
    let guest = images::build_guest_image(&opts).map_err(|e| e.to_string())?;
    println!(
        "guest image: {} {}",
        guest.kernel.display(),
        guest.initrd.display()
    );
    if !args.guest_only {
        let host = images::build_host_image(&opts, &guest).map_err(|e| e.to_string())?;
        println!(
            "virtual-host image: {} {}",
            host.kernel.display(),
            host.initrd.display()
        );
    }
    Ok(())
}

fn cmd_bench_oracle(args: &OracleBenchArgs) -> Result<(), String> {
    let region = run::parse_size(&args.region).map_err(|e| format!("--region: {e}"))?;
    let bench = vmm::bench::oracle_bench(region, args.iterations).map_err(|e| e.to_string())?;
    if args.json {
        println!("{}", bench.to_json());
    } else {
        print!("{}", bench.summary());
    }
    Ok(())
}

fn check_file(what: &str, p: &Path) -> Result<(), String> {
    match std::fs::metadata(p) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(format!("{what} {} is not a file", p.display())),
        Err(e) => Err(format!("{what} {}: {e}", p.display())),
    }
}

fn cmd_run(args: RunArgs) -> Result<ExitCode, String> {
    if args.list_injections {
        for name in vmm::injections::INJECTIONS {
            println!("{name}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let programs = run::programs_to_run(&args.programs, &args.workloads);
    let repeat_for = Duration::from_secs(args.repeat_for);
    let report = run_guest(&args.guest, programs, None, repeat_for)?;
    finish(&report, args.report.as_deref())
}

fn cmd_selftest(args: SelftestArgs) -> Result<ExitCode, String> {
    let suite = args.suite;
    let programs = vec![suite.guest_program().to_string()];
    let mut report = run_guest(&args.guest, programs, Some(suite), Duration::ZERO)?;
    // In the virtual host the inner VMM ran `vmm selftest` and judged the tests; without
    // its report (the virtual host died) the suite is judged from this console.
    if report.selftest.is_none() {
        selftest::apply(&mut report, suite, args.guest.policy);
    }
    report.kselftest_output = None;
    if let Some(path) = &args.report {
        let raw_path = selftest::raw_output_path(path);
        if let Some(text) = selftest::raw_output(&report, suite) {
            std::fs::write(&raw_path, text)
                .map_err(|e| format!("cannot write {}: {e}", raw_path.display()))?;
            report.kselftest_output = Some(raw_path.display().to_string());
        }
    }
    let code = finish(&report, args.report.as_deref())?;
    if let Some(raw) = &report.kselftest_output {
        eprintln!("   kselftest output: {raw}");
    }
    Ok(code)
}

fn cmd_matrix(args: MatrixArgs) -> Result<ExitCode, String> {
    use vmm::matrix::{self, Cell, Row};
    let injections: Vec<Option<String>> = std::iter::once(None)
        .chain(if args.injections.is_empty() {
            vmm::injections::INJECTIONS
                .iter()
                .map(|i| Some(i.to_string()))
                .collect::<Vec<_>>()
        } else {
            args.injections.iter().cloned().map(Some).collect()
        })
        .collect();
    if let Some(dir) = &args.reports_dir {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let total = injections.len() * args.workloads.len();
    let mut rows = Vec::new();
    for injection in injections {
        let mut cells = Vec::new();
        for workload in &args.workloads {
            let name = injection.as_deref().unwrap_or("none");
            eprintln!(
                "[matrix] {}/{total}: {name} / {workload}",
                rows.len() * args.workloads.len() + cells.len() + 1
            );
            let mut guest = args.guest.clone();
            guest.inject = injection.clone();
            // A run that could not be done at all (bad input, no QEMU) ends the matrix;
            // a failed guest is a cell.
            let report = run_guest(&guest, vec![workload.clone()], None, Duration::ZERO)?;
            if let Some(dir) = &args.reports_dir {
                let path = dir.join(format!("{}.{workload}.json", name.replace(':', "-")));
                report
                    .write_json(&path)
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            }
            cells.push(Cell::of(Some(&report), workload));
        }
        rows.push(Row { injection, cells });
    }
    print!("{}", matrix::render(&args.workloads, &rows));
    Ok(if matrix::correct_driver_is_clean(&rows) {
        ExitCode::SUCCESS
    } else {
        eprintln!("vmm: the correct driver showed violations");
        ExitCode::from(1)
    })
}

/// Boots the guest with `programs` (repeated for `repeat_for`) on the host `args` choose
/// and returns the run's report. The run's clock (boot and run times, the timeout) starts
/// when the images are ready; building them is timed apart (`image_build_ms`).
fn run_guest(
    args: &GuestArgs,
    programs: Vec<String>,
    selftest: Option<Suite>,
    repeat_for: Duration,
) -> Result<Report, String> {
    let mem_size = run::parse_size(&args.mem).map_err(|e| format!("--mem: {e}"))?;
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
    run::validate(&spec).map_err(|e| e.to_string())?;
    if kind == HostKind::VirtualHost && spec.extra_cmdline.is_some() {
        return Err("--cmdline-extra is only supported with --host kvm".into());
    }

    // Everything that can be checked quickly is checked before anything slow happens.
    if kind == HostKind::VirtualHost {
        vmm::nested::find_in_path(vmm::nested::QEMU)
            .ok_or_else(|| vmm::nested::NestedError::QemuMissing.to_string())?;
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
            let image = images::build_guest_image(&opts).map_err(|e| e.to_string())?;
            let took = image.build_time;
            (image, Some(took))
        }
    };

    let mut report = match kind {
        HostKind::Kvm => {
            let initrd = (!guest.initrd.as_os_str().is_empty()).then(|| guest.initrd.clone());
            let start = Instant::now();
            run::run_direct(&spec, guest.kernel.clone(), initrd, start)
                .map_err(|e| e.to_string())?
        }
        HostKind::VirtualHost => {
            let host = images::build_host_image(&opts, &guest).map_err(|e| e.to_string())?;
            image_build = Some(image_build.unwrap_or_default() + host.build_time);
            let start = Instant::now();
            vmm::nested::run_nested(&spec, &host.kernel, &host.initrd, start)
                .map_err(|e| e.to_string())?
        }
    };
    report.image_build_ms = image_build.map(|t| t.as_millis() as u64);
    Ok(report)
}

fn finish(report: &Report, path: Option<&Path>) -> Result<ExitCode, String> {
    eprint!("{}", report.summary());
    if let Some(p) = path {
        report
            .write_json(p)
            .map_err(|e| format!("cannot write report {}: {e}", p.display()))?;
        eprintln!("   report: {}", p.display());
    }
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
