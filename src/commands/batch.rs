//! What `run`, `ask` and `demo` share: start the actors, answer the planned questions, write
//! the report, print the outcome.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::echo::AnswerPrinter;
use super::signals::Phase;
use super::{CliError, Signals, check_writable, exit};
use crate::actors::mcp_session::ServerTools;
use crate::actors::secret_keeper::EnvLookup;
use crate::app::Runtime;
use crate::batch::budget::{Budget, Prices};
use crate::batch::journal::Journal;
use crate::batch::shard::Shard;
use crate::batch::{self, Plan, RunOptions};
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

/// Starts the actors, answers `plan`, writes the report, prints the outcome.
///
/// Signals (see `signals`): the first one stops the start (every question `interrupted`), or
/// stops starting questions and gives those in flight `batch.shutdown_grace`, or, after the
/// batch, leaves the actors [`STOP_AFTER_SIGNAL`] to stop; a second one writes the report from
/// the rows as they stand and exits at once.
pub(super) async fn run_batch(
    mut settings: Settings,
    plan: Plan,
    env: EnvLookup,
    mode: Mode,
    signals: &Signals,
) -> Result<ExitCode, CliError> {
    // Before anything connects: from here a first signal stops the batch in order.
    let shutdown = signals.graceful();
    signals.enter(Phase::Starting);
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
    if let Some(shard) = shard {
        // Configured rate limits are the account's: each shard paces itself to its share.
        // (Limits read from headers need no division: they say what the account has left.)
        let model = &mut settings.model;
        model.cloud.rate_limit = model.cloud.rate_limit.shard(shard.count);
        model.local.rate_limit = model.local.rate_limit.shard(shard.count);
    }
    let options = RunOptions {
        concurrency: settings.batch.concurrency,
        question_timeout: settings.agent.question_timeout,
        // Ctrl-C on `ask` is the user dropping the answer: it stops at once.
        shutdown_grace: if mode == Mode::Ask { Duration::ZERO } else { settings.batch.shutdown_grace },
        // -q: errors only, on stderr.
        progress: !crate::telemetry::quiet(),
        demo: mode == Mode::Demo,
        output_dir: settings.batch.output_dir.clone(),
    };
    let connect_timeout = settings.mcp.connect_timeout;
    let journal_path = settings.batch.output_dir.join(match shard {
        Some(shard) => shard.journal_name(),
        None => JOURNAL.to_owned(),
    });
    // One question to answer now: its answer is printed as the model writes it.
    let one_question = plan.len() == 1 && plan.answered_before() == 0;
    let mut rows = batch::Rows::new(plan, &settings.agent.name, &options).with_budget(budget(&settings, shard));
    if mode != Mode::Ask {
        let journal =
            Journal::create(&journal_path).map_err(|source| CliError::Write { path: journal_path.clone(), source })?;
        rows = rows.journaled(journal);
    }
    let printer = AnswerPrinter::default();
    if mode == Mode::Ask || one_question {
        rows = rows.showing(printer.echo());
    }
    let runtime = Runtime::start(settings, env).await?;
    if mode != Mode::Ask {
        signals.set_last_words(report_what_is_known(rows.clone(), report_path.clone(), journal_path.clone(), shard));
    }
    tracing::info!(route = %runtime.describe_route(), "starting");
    tokio::select! {
        settled = runtime.tools_settled(connect_timeout) => {
            for (server, state) in settled {
                if let ServerTools::Failed { cause, .. } = state {
                    tracing::warn!(%server, %cause, "MCP server not available yet; its tools are missing until it connects");
                }
            }
        }
        // The batch then marks every question interrupted, not started.
        () = shutdown.cancelled() => {}
    }
    signals.enter(Phase::Answering);
    let label = if mode == Mode::Demo { " (demo)" } else { "" };
    batch::run_recorded(&runtime.agent_context(label), &rows, &options, &shutdown).await;
    signals.enter(Phase::Finishing);
    // Each question's row waited for its own file; nothing should be left, but a write still
    // running ends before the report is written.
    let _ = runtime.writer.drain(Duration::from_secs(120)).await;
    let (mut report, single) = rows.finished();
    report.shard = shard.map(|s| s.to_string());
    report.secrets = runtime.secret_summary();
    report.restarts = runtime.restarts();

    // The report before the actors stop: it is what a stop cut short must not lose. It exists
    // only where it was written; a report that could not be is a failure.
    let written = match mode {
        Mode::Ask => None,
        Mode::Run { .. } | Mode::Demo => {
            match signals.instead_of_last_words(|| report.write_from_journal(&report_path, &journal_path, &rows.plan()))
            {
                Ok(()) => Some(&report_path),
                Err(error) => {
                    eprintln!("error: cannot write the report {}: {error}", report_path.display());
                    None
                }
            }
        }
    };
    stop(runtime, &shutdown).await;
    let report_failed = mode != Mode::Ask && written.is_none();
    let answered_alone = report.totals.questions == 1 && report.totals.skipped == 0;
    match single.filter(|_| answered_alone || mode == Mode::Ask) {
        Some(row) => match (&row.transcript.answer, &row.error) {
            (Some(answer), None) => {
                if !printer.printed_answer() {
                    outln!("{answer}");
                }
                if let Some(file) = &row.transcript.file {
                    outln!("\nResearch saved to {}", file.display());
                }
                if let Some(warning) = &row.warning {
                    eprintln!("warning: {warning}");
                }
            }
            _ => out!("{}", report.summary_of(std::iter::once(row.clone()))),
        },
        None => {
            if mode == Mode::Demo {
                outln!("agentry DEMO (scripted model, embedded corpus):");
            }
            let plan = rows.plan();
            let order = plan.questions().map(|question| question.index);
            let rows = batch::journal::rows_in_order_of(&journal_path, order).map_err(|error| error.to_string());
            match rows {
                Ok(rows) => out!("{}", report.summary_of(rows.map_while(Result::ok))),
                Err(error) => eprintln!("error: {error}"),
            }
        }
    }
    if let Some(path) = written {
        outln!("Report: {}", path.display());
    }
    if signals.received() {
        tracing::info!("stopped by a signal; every question the report does not call answered can be asked again");
    }
    // A signal changes nothing here: the report says what was answered (interrupted questions
    // make it 1).
    Ok(exit(i32::from(report_failed).max(report.exit_code())))
}

/// The batch's budget: `[batch.budget]` (this shard's share of it), priced by
/// `model.{cloud,local}.price`.
fn budget(settings: &Settings, shard: Option<Shard>) -> Budget {
    let mut limits = settings.batch.budget;
    if let Some(shard) = shard {
        // Each shard answers about 1/n of the questions: it may spend 1/n of the budget.
        let count = u64::from(shard.count.max(1));
        limits.max_tokens = match limits.max_tokens {
            0 => 0,
            tokens => (tokens / count).max(1),
        };
        limits.max_cost /= count as f64;
    }
    let prices = Prices { cloud: settings.model.cloud.price, local: settings.model.local.price };
    Budget::new(limits, prices, settings.model.max_tokens)
}

/// How long the actors have to stop (sessions closed, stdio servers ended) once a signal came:
/// with the default grace (7 s) the whole stop stays inside `docker stop`'s 10 s. Stdio
/// servers still running then are killed.
const STOP_AFTER_SIGNAL: Duration = Duration::from_secs(2);

/// Stops the actors: in their own time, or within [`STOP_AFTER_SIGNAL`] once a signal came.
async fn stop(runtime: Runtime, shutdown: &CancellationToken) {
    let hurry = async {
        shutdown.cancelled().await;
        tokio::time::sleep(STOP_AFTER_SIGNAL).await;
    };
    tokio::select! {
        () = runtime.shutdown() => {}
        () = hurry => {
            tracing::warn!(waited = ?STOP_AFTER_SIGNAL, "the actors did not stop in time after the signal; killing the stdio servers");
            crate::mcp::stdio::kill_all_groups();
        }
    }
}

/// The journal of a batch that is not sharded, in its output directory.
const JOURNAL: &str = "report.jsonl";

/// What a second signal writes before the process ends: a row for every question not finished
/// (those in flight with what they did so far), then the report from the journal (no secrets
/// or restart counts: there is no time to ask the actors).
fn report_what_is_known(
    rows: batch::Rows,
    path: PathBuf,
    journal: PathBuf,
    shard: Option<Shard>,
) -> impl FnOnce() + Send + 'static {
    move || {
        rows.snapshot("interrupted: the process was stopped by a second signal");
        let (mut report, _) = rows.finished();
        report.shard = shard.map(|s| s.to_string());
        match report.write_from_journal(&path, &journal, &rows.plan()) {
            Ok(()) => eprintln!("Report (what was known at the second signal): {}", path.display()),
            Err(error) => eprintln!("error: cannot write the report {}: {error}", path.display()),
        }
    }
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
