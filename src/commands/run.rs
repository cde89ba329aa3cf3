//! `agentry run`: the configured questions (or this shard's share), a report, a summary.

use std::process::ExitCode;

use super::batch::{Mode, run_batch};
use super::{CliError, Signals, process_env, settings};
use crate::batch::{self, shard::Shard};
use crate::cli::RunArgs;
use crate::config::Overrides;

pub(super) async fn run(args: RunArgs, signals: &Signals) -> Result<ExitCode, CliError> {
    let overrides = Overrides { concurrency: args.concurrency, report: args.report.clone(), ..Overrides::default() };
    let settings = settings(&args.common, overrides)?;
    let shard = match args.shard {
        Some(shard) => Some(shard),
        None => Shard::from_env(&|name| std::env::var(name).ok()).map_err(CliError::Usage)?,
    };
    let plan = batch::plan(&settings.batch, args.force, shard)?;
    if let Some(shard) = shard {
        tracing::info!(%shard, questions = plan.len(), "answering this shard's share");
    }
    run_batch(settings, plan, process_env(), Mode::Run { shard }, signals).await
}
