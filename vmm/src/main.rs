//! The `vmm` command: parses the command line, runs the subcommand (`vmm::commands`) and
//! exits with its status: 0 pass, 1 the guest's verdict was fail, 2 the run could not be
//! done (bad input, missing tools, VMM errors).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = vmm::cli::Cli::parse();
    vmm::commands::init_logging(vmm::commands::verbose(&cli));
    match vmm::commands::dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vmm: error: {e}");
            ExitCode::from(2)
        }
    }
}
