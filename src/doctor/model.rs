//! The model routes: listing, the key, and whether the model calls tools.
//!
//! A route is checked when a run could use it: the cloud route when a key is present, the
//! local route when `model.fallback = "local"`. For each: `GET {base_url}/models` (which works
//! for every Model Runner URL shape, since the base URL is joined as the client joins
//! `chat/completions`), then one completion through the product's [`ChatClient`] with the
//! product's system prompt and its `save_research` tool, non-streamed or streamed as the
//! settings say, without retries.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use url::Url;

use super::{Check, Status};
use crate::actors::secret_keeper::EnvLookup;
use crate::config::{Fallback, Settings};
use crate::deadline::Deadline;
use crate::llm::client::{CallLog, ChatClient, Endpoint};
use crate::llm::rate_limit::{LimitConfig, Limiter};
use crate::llm::wire::{ChatRequest, Message};
use crate::llm::{LlmError, is_model_runner};
use crate::secrets::{self, Credential};

/// The completion probe may take this many times the doctor's timeout: a local model on a CPU
/// writes a few tokens a second.
pub const COMPLETION_TIMEOUT_FACTOR: u32 = 3;

/// The completion probe's token limit: room for one short `save_research` call.
const PROBE_MAX_TOKENS: u32 = 96;

/// What the warning says when the model answers the probe in text.
pub const NO_TOOL_CALLS: &str = "this model does not call tools; answers will be saved as plain text";

/// One route to check.
struct Route {
    name: &'static str,
    base_url: Url,
    model: String,
    credential: Option<Credential>,
    limits: LimitConfig,
}

/// The checks of every route a run could use (secrets are read from `env`).
pub async fn routes(settings: &Settings, env: &EnvLookup, timeout: Duration) -> Vec<Check> {
    let specs = settings.secret_specs();
    let lookup = |name: &str| env(name);
    let key = specs.first().and_then(|spec| secrets::load(spec, &settings.secrets.dir, &lookup).ok().flatten());
    let model = &settings.model;
    let mut routes = Vec::new();
    let mut checks = Vec::new();
    match &key {
        Some(credential) => routes.push(Route {
            name: "model.cloud",
            base_url: model.cloud.base_url.url().clone(),
            model: model.cloud.model.clone(),
            credential: Some(credential.clone()),
            limits: model.cloud.rate_limit,
        }),
        None => checks.push(Check::new(
            "model.cloud",
            model.cloud.base_url.to_string(),
            Status::Skip,
            format!("not used: no usable API key ({})", model.cloud.api_key_secret),
        )),
    }
    match model.fallback {
        Fallback::Local => routes.push(Route {
            name: "model.local",
            base_url: model.local.base_url.url().clone(),
            model: model.local.model.clone(),
            credential: None,
            limits: model.local.rate_limit,
        }),
        Fallback::None => checks.push(Check::new(
            "model.local",
            model.local.base_url.to_string(),
            Status::Skip,
            "not used: model.fallback = \"none\"",
        )),
    }
    let probes = routes.iter().map(|route| check_route(settings, route, timeout));
    for route_checks in futures::future::join_all(probes).await {
        checks.extend(route_checks);
    }
    checks.sort_by(|a, b| a.check.cmp(&b.check));
    checks
}

/// What `GET /models` said.
enum Listing {
    /// The ids listed.
    Models(Vec<String>),
    /// The check already failed (unreachable, key refused): the completion is not tried.
    Failed(Check),
    /// The server has no usable listing (404, not JSON): the completion says the rest.
    Unlisted(String),
}

async fn check_route(settings: &Settings, route: &Route, timeout: Duration) -> Vec<Check> {
    let target = route.base_url.to_string();
    let listing = list_models(route, timeout).await;
    let models = match listing {
        Listing::Failed(check) => return vec![check],
        Listing::Models(models) => models,
        Listing::Unlisted(why) => {
            let reached = Check::new(route.name, &target, Status::Pass, format!("reachable; {why}"));
            let probe = probe_tools(settings, route, timeout).await;
            return vec![reached, probe.check(route)];
        }
    };
    let key = route
        .credential
        .as_ref()
        .map(|c| format!(", key {} ({}) accepted", c.fingerprint(), c.source()))
        .unwrap_or_default();
    let count = match models.len() {
        1 => "1 model listed".to_owned(),
        n => format!("{n} models listed"),
    };
    let reached = Check::new(route.name, &target, Status::Pass, format!("reachable, {count}{key}"));
    let probe = probe_tools(settings, route, timeout).await;
    let listed = models.iter().any(|id| same_model(id, &route.model));
    let listed_check = if listed {
        Check::new(format!("{}.model", route.name), &target, Status::Pass, format!("{} is listed", route.model))
    } else {
        let shown = shown_models(&models);
        match &probe {
            // llama.cpp's server answers for its one model whatever the request names.
            Probe::Answered { .. } => Check::new(
                format!("{}.model", route.name),
                &target,
                Status::Warn,
                format!("{} is not listed (the server lists {shown}), but the server answered for it", route.model),
            ),
            _ => Check::new(
                format!("{}.model", route.name),
                &target,
                Status::Fail,
                format!("{} is not listed; the server lists {shown}", route.model),
            )
            .with_hint(Some(pull_hint(route))),
        }
    };
    vec![reached, listed_check, probe.check(route)]
}

/// The ids a model listing has (`data[].id`, OpenAI's shape, also Model Runner's and llama.cpp's).
fn model_ids(body: &Value) -> Option<Vec<String>> {
    let data = body.get("data")?.as_array()?;
    Some(data.iter().filter_map(|m| m.get("id").and_then(Value::as_str)).map(str::to_owned).collect())
}

/// `ai/gemma3` is listed as `ai/gemma3:latest` by Model Runner.
fn same_model(listed: &str, configured: &str) -> bool {
    listed == configured
        || listed.strip_suffix(":latest") == Some(configured)
        || configured.strip_suffix(":latest") == Some(listed)
}

fn shown_models(models: &[String]) -> String {
    const SHOWN: usize = 10;
    if models.is_empty() {
        return "no models".to_owned();
    }
    let mut shown = models.iter().take(SHOWN).map(String::as_str).collect::<Vec<_>>().join(", ");
    if models.len() > SHOWN {
        shown.push_str(&format!(" and {} more", models.len() - SHOWN));
    }
    shown
}

fn pull_hint(route: &Route) -> String {
    if is_model_runner(route.base_url.as_str()) {
        format!("pull it with `docker model pull {}`, or set MODEL_RUNNER_MODEL to a listed model", route.model)
    } else if route.name == "model.cloud" {
        "set model.cloud.model (OPENAI_MODEL_NAME) to a listed model".to_owned()
    } else {
        "set model.local.model (MODEL_RUNNER_MODEL) to a listed model".to_owned()
    }
}

async fn list_models(route: &Route, timeout: Duration) -> Listing {
    let url = route.base_url.join("models").unwrap_or_else(|_| route.base_url.clone());
    let target = route.base_url.to_string();
    let fail = |evidence: String, hint: Option<String>| {
        Listing::Failed(Check::new(route.name, &target, Status::Fail, evidence).with_hint(hint))
    };
    let http = match reqwest::Client::builder()
        .user_agent(concat!("agentry/", env!("CARGO_PKG_VERSION")))
        .timeout(timeout)
        .build()
    {
        Ok(http) => http,
        Err(error) => return fail(crate::error_chain(&error), None),
    };
    let mut request = http.get(url.clone());
    if let Some(credential) = &route.credential {
        if let Err(error) = secrets::header_safe(credential) {
            return fail(error.to_string(), None);
        }
        request = request.bearer_auth(credential.expose());
    }
    let response = match request.send().await {
        Ok(response) => response,
        Err(error) if error.is_timeout() => {
            return fail(format!("GET {url}: no answer within {timeout:?}"), None);
        }
        Err(source) => {
            // The product's own error for it, with its hint (Model Runner named as such).
            let error = LlmError::Connect { url: url.to_string(), source: source.without_url() };
            return fail(error.to_string(), error.hint());
        }
    };
    let status = response.status();
    if status.as_u16() == 401 {
        let evidence = match &route.credential {
            Some(c) => format!(
                "GET {url}: HTTP 401: the key {} ({}) from {} was rejected",
                c.name(),
                c.fingerprint(),
                c.source()
            ),
            None => format!("GET {url}: HTTP 401: the server wants a key, and this route sends none"),
        };
        let hint = "rotate the secret (overwrite its file; a run picks the new value up without a restart), or check \
                    that model.cloud.base_url is the provider the key is for";
        return fail(evidence, Some(hint.to_owned()));
    }
    if !status.is_success() {
        return Listing::Unlisted(format!("GET {url} answered HTTP {}, no model list", status.as_u16()));
    }
    match response.json::<Value>().await.ok().as_ref().and_then(model_ids) {
        Some(models) => Listing::Models(models),
        None => Listing::Unlisted(format!("GET {url} is not an OpenAI model list")),
    }
}

/// What the completion probe saw.
enum Probe {
    /// The model answered: with these tool calls (none: text only), and this finish reason.
    Answered { calls: Vec<String>, finish_reason: Option<String>, text: Option<String> },
    /// The call failed.
    Failed(LlmError),
}

impl Probe {
    fn check(&self, route: &Route) -> Check {
        let name = format!("{}.tools", route.name);
        let target = route.base_url.to_string();
        match self {
            Self::Answered { calls, .. } if !calls.is_empty() => {
                Check::new(name, target, Status::Pass, format!("{} calls tools ({})", route.model, calls.join(", ")))
            }
            Self::Answered { finish_reason, text, .. } => {
                let mut evidence = format!("{}: {NO_TOOL_CALLS}", route.model);
                if let Some(reason) = finish_reason {
                    evidence.push_str(&format!(" (finish_reason {reason:?}"));
                    if let Some(text) = text.as_deref().filter(|t| !t.trim().is_empty()) {
                        let head: String = text.trim().chars().take(60).collect();
                        evidence.push_str(&format!(", text {head:?}"));
                    }
                    evidence.push(')');
                }
                Check::new(name, target, Status::Warn, evidence).with_hint(Some(
                    "choose a model that calls tools (MODEL_RUNNER_MODEL / OPENAI_MODEL_NAME, e.g. ai/qwen3 or \
                     ai/llama3.2); llama.cpp's server needs --jinja and a chat template with tools"
                        .to_owned(),
                ))
            }
            Self::Failed(error) => {
                let evidence = match (error, &route.credential) {
                    (LlmError::Auth { url }, Some(c)) => format!(
                        "{url}: HTTP 401: the key {} ({}) from {} was rejected",
                        c.name(),
                        c.fingerprint(),
                        c.source()
                    ),
                    _ => error.to_string(),
                };
                Check::new(name, target, Status::Fail, evidence).with_hint(error.hint())
            }
        }
    }
}

/// One completion with the product's system prompt and `save_research` tool.
async fn probe_tools(settings: &Settings, route: &Route, timeout: Duration) -> Probe {
    let overall = timeout * COMPLETION_TIMEOUT_FACTOR;
    let mut policy = settings.model.client_policy();
    policy.max_retries = 0;
    policy.request_timeout = overall;
    policy.first_token_timeout = policy.first_token_timeout.min(overall);
    policy.idle_timeout = policy.idle_timeout.min(overall);
    let client = match ChatClient::new(policy) {
        Ok(client) => client,
        Err(source) => {
            return Probe::Failed(LlmError::Connect { url: route.base_url.to_string(), source: source.without_url() });
        }
    };
    let question = "Define agentry doctor. (This is a connection check: call save_research once, with topic \
                    \"agentry doctor\" and research_content \"ok\".)";
    let messages = [
        Message::System { content: settings.agent.system_prompt.replace("{question}", question) },
        Message::User { content: question.to_owned() },
    ];
    let tools = [crate::actors::tool_executor::save_research_definition()];
    let request = ChatRequest {
        model: &route.model,
        temperature: 0.0,
        max_tokens: PROBE_MAX_TOKENS.min(settings.model.max_tokens),
        tools: &tools,
        messages: &messages,
    };
    let endpoint =
        Endpoint { base_url: route.base_url.clone(), model: route.model.clone(), credential: route.credential.clone() };
    let limiter = Limiter::new(route.limits, 1);
    let deadline = Deadline::after(overall);
    let log = Arc::new(CallLog::default());
    match client.send(&endpoint, &request, &log, &deadline, &limiter).await {
        Ok(completion) => {
            let choice = completion.response.choices.into_iter().next();
            let (calls, finish_reason, text) = match choice {
                Some(choice) => (
                    choice.message.tool_calls.unwrap_or_default().into_iter().map(|c| c.function.name).collect(),
                    choice.finish_reason,
                    choice.message.content,
                ),
                None => (Vec::new(), None, None),
            };
            Probe::Answered { calls, finish_reason, text }
        }
        Err(error) => Probe::Failed(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_runner_lists_tags_the_config_may_leave_out() {
        assert!(same_model("ai/gemma3:latest", "ai/gemma3"));
        assert!(same_model("ai/gemma3", "ai/gemma3:latest"));
        assert!(!same_model("ai/gemma3:1B-Q4_K_M", "ai/gemma3"));
    }

    #[test]
    fn long_listings_are_cut() {
        let models: Vec<String> = (0..12).map(|i| format!("m{i}")).collect();
        assert!(shown_models(&models).ends_with("m9 and 2 more"));
        assert_eq!(shown_models(&[]), "no models");
    }
}
