//! `agentry config check`: the resolved settings, each secret's source and fingerprint (never
//! its value), the route a question would take, the MCP servers and the questions. Every
//! problem is listed, then the command fails (exit 2).

use std::process::ExitCode;

use super::{CliError, settings};
use crate::actors::secret_keeper::SecretState;
use crate::batch;
use crate::cli::CommonArgs;
use crate::config::{Fallback, McpEndpoint, Overrides, Settings};
use crate::secrets;

pub(super) fn config_check(common: &CommonArgs) -> Result<ExitCode, CliError> {
    let settings = settings(common, Overrides::default())?;
    let mut problems = Vec::new();
    match toml::to_string_pretty(&settings) {
        Ok(text) => outln!(
            "# resolved settings (defaults, {}, environment)\n{text}",
            common.config.as_ref().map_or("no config file".into(), |p| p.display().to_string())
        ),
        Err(error) => problems.push(format!("cannot print the settings: {error}")),
    }
    let api_key = print_secrets(&settings, &mut problems);
    outln!("\n# route");
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
    outln!("{route}");
    print_budget(&settings);
    outln!("\n# MCP servers");
    for server in &settings.mcp.servers {
        let target = match &server.endpoint {
            McpEndpoint::LegacySse(url) => format!("legacy SSE {url}"),
            McpEndpoint::StreamableHttp(url) => format!("Streamable HTTP {url}"),
            McpEndpoint::Stdio { command, env } => format!("stdio {command:?}, passing {env:?}"),
        };
        let tools = if server.tools.is_empty() { "all tools".to_owned() } else { format!("tools {:?}", server.tools) };
        outln!("{}: {target}, {tools}", server.name);
    }
    outln!("\n# questions");
    match batch::plan(&settings.batch, false, None) {
        Ok(plan) => {
            let (done, dir) = (plan.answered_before(), settings.batch.output_dir.display());
            outln!("{} questions ({done} already answered in {dir})", plan.len());
            if plan.duplicates() > 0 {
                outln!("{} duplicate questions dropped", plan.duplicates());
            }
        }
        Err(error) => problems.push(error.to_string()),
    }
    if problems.is_empty() {
        outln!("\nconfiguration OK");
        return Ok(ExitCode::SUCCESS);
    }
    for problem in &problems {
        eprintln!("problem: {problem}");
    }
    Err(CliError::Problems(problems.len()))
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

/// Prints each secret's source and fingerprint; returns the API key's state.
fn print_secrets(settings: &Settings, problems: &mut Vec<String>) -> SecretState {
    outln!("# secrets (values are never shown)");
    let lookup = |name: &str| std::env::var(name).ok();
    let mut api_key = SecretState::Absent;
    for (index, spec) in settings.secret_specs().iter().enumerate() {
        let state = match secrets::load(spec, &settings.secrets.dir, &lookup) {
            Ok(Some(credential)) => {
                outln!("{} = {} from {}", spec.name, credential.fingerprint(), credential.source());
                // What every request does with it: a value no header can carry fails them all.
                if reqwest::header::HeaderValue::from_str(&format!("Bearer {}", credential.expose())).is_err() {
                    problems.push(format!(
                        "secret {} ({}) from {} holds characters that cannot go in an HTTP header (a line \
                         break or control character inside the value): rewrite it with the key alone on one line",
                        spec.name,
                        credential.fingerprint(),
                        credential.source()
                    ));
                }
                SecretState::Present(credential)
            }
            Ok(None) => {
                let file = settings.secrets.dir.join(&spec.name);
                let variable = spec.variable();
                outln!(
                    "{} = absent (or a placeholder) in {}, ${variable}_FILE, ${variable}",
                    spec.name,
                    file.display()
                );
                SecretState::Absent
            }
            Err(error) => {
                let key = if index == 0 { "model.cloud.api_key_secret" } else { "mcp.servers.token_secret" };
                outln!("{} = unusable ({key})", spec.name);
                problems.push(error.to_string());
                SecretState::Invalid(error.to_string().into())
            }
        };
        if index == 0 {
            api_key = state;
        }
    }
    api_key
}
