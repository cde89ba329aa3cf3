//! What `run`, `ask` and `demo` share: start the actors, answer the planned questions, write
//! the report, print the outcome.

use std::path::{Path, PathBuf};
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
    mut settings: Settings,
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
    // Refuse a directory we cannot write, or another process writes, before any question is
    // asked, not after. The lock is held until this function returns.
    check_writable(&settings.batch.output_dir)?;
    check_writable(&report_path.parent().map(PathBuf::from).unwrap_or_default())?;
    let _lock = lock_output_dir(&settings.batch.output_dir, shard)?;
    settings.batch.concurrency = fit_open_files(settings.batch.concurrency);
    let options = RunOptions {
        concurrency: settings.batch.concurrency,
        question_timeout: settings.agent.question_timeout,
        shutdown_grace: settings.batch.shutdown_grace,
        progress: true,
        demo: mode == Mode::Demo,
        output_dir: settings.batch.output_dir.clone(),
    };
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

    // The report exists only where it was written; a report that could not be is a failure.
    let written = match mode {
        Mode::Ask => None,
        Mode::Run { .. } | Mode::Demo => match report.write(&report_path) {
            Ok(()) => Some(&report_path),
            Err(error) => {
                eprintln!("error: cannot write the report {}: {error}", report_path.display());
                None
            }
        },
    };
    let report_failed = mode != Mode::Ask && written.is_none();
    let single = report.questions.len() == 1 && report.totals.skipped == 0;
    if single || mode == Mode::Ask {
        let row = &report.questions[0];
        match (&row.transcript.answer, &row.error) {
            (Some(answer), None) => {
                outln!("{answer}");
                if let Some(file) = &row.transcript.file {
                    outln!("\nResearch saved to {}", file.display());
                }
            }
            _ => out!("{}", report.summary()),
        }
    } else {
        if mode == Mode::Demo {
            outln!("agentry DEMO (scripted model, embedded corpus):");
        }
        out!("{}", report.summary());
    }
    if let Some(path) = written {
        outln!("Report: {}", path.display());
    }
    let unfinished = i32::from(shutdown.is_cancelled() || report_failed);
    Ok(exit(unfinished.max(report.exit_code())))
}

/// Takes the output directory's lock (`.agentry.lock`, or one per shard: shards share a
/// directory): an exclusive `flock`, so it dies with its process and a killed run never leaves a
/// stale lock. The file records the holder's pid for the next one's error message.
fn lock_output_dir(dir: &Path, shard: Option<Shard>) -> Result<std::fs::File, CliError> {
    use std::io::{Read, Seek, Write};
    let name = match shard {
        Some(shard) => format!(".agentry-shard-{}-of-{}.lock", shard.index, shard.count),
        None => ".agentry.lock".to_owned(),
    };
    let path = dir.join(name);
    let failed = |source| CliError::Lock { path: path.clone(), source };
    let mut file =
        std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(failed)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Err(CliError::Busy { dir: dir.to_path_buf(), holder: holder.trim().parse().ok() });
        }
        Err(std::fs::TryLockError::Error(error)) => return Err(failed(error)),
    }
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", std::process::id()))
        .map_err(failed)?;
    Ok(file)
}

/// File descriptors one question in flight may hold: its model connection, an MCP request, and
/// room for its research file's write.
const FILES_PER_QUESTION: u64 = 4;
/// File descriptors the process needs besides its questions (stdio, runtime, listeners, logs).
const FILES_RESERVED: u64 = 64;

/// Raises the open-file limit to what the system allows and clamps `concurrency` to what that
/// carries, saying so, instead of failing questions with "Too many open files".
fn fit_open_files(concurrency: usize) -> usize {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else { return concurrency };
    let limit = if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() { hard } else { soft };
    let fits = usize::try_from(limit.saturating_sub(FILES_RESERVED) / FILES_PER_QUESTION).unwrap_or(usize::MAX).max(1);
    if concurrency > fits {
        tracing::warn!(
            requested = concurrency,
            clamped_to = fits,
            open_file_limit = limit,
            "batch.concurrency is more than the open-file limit carries ({FILES_PER_QUESTION} files per question): \
             clamped; raise `ulimit -n` for more"
        );
        return fits;
    }
    concurrency
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
