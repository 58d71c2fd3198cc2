//! The subcommands: each turns its parsed options into calls and its result into an exit
//! status (0 pass, 1 the guest's verdict was fail); `Err` is a run that could not be done
//! (bad input, missing tools, VMM errors), exit status 2.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use crate::cli::{
    BenchWhat, Cli, Command, ImageAction, ImageArgs, MatrixArgs, OracleBenchArgs, RunArgs,
    SelftestArgs,
};
use crate::report::{Report, RunReport};
use crate::run::{image_options, run_guest};
use crate::{selftest, spec};

/// Runs `cli`'s subcommand.
pub fn dispatch(cli: Cli) -> Result<ExitCode, String> {
    match cli.command {
        Command::Run(args) => cmd_run(*args),
        Command::Selftest(args) => cmd_selftest(*args),
        Command::Matrix(args) => cmd_matrix(*args),
        Command::Image {
            action: ImageAction::Build(args),
        } => cmd_image_build(args).map(|_| ExitCode::SUCCESS),
        Command::Bench {
            what: BenchWhat::Oracle(args),
        } => cmd_bench_oracle(&args).map(|_| ExitCode::SUCCESS),
    }
}

/// Whether `cli` asked for the guest's whole console.
pub fn verbose(cli: &Cli) -> bool {
    match &cli.command {
        Command::Run(a) => a.guest.verbose,
        Command::Selftest(a) => a.guest.verbose,
        Command::Matrix(a) => a.guest.verbose,
        Command::Image { .. } | Command::Bench { .. } => false,
    }
}

/// Logs at `RUST_LOG`'s level, else info when verbose, else warnings.
pub fn init_logging(verbose: bool) {
    let level = match std::env::var("RUST_LOG").ok().as_deref() {
        Some("trace") => log::LevelFilter::Trace,
        Some("debug") => log::LevelFilter::Debug,
        Some("info") => log::LevelFilter::Info,
        _ if verbose => log::LevelFilter::Info,
        _ => log::LevelFilter::Warn,
    };
    crate::logger::init(level);
}

fn cmd_image_build(args: ImageArgs) -> Result<(), String> {
    let opts = image_options(args.images_dir, args.force)?;
    let guest = image_builder::build_guest_image(&opts).map_err(|e| e.to_string())?;
    println!(
        "guest image: {} {}",
        guest.kernel.display(),
        guest.initrd.display()
    );
    if !args.guest_only {
        let host = image_builder::build_host_image(&opts, &guest).map_err(|e| e.to_string())?;
        println!(
            "virtual-host image: {} {}",
            host.kernel.display(),
            host.initrd.display()
        );
    }
    Ok(())
}

fn cmd_bench_oracle(args: &OracleBenchArgs) -> Result<(), String> {
    let region = spec::parse_size(&args.region).map_err(|e| format!("--region: {e}"))?;
    let bench =
        device_model::bench::oracle_bench(region, args.iterations).map_err(|e| e.to_string())?;
    if args.json {
        println!("{}", bench.to_json());
    } else {
        print!("{}", bench.summary());
    }
    Ok(())
}

fn cmd_run(args: RunArgs) -> Result<ExitCode, String> {
    if args.list_injections {
        for name in crate::injections::INJECTIONS {
            println!("{name}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let programs = spec::programs_to_run(&args.programs, &args.workloads);
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
    use crate::matrix::{self, Cell, Row};
    let injections: Vec<Option<String>> = std::iter::once(None)
        .chain(if args.injections.is_empty() {
            crate::injections::INJECTIONS
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
