//! Running the host tools the builds need (apt, dpkg-deb, make, the compilers).

use std::process::Command;

use crate::{ImageError, Result};

/// Runs a command and returns its stdout; a failure carries stderr (or stdout).
pub(crate) fn run(cmd: &mut Command) -> Result<String> {
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
pub(crate) fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.trim_end().lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
