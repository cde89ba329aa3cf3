//! `agentry ask "…"`: one question now, the answer printed.

use std::process::ExitCode;

use super::batch::{Mode, run_batch};
use super::{CliError, Signals, process_env, settings};
use crate::batch;
use crate::cli::CommonArgs;
use crate::config::Overrides;

pub(super) async fn ask(question: String, common: CommonArgs, signals: &Signals) -> Result<ExitCode, CliError> {
    let overrides = Overrides { questions: Some(vec![question]), ..Overrides::default() };
    let settings = settings(&common, overrides)?;
    let plan = batch::plan(&settings.batch, true, None)?;
    run_batch(settings, plan, process_env(), Mode::Ask, signals).await
}
