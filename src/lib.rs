//! # agentry
//!
//! A runtime for research agents built from supervised actors (ractor on tokio). It answers a
//! batch of questions from configuration: for each, a model (OpenAI, or a local
//! OpenAI-compatible model) searches through MCP tools and saves a research file.
//!
//! ## Layout
//! | module | what it holds |
//! |---|---|
//! | [`cli`] | clap types only |
//! | [`commands`] | one file per subcommand (`run`, `ask`, `tools`, `config check`, `demo`, `report`), each `Result<ExitCode, CliError>`; exit codes 0 / 1 / 2; `commands::signals` answers SIGINT/SIGTERM from before start-up to exit |
//! | [`config`] | typed settings from `config/default.toml`, a user file, the environment; MCP endpoints and base URLs resolved as they are read |
//! | [`app`] | wiring: starts the supervision tree, hands out handles, stops in order |
//! | [`actors`] | SecretKeeper, ModelRouter, McpSession, ToolExecutor, ResearchWriter, supervisors; each with its handle and handle-level tests |
//! | [`agent`] | the per-question tool-calling loop (a task, not an actor) |
//! | [`deadline`] | one deadline and one cancellation per question, passed down to every request and call it starts |
//! | [`batch`] | planning, bounded concurrency, the report |
//! | [`llm`] | OpenAI Chat Completions wire types, base URLs, HTTP client with retries, [`llm::LlmError`] |
//! | [`mcp`] | MCP transports (rmcp; legacy SSE of our own), tool conversion, [`mcp::McpError`] |
//! | [`secrets`] | secret values that never print; sources and fingerprints; the redactor that scrubs them from server text |
//! | [`research`] | research file names, provenance and format |
//! | [`telemetry`] | logging, OTLP traces and metrics; span and metric names |
//! | [`demo`] | `agentry demo`: the scripted model and the search server on loopback |
//! | [`doctor`] | `agentry doctor` / `config check --probe`: each service the settings name, checked through the product's own clients |
//!
//! Test doubles (the scriptable OpenAI-compatible server, slow peers) are in the
//! `agentry-testkit` crate (`crates/agentry-testkit`), a dev-dependency: they never ship.
//!
//! ## Supervision tree
//! ```text
//! RootSupervisor
//! ├── SecretKeeper      ├── ModelRouter      ├── ToolExecutor      ├── ResearchWriter
//! └── McpSupervisor ── McpSession(server) …   (restart with backoff; down after N in a window)
//! ```
//!
//! ## One question's path
//! `batch::run` starts `agent::answer` for up to `concurrency` questions. Each turn the agent
//! sends its conversation to ModelRouter (which picks cloud or local from the credential
//! SecretKeeper publishes, and spawns the HTTP call); tool calls go to ToolExecutor, which
//! runs them concurrently on McpSessions (or `save_research` on ResearchWriter). The answer
//! ends in exactly one research file and one report row.

pub mod actors;
pub mod agent;
pub mod app;
pub mod batch;
pub mod cli;
pub mod commands;
pub mod config;
pub mod deadline;
pub mod demo;
pub mod doctor;
pub mod llm;
pub mod mcp;
pub mod research;
pub mod secrets;
pub mod telemetry;

/// Logs `hint` as a warning (`hint: …`), once per process for each hint: a batch whose
/// questions all fail the same way, or a session that keeps failing to connect, says it once.
pub(crate) fn tell_hint_once(kind: &str, hint: Option<String>) {
    static TOLD: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let Some(hint) = hint else { return };
    let mut told = TOLD.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !told.contains(&hint) {
        tracing::warn!(error.type = kind, "hint: {hint}");
        told.push(hint);
    }
}

/// An error and its causes on one line (`error sending request: dns error: …`): reqwest and
/// hyper put the useful part in the source chain.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
