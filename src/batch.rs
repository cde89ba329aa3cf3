//! A batch: which questions, answered how many at once, and the report.
//!
//! - [`plan`] reads the questions (inline and from `questions_file`), drops (and counts)
//!   duplicates, and marks those already answered as skipped unless `force`. What is answered
//!   comes from the journals' rows and the files they name, opening only the research files no
//!   row names (see `answered`).
//! - [`run`] answers the rest with at most `concurrency` in flight. The question list is
//!   consumed as a stream, so only the questions in flight hold a conversation.
//! - On shutdown (Ctrl-C / SIGTERM) no new question starts; those in flight get
//!   `shutdown_grace` to finish, then are marked interrupted.
//! - [`Rows`] holds the questions in flight, shared with the batch: each question's transcript
//!   is written through a [`Recorder`] outside the question's future, so a question cut by its
//!   deadline or the shutdown keeps what it did, and a second signal can write every row
//!   before the batch ends ([`Rows::snapshot`]). A finished row goes to the journal
//!   (`report.jsonl`, [`journal`]) at once.
//! - The research file is the answer: a question's row is final once the research writer has
//!   settled its file; a question that saved and then failed or was cut is `ok` with a
//!   warning, also when the save's reply was lost with its turn.
//! - [`budget::Budget`] (`[batch.budget]`) is shared by the questions: once the next model
//!   call could exceed it, no question starts, those in flight stop after their current turn,
//!   and the rest are `skipped` with reason `budget` (a question that saved its research first
//!   is `ok` with a warning: the file is the answer). The report gives the spend per route.
//! - The [`Report`] is written atomically to `report.json` from the journal
//!   ([`Report::write_from_journal`]); [`Report::summary_of`] is the table printed on stdout.

pub mod budget;
pub mod journal;
pub mod plan;
pub mod shard;

pub use plan::{Plan, PlanError, Planned, plan};

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::actors::research_writer::{Settled, write_file_atomically, write_file_atomically_with};
use crate::agent::{self, AgentContext, Recorder, Transcript};
use crate::batch::budget::{Budget, BudgetReport};
use crate::deadline::Deadline;
use crate::llm::client::CallLog;
use crate::llm::stream::Echo;
use crate::research::SavedBy;

/// How a question ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Answered, research file written.
    Ok,
    /// Failed; see `error`.
    Failed,
    /// Answered by an earlier run.
    Skipped,
    /// Stopped by shutdown.
    Interrupted,
}

/// Why a question was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SkipReason {
    /// An earlier run answered it (its research file is in the output directory).
    Answered,
    /// The batch's budget ran out before it started, or before its next model call.
    Budget,
}

impl Status {
    /// The word the report, the progress lines and the metrics use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
            Self::Interrupted => "interrupted",
        }
    }
}

/// One row of the report: the question, how it ended, and its transcript (file, route, model,
/// turns, tool calls, tokens, retries) flattened into the same object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    /// Position in the whole question list (rows of merged shard reports sort by it).
    pub index: usize,
    /// The question.
    pub question: String,
    /// Its id.
    pub question_id: String,
    /// Outcome.
    pub status: Status,
    /// Why it was skipped (only for `skipped`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<SkipReason>,
    /// Seconds taken.
    pub duration_s: f64,
    /// Trace id (when traces are exported).
    pub trace_id: Option<String>,
    /// What went wrong.
    pub error: Option<String>,
    /// `error.type` label.
    pub error_type: Option<String>,
    /// What to do about the error, when agentry knows (a model not pulled, a server not
    /// running, a context too short).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// What went wrong after the question was answered (its research saved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    /// What the agent did.
    #[serde(flatten)]
    pub transcript: Transcript,
}

impl Row {
    pub(crate) fn empty(planned: &Planned, status: Status) -> Self {
        Row {
            index: planned.index,
            question: planned.question.clone(),
            question_id: planned.id.clone(),
            status,
            reason: (status == Status::Skipped).then_some(SkipReason::Answered),
            duration_s: 0.0,
            trace_id: None,
            error: None,
            error_type: None,
            hint: None,
            warning: None,
            transcript: Transcript { file: planned.done.clone(), ..Transcript::default() },
        }
    }
}

/// Totals over the rows.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Totals {
    /// Questions in the batch.
    pub questions: usize,
    /// Answered now.
    pub ok: usize,
    /// Failed.
    pub failed: usize,
    /// Skipped (answered before, or for the budget).
    pub skipped: usize,
    /// Of the skipped, those skipped for the budget.
    #[serde(default)]
    pub skipped_for_budget: usize,
    /// Interrupted.
    pub interrupted: usize,
    /// Questions dropped as repeats of an earlier one (not in `questions`).
    #[serde(default)]
    pub duplicates: usize,
    /// Input tokens.
    pub input_tokens: u64,
    /// Of the input tokens, those read from the provider's prompt cache.
    #[serde(default)]
    pub cached_input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// What the model calls cost (`model.{cloud,local}.price`).
    #[serde(default)]
    pub cost: f64,
    /// Tool calls.
    pub tool_calls: u64,
    /// Answered questions whose file agentry saved from the final answer: the model never
    /// called `save_research` (not researched).
    #[serde(default)]
    pub saved_by_runtime: usize,
    /// Of those, the ones whose model called no tool at all.
    #[serde(default)]
    pub saved_without_tools: usize,
    /// Model responses refused with 429, by the route of the question (as in its row).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub rate_limited: std::collections::BTreeMap<String, u64>,
    /// Wall time of the batch.
    pub duration_s: f64,
}

/// The batch report (`report.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// agentry version.
    pub agentry_version: String,
    /// This shard (`INDEX/COUNT`), when the batch was sharded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
    /// Whether this was `agentry demo` (scripted model, embedded corpus).
    pub demo: bool,
    /// When the batch started (UTC, RFC 3339).
    pub started_at: String,
    /// Agent name.
    pub agent: String,
    /// Where the research files are.
    pub output_dir: PathBuf,
    /// Totals.
    pub totals: Totals,
    /// Each secret's source and fingerprint (never its value) and rotations seen.
    #[serde(default)]
    pub secrets: Vec<crate::app::SecretRow>,
    /// Actor restarts during the batch, by actor (`mcp-session:gateway`, …).
    #[serde(default)]
    pub restarts: std::collections::BTreeMap<String, u64>,
    /// The budget and what the model calls spent, per route.
    #[serde(default)]
    pub budget: BudgetReport,
    /// One row per question, in the order given (when written from a journal, the journal's
    /// rows take their place).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub questions: Vec<Row>,
}

/// A report whose rows come from an iterator as they are written.
#[derive(Serialize)]
struct WithRows<'a, I: Iterator<Item = Row>> {
    #[serde(flatten)]
    head: &'a Report,
    #[serde(serialize_with = "rows_as_they_come")]
    questions: std::cell::RefCell<Option<I>>,
}

fn rows_as_they_come<I: Iterator<Item = Row>, S: serde::Serializer>(
    rows: &std::cell::RefCell<Option<I>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(rows.borrow_mut().take().into_iter().flatten())
}

impl Report {
    /// 0 when nothing failed, was interrupted or was skipped for the budget, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        let t = &self.totals;
        if t.failed + t.interrupted + t.skipped_for_budget == 0 { 0 } else { 1 }
    }

    /// Writes `report.json` atomically.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let mut json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        json.push(b'\n');
        write_file_atomically(path, &json)
    }

    /// Writes `report.json` atomically: this report (its totals those of the whole batch) with
    /// the rows of the journal at `journal` in the order of `plan`'s questions, streamed (never
    /// all in memory).
    pub fn write_from_journal(&self, path: &Path, journal: &Path, plan: &Plan) -> Result<(), String> {
        let order = plan.questions().map(|question| question.index);
        let rows = journal::rows_in_order_of(journal, order).map_err(|error| error.to_string())?;
        let failed = std::cell::RefCell::new(None);
        let rows = rows.map_while(|row| row.map_err(|error| *failed.borrow_mut() = Some(error.to_string())).ok());
        let report = WithRows { head: self, questions: std::cell::RefCell::new(Some(rows)) };
        write_file_atomically_with(path, |out| {
            serde_json::to_writer_pretty(&mut *out, &report).map_err(std::io::Error::other)?;
            out.write_all(b"\n")
        })
        .map_err(|error| error.to_string())?;
        failed.into_inner().map_or(Ok(()), Err)
    }

    /// A report made of a journal's rows (a killed run's `report.jsonl`, say): the rows in
    /// question order, their totals, the journal's directory as the output directory; what only
    /// the end of a run knows (start time, secrets, restarts, budget) is left empty.
    pub fn from_journal(path: &Path) -> Result<Self, journal::ReadError> {
        let questions = journal::rows_in_order(path)?.collect::<Result<Vec<Row>, _>>()?;
        Ok(Report {
            agentry_version: env!("CARGO_PKG_VERSION").to_owned(),
            shard: None,
            demo: false,
            started_at: String::new(),
            agent: String::new(),
            output_dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
            totals: totals(&questions, 0.0),
            secrets: Vec::new(),
            restarts: Default::default(),
            budget: BudgetReport::default(),
            questions,
        })
    }

    /// The short table for stdout.
    pub fn summary(&self) -> String {
        self.summary_of(self.questions.iter().cloned())
    }

    /// [`Self::summary`] with `rows` (in question order) for this report's rows. A batch of
    /// more than [`SUMMARY_ROWS`] questions shows only the rows not answered (the report has
    /// them all), at most that many.
    pub fn summary_of(&self, rows: impl Iterator<Item = Row>) -> String {
        use std::fmt::Write;
        let all = self.totals.questions <= SUMMARY_ROWS;
        // Each distinct hint once, under the table, however many rows share it.
        let (mut hints, mut shown) = (std::collections::BTreeSet::new(), Vec::new());
        for row in rows {
            if let Some(hint) = &row.hint {
                hints.insert(hint.clone());
            }
            let answered = matches!(row.status, Status::Ok) && row.transcript.saved_by != Some(SavedBy::Runtime);
            if shown.len() < SUMMARY_ROWS && (all || !answered && row.reason != Some(SkipReason::Answered)) {
                shown.push(row);
            }
        }
        let mut out = String::new();
        let width = shown.iter().map(|r| r.question.chars().count().min(48)).max().unwrap_or(8).max(8);
        if !shown.is_empty() {
            let _ = writeln!(
                out,
                "{:<9} {:<width$} {:>6} {:>5} {:>8}  file / error",
                "status", "question", "secs", "tools", "tokens"
            );
        }
        for row in &shown {
            let question: String = row.question.chars().take(48).collect();
            let status = row.status.as_str();
            let mut detail = match (&row.error, &row.transcript.file) {
                (Some(error), _) => error.chars().take(120).collect::<String>(),
                (None, Some(file)) => file.display().to_string(),
                _ => String::new(),
            };
            if row.status == Status::Ok && row.transcript.saved_by == Some(SavedBy::Runtime) {
                detail += match row.transcript.tool_calls {
                    0 => "  [saved by agentry: no tool called]",
                    _ => "  [saved by agentry: no save_research]",
                };
            }
            let _ = writeln!(
                out,
                "{status:<9} {question:<width$} {:>6.1} {:>5} {:>8}  {detail}",
                row.duration_s,
                row.transcript.tool_calls,
                row.transcript.input_tokens + row.transcript.output_tokens
            );
        }
        for hint in &hints {
            let _ = writeln!(out, "hint: {hint}");
        }
        let t = &self.totals;
        if !all && shown.is_empty() {
            let _ = writeln!(
                out,
                "(all {} questions were answered and researched; every row is in the report)",
                t.questions
            );
        } else if !all {
            let unanswered = t.failed + t.interrupted + t.skipped_for_budget + t.saved_by_runtime;
            let _ = writeln!(
                out,
                "({} of the {unanswered} questions not answered or not researched shown; every row is in the report)",
                shown.len()
            );
        }
        let for_budget = match t.skipped_for_budget {
            0 => String::new(),
            n => format!(" ({n} for the budget)"),
        };
        let duplicates = match t.duplicates {
            0 => String::new(),
            1 => " (1 duplicate dropped)".to_owned(),
            n => format!(" ({n} duplicates dropped)"),
        };
        let _ = writeln!(
            out,
            "{} questions{duplicates}: {} ok, {} failed, {} skipped{for_budget}, {} interrupted in {:.1}s; {} tokens in, {} out",
            t.questions, t.ok, t.failed, t.skipped, t.interrupted, t.duration_s, t.input_tokens, t.output_tokens
        );
        if t.saved_by_runtime > 0 {
            let why = match t.saved_without_tools {
                n if n == t.saved_by_runtime => "the model called no tool".to_owned(),
                0 => "the model never called save_research".to_owned(),
                n => format!("{n} without calling any tool, the rest without save_research"),
            };
            let _ = writeln!(
                out,
                "{} of {} answers were saved without research: {why} (marked `saved_by: runtime`; does the model call tools? `agentry doctor` checks)",
                t.saved_by_runtime, t.ok
            );
        }
        let budget = &self.budget;
        if budget.is_limited() || budget.spent.cost > 0.0 || budget.spent.cached_input_tokens > 0 {
            let _ = writeln!(out, "{}", budget_line(budget));
        }
        out
    }
}

/// Rows the summary shows at most (a larger batch shows only those not answered).
pub const SUMMARY_ROWS: usize = 50;

/// `spent 12345 tokens (1024 cached input), cost 0.0123 (cloud: …; local: …); budget: …`.
fn budget_line(budget: &BudgetReport) -> String {
    let spend = |s: &budget::Spend| {
        format!("{} tokens ({} cached input), cost {:.6}", s.tokens(), s.cached_input_tokens, s.cost)
    };
    let routes: Vec<String> = budget.by_route.iter().map(|(route, s)| format!("{route}: {}", spend(s))).collect();
    let mut line = format!("spent {}", spend(&budget.spent));
    if routes.len() > 1 {
        line += &format!(" ({})", routes.join("; "));
    }
    let mut limits = Vec::new();
    if budget.max_tokens > 0 {
        limits.push(format!("max_tokens {}", budget.max_tokens));
    }
    if budget.max_cost > 0.0 {
        limits.push(format!("max_cost {}", budget.max_cost));
    }
    line += &match limits.is_empty() {
        true => "; no budget".to_owned(),
        false => format!("; budget {}", limits.join(", ")),
    };
    if budget.exhausted.is_some() {
        line += ", exhausted";
    }
    line
}

/// Batch-wide knobs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Questions in flight at most.
    pub concurrency: usize,
    /// Deadline per question.
    pub question_timeout: Duration,
    /// Grace for in-flight questions at shutdown.
    pub shutdown_grace: Duration,
    /// Show the progress on stderr: a bar on a terminal, a line a question otherwise
    /// (`false`: nothing, as with `-q`).
    pub progress: bool,
    /// Demo label for the report.
    pub demo: bool,
    /// Output directory (for the report).
    pub output_dir: PathBuf,
}

/// Answers the planned questions; the report has one row per planned question (kept in
/// memory: for a library caller; the CLI writes them to a journal with [`Rows::journaled`]).
pub async fn run(context: &AgentContext, plan: Plan, options: &RunOptions, shutdown: &CancellationToken) -> Report {
    let rows = Rows::new(plan, &context.settings.name, options);
    run_recorded(context, &rows, options, shutdown).await;
    rows.report()
}

/// [`run`], putting each row in `rows` as it finishes (its journal, or memory) and keeping
/// what the questions in flight did so far, so a report can be written before the batch ends
/// ([`Rows::snapshot`]).
pub async fn run_recorded(context: &AgentContext, rows: &Rows, options: &RunOptions, shutdown: &CancellationToken) {
    // The questions are read again as the batch takes them: only those in flight are held.
    let plan = rows.plan();
    let progress = Progress::new(plan.len() as u64, options.progress);
    let budget = rows.budget();
    // The rows of the questions answered before are written beside the batch, not before it:
    // a rerun's first question does not wait for a hundred thousand of them.
    let skipping = {
        let (rows, plan, progress) = (rows.clone(), plan.clone(), progress.clone());
        tokio::task::spawn_blocking(move || {
            for item in plan.questions().filter(|item| item.done.is_some()) {
                let row = Row::empty(&item, Status::Skipped);
                record_question(Status::Skipped);
                progress.finished(&row);
                rows.finish(item.index, row);
            }
        })
    };
    let work = plan.questions().filter(|item| item.done.is_none());
    let budget = &budget;
    let mut answering = futures::stream::iter(work)
        .map(|item| async move {
            let index = item.index;
            let ended = if shutdown.is_cancelled() {
                record_question(Status::Interrupted);
                Err(not_started(&item))
            } else if let Some(why) = budget.exhausted() {
                record_question(Status::Skipped);
                Err(skipped_for_budget(&item, why))
            } else {
                let (transcript, log) = rows.start(index, &item);
                Ok(answer_one(context, item, options, shutdown, &transcript, &log, budget).await)
            };
            (index, ended)
        })
        .buffer_unordered(options.concurrency.max(1));
    // Questions whose rows wait for their files, outside the batch's places.
    let mut settling = futures::stream::FuturesUnordered::new();
    let finish = |index: usize, row: Row| {
        progress.finished_paced(&row, context.model.pacing());
        rows.finish(index, row);
    };
    // At most `concurrency` questions wait for their files as well: when the disk is slower
    // than the model, the batch waits for it instead of piling up finished conversations.
    let waiting_at_most = options.concurrency.max(1);
    loop {
        tokio::select! {
            Some((index, ended)) = answering.next(), if settling.len() < waiting_at_most => match ended {
                Ok(asked) => settling.push(async move { (index, settle_one(context, asked).await) }),
                Err(row) => finish(index, row),
            },
            Some((index, row)) = settling.next(), if !settling.is_empty() => finish(index, row),
            else => break,
        }
    }
    if let Err(error) = skipping.await {
        tracing::error!(%error, "writing the rows of the questions answered before failed");
    }
    progress.done();
}

/// The batch's rows, shared between the batch and whoever must write the report before it
/// ends (a second signal). Only the questions in flight are held (with the transcript their
/// agent writes); a finished row goes to the journal (`report.jsonl`) at once and is counted
/// in the totals, so memory does not grow with the number of questions.
#[derive(Clone)]
pub struct Rows(Arc<Mutex<Board>>);

struct Board {
    /// The report without its rows; its totals are those of the rows finished so far.
    head: Report,
    started: std::time::Instant,
    /// What the batch may spend and has spent.
    budget: Budget,
    /// Where the answers are shown as they are written (a single question's run).
    echo: Option<Echo>,
    /// The questions, for the rows of those not finished at a second signal.
    plan: Arc<Plan>,
    /// By index: its row is in the sink (a bit a question).
    finished: bit_set::BitSet,
    running: std::collections::HashMap<usize, Running>,
    sink: Sink,
    /// The row of a one-question batch, kept too: its answer is printed.
    single: Option<Row>,
}

/// A question in flight: its row so far and what its agent did.
struct Running {
    row: Row,
    transcript: Recorder,
    log: Arc<CallLog>,
    started: std::time::Instant,
}

/// Where finished rows go.
enum Sink {
    /// Kept (a library caller's batch).
    Memory(Vec<Row>),
    /// Appended to `report.jsonl`.
    Journal(journal::Journal),
}

impl Rows {
    /// The rows of `plan`, none finished yet, kept in memory.
    pub fn new(plan: Plan, agent: &str, options: &RunOptions) -> Self {
        let count = plan.len();
        let head = Report {
            agentry_version: env!("CARGO_PKG_VERSION").to_owned(),
            shard: None,
            demo: options.demo,
            started_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            agent: agent.to_owned(),
            output_dir: options.output_dir.clone(),
            totals: Totals { questions: count, duplicates: plan.duplicates(), ..Totals::default() },
            secrets: Vec::new(),
            restarts: Default::default(),
            budget: BudgetReport::default(),
            questions: Vec::new(),
        };
        let board = Board {
            head,
            started: std::time::Instant::now(),
            budget: Budget::default(),
            echo: None,
            plan: Arc::new(plan),
            finished: bit_set::BitSet::new(),
            running: Default::default(),
            sink: Sink::Memory(Vec::new()),
            single: None,
        };
        Self(Arc::new(Mutex::new(board)))
    }

    /// The same rows, each appended to `journal` as it finishes instead of kept.
    pub fn journaled(self, journal: journal::Journal) -> Self {
        self.board().sink = Sink::Journal(journal);
        self
    }

    /// The same rows, the batch held to `budget` (without one, spend is counted at no price).
    pub fn with_budget(self, budget: Budget) -> Self {
        self.board().budget = budget;
        self
    }

    /// The same rows, the answers shown to `echo` as they are written (`agentry ask`).
    pub fn showing(self, echo: Echo) -> Self {
        self.board().echo = Some(echo);
        self
    }

    fn budget(&self) -> Budget {
        self.board().budget.clone()
    }

    /// The questions.
    pub fn plan(&self) -> Arc<Plan> {
        self.board().plan.clone()
    }

    fn board(&self) -> std::sync::MutexGuard<'_, Board> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks question `index` in flight; its agent writes to the transcript and the log returned.
    fn start(&self, index: usize, item: &Planned) -> (Recorder, Arc<CallLog>) {
        let mut board = self.board();
        let log = match &board.echo {
            Some(echo) => CallLog::showing(echo.clone()),
            None => CallLog::default(),
        };
        let (transcript, log) = (Recorder::default(), Arc::new(log));
        let row = Row { error: None, ..not_started(item) };
        let running =
            Running { row, transcript: transcript.clone(), log: log.clone(), started: std::time::Instant::now() };
        board.running.insert(index, running);
        (transcript, log)
    }

    /// Question `index` ended with `row`: counted, and written to the sink.
    fn finish(&self, index: usize, row: Row) {
        let mut board = self.board();
        board.running.remove(&index);
        // One row per question: a question that ends after a second signal wrote its row
        // keeps that row.
        if !board.finished.insert(index) {
            return;
        }
        board.head.totals.add(&row);
        if board.plan.len() == 1 {
            board.single = Some(row.clone());
        }
        match &mut board.sink {
            Sink::Memory(rows) => rows.push(row),
            Sink::Journal(journal) => journal.append(&row),
        }
    }

    /// The rows kept in memory, as a report (a library caller's batch).
    fn report(&self) -> Report {
        let mut board = self.board();
        let mut report = board.head.clone();
        report.totals.duration_s = board.started.elapsed().as_secs_f64();
        report.budget = board.budget.report();
        if let Sink::Memory(rows) = &mut board.sink {
            report.questions = std::mem::take(rows);
            report.questions.sort_by_key(|row| row.index);
        }
        report
    }

    /// The report of a finished batch without its rows (they are in the journal), its totals
    /// those of every row, and the one row of a one-question batch.
    pub fn finished(&self) -> (Report, Option<Row>) {
        let mut board = self.board();
        let mut head = board.head.clone();
        head.totals.duration_s = board.started.elapsed().as_secs_f64();
        head.budget = board.budget.report();
        if let Sink::Journal(journal) = &mut board.sink
            && let Err(error) = journal.finish()
        {
            tracing::error!(%error, "the report journal is incomplete");
        }
        (head, board.single.take())
    }

    /// Writes a row for every question not finished yet: those in flight `interrupted` with
    /// what they did so far (`ok` with a warning when their research was saved: the file is
    /// the answer), with `why` as their error; the rest `interrupted`, not started. Then every
    /// question has its row in the sink.
    pub fn snapshot(&self, why: &str) {
        let running: Vec<(usize, Row)> = {
            let board = self.board();
            board
                .running
                .iter()
                .map(|(index, running)| {
                    let mut row = running.row.clone();
                    row.duration_s = running.started.elapsed().as_secs_f64();
                    row.transcript = running.transcript.snapshot();
                    row.transcript.retries = running.log.retries();
                    row.transcript.rate_limited = running.log.rate_limited();
                    match row.transcript.file {
                        Some(_) => answered_by_file(&mut row, why),
                        None => row.error = Some(why.to_owned()),
                    }
                    (*index, row)
                })
                .collect()
        };
        for (index, row) in running {
            self.finish(index, row);
        }
        let plan = self.plan();
        for item in plan.questions() {
            if !self.board().finished.contains(item.index) {
                // Answered before (its row not written yet): skipped, not interrupted.
                let row = if item.done.is_some() { Row::empty(&item, Status::Skipped) } else { not_started(&item) };
                self.finish(item.index, row);
            }
        }
    }
}

/// A question the batch never started (it was shutting down).
fn not_started(item: &Planned) -> Row {
    let mut row = Row::empty(item, Status::Interrupted);
    row.error = Some(NOT_STARTED.into());
    row
}

/// The error of a question never started.
const NOT_STARTED: &str = "not started: shutting down";

/// A question not started because the budget ran out (`why`).
fn skipped_for_budget(item: &Planned, why: String) -> Row {
    let mut row = Row::empty(item, Status::Skipped);
    row.reason = Some(SkipReason::Budget);
    row.error_type = Some("budget".into());
    row.error = Some(format!("not started: {why}"));
    row
}

/// The research file is the answer: a question that saved its research and then ended with
/// `error` is answered, with the error as a warning.
fn answered_by_file(row: &mut Row, error: &str) {
    row.status = Status::Ok;
    row.reason = None;
    row.error = None;
    row.error_type = None;
    row.warning = Some(format!("answered by the research saved before this: {error}"));
}

/// What the research writer says of a question's file, on its row: a write that failed makes
/// the question failed after all; a file that landed (in a turn cut short, say, so the agent
/// never heard back) answers it; a file another process's name pushed aside is where it is.
fn settle(row: &mut Row, settled: Settled) {
    match settled {
        Settled { failed: Some(error), .. } => {
            row.status = Status::Failed;
            row.reason = None;
            row.transcript.file = None;
            row.error_type = Some("save_failed".into());
            row.error = Some(error);
        }
        Settled { file: Some(file), .. } => {
            if matches!(row.status, Status::Failed | Status::Interrupted) {
                let error = row.error.take().unwrap_or_else(|| row.status.as_str().to_owned());
                answered_by_file(row, &error);
            }
            row.transcript.file = Some(file);
        }
        Settled { file: None, failed: None } => {}
    }
}

/// Combines shard reports: rows by question (a later `ok` wins over a failure), in the
/// original question order, totals recomputed.
pub fn merge(reports: Vec<Report>) -> Report {
    let mut rows: std::collections::BTreeMap<String, Row> = std::collections::BTreeMap::new();
    let mut secrets: Vec<crate::app::SecretRow> = Vec::new();
    let mut restarts = std::collections::BTreeMap::new();
    let mut budget = BudgetReport::default();
    let mut duration_s: f64 = 0.0;
    let mut started_at = String::new();
    let (mut agent, mut output_dir, mut demo) = (String::new(), PathBuf::new(), false);
    for report in reports {
        duration_s = duration_s.max(report.totals.duration_s);
        if started_at.is_empty() || report.started_at < started_at {
            started_at = report.started_at;
        }
        (agent, output_dir, demo) = (report.agent, report.output_dir, demo || report.demo);
        for row in report.questions {
            let keep = rows.get(&row.question_id).is_none_or(|old| old.status != Status::Ok);
            if keep {
                rows.insert(row.question_id.clone(), row);
            }
        }
        for secret in report.secrets {
            if !secrets.iter().any(|s| s.name == secret.name && s.fingerprint == secret.fingerprint) {
                secrets.push(secret);
            }
        }
        for (actor, count) in report.restarts {
            *restarts.entry(actor).or_insert(0) += count;
        }
        budget.merge(&report.budget);
    }
    let mut questions: Vec<Row> = rows.into_values().collect();
    questions.sort_by_key(|r| r.index);
    let mut report = Report {
        agentry_version: env!("CARGO_PKG_VERSION").to_owned(),
        shard: None,
        demo,
        started_at,
        agent,
        output_dir,
        totals: Totals::default(),
        secrets,
        restarts,
        budget,
        questions,
    };
    report.totals = totals(&report.questions, duration_s);
    report
}

fn totals(rows: &[Row], duration_s: f64) -> Totals {
    let mut totals = Totals { questions: rows.len(), duration_s, ..Totals::default() };
    for row in rows {
        totals.add(row);
    }
    totals
}

impl Totals {
    /// Counts a finished row (not in `questions`: that is the batch's size).
    fn add(&mut self, row: &Row) {
        match row.status {
            Status::Ok => self.ok += 1,
            Status::Failed => self.failed += 1,
            Status::Skipped => self.skipped += 1,
            Status::Interrupted => self.interrupted += 1,
        }
        if row.reason == Some(SkipReason::Budget) {
            self.skipped_for_budget += 1;
        }
        self.input_tokens += row.transcript.input_tokens;
        self.cached_input_tokens += row.transcript.cached_input_tokens;
        self.output_tokens += row.transcript.output_tokens;
        self.cost += row.transcript.cost;
        self.tool_calls += u64::from(row.transcript.tool_calls);
        if row.status == Status::Ok && row.transcript.saved_by == Some(SavedBy::Runtime) {
            self.saved_by_runtime += 1;
            self.saved_without_tools += usize::from(row.transcript.tool_calls == 0);
        }
        if row.transcript.rate_limited > 0 {
            let route = row.transcript.route.clone().unwrap_or_else(|| "unknown".into());
            *self.rate_limited.entry(route).or_default() += u64::from(row.transcript.rate_limited);
        }
    }
}

async fn answer_one(
    context: &AgentContext,
    item: Planned,
    options: &RunOptions,
    shutdown: &CancellationToken,
    transcript: &Recorder,
    log: &Arc<CallLog>,
    budget: &Budget,
) -> Asked {
    let agent_name = &context.settings.name;
    // One trace per question: the root has no parent, whatever span the batch runs in.
    let span = tracing::info_span!(
        parent: None,
        "invoke_agent",
        otel.name = %format!("invoke_agent {agent_name}"),
        otel.kind = "internal",
        gen_ai.operation.name = "invoke_agent",
        gen_ai.provider.name = "openai",
        gen_ai.agent.name = %agent_name,
        gen_ai.conversation.id = %item.id,
        question.id = %item.id,
        trace_id = tracing::field::Empty,
        error.type = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    let trace_id = crate::telemetry::trace_id(&span);
    if let Some(trace_id) = &trace_id {
        span.record("trace_id", trace_id.as_str());
    }
    let question = item.question.clone();
    if let Some(file) = &item.replaces {
        context.writer.replaces(&item.id, file.clone()).await;
    }
    let mut row = Row::empty(&item, Status::Failed);
    let started = std::time::Instant::now();
    // The question's one deadline: every request and call it starts takes what is left of it.
    let deadline = Deadline::after(options.question_timeout);
    let work = tokio::time::timeout(
        options.question_timeout,
        agent::answer(context, &question, &deadline, transcript, log, budget),
    );
    let grace = async {
        shutdown.cancelled().await;
        deadline.shorten(options.shutdown_grace);
        tokio::time::sleep(options.shutdown_grace).await;
    };
    // Why the question ended, if not with an answer, and what to do about it.
    let mut hint = None;
    let ended: Result<(), (&'static str, String)> = tokio::select! {
        outcome = tracing::Instrument::instrument(work, span.clone()) => match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => {
                hint = error.hint();
                Err((error.kind(), error.to_string()))
            }
            Err(_) => Err(("timeout", format!(
                "no answer within agent.question_timeout ({}){}",
                humantime::format_duration(options.question_timeout),
                log.last_failure().map(|failure| format!("; the model call was retrying after: {failure}")).unwrap_or_default()
            ))),
        },
        () = grace => {
            row.status = Status::Interrupted;
            Err(("interrupted", "interrupted by shutdown".to_owned()))
        }
    };
    row.duration_s = started.elapsed().as_secs_f64();
    row.transcript = transcript.snapshot();
    row.transcript.retries = log.retries();
    row.transcript.rate_limited = log.rate_limited();
    match ended {
        Ok(()) => {
            row.status = Status::Ok;
            let reason = row.transcript.finish_reason.as_deref();
            if agent::cut_off(reason) {
                let why = match reason {
                    Some("length") => "it reached model.max_tokens",
                    _ => "the provider's content filter stopped it",
                };
                row.warning = Some(format!(
                    "the final answer was cut off (finish_reason {:?}: {why}); a research file saved from it says truncated: true",
                    reason.unwrap_or_default()
                ));
            }
        }
        // The research file is the answer: what went wrong after it was saved is a warning.
        Err((_, error)) if row.transcript.file.is_some() => {
            tracing::warn!(parent: &span, question = %row.question, %error, "answered by the saved research; then the question failed");
            answered_by_file(&mut row, &error);
        }
        // Stopped by the budget with no research saved: not answered, on purpose. Its row keeps
        // what it did and spent.
        Err(("budget", error)) => {
            row.status = Status::Skipped;
            row.reason = Some(SkipReason::Budget);
            row.error_type = Some("budget".to_owned());
            row.error = Some(error);
        }
        Err((kind, error)) => {
            if row.status != Status::Interrupted {
                row.error_type = Some(kind.to_owned());
            }
            row.error = Some(error);
            row.hint = hint;
        }
    }
    row.trace_id = trace_id;
    Asked { row, span }
}

/// A question its agent is done with; its row is final once its file is settled.
struct Asked {
    row: Row,
    /// The question's trace, ended with the row.
    span: tracing::Span,
}

/// The row of `asked`, once the research writer says where its file is (or why there is none):
/// waited for outside the question's place in the batch, so a slow disk does not hold back the
/// next question.
async fn settle_one(context: &AgentContext, asked: Asked) -> Row {
    let Asked { mut row, span } = asked;
    let settled = context.writer.settle(&row.question_id).await;
    settle(&mut row, settled);
    if !matches!(row.status, Status::Ok | Status::Skipped) {
        span.record("otel.status_code", "ERROR");
        span.record("error.type", row.error_type.as_deref().unwrap_or("interrupted"));
    }
    if let (Status::Failed, Some(error)) = (row.status, &row.error) {
        tracing::warn!(parent: &span, question = %row.question, %error, "question failed");
    }
    record_question(row.status);
    row
}

fn record_question(status: Status) {
    crate::telemetry::metrics::metrics()
        .questions
        .add(1, &[crate::telemetry::metrics::kv(crate::telemetry::names::attr::QUESTION_STATUS, status.as_str())]);
}

/// A progress bar on a terminal, plain lines otherwise.
#[derive(Clone)]
struct Progress {
    /// Lines are written when there is no bar.
    lines: bool,
    bar: Option<ProgressBar>,
    total: u64,
    done: Arc<std::sync::atomic::AtomicU64>,
}

impl Progress {
    fn new(total: u64, enabled: bool) -> Self {
        let bar = (enabled && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(total);
            if let Ok(style) = ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Self { lines: enabled, bar, total, done: Default::default() }
    }

    fn finished(&self, row: &Row) {
        self.finished_paced(row, None);
    }

    /// A finished question, and what holds the model requests back now, if anything (a
    /// route's rate limits: `paced: tokens, 1.2s`).
    fn finished_paced(&self, row: &Row, pacing: Option<String>) {
        let n = self.done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let status = row.status.as_str();
        let question: String = row.question.chars().take(60).collect();
        let paced = pacing.map(|pacing| format!("  (paced: {pacing})")).unwrap_or_default();
        match &self.bar {
            Some(bar) => {
                bar.inc(1);
                bar.set_message(format!("{status}: {question}{paced}"));
            }
            None if self.lines => eprintln!("[{n}/{}] {status:<11} {question}{paced}", self.total),
            None => {}
        }
    }

    fn done(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(rows: &[(&str, Status)]) -> Report {
        let questions: Vec<Row> = rows
            .iter()
            .enumerate()
            .map(|(index, (id, status))| {
                let planned =
                    Planned { index, question: format!("Q {id}"), id: (*id).to_owned(), done: None, replaces: None };
                let mut row = Row::empty(&planned, *status);
                row.transcript.file = Some(PathBuf::from(format!("out/{id}.md")));
                row
            })
            .collect();
        Report {
            agentry_version: String::new(),
            shard: None,
            demo: false,
            started_at: String::new(),
            agent: String::new(),
            output_dir: PathBuf::new(),
            totals: totals(&questions, 1.0),
            secrets: Vec::new(),
            restarts: Default::default(),
            budget: BudgetReport::default(),
            questions,
        }
    }

    #[test]
    fn a_large_batch_answered_in_full_shows_no_empty_table() {
        let ids: Vec<String> = (0..=SUMMARY_ROWS).map(|n| format!("q{n}")).collect();
        let rows: Vec<(&str, Status)> = ids.iter().map(|id| (id.as_str(), Status::Ok)).collect();
        let summary = report(&rows).summary();
        assert!(!summary.contains("status"), "no table header without rows:\n{summary}");
        assert!(summary.contains("all 51 questions were answered and researched"), "{summary}");

        let mut failed = rows.clone();
        failed[3].1 = Status::Failed;
        let summary = report(&failed).summary();
        assert!(summary.starts_with("status"), "{summary}");
        assert!(summary.contains("(1 of the 1 questions not answered or not researched shown"), "{summary}");
    }

    #[test]
    fn what_the_writer_settles_is_final_on_the_row() {
        let mut report =
            report(&[("q-a", Status::Ok), ("q-b", Status::Ok), ("q-c", Status::Ok), ("q-d", Status::Failed)]);
        let [a, b, c, d] = &mut report.questions[..] else { panic!("four rows") };
        settle(a, Settled::default());
        settle(b, Settled { file: None, failed: Some("cannot write out/q-b.md: disk full".into()) });
        settle(c, Settled { file: Some(PathBuf::from("out/q-c-2.md")), failed: None });
        // Saved in a turn cut short: the agent never heard back, the file landed.
        d.transcript.file = None;
        d.error = Some("no answer within agent.question_timeout (1s)".into());
        settle(d, Settled { file: Some(PathBuf::from("out/q-d.md")), failed: None });
        let rows = &report.questions;
        assert_eq!(rows[0].transcript.file, Some(PathBuf::from("out/q-a.md")), "nothing to change");
        assert_eq!((rows[1].status, rows[1].transcript.file.clone()), (Status::Failed, None));
        assert!(rows[1].error.as_deref().is_some_and(|e| e.contains("disk full")));
        assert_eq!(rows[1].error_type.as_deref(), Some("save_failed"));
        assert_eq!(rows[2].transcript.file, Some(PathBuf::from("out/q-c-2.md")), "the file where it went");
        assert_eq!((rows[3].status, rows[3].error.clone()), (Status::Ok, None), "the file is the answer");
        assert!(rows[3].warning.as_deref().is_some_and(|w| w.contains("question_timeout")), "{:?}", rows[3]);
    }

    #[test]
    fn a_question_skipped_for_the_budget_makes_the_exit_code_1_and_shard_budgets_add_up() {
        let mut first = report(&[("q-a", Status::Ok), ("q-b", Status::Skipped)]);
        first.questions[1].reason = Some(SkipReason::Budget);
        first.questions[1].transcript.file = None;
        first.totals = totals(&first.questions, 1.0);
        first.budget.max_tokens = 500;
        first.budget.spent = budget::Spend { input_tokens: 400, output_tokens: 90, ..Default::default() };
        first.budget.by_route.insert("local".into(), first.budget.spent);
        assert_eq!((first.totals.skipped, first.totals.skipped_for_budget), (1, 1));
        assert_eq!(first.exit_code(), 1);
        assert!(first.summary().contains("1 skipped (1 for the budget)"), "{}", first.summary());
        assert!(first.summary().contains("spent 490 tokens"), "{}", first.summary());
        let mut second = report(&[("q-c", Status::Ok)]);
        second.questions[0].index = 2;
        second.budget = first.budget.clone();
        let merged = merge(vec![first, second]);
        assert_eq!(merged.budget.max_tokens, 1000, "each shard had its share");
        assert_eq!(merged.budget.by_route["local"].tokens(), 980);
        assert_eq!(merged.totals.skipped_for_budget, 1);
        // Answered by an earlier run: skipped, and nothing to worry about.
        let earlier = report(&[("q-a", Status::Skipped)]);
        assert_eq!(earlier.questions[0].reason, Some(SkipReason::Answered));
        assert_eq!(earlier.exit_code(), 0);
    }

    #[test]
    fn merging_keeps_the_original_order_and_prefers_answers() {
        let mut first = report(&[("q-a", Status::Ok), ("q-b", Status::Failed)]);
        first.questions.remove(0);
        let second = report(&[("q-a", Status::Ok), ("q-b", Status::Ok)]);
        let merged = merge(vec![first, second]);
        let ids: Vec<&str> = merged.questions.iter().map(|r| r.question_id.as_str()).collect();
        assert_eq!(ids, ["q-a", "q-b"]);
        assert_eq!(merged.totals.ok, 2);
    }
}
