//! Command-line types (clap). Behaviour lives in [`crate::commands`].

use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand};

/// agentry: research agents on supervised actors.
#[derive(Debug, Parser)]
#[command(name = "agentry", version, about, propagate_version = true)]
pub struct Cli {
    /// Only errors on stderr (RUST_LOG, when set, wins).
    #[arg(long, short = 'q', global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// More on stderr: -v debug, -vv trace (RUST_LOG, when set, wins).
    #[arg(long, short = 'v', global = true, action = ArgAction::Count)]
    pub verbose: u8,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Answer the configured questions (config file, QUESTION, …) and write a report.
    Run(RunArgs),
    /// Answer one question now.
    Ask {
        /// The question.
        question: String,
        /// Settings.
        #[command(flatten)]
        common: CommonArgs,
    },
    /// List each MCP server's tools, their annotations, and which calls are retried.
    ///
    /// The tools each configured server offers (after the allowlist), the name the model sees,
    /// each annotation by its own word (MCP defaults for absent ones), and `retry` for the calls
    /// agentry sends again after a cut connection.
    Tools {
        /// Settings.
        #[command(flatten)]
        common: CommonArgs,
        /// One JSON document on stdout instead of the list.
        #[arg(long)]
        json: bool,
    },
    /// Inspect the configuration.
    Config {
        /// What to do with it.
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Work with reports.
    Report {
        /// What to do.
        #[command(subcommand)]
        command: ReportCommand,
    },
    /// Print a shell completion script to stdout.
    ///
    /// e.g. `agentry completions bash > ~/.local/share/bash-completion/completions/agentry`
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout, or write every page into a directory.
    ///
    /// e.g. `agentry man > ~/.local/share/man/man1/agentry.1`, or
    /// `agentry man --dir ~/.local/share/man/man1` for agentry.1 and a page per subcommand
    /// (agentry-run.1, agentry-config-check.1, …).
    Man {
        /// Write agentry.1 and one page per subcommand here (created if missing), and list them.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// A DEMO: the whole pipeline against a built-in scripted model and search server on
    /// loopback. No keys, no Docker, no network.
    Demo(DemoArgs),
    /// Check that every service the configuration names answers: model routes (listing, key,
    /// tool calls), MCP servers (handshake, allowlisted tools), OTLP, the output directory and
    /// the secrets. Exit 0 when nothing failed, 1 otherwise.
    Doctor(DoctorArgs),
}

/// `agentry doctor` (and `agentry config check --probe`).
#[derive(Debug, Clone, Args)]
pub struct DoctorArgs {
    /// Settings.
    #[command(flatten)]
    pub common: CommonArgs,
    /// One JSON document on stdout (schema `agentry.doctor/v1`, see the README).
    #[arg(long)]
    pub json: bool,
    /// The longest any network step may take (the completion probe: three times it).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
}

/// `agentry config ...`
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate and print the resolved settings and the route a question would take.
    Check {
        /// Settings.
        #[command(flatten)]
        common: CommonArgs,
        /// Also contact every service, as `agentry doctor` does.
        #[arg(long)]
        probe: bool,
        /// One JSON document on stdout (schema `agentry.config-check/v1`, see the README).
        #[arg(long)]
        json: bool,
        /// With --probe: the longest any network step may take.
        #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
}

/// Flags every command that reads settings takes.
#[derive(Debug, Clone, Args, Default)]
pub struct CommonArgs {
    /// A config file (TOML, YAML or JSON) layered over the embedded defaults.
    #[arg(long, short = 'c', value_name = "FILE", env = "AGENTRY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory for research files (batch.output_dir).
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
}

/// `agentry run`
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Settings.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Questions answered at once (batch.concurrency).
    #[arg(long, short = 'j', value_name = "N")]
    pub concurrency: Option<usize>,
    /// Report path (batch.report).
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Answer questions again even if a research file already answers them.
    #[arg(long)]
    pub force: bool,
    /// Answer only this instance's share of the questions: INDEX/COUNT, 0-based (also from
    /// AGENTRY_SHARD, or JOB_COMPLETION_INDEX / AGENTRY_SHARD_SLOT with AGENTRY_SHARD_COUNT).
    #[arg(long, value_name = "INDEX/COUNT")]
    pub shard: Option<crate::batch::shard::Shard>,
}

/// `agentry report ...`
#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// Print the summary table of a report (or of the journal a killed run left).
    Show {
        /// A `report.json` or `report.jsonl` [default: definitions/report.json, or the journal
        /// beside it when there is no report].
        path: Option<PathBuf>,
    },
    /// Combine shard reports into one report (rows in the original question order).
    Merge {
        /// Shard reports (`report-shard-*-of-*.json`, or their journals `.jsonl`).
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Where to write the merged report.
        #[arg(long, short = 'o', default_value = "report.json")]
        output: PathBuf,
    },
}

/// `agentry demo`
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Directory for the demo's research files.
    #[arg(long, value_name = "DIR", default_value = "definitions/demo")]
    pub output_dir: PathBuf,
    /// Ask these instead of the built-in demo questions (repeatable).
    #[arg(long = "question", value_name = "TEXT")]
    pub questions: Vec<String>,
    /// Questions answered at once.
    #[arg(long, short = 'j', value_name = "N", default_value_t = 4)]
    pub concurrency: usize,
    /// Answer again even if already answered.
    #[arg(long)]
    pub force: bool,
}
