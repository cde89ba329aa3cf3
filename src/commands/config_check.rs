//! `agentry config check`: the resolved settings, each secret's source and fingerprint (never
//! its value), the route a question would take, the MCP servers and the questions. Every
//! problem is listed, then the command fails (exit 2). With `--probe` it also contacts every
//! service as `agentry doctor` does (a failed check: exit 1); with `--json` it prints one
//! document instead, schema [`SCHEMA`]:
//!
//! ```json
//! {"schema": "agentry.config-check/v1", "ok": true, "config_file": "agentry.toml",
//!  "settings": {…every key, resolved…},
//!  "secrets": [{"name": "openai_api_key", "state": "present", "source": "$OPENAI_API_KEY",
//!               "fingerprint": "sha256:1a2b3c4d"}],
//!  "route": {"kind": "local", "model": "ai/gemma3", "base_url": "http://…/v1/"},
//!  "mcp_servers": [{"name": "gateway", "transport": "sse", "location": "http://…/sse", "tools": ["search"]}],
//!  "questions": {"count": 3, "answered_before": 1, "duplicates": 0},
//!  "problems": [],
//!  "doctor": {…`agentry doctor --json`'s document, with --probe only…}}
//! ```
//! `state` is `present`, `absent` or `unusable` (`source` and `fingerprint` only when present);
//! `route.kind` is `cloud`, `local` or `none`; `ok` is false when there is a problem or a
//! probe failed.

use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;

use super::{CliError, process_env, settings};
use crate::batch;
use crate::cli::CommonArgs;
use crate::config::{Fallback, McpEndpoint, Overrides, Settings};
use crate::doctor::{self, Findings};
use crate::mcp::ServerSpec;
use crate::secrets::{self, Credential};

/// The `schema` field of the `--json` document.
pub(super) const SCHEMA: &str = "agentry.config-check/v1";

/// One secret as the check found it.
#[derive(Debug, Serialize)]
struct SecretLine {
    name: String,
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fingerprint: Option<String>,
    /// Where the check looked, for an absent or unusable secret.
    #[serde(skip)]
    looked_in: String,
}

/// The route a question would take.
#[derive(Debug, Serialize)]
struct Route {
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    base_url: Option<String>,
}

#[derive(Debug, Serialize)]
struct ServerLine {
    name: String,
    transport: &'static str,
    location: String,
    tools: Vec<String>,
}

#[derive(Debug, Default, Serialize)]
struct Questions {
    count: usize,
    answered_before: usize,
    duplicates: usize,
}

pub(super) async fn config_check(
    common: &CommonArgs,
    probe: Option<Duration>,
    json: bool,
) -> Result<ExitCode, CliError> {
    let settings = settings(common, Overrides::default())?;
    let mut problems = Vec::new();
    let (secrets, api_key) = secrets(&settings, &mut problems);
    let route = route(&settings, api_key.as_ref(), &mut problems);
    let servers = servers(&settings);
    let questions = match batch::plan(&settings.batch, false, None) {
        Ok(plan) => {
            Questions { count: plan.len(), answered_before: plan.answered_before(), duplicates: plan.duplicates() }
        }
        Err(error) => {
            problems.push(error.to_string());
            Questions::default()
        }
    };
    let findings = match probe {
        Some(timeout) => Some(doctor::examine(&settings, process_env(), timeout).await),
        None => None,
    };
    let config_file = common.config.as_ref().map(|p| p.display().to_string());
    if json {
        let document = serde_json::json!({
            "schema": SCHEMA,
            "ok": problems.is_empty() && findings.as_ref().is_none_or(Findings::ok),
            "config_file": config_file,
            "settings": settings,
            "secrets": secrets,
            "route": route,
            "mcp_servers": servers,
            "questions": questions,
            "problems": problems,
            "doctor": findings.as_ref().map(Findings::to_json),
        });
        outln!("{document}");
    } else {
        print_text(&settings, config_file.as_deref(), &secrets, &route, &servers, &questions);
        if let Some(findings) = &findings {
            outln!("\n# services (as `agentry doctor` checks them)");
            out!("{}", findings.render());
        }
    }
    if !problems.is_empty() {
        for problem in &problems {
            eprintln!("problem: {problem}");
        }
        return Err(CliError::Problems(problems.len()));
    }
    match &findings {
        Some(findings) => {
            if !json {
                let failed = findings.count(doctor::Status::Fail);
                match failed {
                    0 => outln!("\nconfiguration OK; every service answered"),
                    n => outln!("\nconfiguration OK, but {n} service check(s) failed"),
                }
            }
            Ok(super::doctor::exit_code(findings))
        }
        None => {
            if !json {
                outln!("\nconfiguration OK (no service was contacted: `agentry doctor` checks them)");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_text(
    settings: &Settings,
    config_file: Option<&str>,
    secrets: &[SecretLine],
    route: &Route,
    servers: &[ServerLine],
    questions: &Questions,
) {
    match toml::to_string_pretty(settings) {
        Ok(text) => {
            outln!("# resolved settings (defaults, {}, environment)\n{text}", config_file.unwrap_or("no config file"))
        }
        Err(error) => outln!("# resolved settings cannot be printed: {error}"),
    }
    outln!("# secrets (values are never shown)");
    for secret in secrets {
        match (secret.state, &secret.source, &secret.fingerprint) {
            ("present", Some(source), Some(fingerprint)) => outln!("{} = {fingerprint} from {source}", secret.name),
            ("absent", ..) => outln!("{} = absent (or a placeholder) in {}", secret.name, secret.looked_in),
            _ => outln!("{} = unusable ({})", secret.name, secret.looked_in),
        }
    }
    outln!("\n# route");
    match route {
        Route { kind: "cloud", model: Some(model), base_url: Some(url) } => outln!("cloud: {model} at {url}"),
        Route { kind: "local", model: Some(model), base_url: Some(url) } => {
            outln!("local: {model} at {url} (no usable cloud key)")
        }
        _ => outln!("none"),
    }
    print_budget(settings);
    outln!("\n# MCP servers");
    for server in servers {
        let tools = if server.tools.is_empty() { "all tools".to_owned() } else { format!("tools {:?}", server.tools) };
        outln!("{}: {} {}, {tools}", server.name, server.transport, server.location);
    }
    outln!("\n# questions");
    let dir = settings.batch.output_dir.display();
    outln!("{} questions ({} already answered in {dir})", questions.count, questions.answered_before);
    if questions.duplicates > 0 {
        outln!("{} duplicate questions dropped", questions.duplicates);
    }
}

/// The route a question would take; no route is a problem.
fn route(settings: &Settings, api_key: Option<&Credential>, problems: &mut Vec<String>) -> Route {
    let model = &settings.model;
    match (api_key, model.fallback) {
        (Some(_), _) => Route {
            kind: "cloud",
            model: Some(model.cloud.model.clone()),
            base_url: Some(model.cloud.base_url.to_string()),
        },
        (None, Fallback::Local) => Route {
            kind: "local",
            model: Some(model.local.model.clone()),
            base_url: Some(model.local.base_url.to_string()),
        },
        (None, Fallback::None) => {
            problems.push("no usable API key and model.fallback = \"none\": every question would fail".into());
            Route { kind: "none", model: None, base_url: None }
        }
    }
}

fn servers(settings: &Settings) -> Vec<ServerLine> {
    settings
        .mcp
        .servers
        .iter()
        .map(|server| {
            let spec = ServerSpec {
                name: server.name.clone(),
                endpoint: server.endpoint.clone(),
                allow: server.tools.clone(),
                retry_tools: Vec::new(),
                max_concurrent_calls: 1,
                token_secret: None,
            };
            let location = match &server.endpoint {
                McpEndpoint::Stdio { command, env } => format!("{command:?}, passing {env:?}"),
                _ => spec.location(),
            };
            ServerLine {
                name: server.name.clone(),
                transport: spec.transport_name(),
                location,
                tools: server.tools.clone(),
            }
        })
        .collect()
}

/// Prints the budget and the prices it is counted at.
fn print_budget(settings: &Settings) {
    outln!("\n# budget and prices (per million tokens: input, cached input, output)");
    let budget = &settings.batch.budget;
    let limit = |set: bool, value: String| if set { value } else { "none".to_owned() };
    outln!(
        "batch.budget: max_tokens {}, max_cost {}",
        limit(budget.max_tokens > 0, budget.max_tokens.to_string()),
        limit(budget.max_cost > 0.0, budget.max_cost.to_string())
    );
    for (route, price) in [("cloud", &settings.model.cloud.price), ("local", &settings.model.local.price)] {
        if price.is_free() {
            outln!("model.{route}.price: free");
        } else {
            outln!(
                "model.{route}.price: input {}, cached input {}, output {}",
                price.input_per_million,
                price.cached_input_per_million,
                price.output_per_million
            );
        }
    }
    if budget.is_limited() {
        outln!(
            "before each model call: spent + held by calls in flight + (prompt characters / 4 + model.max_tokens {}) \
             must fit; otherwise no new question starts and the rest are skipped (reason \"budget\", exit 1)",
            settings.model.max_tokens
        );
    }
}

/// Each secret's source and fingerprint (a value no header can carry, or a source that cannot
/// be used, is a problem naming the source); returns them and the API key, if usable.
fn secrets(settings: &Settings, problems: &mut Vec<String>) -> (Vec<SecretLine>, Option<Credential>) {
    let lookup = |name: &str| std::env::var(name).ok();
    let mut api_key = None;
    let mut lines = Vec::new();
    for (index, spec) in settings.secret_specs().iter().enumerate() {
        let looked_in = format!(
            "{}, ${variable}_FILE, ${variable}",
            settings.secrets.dir.join(&spec.name).display(),
            variable = spec.variable()
        );
        let line = |state, credential: Option<&Credential>| SecretLine {
            name: spec.name.clone(),
            state,
            source: credential.map(|c| c.source().to_string()),
            fingerprint: credential.map(|c| c.fingerprint().to_string()),
            looked_in: looked_in.clone(),
        };
        match secrets::load(spec, &settings.secrets.dir, &lookup) {
            Ok(Some(credential)) => match secrets::header_safe(&credential) {
                Ok(()) => {
                    lines.push(line("present", Some(&credential)));
                    if index == 0 {
                        api_key = Some(credential);
                    }
                }
                Err(error) => {
                    // What every request does with it: a value no header can carry fails them all.
                    problems.push(error.to_string());
                    lines.push(line("unusable", Some(&credential)));
                }
            },
            Ok(None) => lines.push(line("absent", None)),
            Err(error) => {
                problems.push(error.to_string());
                lines.push(line("unusable", None));
            }
        }
    }
    (lines, api_key)
}
