//! The command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::spec::{HostChoice, Policy, Suite};

/// A rust-vmm VMM with a virtual GPU: boot a guest, run device-fault workloads, count ATS
/// invalidations, with a correctness verdict for every run.
#[derive(Debug, Parser)]
#[command(name = "vmm", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot a guest, run its programs and report (builds the images first if needed).
    Run(Box<RunArgs>),
    /// Run a kernel selftest suite in the guest against the virtual GPU and report each test
    /// with the coherence oracle's verdict.
    ///
    /// Tests the guest kernel cannot run (device-private memory, device-exclusive access) are
    /// reported as `unsupported` with the reason, never as passes. Exit status: 0 when every
    /// other test passed or skipped and the oracle saw no violation; 1 when a test failed, the
    /// suite did not finish or the oracle saw violations; 2 for bad input or a host error.
    Selftest(Box<SelftestArgs>),
    /// Build or inspect the guest and virtual-host images.
    Image {
        /// What to do with the images.
        #[command(subcommand)]
        action: ImageAction,
    },
    /// Run every workload under every guest-driver bug injection and print what the
    /// coherence oracle caught, as a Markdown table (exit 1 if the correct driver showed a
    /// violation).
    Matrix(Box<MatrixArgs>),
    /// Measure the device model in this process (no guest).
    Bench {
        /// What to measure.
        #[command(subcommand)]
        what: BenchWhat,
    },
}

/// Options of `vmm matrix`.
#[derive(Debug, Args)]
pub struct MatrixArgs {
    /// The workloads (columns), comma-separated.
    #[arg(long = "workload", value_delimiter = ',', default_values_t = crate::spec::WORKLOADS.iter().map(|w| w.to_string()), value_parser = clap::builder::PossibleValuesParser::new(crate::spec::WORKLOADS))]
    pub workloads: Vec<String>,
    /// The injections (rows after the correct driver), comma-separated; default: all.
    #[arg(long = "inject", value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(crate::injections::INJECTIONS))]
    pub injections: Vec<String>,
    /// Write every run's report here as `<injection>.<workload>.json`.
    #[arg(long)]
    pub reports_dir: Option<PathBuf>,
    /// How and where the guests run.
    #[command(flatten)]
    pub guest: GuestArgs,
}

/// `vmm bench ...`
#[derive(Debug, Subcommand)]
pub enum BenchWhat {
    /// Job time with the coherence oracle on every access, sampled and off, round-robin in
    /// one run; prints the medians and the ratios every/off and sampled/off.
    Oracle(OracleBenchArgs),
}

/// Options of `vmm bench oracle`.
#[derive(Debug, Args)]
pub struct OracleBenchArgs {
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Timed rounds (each runs FILL and CHECKSUM in every mode).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub iterations: u32,
    /// Bytes each job covers (e.g. 16M; a bare number is MiB), mapped with 4 KiB pages.
    #[arg(long, default_value = "16M")]
    pub region: String,
}

/// `vmm image ...`
#[derive(Debug, Subcommand)]
pub enum ImageAction {
    /// Build the guest image and the virtual-host image (cached by content hash).
    Build(ImageArgs),
}

/// Options of `vmm image build`.
#[derive(Debug, Args)]
pub struct ImageArgs {
    /// Rebuild even if the cached images are up to date.
    #[arg(long)]
    pub force: bool,
    /// Where images are kept (default: <workspace>/build/images).
    #[arg(long, env = "VGPU_IMAGES_DIR")]
    pub images_dir: Option<PathBuf>,
    /// Build only the guest image.
    #[arg(long)]
    pub guest_only: bool,
}

/// Options of `vmm run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Guest programs to run, in order (repeat or comma-separate). Without `--run` and
    /// `--workload`: the self check and the default workloads.
    #[arg(long = "run", value_delimiter = ',')]
    pub programs: Vec<String>,
    /// Device workloads to run after the `--run` programs (repeat or comma-separate).
    #[arg(long = "workload", value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(crate::spec::WORKLOADS))]
    pub workloads: Vec<String>,
    /// Print the bug injections, one name per line, and exit.
    #[arg(long)]
    pub list_injections: bool,
    /// Write the JSON report here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Run the programs again and again, in order, until this many seconds have passed
    /// in the guest (a stress run; stops at the first failing round). Every round is in
    /// the report.
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub repeat_for: u64,
    /// How and where the guest runs.
    #[command(flatten)]
    pub guest: GuestArgs,
}

/// Options of `vmm selftest`.
#[derive(Debug, Args)]
pub struct SelftestArgs {
    /// The suite: `hmm` is the kernel's tools/testing/selftests/vm/hmm-tests (6.1), run
    /// against the virtual GPU's dmirror-compatible devices.
    #[arg(value_enum)]
    pub suite: Suite,
    /// Write the JSON report here (with `selftest`, `tests` and `summary`); the suite's raw
    /// kselftest output goes beside it, the extension replaced by `.kselftest.txt`
    /// (report.json -> report.kselftest.txt).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// How and where the guest runs.
    #[command(flatten)]
    pub guest: GuestArgs,
}

/// How and where a guest runs: the options `vmm run`, `vmm selftest` and `vmm matrix` share.
#[derive(Clone, Debug, Args)]
pub struct GuestArgs {
    /// Where to run: `kvm` needs hardware virtualization; `nested` boots the virtual host.
    #[arg(long, value_enum, default_value = "auto")]
    pub host: HostChoice,
    /// Number of guest vCPUs.
    #[arg(long, default_value_t = 2)]
    pub cpus: u8,
    /// Guest RAM (e.g. 512M, 2G; a bare number is MiB).
    #[arg(long, default_value = "512M")]
    pub mem: String,
    /// Guest kernel (bzImage); default: the guest image's.
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Guest initramfs; default: the guest image's.
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// How the guest driver turns mmu-notifier events into device invalidations.
    #[arg(long, value_enum, default_value = "event-aware")]
    pub policy: Policy,
    /// Virtual GPU options, `key=value` separated by commas: atc_entries (0..=65536),
    /// atc_ways (dividing atc_entries), fault_ahead (0, 64K, 2M), fault_batch (1..=16),
    /// pasid_inval_threshold (a size such as 1G; 0 = off), oracle (every, sampled, off),
    /// inval_latency_us (how long an ATS invalidation is in flight; 0 = at once).
    #[arg(long, default_value = "")]
    pub device: String,
    /// Load the guest driver with a deliberate bug (see `vmm run --list-injections`), to
    /// show that the coherence oracle catches it.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(crate::injections::INJECTIONS))]
    pub inject: Option<String>,
    /// Give up after this many seconds (for `vmm run`: counted after --repeat-for).
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Show the kernel's boot messages and debug logs.
    #[arg(long, short)]
    pub verbose: bool,
    /// Appended to the guest kernel command line (direct KVM runs only).
    #[arg(long)]
    pub cmdline_extra: Option<String>,
    /// Where images are kept (default: <workspace>/build/images).
    #[arg(long, env = "VGPU_IMAGES_DIR")]
    pub images_dir: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_device_help_names_every_device_option() {
        let cli = Cli::command();
        let run = cli.find_subcommand("run").expect("run");
        let device = run
            .get_arguments()
            .find(|a| a.get_id() == "device")
            .expect("--device");
        let help = device.get_help().expect("help").to_string();
        for (key, _) in device_model::VgpuConfig::default().options() {
            assert!(help.contains(key), "--device help omits {key}: {help}");
        }
    }
}
