//! `agentry demo`: the whole pipeline against the built-in scripted model and search server on
//! loopback. Hermetic: embedded defaults only, no user file, no keys from anywhere.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use super::batch::{Mode, run_batch};
use super::{CliError, Signals};
use crate::actors::secret_keeper::EnvLookup;
use crate::batch;
use crate::cli::DemoArgs;
use crate::config::{self, Fallback, McpEndpoint, McpServerSettings, Overrides, Sources};
use crate::demo::model::DemoModelServer;
use crate::demo::search_server::{SearchServer, TOOL_NAME as SEARCH_TOOL};
use crate::telemetry;

/// The demo's questions when none are given.
const DEMO_QUESTIONS: &[&str] = &[
    "Define Machine Learning",
    "What is the actor model?",
    "What is the Model Context Protocol?",
    "Define OpenTelemetry",
    "What is Docker Compose?",
];

pub(super) async fn demo(args: DemoArgs, signals: &Signals) -> Result<ExitCode, CliError> {
    let questions = if args.questions.is_empty() {
        DEMO_QUESTIONS.iter().map(|q| (*q).to_owned()).collect()
    } else {
        args.questions.clone()
    };
    let overrides = Overrides {
        concurrency: Some(args.concurrency),
        output_dir: Some(args.output_dir.clone()),
        questions: Some(questions),
        report: None,
    };
    let mut settings = config::load(&Sources { file: None, env: Default::default(), overrides })?;
    telemetry::init(&settings.telemetry);
    let model =
        DemoModelServer::start().await.map_err(|source| CliError::DemoServer { what: "model server", source })?;
    let search =
        SearchServer::start().await.map_err(|source| CliError::DemoServer { what: "search server", source })?;
    if !telemetry::quiet() {
        eprintln!(
            "agentry DEMO: a scripted model at {} and an MCP search server over an embedded corpus at {}.",
            model.base_url(),
            search.url()
        );
        eprintln!(
            "No real model, key or network is used; answers are canned. Research files go to {}.",
            args.output_dir.display()
        );
    }
    settings.model.local.base_url = model.base_url();
    settings.model.local.model = "agentry-demo-model".into();
    settings.model.fallback = Fallback::Local;
    settings.secrets.dir = PathBuf::from("/nonexistent/agentry-demo-has-no-secrets");
    let endpoint = McpEndpoint::StreamableHttp(search.endpoint());
    settings.mcp.servers = vec![McpServerSettings::new("demo-search", endpoint).with_tools(&[SEARCH_TOOL])];
    settings.mcp.connect_timeout = Duration::from_secs(10);
    let plan = batch::plan(&settings.batch, args.force, None)?;
    let no_env: EnvLookup = Arc::new(|_: &str| None);
    run_batch(settings, plan, no_env, Mode::Demo, signals).await
}
