//! `agentry completions SHELL` and `agentry man`: generated from the clap types, so they always
//! match the binary that prints them.
//!
//! The man page is a command, not a build step: generating it in `build.rs` would need the CLI
//! types outside the crate (they use the crate's own types) and would leave the page in
//! `target/`, where no installer looks; `agentry man > agentry.1` (or `agentry man --dir DIR`
//! for every page) gives packagers and users the pages of exactly the binary they have.

use std::path::Path;
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

/// Prints agentry(1) (roff), or with `dir` writes it and a page per subcommand there
/// (`agentry-run.1`, `agentry-config-check.1`, …) and lists the files written.
pub(super) fn man(dir: Option<&Path>) -> Result<ExitCode, CliError> {
    let mut command = Cli::command().disable_help_subcommand(true);
    command.build();
    let Some(dir) = dir else {
        let mut page = Vec::new();
        clap_mangen::Man::new(command)
            .render(&mut page)
            .map_err(|source| CliError::Write { path: "agentry.1".into(), source })?;
        out!("{}", String::from_utf8_lossy(&page));
        return Ok(ExitCode::SUCCESS);
    };
    std::fs::create_dir_all(dir).map_err(|source| CliError::NotWritable { path: dir.to_path_buf(), source })?;
    let mut pages = vec![command];
    while let Some(page) = pages.pop() {
        pages.extend(page.get_subcommands().filter(|sub| !sub.is_hide_set()).cloned());
        let man = clap_mangen::Man::new(page);
        let path = dir.join(man.get_filename());
        man.generate_to(dir).map_err(|source| CliError::Write { path: path.clone(), source })?;
        outln!("{}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}
