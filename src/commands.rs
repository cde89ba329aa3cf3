//! What each subcommand does. Every function returns the process exit code:
//! 0 all answered, 1 some questions (or servers) failed, 2 configuration or usage error.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::actors::mcp_session::ServerTools;
use crate::actors::secret_keeper::{EnvLookup, SecretState};
use crate::app::Runtime;
use crate::batch::shard::Shard;
use crate::batch::{self, Planned, Report, RunOptions};
use crate::cli::{Cli, Command, CommonArgs, ConfigCommand, DemoArgs, ReportCommand, RunArgs};
use crate::config::{self, Fallback, McpEndpoint, McpServerSettings, Overrides, Settings, Sources, TransportKind};
use crate::demo;
use crate::secrets::{self, SecretSpec};
use crate::telemetry;

/// Exit code: some questions failed.
pub const EXIT_FAILED: i32 = 1;
/// Exit code: configuration or usage error.
pub const EXIT_USAGE: i32 = 2;

/// Runs a parsed command line.
pub async fn execute(cli: Cli) -> i32 {
    let code = dispatch(cli).await;
    telemetry::flush().await;
    code
}

async fn dispatch(cli: Cli) -> i32 {
    match cli.command {
        Command::Run(args) => run(args).await,
        Command::Ask { question, common } => ask(question, common).await,
        Command::Tools { common } => tools(common).await,
        Command::Config { command: ConfigCommand::Check { common } } => config_check(common),
        Command::Demo(args) => demo(args).await,
        Command::Report { command: ReportCommand::Merge { inputs, output } } => merge_reports(&inputs, &output),
    }
}

fn process_env() -> EnvLookup {
    Arc::new(|name: &str| std::env::var(name).ok())
}

/// Loads settings and starts logging; a bad configuration prints why and gives exit 2.
fn settings(common: &CommonArgs, overrides: Overrides) -> Result<Settings, i32> {
    let overrides = Overrides { output_dir: common.output_dir.clone().or(overrides.output_dir), ..overrides };
    let loaded = config::load(&Sources::from_process(common.config.clone(), overrides));
    match loaded {
        Ok(settings) => {
            telemetry::init(&settings.telemetry);
            Ok(settings)
        }
        Err(error) => {
            eprintln!("error: {error}");
            Err(EXIT_USAGE)
        }
    }
}

async fn run(args: RunArgs) -> i32 {
    let overrides = Overrides { concurrency: args.concurrency, report: args.report.clone(), ..Overrides::default() };
    let settings = match settings(&args.common, overrides) {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    let env = |name: &str| std::env::var(name).ok();
    let shard = match args.shard.map(Some).map_or_else(|| Shard::from_env(&env), Ok) {
        Ok(shard) => shard,
        Err(error) => {
            eprintln!("error: {error}");
            return EXIT_USAGE;
        }
    };
    let planned = match batch::plan(&settings.batch, args.force, shard) {
        Ok(planned) => planned,
        Err(error) => {
            eprintln!("error: {error}");
            return EXIT_USAGE;
        }
    };
    if let Some(shard) = shard {
        tracing::info!(%shard, questions = planned.len(), "answering this shard's share");
    }
    run_batch(settings, planned, process_env(), Mode::Real { shard }).await
}

async fn ask(question: String, common: CommonArgs) -> i32 {
    let overrides = Overrides { questions: Some(vec![question]), ..Overrides::default() };
    let settings = match settings(&common, overrides) {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    let planned = match batch::plan(&settings.batch, true, None) {
        Ok(planned) => planned,
        Err(error) => {
            eprintln!("error: {error}");
            return EXIT_USAGE;
        }
    };
    run_batch(settings, planned, process_env(), Mode::Ask).await
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Real { shard: Option<Shard> },
    Ask,
    Demo,
}

/// Starts the actors, answers `planned`, writes the report, prints the outcome.
async fn run_batch(settings: Settings, planned: Vec<Planned>, env: EnvLookup, mode: Mode) -> i32 {
    let shard = match mode {
        Mode::Real { shard } => shard,
        _ => None,
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
    for dir in [settings.batch.output_dir.clone(), report_path.parent().map(PathBuf::from).unwrap_or_default()] {
        if let Err(error) = check_writable(&dir) {
            eprintln!("error: {} is not writable: {error} (batch.output_dir / batch.report)", dir.display());
            return EXIT_USAGE;
        }
    }
    let connect_timeout = settings.mcp.connect_timeout;
    let runtime = match Runtime::start(settings, env).await {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: {error}");
            return EXIT_USAGE;
        }
    };
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
        match (&row.answer, &row.error) {
            (Some(answer), None) => {
                println!("{answer}");
                if let Some(file) = &row.file {
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
    if shutdown.is_cancelled() { EXIT_FAILED.max(report.exit_code()) } else { report.exit_code() }
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

async fn tools(common: CommonArgs) -> i32 {
    let settings = match settings(&common, Overrides::default()) {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    if settings.mcp.servers.is_empty() {
        println!("no MCP servers configured (mcp.servers)");
        return 0;
    }
    let connect_timeout = settings.mcp.connect_timeout;
    let runtime = match Runtime::start(settings, process_env()).await {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: {error}");
            return EXIT_USAGE;
        }
    };
    let states = runtime.tools_settled(connect_timeout).await;
    let mut code = 0;
    for (handle, (name, state)) in runtime.servers.iter().zip(states) {
        let server = handle.server();
        println!("{name} ({}, {})", server.transport_name(), server.location());
        match state {
            ServerTools::Ready(tools) if tools.is_empty() => {
                println!("  no tools (allowlist: {:?})", server.allow)
            }
            ServerTools::Ready(tools) => {
                for tool in tools.iter() {
                    let description =
                        tool.description.as_deref().unwrap_or_default().lines().next().unwrap_or_default().to_owned();
                    let hint = if crate::mcp::is_retry_safe(tool) { " [read-only/idempotent]" } else { "" };
                    println!("  {}{hint}  {description}", tool.name);
                }
            }
            ServerTools::Failed { cause, .. } => {
                println!("  unavailable: {cause}");
                code = EXIT_FAILED;
            }
            ServerTools::Connecting => {
                println!("  unavailable: no answer within {connect_timeout:?}");
                code = EXIT_FAILED;
            }
        }
    }
    runtime.shutdown().await;
    code
}

fn config_check(common: CommonArgs) -> i32 {
    let settings = match settings(&common, Overrides::default()) {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    let mut problems = Vec::new();
    match toml::to_string_pretty(&settings) {
        Ok(text) => println!(
            "# resolved settings (defaults, {}, environment)\n{text}",
            common.config.as_ref().map_or("no config file".into(), |p| p.display().to_string())
        ),
        Err(error) => problems.push(format!("cannot print the settings: {error}")),
    }
    println!("# secrets (values are never shown)");
    let lookup = |name: &str| std::env::var(name).ok();
    let mut specs = vec![(
        "model.cloud.api_key_secret",
        SecretSpec {
            name: settings.model.cloud.api_key_secret.clone(),
            placeholders: settings.model.cloud.placeholder_keys.clone(),
        },
    )];
    specs.extend(
        settings
            .mcp
            .servers
            .iter()
            .filter(|s| !s.token_secret.is_empty())
            .map(|s| ("mcp.servers.token_secret", SecretSpec::new(&s.token_secret))),
    );
    let mut api_key = SecretState::Absent;
    for (index, (key, spec)) in specs.iter().enumerate() {
        let state = match secrets::load(spec, &settings.secrets.dir, &lookup) {
            Ok(Some(credential)) => {
                println!("{} = {} from {}", spec.name, credential.fingerprint(), credential.source());
                SecretState::Present(credential)
            }
            Ok(None) => {
                println!(
                    "{} = absent (or a placeholder) in {}, ${}_FILE, ${}",
                    spec.name,
                    settings.secrets.dir.join(&spec.name).display(),
                    spec.variable(),
                    spec.variable()
                );
                SecretState::Absent
            }
            Err(error) => {
                println!("{} = unusable ({key})", spec.name);
                problems.push(error.to_string());
                SecretState::Invalid(error.to_string().into())
            }
        };
        if index == 0 {
            api_key = state;
        }
    }
    println!("\n# route");
    let route = match (&api_key, settings.model.fallback) {
        (SecretState::Present(_), _) => {
            format!("cloud: {} at {}", settings.model.cloud.model, settings.model.cloud.base_url)
        }
        (_, Fallback::Local) => {
            format!("local: {} at {} (no usable cloud key)", settings.model.local.model, settings.model.local.base_url)
        }
        (_, Fallback::None) => {
            problems.push("no usable API key and model.fallback = \"none\": every question would fail".into());
            "none".into()
        }
    };
    println!("{route}");
    println!("\n# MCP servers");
    for server in &settings.mcp.servers {
        match server.endpoint() {
            Ok(endpoint) => {
                let target = match &endpoint {
                    McpEndpoint::LegacySse(url) => format!("legacy SSE {url}"),
                    McpEndpoint::StreamableHttp(url) => format!("Streamable HTTP {url}"),
                    McpEndpoint::Stdio { command, env } => {
                        format!("stdio {command:?}, passing {env:?}")
                    }
                };
                let tools =
                    if server.tools.is_empty() { "all tools".to_owned() } else { format!("tools {:?}", server.tools) };
                println!("{}: {target}, {tools}", server.name);
            }
            Err(error) => problems.push(format!("mcp server {}: {error}", server.name)),
        }
    }
    println!("\n# questions");
    match batch::plan(&settings.batch, false, None) {
        Ok(planned) => {
            let done = planned.iter().filter(|p| p.done.is_some()).count();
            println!(
                "{} questions ({done} already answered in {})",
                planned.len(),
                settings.batch.output_dir.display()
            );
        }
        Err(error) => problems.push(error.to_string()),
    }
    if problems.is_empty() {
        println!("\nconfiguration OK");
        0
    } else {
        for problem in &problems {
            eprintln!("problem: {problem}");
        }
        EXIT_USAGE
    }
}

/// The demo's questions when none are given.
const DEMO_QUESTIONS: &[&str] = &[
    "Define Machine Learning",
    "What is the actor model?",
    "What is the Model Context Protocol?",
    "Define OpenTelemetry",
    "What is Docker Compose?",
];

async fn demo(args: DemoArgs) -> i32 {
    // The demo is hermetic: embedded defaults only, no user file, no keys from anywhere.
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
    let mut settings = match config::load(&Sources { file: None, env: Default::default(), overrides }) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("error: {error}");
            return EXIT_USAGE;
        }
    };
    telemetry::init(&settings.telemetry);
    let model = match demo::model::DemoModelServer::start().await {
        Ok(server) => server,
        Err(error) => {
            eprintln!("error: cannot start the demo model server on 127.0.0.1: {error}");
            return EXIT_FAILED;
        }
    };
    let search = match demo::search_server::SearchServer::start().await {
        Ok(server) => server,
        Err(error) => {
            eprintln!("error: cannot start the demo search server on 127.0.0.1: {error}");
            return EXIT_FAILED;
        }
    };
    eprintln!(
        "agentry DEMO: a scripted model at {} and an MCP search server over an embedded corpus at {}.",
        model.base_url(),
        search.url()
    );
    eprintln!(
        "No real model, key or network is used; answers are canned. Research files go to {}.",
        args.output_dir.display()
    );
    settings.model.local.base_url = model.base_url();
    settings.model.local.model = "agentry-demo-model".into();
    settings.model.fallback = Fallback::Local;
    settings.secrets.dir = PathBuf::from("/nonexistent/agentry-demo-has-no-secrets");
    settings.mcp.servers = vec![McpServerSettings {
        name: "demo-search".into(),
        url: search.url(),
        transport: TransportKind::StreamableHttp,
        tools: vec!["search".into()],
        token_secret: String::new(),
        ..Default::default()
    }];
    settings.mcp.connect_timeout = Duration::from_secs(10);
    let planned = match batch::plan(&settings.batch, args.force, None) {
        Ok(planned) => planned,
        Err(error) => {
            eprintln!("error: {error}");
            return EXIT_USAGE;
        }
    };
    let no_env: EnvLookup = Arc::new(|_: &str| None);
    run_batch(settings, planned, no_env, Mode::Demo).await
}

/// `agentry report merge`: one report from shard reports, rows in the original order.
fn merge_reports(inputs: &[PathBuf], output: &std::path::Path) -> i32 {
    let mut reports = Vec::new();
    for path in inputs {
        let read = std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|text| serde_json::from_str::<Report>(&text).map_err(|e| format!("not an agentry report: {e}")));
        match read {
            Ok(report) => reports.push(report),
            Err(error) => {
                eprintln!("error: {}: {error}", path.display());
                return EXIT_USAGE;
            }
        }
    }
    let merged = batch::merge(reports);
    if let Err(error) = merged.write(output) {
        eprintln!("error: cannot write {}: {error}", output.display());
        return EXIT_FAILED;
    }
    print!("{}", merged.summary());
    println!("Merged {} reports into {}", inputs.len(), output.display());
    merged.exit_code()
}

/// Creates `dir` if needed and proves a file can be created in it.
fn check_writable(dir: &std::path::Path) -> std::io::Result<()> {
    let dir = if dir.as_os_str().is_empty() { std::path::Path::new(".") } else { dir };
    std::fs::create_dir_all(dir)?;
    tempfile::Builder::new().prefix(".agentry-check-").tempfile_in(dir).map(drop)
}
