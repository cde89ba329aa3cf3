//! `agentry doctor`: every service the settings name, contacted as a run would (see
//! [`crate::doctor`]); one line per check, or `--json`. Exit 0 when no check failed, 1 when one
//! did, 2 when the settings themselves are wrong.

use std::process::ExitCode;

use super::{CliError, EXIT_FAILED, process_env, settings};
use crate::cli::DoctorArgs;
use crate::config::Overrides;
use crate::doctor::{self, Findings};

pub(super) async fn doctor(args: DoctorArgs) -> Result<ExitCode, CliError> {
    let settings = settings(&args.common, Overrides::default())?;
    let findings = doctor::examine(&settings, process_env(), args.timeout).await;
    if args.json {
        outln!("{}", findings.to_json());
    } else {
        out!("{}", findings.render());
    }
    Ok(exit_code(&findings))
}

/// 0 when no check failed, else 1.
pub(super) fn exit_code(findings: &Findings) -> ExitCode {
    if findings.ok() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_FAILED) }
}
