//! `agentry completions SHELL` and `agentry man`: generated from the clap types, so they always
//! match the binary that prints them.
//!
//! The man page is a command, not a build step: generating it in `build.rs` would need the CLI
//! types outside the crate (they use the crate's own types) and would leave the page in
//! `target/`, where no installer looks; `agentry man > agentry.1` gives packagers and users
//! the page of exactly the binary they have.

use std::process::ExitCode;

use clap::CommandFactory;

use super::CliError;
use crate::cli::Cli;

/// Prints the completion script for `shell`.
pub(super) fn completions(shell: clap_complete::Shell) -> Result<ExitCode, CliError> {
    let mut command = Cli::command();
    let mut script = Vec::new();
    // Into memory first: clap_complete panics on a failed write, and a closed pipe is not a
    // failure here (see `write_stdout`).
    clap_complete::generate(shell, &mut command, "agentry", &mut script);
    out!("{}", String::from_utf8_lossy(&script));
    Ok(ExitCode::SUCCESS)
}

/// Prints the man page (roff): the global options and the list of subcommands (each
/// subcommand's own options: `agentry help SUBCOMMAND`).
pub(super) fn man() -> Result<ExitCode, CliError> {
    let mut page = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut page)
        .map_err(|source| CliError::Write { path: "<man page>".into(), source })?;
    out!("{}", String::from_utf8_lossy(&page));
    Ok(ExitCode::SUCCESS)
}
