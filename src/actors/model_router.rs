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

use super::secret_keeper::SecretState;
use super::{RESTART_WAIT, Slot, Unreachable};
use crate::config::Fallback;
use crate::llm::LlmError;
use crate::llm::client::{ChatClient, Completion, Endpoint};
use crate::llm::wire::{ChatRequest, Message, ToolDefinition};

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
pub struct RouteTarget {
    /// Base URL.
    pub base_url: Url,
    /// Model name.
    pub model: String,
}

/// Start-up arguments (cloned on every restart).
#[derive(Clone)]
pub struct ModelRouterArgs {
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

/// Messages.
pub enum ModelRouterMsg {
    /// Send one chat request.
    Chat {
        /// The conversation.
        messages: Arc<Vec<Message>>,
        /// Tools offered.
        tools: Arc<[ToolDefinition]>,
        /// Where the answer goes.
        reply: RpcReplyPort<Result<ChatOutcome, LlmError>>,
    },
}

/// The actor.
pub struct ModelRouter;

/// What a request will be sent with, decided in the handler.
struct Decision {
    route: Route,
    endpoint: Endpoint,
}

impl ModelRouterArgs {
    /// The route a request takes now, or why none can.
    fn decide(&self) -> Result<Decision, LlmError> {
        let state = self.credential.borrow().clone();
        match (&state, self.fallback) {
            (SecretState::Present(credential), _) => Ok(Decision {
                route: Route::Cloud,
                endpoint: Endpoint {
                    base_url: self.cloud.base_url.clone(),
                    model: self.cloud.model.clone(),
                    credential: Some(credential.clone()),
                },
            }),
            (_, Fallback::Local) => Ok(Decision {
                route: Route::Local,
                endpoint: Endpoint {
                    base_url: self.local.base_url.clone(),
                    model: self.local.model.clone(),
                    credential: None,
                },
            }),
            (SecretState::Invalid(cause), Fallback::None) => Err(LlmError::NoRoute {
                reason: format!("{cause}; model.fallback is \"none\""),
            }),
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

    /// A one-line description of the route, for `config check` and the start-up log.
    pub fn describe(&self) -> String {
        match self.decide() {
            Ok(Decision { route, endpoint }) => {
                let key = endpoint
                    .credential
                    .as_ref()
                    .map(|c| format!(", key {} {} from {}", c.name(), c.fingerprint(), c.source()))
                    .unwrap_or_default();
                format!(
                    "{route}: model {} at {}{key}",
                    endpoint.model, endpoint.base_url
                )
            }
            Err(error) => error.to_string(),
        }
    }
}

impl Actor for ModelRouter {
    type Msg = ModelRouterMsg;
    type State = ModelRouterArgs;
    type Arguments = ModelRouterArgs;

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        args: ModelRouterArgs,
    ) -> Result<ModelRouterArgs, ActorProcessingErr> {
        tracing::info!(route = %args.describe(), "model router ready");
        Ok(args)
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        message: ModelRouterMsg,
        state: &mut ModelRouterArgs,
    ) -> Result<(), ActorProcessingErr> {
        let ModelRouterMsg::Chat {
            messages,
            tools,
            reply,
        } = message;
        let decision = match state.decide() {
            Ok(decision) => decision,
            Err(error) => {
                let _ = reply.send(Err(error));
                return Ok(());
            }
        };
        let client = state.client.clone();
        let (temperature, max_tokens) = (state.temperature, state.max_tokens);
        tokio::spawn(
            async move {
                let Decision { route, endpoint } = decision;
                let request = ChatRequest {
                    model: &endpoint.model,
                    messages: &messages,
                    tools: &tools,
                    temperature,
                    max_tokens,
                };
                let result = client.complete(&endpoint, &request).await;
                drop(messages);
                let result = result.map(|completion| ChatOutcome {
                    completion,
                    route,
                    model: endpoint.model,
                });
                let _ = reply.send(result);
            }
            .in_current_span(),
        );
        Ok(())
    }
}

/// What callers hold.
#[derive(Clone)]
pub struct ModelRouterHandle {
    slot: Slot<ModelRouterMsg>,
    deadline: Duration,
}

impl ModelRouterHandle {
    /// A handle over `slot`; `deadline` bounds one call including all its retries.
    pub fn new(slot: Slot<ModelRouterMsg>, deadline: Duration) -> Self {
        Self { slot, deadline }
    }

    /// Sends one chat request.
    pub async fn chat(
        &self,
        messages: Arc<Vec<Message>>,
        tools: Arc<[ToolDefinition]>,
    ) -> Result<ChatOutcome, LlmError> {
        self.slot
            .call("model-router", RESTART_WAIT, self.deadline, |reply| {
                ModelRouterMsg::Chat {
                    messages,
                    tools,
                    reply,
                }
            })
            .await
            .map_err(|unreachable: Unreachable| LlmError::Unavailable {
                reason: unreachable.to_string(),
            })?
    }
}
