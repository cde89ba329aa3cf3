//! What `run`, `ask` and `demo` share: start the actors, answer the planned questions, write
//! the report, print the outcome.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{CliError, check_writable, exit};
use crate::actors::mcp_session::ServerTools;
use crate::actors::secret_keeper::EnvLookup;
use crate::app::Runtime;
use crate::batch::shard::Shard;
use crate::batch::{self, Planned, RunOptions};
use crate::config::Settings;

/// How the outcome is shown.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// A batch (or this shard's share of one): summary table and report.
    Run { shard: Option<Shard> },
    /// One question now: the answer, no report file.
    Ask,
    /// The demo: labelled as such everywhere.
    Demo,
}

/// Starts the actors, answers `planned`, writes the report, prints the outcome.
pub(super) async fn run_batch(
    settings: Settings,
    planned: Vec<Planned>,
    env: EnvLookup,
    mode: Mode,
) -> Result<ExitCode, CliError> {
    let shard = match mode {
        Mode::Run { shard } => shard,
        Mode::Ask | Mode::Demo => None,
    };
    let report_path = match shard {
        // Shards may share the output directory: each writes its own report.
        Some(shard) => settings.batch.report_path().with_file_name(shard.report_name()),
        None => settings.batch.report_path(),
    };
    let options = RunOptions {
        concurrency: settings.batch.concurrency,
        question_timeout: settings.agent.question_timeout,
        shutdown_grace: settings.batch.shutdown_grace,
        progress: true,
        demo: mode == Mode::Demo,
        output_dir: settings.batch.output_dir.clone(),
    };
    // Refuse a directory we cannot write before any question is asked, not after.
    check_writable(&settings.batch.output_dir)?;
    check_writable(&report_path.parent().map(PathBuf::from).unwrap_or_default())?;
    let connect_timeout = settings.mcp.connect_timeout;
    let runtime = Runtime::start(settings, env).await?;
    tracing::info!(route = %runtime.describe_route(), "starting");
    for (server, state) in runtime.tools_settled(connect_timeout).await {
        if let ServerTools::Failed { cause, .. } = state {
            tracing::warn!(%server, %cause, "MCP server not available yet; its tools are missing until it connects");
        }
    }
    let shutdown = CancellationToken::new();
    let signals = tokio::spawn(watch_signals(shutdown.clone()));
    let label = if mode == Mode::Demo { " (demo)" } else { "" };
    let mut report = batch::run(&runtime.agent_context(label), planned, &options, &shutdown).await;
    signals.abort();
    // Every research file is on disk before the report says so.
    report.apply_writes(&runtime.writer.drain(Duration::from_secs(120)).await);
    report.shard = shard.map(|s| s.to_string());
    report.secrets = runtime.secret_summary();
    report.restarts = runtime.restarts();
    runtime.shutdown().await;

    if mode != Mode::Ask
        && let Err(error) = report.write(&report_path)
    {
        eprintln!("error: cannot write the report {}: {error}", report_path.display());
    }
    let single = report.questions.len() == 1 && report.totals.skipped == 0;
    if single || mode == Mode::Ask {
        let row = &report.questions[0];
        match (&row.transcript.answer, &row.error) {
            (Some(answer), None) => {
                println!("{answer}");
                if let Some(file) = &row.transcript.file {
                    println!("\nResearch saved to {}", file.display());
                }
            }
            _ => print!("{}", report.summary()),
        }
    } else {
        if mode == Mode::Demo {
            println!("agentry DEMO (scripted model, embedded corpus):");
        }
        print!("{}", report.summary());
    }
    if mode != Mode::Ask {
        println!("Report: {}", report_path.display());
    }
    let interrupted = i32::from(shutdown.is_cancelled());
    Ok(exit(interrupted.max(report.exit_code())))
}

/// Ctrl-C or SIGTERM: stop starting questions (the batch lets in-flight ones finish within
/// the grace period). A second signal exits at once.
async fn watch_signals(shutdown: CancellationToken) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let next = async {
        match term.as_mut() {
            Some(term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {},
                    _ = term.recv() => {},
                }
            }
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    next.await;
    eprintln!("shutting down: no new questions; waiting for those in flight (Ctrl-C again to exit now)");
    shutdown.cancel();
    let _ = tokio::signal::ctrl_c().await;
    eprintln!("exiting now");
    std::process::exit(130);
}
