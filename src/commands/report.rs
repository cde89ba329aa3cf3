//! `agentry report merge`: one report from shard reports, rows in the original order.

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

fn read(path: &Path) -> Result<Report, CliError> {
    let text = std::fs::read_to_string(path).map_err(|source| CliError::Read { path: path.to_path_buf(), source })?;
    serde_json::from_str(&text).map_err(|source| CliError::NotAReport { path: path.to_path_buf(), source })
}
