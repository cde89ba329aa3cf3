//! What each subcommand does, one file per command; [`execute`] maps the outcome to the exit
//! code: 0 all answered, 1 some questions (or servers) failed, 2 configuration or usage error.
//!
//! Every command returns `Result<ExitCode, CliError>`: failures travel with `?` and are printed
//! once, here, as `error: …` with their causes.

/// `println!` for a command's output, except that a reader that went away
/// (`agentry tools | head`) ends the output quietly, where `println!` panics.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::commands::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` for a command's output, quiet on a closed pipe like [`outln!`].
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::commands::write_stdout(format_args!($($arg)*))
    };
}

mod ask;
mod batch;
mod config_check;
mod demo;
mod doctor;
mod echo;
mod report;
mod run;
mod shell;
mod signals;
mod tools;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use crate::actors::secret_keeper::EnvLookup;
use crate::app::StartError;
use crate::batch::PlanError;
use crate::cli::{Cli, Command, CommonArgs, ConfigCommand, ReportCommand};
use crate::config::{self, ConfigError, Overrides, Settings, Sources};
use crate::telemetry;

pub use signals::Signals;

/// Exit code: some questions failed.
const EXIT_FAILED: u8 = 1;
/// Exit code: configuration or usage error.
const EXIT_USAGE: u8 = 2;

/// Why a command could not do its job.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// The settings are wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The questions cannot be planned.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// A flag or variable has a wrong value.
    #[error("{0}")]
    Usage(String),
    /// The actors did not start.
    #[error(transparent)]
    Start(#[from] StartError),
    /// An output directory cannot be written.
    #[error("{} is not writable: {source} (batch.output_dir / batch.report)", path.display())]
    NotWritable {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An input file cannot be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A journal (`report.jsonl`) that cannot be read.
    #[error(transparent)]
    NotAJournal {
        /// Which line, and why.
        #[from]
        source: crate::batch::journal::ReadError,
    },
    /// An input file is not an agentry report.
    #[error("{}: not an agentry report: {source}", path.display())]
    NotAReport {
        /// The file.
        path: PathBuf,
        /// Where it stops being one.
        #[source]
        source: serde_json::Error,
    },
    /// A file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A demo server could not listen on loopback.
    #[error("cannot start the demo {what} on 127.0.0.1: {source}")]
    DemoServer {
        /// Which one.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Another process is writing to the output directory.
    #[error(
        "{} is in use by another agentry{}: one process writes to an output directory at a time; \
         wait for it, or give this run another batch.output_dir (or --shard)",
        dir.display(), holder.map(|pid| format!(" (pid {pid})")).unwrap_or_default()
    )]
    Busy {
        /// The output directory.
        dir: PathBuf,
        /// The process holding it, as its lock file says.
        holder: Option<u32>,
    },
    /// The output directory's lock file cannot be used.
    #[error("cannot lock {}: {source}", path.display())]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `config check` found problems (each already printed).
    #[error("the configuration has {0} problem(s)")]
    Problems(usize),
}

impl CliError {
    /// The process exit code for this failure.
    fn exit_code(&self) -> u8 {
        match self {
            Self::Write { .. } | Self::DemoServer { .. } => EXIT_FAILED,
            _ => EXIT_USAGE,
        }
    }
}

/// Runs a parsed command line and flushes telemetry; `signals` answers SIGINT and SIGTERM
/// throughout (the batch commands stop in order at the first).
pub async fn execute(cli: Cli, signals: Signals) -> ExitCode {
    telemetry::set_verbosity(telemetry::Verbosity::from_flags(cli.quiet, cli.verbose));
    let outcome = dispatch(cli, &signals).await;
    // Nothing this process started outlives it: a session still connecting when its actor
    // stopped holds its server until the connect times out.
    crate::mcp::stdio::kill_all_groups();
    telemetry::flush().await;
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {}", crate::error_chain(&error));
            ExitCode::from(error.exit_code())
        }
    }
}

async fn dispatch(cli: Cli, signals: &Signals) -> Result<ExitCode, CliError> {
    match cli.command {
        Command::Run(args) => run::run(args, signals).await,
        Command::Ask { question, common } => ask::ask(question, common, signals).await,
        Command::Tools { common, json } => tools::tools(common, json).await,
        Command::Completions { shell } => shell::completions(shell),
        Command::Man { dir } => shell::man(dir.as_deref()),
        Command::Config { command: ConfigCommand::Check { common, probe, json, timeout } } => {
            config_check::config_check(&common, probe.then_some(timeout), json).await
        }
        Command::Doctor(args) => doctor::doctor(args).await,
        Command::Demo(args) => demo::demo(args, signals).await,
        Command::Report { command: ReportCommand::Merge { inputs, output } } => report::merge(&inputs, &output),
        Command::Report { command: ReportCommand::Show { path } } => report::show(path.as_deref()),
    }
}

/// Loads the settings from every layer and starts logging.
fn settings(common: &CommonArgs, overrides: Overrides) -> Result<Settings, CliError> {
    let overrides = Overrides { output_dir: common.output_dir.clone().or(overrides.output_dir), ..overrides };
    let settings = config::load(&Sources::from_process(common.config.clone(), overrides))?;
    telemetry::init(&settings.telemetry);
    Ok(settings)
}

/// Secrets' variables come from the process environment.
fn process_env() -> EnvLookup {
    Arc::new(|name: &str| std::env::var(name).ok())
}

/// Writes command output (see `outln!`). A closed pipe is the reader saying it has enough: the
/// rest of the output is dropped without a word.
fn write_stdout(text: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if let Err(error) = std::io::stdout().lock().write_fmt(text)
        && error.kind() != std::io::ErrorKind::BrokenPipe
    {
        tracing::warn!(%error, "cannot write to standard output");
    }
}

/// `0` or `1` as an exit code.
fn exit(code: i32) -> ExitCode {
    ExitCode::from(if code == 0 { 0 } else { EXIT_FAILED })
}

/// Creates `dir` if needed and proves a file can be created in it.
fn check_writable(dir: &Path) -> Result<(), CliError> {
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    let probe = std::fs::create_dir_all(dir)
        .and_then(|()| tempfile::Builder::new().prefix(".agentry-check-").tempfile_in(dir).map(drop));
    probe.map_err(|source| CliError::NotWritable { path: dir.to_path_buf(), source })
}
