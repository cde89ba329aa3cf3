//! Wiring: builds every actor's arguments from the settings, starts the supervision tree,
//! hands out the handles, and stops it all in order.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::actors::mcp_session::{McpSession, McpSessionArgs, McpSessionHandle, ServerTools};
use crate::actors::model_router::{ModelRouter, ModelRouterArgs, ModelRouterHandle, RouteTarget};
use crate::actors::research_writer::{Outcomes, ResearchWriter, ResearchWriterArgs, ResearchWriterHandle};
use crate::actors::secret_keeper::{EnvLookup, SecretKeeper, SecretKeeperHandle};
use crate::actors::supervisor::{
    BackoffPolicy, ChildSpec, Leaf, NestedSupervisor, RestartPolicy, SupervisorArgs, SupervisorHandle,
};
use crate::actors::tool_executor::{ToolExecutor, ToolExecutorArgs, ToolExecutorHandle};
use crate::actors::{ReadyMark, Slot};
use crate::agent::AgentContext;
use crate::config::Settings;
use crate::llm::client::ChatClient;
use crate::llm::rate_limit::Limiter;
use crate::mcp::ServerSpec;

/// A start-up failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A setting that only fails when used (e.g. a URL that cannot be a base).
    #[error("{0}")]
    Settings(String),
    /// The HTTP client could not be built (TLS roots).
    #[error("cannot build the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    /// The supervision tree did not start.
    #[error("the actors did not start: {0}")]
    Spawn(String),
}

/// A secret as the report shows it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SecretRow {
    /// Secret name.
    pub name: String,
    /// Where the value came from (`None`: absent).
    pub source: Option<String>,
    /// Fingerprint of the current value.
    pub fingerprint: Option<String>,
    /// Changes seen since start.
    pub rotations: u64,
}

/// The running actors and their handles.
pub struct Runtime {
    supervisor: SupervisorHandle,
    join: tokio::task::JoinHandle<()>,
    /// Credentials.
    pub secrets: SecretKeeperHandle,
    /// Model calls.
    pub model: ModelRouterHandle,
    /// Tool calls.
    pub tools: ToolExecutorHandle,
    /// Research files.
    pub writer: ResearchWriterHandle,
    /// One per MCP server.
    pub servers: Vec<McpSessionHandle>,
    router: ModelRouterArgs,
    settings: Arc<Settings>,
    supervised: Vec<Arc<dyn ChildSpec>>,
}

/// The MCP restart policy from `[mcp.restart]` (`DESIGN.md` §3).
fn mcp_backoff(settings: &crate::config::RestartSettings) -> BackoffPolicy {
    BackoffPolicy {
        initial: settings.initial_backoff,
        max: settings.max_backoff,
        max_restarts: settings.max_restarts,
        window: settings.window,
        cool_down: settings.cool_down,
    }
}

impl Runtime {
    /// Starts the supervision tree. `env` is where secrets' variables are looked up.
    pub async fn start(settings: Settings, env: EnvLookup) -> Result<Self, StartError> {
        Self::start_with(settings, env, true).await
    }

    /// Starts the supervision tree without the model router, for commands that ask no model
    /// (`tools`): no route is chosen or logged. [`Runtime::model`] then answers nothing.
    pub async fn start_without_model(settings: Settings, env: EnvLookup) -> Result<Self, StartError> {
        Self::start_with(settings, env, false).await
    }

    async fn start_with(settings: Settings, env: EnvLookup, with_model: bool) -> Result<Self, StartError> {
        let settings = Arc::new(settings);
        let model = &settings.model;

        let (secrets, secret_args, secret_slot) = SecretKeeperHandle::new(
            settings.secret_specs(),
            settings.secrets.dir.clone(),
            settings.secrets.poll_interval,
            env,
        );

        let credential = secrets
            .subscribe(&model.cloud.api_key_secret)
            .ok_or_else(|| StartError::Settings("model.cloud.api_key_secret is not declared".into()))?;
        let client = ChatClient::new(model.client_policy())?.with_redactor(secrets.redactor());
        // One limiter per route, at most the batch's concurrency in flight.
        let concurrency = settings.batch.concurrency;
        // The cloud's first answer is quick and tells its limits: one request goes alone first.
        let target = |base: &crate::llm::BaseUrl, model: &str, limiter| RouteTarget {
            base_url: base.url().clone(),
            model: model.to_owned(),
            limiter,
        };
        let router = ModelRouterArgs {
            client,
            cloud: target(
                &model.cloud.base_url,
                &model.cloud.model,
                Limiter::new(model.cloud.rate_limit, concurrency).for_route("cloud").probe_first(),
            ),
            local: target(
                &model.local.base_url,
                &model.local.model,
                Limiter::new(model.local.rate_limit, concurrency).for_route("local"),
            ),
            fallback: model.fallback,
            secret_name: model.cloud.api_key_secret.clone(),
            credential,
            secrets: secrets.clone(),
            temperature: model.temperature,
            max_tokens: model.max_tokens,
        };
        // A call's deadline covers every retry: attempts plus the longest backoffs.
        // Waits for the rate limits are bounded by the question's deadline alone.
        let model_deadline = ((model.request_timeout + model.retry_max_delay) * (model.max_retries + 1))
            .max(settings.agent.question_timeout);
        let router_slot = Slot::default();
        let model_handle = ModelRouterHandle::new(router_slot.clone(), model_deadline)
            .with_limiters(vec![router.cloud.limiter.clone(), router.local.limiter.clone()]);

        let http = reqwest::Client::builder().user_agent(concat!("agentry/", env!("CARGO_PKG_VERSION"))).build()?;
        let mut session_specs: Vec<Arc<dyn ChildSpec>> = Vec::new();
        let mut servers = Vec::new();
        for server in &settings.mcp.servers {
            let spec = Arc::new(ServerSpec::of(server, &settings.mcp));
            let (handle, slot, tools) =
                McpSessionHandle::new(spec.clone(), settings.mcp.restart_wait, settings.mcp.call_timeout);
            let ready = Arc::new(ReadyMark::default());
            let args = McpSessionArgs {
                token: spec.token_secret.as_deref().and_then(|name| secrets.subscribe(name)),
                server: spec,
                secrets: secrets.clone(),
                http: http.clone(),
                tools,
                connect_timeout: settings.mcp.connect_timeout,
                call_timeout: settings.mcp.call_timeout,
                ready: ready.clone(),
            };
            let name = server.name.clone();
            let leaf = Leaf::new(
                format!("mcp-session:{}", server.name),
                || McpSession,
                args,
                slot,
                RestartPolicy::Backoff(mcp_backoff(&settings.mcp.restart)),
            )
            .ready_when(ready)
            .on_restart(move || {
                use crate::telemetry::metrics::{kv, metrics};
                metrics().mcp_restarts.add(1, &[kv(crate::telemetry::names::attr::MCP_SERVER, name.clone())]);
            });
            session_specs.push(Arc::new(leaf) as Arc<dyn ChildSpec>);
            servers.push(handle);
        }

        let writer_slot = Slot::default();
        let outcomes = Outcomes::new();
        let writer = ResearchWriterHandle::new(writer_slot.clone(), outcomes.clone());
        let tools_slot = Slot::default();
        let tool_deadline = settings.mcp.call_timeout + settings.mcp.connect_timeout + Duration::from_secs(5);
        let tools = ToolExecutorHandle::new(tools_slot.clone(), tool_deadline);

        let model_router: Option<Arc<dyn ChildSpec>> = with_model.then(|| {
            Arc::new(Leaf::new("model-router", || ModelRouter, router.clone(), router_slot, RestartPolicy::Immediate))
                as Arc<dyn ChildSpec>
        });
        let children: Vec<Arc<dyn ChildSpec>> = [
            Some(Arc::new(Leaf::new(
                "secret-keeper",
                || SecretKeeper,
                secret_args,
                secret_slot,
                RestartPolicy::Immediate,
            )) as Arc<dyn ChildSpec>),
            model_router,
            Some(Arc::new(NestedSupervisor::new("mcp-supervisor", session_specs.clone()))),
            Some(Arc::new(Leaf::new(
                "tool-executor",
                || ToolExecutor,
                ToolExecutorArgs { servers: servers.clone(), writer: writer.clone(), redactor: secrets.redactor() },
                tools_slot,
                RestartPolicy::Immediate,
            ))),
            Some(Arc::new(Leaf::new(
                "research-writer",
                || ResearchWriter,
                ResearchWriterArgs { dir: settings.batch.output_dir.clone(), outcomes },
                writer_slot,
                RestartPolicy::Immediate,
            ))),
        ]
        .into_iter()
        .flatten()
        .collect();
        let supervised = children.iter().chain(&session_specs).cloned().collect();
        let (supervisor, join) = SupervisorHandle::spawn(SupervisorArgs { name: "root".into(), children })
            .await
            .map_err(|e| StartError::Spawn(e.to_string()))?;
        Ok(Self {
            supervisor,
            join,
            secrets,
            model: model_handle,
            tools,
            writer,
            servers,
            router,
            settings,
            supervised,
        })
    }

    /// Waits (bounded) until every MCP server has connected or failed once, so the first
    /// question sees the tools. Returns each server's state.
    pub async fn tools_settled(&self, wait: Duration) -> Vec<(String, ServerTools)> {
        let waits = self.servers.iter().map(|s| async move { (s.server().name.clone(), s.settled(wait).await) });
        futures::future::join_all(waits).await
    }

    /// The handles a question needs.
    pub fn agent_context(&self, route_label: &'static str) -> AgentContext {
        AgentContext {
            model: self.model.clone(),
            tools: self.tools.clone(),
            writer: self.writer.clone(),
            settings: Arc::new(self.settings.agent.clone()),
            route_label,
        }
    }

    /// How many times each actor was restarted since start (name → count).
    pub fn restarts(&self) -> BTreeMap<String, u64> {
        self.supervised.iter().map(|spec| (spec.name().to_owned(), spec.restarts())).collect()
    }

    /// Each secret's source, fingerprint and rotation count (never its value).
    pub fn secret_summary(&self) -> Vec<SecretRow> {
        let names = self.settings.secret_specs().into_iter().map(|spec| spec.name);
        names
            .map(|name| {
                let state = self.secrets.current(&name);
                let credential = state.credential();
                SecretRow {
                    source: credential.map(|c| c.source().to_string()),
                    fingerprint: credential.map(|c| c.fingerprint().to_string()),
                    rotations: self.secrets.rotations(&name),
                    name,
                }
            })
            .collect()
    }

    /// The route a question would take now, in words.
    pub fn describe_route(&self) -> String {
        self.router.describe()
    }

    /// Stops every actor, children in reverse start order.
    pub async fn shutdown(self) {
        self.supervisor.shutdown().await;
        let _ = tokio::time::timeout(Duration::from_secs(10), self.join).await;
    }
}
