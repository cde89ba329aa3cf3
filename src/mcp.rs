//! MCP client side: connecting over each transport, and converting tools and results.
//!
//! - Streamable HTTP and stdio come from `rmcp`; legacy HTTP+SSE (protocol 2024-11-05, what
//!   `docker mcp gateway run --transport=sse` serves) is [`legacy_sse`], an rmcp `Transport`.
//! - [`connect`] opens a session: transport, `initialize` with agentry's `clientInfo`, done.
//!   Every step is bounded by the connect timeout.
//! - [`tool_definition`] turns an MCP tool (JSON Schema input) into an OpenAI function tool;
//!   [`result_text`] turns a `CallToolResult` into the text the model reads.
//!
//! The session's lifecycle (restarts, the tool list over time) belongs to the `McpSession`
//! actor; nothing here keeps state.

mod error;
pub mod legacy_sse;

pub use error::{ConnectError, McpError, SessionEnded};

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use rmcp::ClientHandler;
use rmcp::model::{
    CallToolResult, ClientCapabilities, ClientConfig, ContentBlock, Implementation, ProtocolVersion, Tool,
};
use rmcp::service::NotificationContext;
use rmcp::service::{
    ClientInitializeError, ClientLifecycleMode, ClientServiceExt, RoleClient, RunningService, ServiceExt,
};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use serde_json::{Value, json};

use crate::config::McpEndpoint;
use crate::llm::wire::ToolDefinition;
use crate::secrets::Credential;

/// A live MCP session.
pub type Session = RunningService<RoleClient, Client>;

/// Called when the server says its tool list changed.
pub type ToolsChanged = Arc<dyn Fn() + Send + Sync>;

/// agentry's side of an MCP session: its `clientInfo`, and a hook for
/// `notifications/tools/list_changed` (the McpSession re-lists the tools).
#[derive(Clone)]
pub struct Client {
    info: ClientConfig,
    tools_changed: Option<ToolsChanged>,
}

impl Client {
    /// A client that reports tool-list changes to `tools_changed`.
    pub fn new(tools_changed: Option<ToolsChanged>) -> Self {
        Self { info: client_info(), tools_changed }
    }
}

impl ClientHandler for Client {
    fn get_info(&self) -> ClientConfig {
        self.info.clone()
    }

    fn on_tool_list_changed(
        &self,
        _context: NotificationContext<RoleClient>,
    ) -> impl Future<Output = ()> + rmcp::service::MaybeSendFuture + '_ {
        if let Some(tools_changed) = &self.tools_changed {
            tools_changed();
        }
        std::future::ready(())
    }
}

/// One configured server, resolved.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    /// Unique name.
    pub name: String,
    /// Where and how.
    pub endpoint: McpEndpoint,
    /// Allowed tool names (empty: all).
    pub allow: Vec<String>,
    /// Tools safe to call again after the session died mid-call (beyond the server's hints).
    pub retry_tools: Vec<String>,
    /// Most requests in flight at once (Streamable HTTP).
    pub max_concurrent_calls: usize,
    /// Name of the bearer-token secret, if any.
    pub token_secret: Option<String>,
}

impl ServerSpec {
    /// Whether a tool passes the allowlist.
    pub fn allows(&self, tool: &str) -> bool {
        self.allow.is_empty() || self.allow.iter().any(|t| t == tool)
    }

    /// The transport's name for logs and telemetry (`network.transport`-like).
    pub fn transport_name(&self) -> &'static str {
        match self.endpoint {
            McpEndpoint::LegacySse(_) => "sse",
            McpEndpoint::StreamableHttp(_) => "streamable-http",
            McpEndpoint::Stdio { .. } => "stdio",
        }
    }

    /// Where the server is, for messages (a URL or the program name, never arguments).
    pub fn location(&self) -> String {
        match &self.endpoint {
            McpEndpoint::LegacySse(url) | McpEndpoint::StreamableHttp(url) => url.to_string(),
            McpEndpoint::Stdio { command, .. } => {
                format!("stdio:{}", command.first().map(String::as_str).unwrap_or(""))
            }
        }
    }
}

/// agentry's `clientInfo`: name and crate version; tools only, no client capabilities.
///
/// Over Streamable HTTP, [`connect`] first offers 2026-07-28 (`server/discover`) and falls back
/// to `initialize` with this config's version, the newest that has `initialize` (2025-11-25);
/// servers answer with the version they speak, down to 2024-11-05 for legacy SSE.
pub fn client_info() -> ClientConfig {
    ClientConfig::new(ClientCapabilities::default(), Implementation::new("agentry", env!("CARGO_PKG_VERSION")))
        .with_protocol_version(ProtocolVersion::LATEST_WITH_INITIALIZE)
}

/// Opens and initialises a session, bounded by `timeout`.
pub async fn connect(
    spec: &ServerSpec,
    http: &reqwest::Client,
    token: Option<&Credential>,
    timeout: Duration,
    tools_changed: Option<ToolsChanged>,
) -> Result<Session, McpError> {
    let client = Client::new(tools_changed);
    let failed =
        |cause: ConnectError| McpError::Connect { server: spec.name.clone(), location: spec.location(), cause };
    let refused =
        || McpError::Auth { server: spec.name.clone(), location: spec.location(), secret: spec.token_secret.clone() };
    let handshake = |e: ClientInitializeError| {
        if e.is_authorization_required() { refused() } else { failed(ConnectError::Initialize(Box::new(e))) }
    };
    let open = async {
        match &spec.endpoint {
            McpEndpoint::StreamableHttp(url) => {
                let mut config = StreamableHttpClientTransportConfig::with_uri(url.as_str())
                    .max_concurrent_requests(spec.max_concurrent_calls);
                config.auth_header = token.map(|t| t.expose().to_owned());
                let attempt = |lifecycle: ClientLifecycleMode| {
                    let transport = StreamableHttpClientTransport::with_client(http.clone(), config.clone());
                    client.clone().serve_with_lifecycle(transport, lifecycle)
                };
                // Newest protocol first (`server/discover`); rmcp falls back to `initialize` when
                // the server says it is a legacy one. Some servers answer `server/discover` with
                // an empty result instead of an error: those get `initialize` on a new connection.
                let auto = ClientLifecycleMode::Auto {
                    preferred_versions: vec![ProtocolVersion::V_2026_07_28],
                    legacy_version: Some(ProtocolVersion::LATEST_WITH_INITIALIZE),
                };
                match attempt(auto).await {
                    Err(
                        ClientInitializeError::ExpectedInitResult(_) | ClientInitializeError::ExpectedInitResponse(_),
                    ) => attempt(ClientLifecycleMode::Initialize).await.map_err(handshake),
                    other => other.map_err(handshake),
                }
            }
            McpEndpoint::LegacySse(url) => {
                let mut headers = HeaderMap::new();
                if let Some(token) = token {
                    let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose())).map_err(|_| {
                        failed(ConnectError::TokenNotHeaderSafe {
                            secret: token.name().to_owned(),
                            fingerprint: token.fingerprint().to_string(),
                        })
                    })?;
                    value.set_sensitive(true);
                    headers.insert(AUTHORIZATION, value);
                }
                let config = legacy_sse::LegacySseConfig {
                    url: url.clone(),
                    headers,
                    connect_timeout: timeout,
                    post_timeout: timeout,
                };
                let transport =
                    legacy_sse::LegacySseTransport::connect(http.clone(), config).await.map_err(|e| match e {
                        legacy_sse::LegacySseError::Status { status, .. } if matches!(status.as_u16(), 401 | 403) => {
                            refused()
                        }
                        e => failed(ConnectError::LegacySse(e)),
                    })?;
                client.clone().serve(transport).await.map_err(handshake)
            }
            McpEndpoint::Stdio { command, env } => {
                let spawn_failed =
                    |program: &str, source| failed(ConnectError::Spawn { program: program.to_owned(), source });
                let Some((program, args)) = command.split_first() else {
                    let empty = std::io::Error::new(std::io::ErrorKind::InvalidInput, "the command is empty");
                    return Err(spawn_failed("", empty));
                };
                let mut child = tokio::process::Command::new(program);
                child.args(args).env_clear().envs(passthrough_env(env)).stderr(Stdio::inherit()).kill_on_drop(true);
                let (transport, _stderr) = TokioChildProcess::builder(child)
                    .stderr(Stdio::inherit())
                    .spawn()
                    .map_err(|source| spawn_failed(program, source))?;
                client.clone().serve(transport).await.map_err(handshake)
            }
        }
    };
    tokio::time::timeout(timeout, open)
        .await
        .map_err(|_| failed(ConnectError::NoAnswer { step: "initialize", timeout }))?
}

/// Whether a failed request was refused for its credentials (HTTP 401/403), on either HTTP
/// transport.
pub fn is_auth_failure(error: &rmcp::service::ServiceError) -> bool {
    if error.is_authorization_required() {
        return true;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if let Some(legacy_sse::LegacySseError::Send { status: Some(status), .. }) = current.downcast_ref() {
            return matches!(status.as_u16(), 401 | 403);
        }
        source = current.source();
    }
    false
}

/// The variables a stdio child gets: only those named, and never one holding a secret of ours
/// (those are named `*_KEY`, `*_TOKEN`, `*_SECRET`, `*_PASSWORD` by convention and refused).
fn passthrough_env(names: &[String]) -> HashMap<String, String> {
    names
        .iter()
        .filter(|name| {
            let upper = name.to_uppercase();
            let secret = ["KEY", "TOKEN", "SECRET", "PASSWORD"]
                .iter()
                .any(|s| upper.ends_with(s) || upper.ends_with(&format!("{s}_FILE")));
            if secret {
                tracing::warn!(variable = %name, "not passed to an MCP child process: it looks like a secret");
            }
            !secret
        })
        .filter_map(|name| std::env::var(name).ok().map(|value| (name.clone(), value)))
        .collect()
}

/// The OpenAI function tool for an MCP tool, under the name the model will see.
pub fn tool_definition(exposed_name: &str, tool: &Tool) -> ToolDefinition {
    let mut parameters = Value::Object((*tool.input_schema).clone());
    // OpenAI wants an object schema with `properties`; some servers omit it for no-arg tools.
    if let Some(object) = parameters.as_object_mut() {
        object.entry("type").or_insert_with(|| json!("object"));
        object.entry("properties").or_insert_with(|| json!({}));
    }
    ToolDefinition::function(exposed_name, tool.description.as_deref().unwrap_or_default(), parameters)
}

/// Whether the server says a tool is safe to call twice (`readOnlyHint` or `idempotentHint`).
pub fn is_retry_safe(tool: &Tool) -> bool {
    tool.annotations.as_ref().is_some_and(|a| a.read_only_hint == Some(true) || a.idempotent_hint == Some(true))
}

/// The text the model reads for a tool result: text blocks joined, other content described,
/// structured content as JSON when there is no text.
pub fn result_text(result: &CallToolResult) -> String {
    let mut parts: Vec<String> = result
        .content
        .iter()
        .map(|block| match block {
            ContentBlock::Text(text) => text.text.clone(),
            ContentBlock::Image(image) => format!("[image: {}]", image.mime_type),
            ContentBlock::Audio(audio) => format!("[audio: {}]", audio.mime_type),
            ContentBlock::Resource(_) => "[embedded resource]".to_owned(),
            ContentBlock::ResourceLink(link) => format!("[resource: {}]", link.uri),
            _ => "[content of a kind agentry does not read]".to_owned(),
        })
        .collect();
    if parts.is_empty()
        && let Some(structured) = &result.structured_content
    {
        parts.push(structured.to_string());
    }
    parts.join("\n")
}
