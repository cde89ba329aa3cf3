//! ModelRouter: chooses where each chat request goes and sends it.
//!
//! - **Owns**: the two routes (cloud: OpenAI or compatible, with the API key; local: Docker
//!   Model Runner or any OpenAI-compatible server, no key), the fallback rule, the HTTP client
//!   (one connection pool), and a subscription to the API key in SecretKeeper.
//! - **Accepts**: `Chat { messages, tools }`. The conversation is shared (`Arc`), not copied:
//!   the task drops its reference before replying, so the caller can append in place.
//! - **Concurrency**: the handler only chooses a route (reading the latest key from the
//!   `watch` channel) and spawns the HTTP call; the spawned task owns the reply port. Requests
//!   run side by side; a rotated key is used from the next request on, while requests in flight
//!   finish with the key they started with.
//! - **Routes**: a usable key → cloud. No key, or a placeholder → local when
//!   `model.fallback = "local"`, else the request fails with `NoRoute` naming the secret.
//! - **Supervisor**: the root, restart at once (the key is re-read from the channel).
//! - **Shutdown**: requests in flight finish in their tasks; nothing to clean up.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::watch;
use tracing::Instrument;
use url::Url;

use super::secret_keeper::{SecretKeeperHandle, SecretState};
use super::{RESTART_WAIT, Slot, Unreachable};
use crate::config::Fallback;
use crate::deadline::Deadline;
use crate::llm::LlmError;
use crate::llm::client::{CallLog, ChatClient, Completion, Endpoint};
use crate::llm::rate_limit::Limiter;
use crate::llm::wire::{ChatRequest, Message, ToolDefinition};
use crate::secrets::{Credential, Fingerprint};

/// Which route served a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Route {
    /// OpenAI (or compatible) with the API key.
    Cloud,
    /// The local model.
    Local,
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Cloud => "cloud",
            Self::Local => "local",
        })
    }
}

/// A model's address.
#[derive(Debug, Clone)]
pub(crate) struct RouteTarget {
    /// Base URL.
    pub base_url: Url,
    /// Model name.
    pub model: String,
    /// The route's pacing, shared by every request on it (and across restarts).
    pub limiter: Limiter,
}

/// Start-up arguments (cloned on every restart).
#[derive(Clone)]
pub(crate) struct ModelRouterArgs {
    /// HTTP client with its retry policy.
    pub client: ChatClient,
    /// Cloud route.
    pub cloud: RouteTarget,
    /// Local route.
    pub local: RouteTarget,
    /// Where to go without a usable key.
    pub fallback: Fallback,
    /// Name of the API key secret (for messages).
    pub secret_name: String,
    /// The API key, as SecretKeeper publishes it.
    pub credential: watch::Receiver<SecretState>,
    /// To ask for a reload after a 401.
    pub secrets: SecretKeeperHandle,
    /// Sampling temperature.
    pub temperature: f32,
    /// Completion limit.
    pub max_tokens: u32,
}

/// A successful chat call.
#[derive(Debug, Clone)]
pub struct ChatOutcome {
    /// The HTTP result.
    pub completion: Completion,
    /// The route taken.
    pub route: Route,
    /// The model asked for.
    pub model: String,
}

pub(crate) enum ModelRouterMsg {
    /// Send one chat request.
    Chat {
        /// The conversation.
        messages: Arc<Vec<Message>>,
        /// Tools offered.
        tools: Arc<[ToolDefinition]>,
        /// The question's: the request takes what is left of it, and is dropped (its
        /// connection closed) when the question ends.
        deadline: Deadline,
        /// The question's count of retries and 429s.
        log: Arc<CallLog>,
        /// Where the answer goes.
        reply: RpcReplyPort<Result<ChatOutcome, LlmError>>,
    },
    /// The cloud rejected this key (HTTP 401) and a reload found the same value.
    Rejected(Fingerprint),
}

pub(crate) struct ModelRouter;

/// The arguments, the rejected key (if any), the route last taken.
pub(crate) struct ModelRouterState {
    args: ModelRouterArgs,
    rejected: Option<Fingerprint>,
    last_route: Option<Route>,
    last_key: Option<Fingerprint>,
}

/// What a request will be sent with, decided in the handler.
struct Decision {
    route: Route,
    endpoint: Endpoint,
}

impl ModelRouterArgs {
    /// The pacing of `route`.
    fn limiter(&self, route: Route) -> &Limiter {
        match route {
            Route::Cloud => &self.cloud.limiter,
            Route::Local => &self.local.limiter,
        }
    }

    fn local_endpoint(&self) -> Endpoint {
        Endpoint { base_url: self.local.base_url.clone(), model: self.local.model.clone(), credential: None }
    }

    /// The route a request takes now, or why none can. A key the cloud rejected counts as no
    /// key until it changes.
    fn decide(&self, rejected: Option<Fingerprint>) -> Result<Decision, LlmError> {
        let state = self.credential.borrow().clone();
        match (&state, self.fallback) {
            (SecretState::Present(credential), _) if rejected != Some(credential.fingerprint()) => Ok(Decision {
                route: Route::Cloud,
                endpoint: Endpoint {
                    base_url: self.cloud.base_url.clone(),
                    model: self.cloud.model.clone(),
                    credential: Some(credential.clone()),
                },
            }),
            (_, Fallback::Local) => Ok(Decision { route: Route::Local, endpoint: self.local_endpoint() }),
            (SecretState::Present(credential), Fallback::None) => Err(self.key_rejected(credential.fingerprint())),
            (SecretState::Invalid(cause), Fallback::None) => {
                Err(LlmError::NoRoute { reason: format!("{cause}; model.fallback is \"none\"") })
            }
            (_, Fallback::None) => Err(LlmError::NoRoute {
                reason: format!(
                    "no API key: secret {name} is not in <secrets.dir>/{name}, ${var}_FILE or ${var} (or is a placeholder), \
                     and model.fallback is \"none\"",
                    name = self.secret_name,
                    var = self.secret_name.to_uppercase()
                ),
            }),
        }
    }

    fn key_rejected(&self, fingerprint: Fingerprint) -> LlmError {
        LlmError::KeyRejected { secret: self.secret_name.clone(), fingerprint: fingerprint.to_string() }
    }

    /// A one-line description of the route, for `config check` and the start-up log.
    pub(crate) fn describe(&self) -> String {
        match self.decide(None) {
            Ok(Decision { route, endpoint }) => {
                let key = endpoint
                    .credential
                    .as_ref()
                    .map(|c| format!(", key {} {} from {}", c.name(), c.fingerprint(), c.source()))
                    .unwrap_or_default();
                let limits = self.limiter(route).snapshot();
                let limits = match (limits.requests_per_window, limits.tokens_per_window) {
                    (None, None) => String::new(),
                    (requests, tokens) => format!(
                        ", rate limits {} requests/min, {} tokens/min",
                        requests.map_or("unknown".into(), |n| n.to_string()),
                        tokens.map_or("unknown".into(), |n| n.to_string())
                    ),
                };
                format!("{route}: model {} at {}{key}{limits}", endpoint.model, endpoint.base_url)
            }
            Err(error) => error.to_string(),
        }
    }
}

impl Actor for ModelRouter {
    type Msg = ModelRouterMsg;
    type State = ModelRouterState;
    type Arguments = ModelRouterArgs;

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        args: ModelRouterArgs,
    ) -> Result<ModelRouterState, ActorProcessingErr> {
        tracing::info!(route = %args.describe(), "model router ready");
        Ok(ModelRouterState { args, rejected: None, last_route: None, last_key: None })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: ModelRouterMsg,
        state: &mut ModelRouterState,
    ) -> Result<(), ActorProcessingErr> {
        let (messages, tools, deadline, log, reply) = match message {
            ModelRouterMsg::Chat { messages, tools, deadline, log, reply } => (messages, tools, deadline, log, reply),
            ModelRouterMsg::Rejected(fingerprint) => {
                if state.rejected != Some(fingerprint) {
                    tracing::error!(secret = %state.args.secret_name, %fingerprint, fallback = ?state.args.fallback,
                        "the API key was rejected (HTTP 401) and reloading found the same value; \
                         questions go to the fallback until the secret changes");
                    state.rejected = Some(fingerprint);
                }
                return Ok(());
            }
        };
        // A rejected key is not tried again until the secret changes, to any value: one that was
        // rejected before may have been re-enabled.
        if state.args.credential.has_changed().unwrap_or(false) {
            state.args.credential.mark_unchanged();
            state.rejected = None;
        }
        let decision = match state.args.decide(state.rejected) {
            Ok(decision) => decision,
            Err(error) => {
                error.tell_hint();
                let _ = reply.send(Err(error));
                return Ok(());
            }
        };
        if state.last_route != Some(decision.route) {
            if let Some(previous) = state.last_route {
                tracing::warn!(from = %previous, to = %decision.route, route = %state.args.describe(), "model route changed");
            }
            state.last_route = Some(decision.route);
            record_route(decision.route);
        }
        let used = decision.endpoint.credential.as_ref().map(Credential::fingerprint);
        let span = chat_span(&decision, state.args.temperature, state.args.max_tokens);
        if used.is_some() && state.last_key.is_some() && used != state.last_key {
            // A rotation becomes visible in the trace of the first request that uses it.
            tracing::info!(parent: &span, secret = %state.args.secret_name, fingerprint = ?used, "credential rotated");
        }
        state.last_key = used.or(state.last_key);
        let args = state.args.clone();
        let (model, route) = (decision.endpoint.model.clone(), decision.route);
        tokio::spawn(
            async move {
                let started = std::time::Instant::now();
                // A question that ended takes its request with it: dropping the send closes the
                // connection. Nobody waits for the reply any more.
                let result = tokio::select! {
                    result = send(&args, &myself, decision, (&messages, &tools), &log, &deadline) => result,
                    () = deadline.cancelled() => {
                        tracing::debug!("the question ended: its model request is dropped");
                        return;
                    }
                };
                let route = result.as_ref().map_or(route, |outcome| outcome.route);
                record_chat(&tracing::Span::current(), (&model, route), &result, started.elapsed(), &messages);
                drop(messages);
                let _ = reply.send(result);
            }
            .instrument(span),
        );
        Ok(())
    }
}

/// The `chat {model}` client span (GenAI conventions), child of the caller's span (ractor
/// carries the sender's span to the handler).
fn chat_span(decision: &Decision, temperature: f32, max_tokens: u32) -> tracing::Span {
    let endpoint = &decision.endpoint;
    tracing::info_span!(
        "chat",
        otel.name = %format!("chat {}", endpoint.model),
        otel.kind = "client",
        gen_ai.operation.name = "chat",
        gen_ai.provider.name = "openai",
        gen_ai.request.model = %endpoint.model,
        // Via the decimal text: f64::from(0.1f32) would show 0.10000000149011612.
        gen_ai.request.temperature = temperature.to_string().parse::<f64>().unwrap_or_default(),
        gen_ai.request.max_tokens = max_tokens,
        gen_ai.response.model = tracing::field::Empty,
        gen_ai.response.id = tracing::field::Empty,
        gen_ai.usage.input_tokens = tracing::field::Empty,
        gen_ai.usage.output_tokens = tracing::field::Empty,
        server.address = endpoint.base_url.host_str().unwrap_or_default(),
        server.port = endpoint.base_url.port_or_known_default().unwrap_or_default(),
        agentry.route = %decision.route,
        error.type = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    )
}

/// Records a finished chat call on its span and in the metrics, once per call.
fn record_chat(
    span: &tracing::Span,
    (request_model, route): (&str, Route),
    result: &Result<ChatOutcome, LlmError>,
    elapsed: std::time::Duration,
    messages: &[Message],
) {
    use opentelemetry::KeyValue;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use crate::telemetry::metrics::{kv, metrics};
    use crate::telemetry::names::attr;

    let mut attributes = vec![
        kv(attr::OPERATION_NAME, "chat"),
        kv(attr::PROVIDER_NAME, "openai"),
        kv(attr::REQUEST_MODEL, request_model.to_owned()),
        kv(attr::ROUTE, route.to_string()),
    ];
    match result {
        Ok(outcome) => {
            let response = &outcome.completion.response;
            span.record("gen_ai.response.model", response.model.as_str());
            span.record("gen_ai.response.id", response.id.as_str());
            let reasons: Vec<opentelemetry::StringValue> =
                response.choices.iter().filter_map(|c| c.finish_reason.clone()).map(Into::into).collect();
            span.set_attribute("gen_ai.response.finish_reasons", opentelemetry::Value::Array(reasons.into()));
            attributes.push(kv(attr::RESPONSE_MODEL, response.model.clone()));
            if let Some(first) = outcome.completion.time_to_first_chunk {
                span.set_attribute(attr::RESPONSE_TIME_TO_FIRST_CHUNK, first.as_secs_f64());
                metrics().time_to_first_chunk.record(first.as_secs_f64(), &attributes);
            }
            if let Some(usage) = response.usage {
                // As i64: OpenTelemetry has no unsigned integers (tracing's u64 becomes a string).
                span.record("gen_ai.usage.input_tokens", i64::try_from(usage.prompt_tokens).unwrap_or(i64::MAX));
                span.record("gen_ai.usage.output_tokens", i64::try_from(usage.completion_tokens).unwrap_or(i64::MAX));
                // Prompt tokens the provider served from its cache (OpenAI, llama.cpp's server).
                if usage.prompt_tokens_details.is_some() {
                    let cached = i64::try_from(usage.cached_tokens()).unwrap_or(i64::MAX);
                    span.set_attribute(attr::CACHE_READ_INPUT_TOKENS, cached);
                }
                for (kind, tokens) in [("input", usage.prompt_tokens), ("output", usage.completion_tokens)] {
                    let mut with_type = attributes.clone();
                    with_type.push(KeyValue::new(attr::TOKEN_TYPE, kind));
                    metrics().token_usage.record(tokens, &with_type);
                }
            }
            if crate::telemetry::capture_content() {
                span.set_attribute("gen_ai.input.messages", serde_json::to_string(messages).unwrap_or_default());
                let output: Vec<&crate::llm::wire::ResponseMessage> =
                    response.choices.iter().map(|c| &c.message).collect();
                span.set_attribute("gen_ai.output.messages", format!("{output:?}"));
            }
        }
        Err(error) => {
            span.record("error.type", error.kind());
            span.record("otel.status_code", "ERROR");
            attributes.push(kv(attr::ERROR_TYPE, error.kind()));
        }
    }
    metrics().operation_duration.record(elapsed.as_secs_f64(), &attributes);
}

/// The route gauge: 1 for the route in use, 0 for the other.
fn record_route(route: Route) {
    use crate::telemetry::metrics::{kv, metrics};
    use crate::telemetry::names::attr;
    for candidate in [Route::Cloud, Route::Local] {
        metrics().route.record(u64::from(candidate == route), &[kv(attr::ROUTE, candidate.to_string())]);
    }
}

fn request<'a>(
    args: &ModelRouterArgs,
    model: &'a str,
    messages: &'a [Message],
    tools: &'a [ToolDefinition],
) -> ChatRequest<'a> {
    ChatRequest { model, messages, tools, temperature: args.temperature, max_tokens: args.max_tokens }
}

/// Sends one request on the decided route. A 401 from the cloud asks SecretKeeper to re-read
/// the key: a new value is tried once; the same value is reported rejected and the request
/// goes to the local route when that is the fallback.
async fn send(
    args: &ModelRouterArgs,
    myself: &ActorRef<ModelRouterMsg>,
    decision: Decision,
    (messages, tools): (&[Message], &[ToolDefinition]),
    log: &CallLog,
    deadline: &Deadline,
) -> Result<ChatOutcome, LlmError> {
    let Decision { route, mut endpoint } = decision;
    let mut result = args
        .client
        .complete(&endpoint, &request(args, &endpoint.model, messages, tools), log, deadline, args.limiter(route))
        .await;
    if route == Route::Cloud && matches!(result, Err(LlmError::Auth { .. })) {
        let used = endpoint.credential.as_ref().map(Credential::fingerprint);
        let reloaded = match used {
            Some(rejected) => args.secrets.reload_rejected(&args.secret_name, rejected).await,
            None => args.secrets.reload(&args.secret_name).await,
        };
        let current = args.credential.borrow().credential().cloned();
        match current {
            Some(credential) if Some(credential.fingerprint()) != used => {
                tracing::info!(secret = %args.secret_name, fingerprint = %credential.fingerprint(), "retrying with the reloaded key");
                endpoint.credential = Some(credential);
                result = args
                    .client
                    .complete(
                        &endpoint,
                        &request(args, &endpoint.model, messages, tools),
                        log,
                        deadline,
                        args.limiter(route),
                    )
                    .await;
            }
            _ => tracing::debug!(?reloaded, "reload found no new key"),
        }
        if matches!(result, Err(LlmError::Auth { .. })) {
            let Some(fingerprint) = endpoint.credential.as_ref().map(Credential::fingerprint) else {
                return result.map(|completion| ChatOutcome { completion, route, model: endpoint.model });
            };
            let _ = myself.cast(ModelRouterMsg::Rejected(fingerprint));
            return match args.fallback {
                Fallback::Local => {
                    let local = args.local_endpoint();
                    let completion = args
                        .client
                        .complete(
                            &local,
                            &request(args, &local.model, messages, tools),
                            log,
                            deadline,
                            args.limiter(Route::Local),
                        )
                        .await?;
                    Ok(ChatOutcome { completion, route: Route::Local, model: local.model })
                }
                Fallback::None => Err(args.key_rejected(fingerprint)),
            };
        }
    }
    result.map(|completion| ChatOutcome { completion, route, model: endpoint.model })
}

/// What callers hold.
#[derive(Clone)]
pub struct ModelRouterHandle {
    slot: Slot<ModelRouterMsg>,
    deadline: Duration,
    /// The routes' limiters, to show the pacing (the router owns clones of the same ones).
    limiters: Arc<[Limiter]>,
}

impl ModelRouterHandle {
    /// Shows the pacing of `limiters` (the routes').
    pub(crate) fn with_limiters(mut self, limiters: Vec<Limiter>) -> Self {
        self.limiters = limiters.into();
        self
    }

    /// What holds the model requests back now, in words (`tokens, 1.2s`), if a route's rate
    /// limits do: for the progress line.
    pub fn pacing(&self) -> Option<String> {
        self.limiters.iter().find_map(|limiter| {
            let snapshot = limiter.snapshot();
            let bucket = snapshot.paced_by?;
            Some(match snapshot.paced_for {
                Some(wait) => format!("{}, {:.1}s", bucket.as_str(), wait.as_secs_f64()),
                None => bucket.as_str().to_owned(),
            })
        })
    }

    /// A handle over `slot`; `deadline` bounds one call including all its retries.
    pub(crate) fn new(slot: Slot<ModelRouterMsg>, deadline: Duration) -> Self {
        Self { slot, deadline, limiters: Arc::new([]) }
    }

    /// Sends one chat request within the question's `deadline` (the request, its retries and
    /// backoffs take what is left of it; it is dropped when the question ends); its retries and
    /// 429s are counted in `log` (the question's) as they happen.
    pub async fn chat(
        &self,
        messages: Arc<Vec<Message>>,
        tools: Arc<[ToolDefinition]>,
        deadline: &Deadline,
        log: &Arc<CallLog>,
    ) -> Result<ChatOutcome, LlmError> {
        let (wait, answer_within) = (deadline.cap(RESTART_WAIT), deadline.cap(self.deadline));
        let (deadline, calls) = (deadline.child(), log.clone());
        self.slot
            .call("model-router", wait, answer_within, |reply| ModelRouterMsg::Chat {
                messages,
                tools,
                deadline,
                log: calls,
                reply,
            })
            .await
            .map_err(|unreachable: Unreachable| {
                // Given up at the deadline while retrying: say after what.
                let retrying = log.last_failure().map(|failure| format!("; the call was retrying after: {failure}"));
                LlmError::Unavailable { reason: format!("{unreachable}{}", retrying.unwrap_or_default()) }
            })?
    }
}

#[cfg(test)]
mod tests;
