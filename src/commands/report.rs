//! `agentry report merge` (one report from shard reports, rows in the original order) and
//! `agentry report show` (a report's summary table). Both read a `report.json` or a journal,
//! `report.jsonl` (what a killed run leaves).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::{CliError, exit};
use crate::batch::{self, Report};

pub(super) fn merge(inputs: &[PathBuf], output: &Path) -> Result<ExitCode, CliError> {
    let reports = inputs.iter().map(|path| read(path)).collect::<Result<Vec<_>, _>>()?;
    let merged = batch::merge(reports);
    merged.write(output).map_err(|source| CliError::Write { path: output.to_path_buf(), source })?;
    out!("{}", merged.summary());
    outln!("Merged {} reports into {}", inputs.len(), output.display());
    Ok(exit(merged.exit_code()))
}

/// Prints the summary of the report at `path` (by default `definitions/report.json`, or the
/// journal beside it when a killed run left no report); the exit code is the report's.
pub(super) fn show(path: Option<&Path>) -> Result<ExitCode, CliError> {
    let path = match path {
        Some(path) => path.to_path_buf(),
        None => {
            let report = PathBuf::from("definitions/report.json");
            let journal = report.with_extension("jsonl");
            if !report.exists() && journal.exists() { journal } else { report }
        }
    };
    let report = read(&path)?;
    out!("{}", report.summary());
    Ok(exit(report.exit_code()))
}

/// A report, or a journal (`.jsonl`) read as one.
fn read(path: &Path) -> Result<Report, CliError> {
    if path.extension().is_some_and(|extension| extension == "jsonl") {
        return Report::from_journal(path).map_err(|source| CliError::NotAJournal { source });
    }
    let text = std::fs::read_to_string(path).map_err(|source| CliError::Read { path: path.to_path_buf(), source })?;
    serde_json::from_str(&text).map_err(|source| CliError::NotAReport { path: path.to_path_buf(), source })
}
