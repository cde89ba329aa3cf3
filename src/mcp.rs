//! MCP client side: connecting over each transport, and converting tools and results.
//!
//! - Streamable HTTP and stdio come from `rmcp`; legacy HTTP+SSE (protocol 2024-11-05, what
//!   `docker mcp gateway run --transport=sse` serves) is [`legacy_sse`], an rmcp `Transport`.
//! - [`connect`] opens a session: transport, `initialize` with agentry's `clientInfo`, done.
//!   Every step is bounded by the connect timeout.
//! - [`tool_definition`] turns an MCP tool (JSON Schema input) into an OpenAI function tool;
//!   [`result_text`] turns a `CallToolResult` into the text the model reads.
//! - Malformed JSON-RPC: rmcp drops, without a word, an answer it cannot match to a request,
//!   so the call would wait for its timeout. Both HTTP transports check answers where they can
//!   be seen (legacy SSE: the transport itself; Streamable HTTP: each request's POST reply, by
//!   `CheckedHttp`), warn once per session per kind of defect, and turn an answer that can no
//!   longer come into an error for its call, at once.
//!
//! The session's lifecycle (restarts, the tool list over time) belongs to the `McpSession`
//! actor; nothing here keeps state.

mod error;
mod ledger;
pub mod legacy_sse;
pub mod stdio;

pub use error::{ConnectError, McpError, SessionEnded};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use rmcp::ClientHandler;
use rmcp::model::{
    CallToolResult, ClientCapabilities, ClientConfig, ContentBlock, Implementation, ProtocolVersion, Tool,
};
use rmcp::model::{ErrorData, JsonRpcMessage, RequestId, ServerJsonRpcMessage};
use rmcp::service::NotificationContext;
use rmcp::service::{
    ClientInitializeError, ClientLifecycleMode, ClientServiceExt, RoleClient, RunningService, ServiceExt,
};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::{
    SseError, StreamableHttpClient, StreamableHttpClientTransportConfig, StreamableHttpError,
    StreamableHttpPostResponse, StreamableHttpResponseLimits,
};
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
    /// The spec of `server`, one of `mcp`'s servers.
    pub fn of(server: &crate::config::McpServerSettings, mcp: &crate::config::McpSettings) -> Self {
        Self {
            name: server.name.clone(),
            endpoint: server.endpoint.clone(),
            allow: server.tools.clone(),
            retry_tools: server.retry_tools.clone(),
            max_concurrent_calls: mcp.max_concurrent_calls.max(1),
            token_secret: (!server.token_secret.is_empty()).then(|| server.token_secret.clone()),
        }
    }

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
                    let checked = CheckedHttp::new(http.clone(), url.path());
                    let transport = StreamableHttpClientTransport::with_client(checked, config.clone());
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
                child.args(args).env_clear().envs(passthrough_env(env));
                let transport = stdio::StdioTransport::spawn(child, program, &spec.name)
                    .map_err(|source| spawn_failed(program, source))?;
                client.clone().serve(transport).await.map_err(handshake)
            }
        }
    };
    tokio::time::timeout(timeout, open)
        .await
        .map_err(|_| failed(ConnectError::NoAnswer { step: "initialize", timeout }))?
}

/// Whether a request that could not be delivered says the session is gone, not just this
/// request: the server cannot be reached (connection refused, DNS, connect timeout) or no longer
/// knows the session (HTTP 404 on Streamable HTTP). A 5xx from a proxy or a connection reset in
/// the middle of one request is not: that request fails and the session goes on.
pub fn is_session_gone(error: &rmcp::service::ServiceError) -> bool {
    use rmcp::transport::streamable_http_client::StreamableHttpError;

    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if current.downcast_ref::<reqwest::Error>().is_some_and(reqwest::Error::is_connect)
            || current
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
            || match current.downcast_ref::<StreamableHttpError<reqwest::Error>>() {
                // rmcp does not give the client's error as the source: looked at here.
                Some(StreamableHttpError::Client(error)) => error.is_connect(),
                Some(StreamableHttpError::SessionExpired | StreamableHttpError::TransportChannelClosed) => true,
                _ => false,
            }
        {
            return true;
        }
        source = current.source();
    }
    false
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

// ---- malformed JSON-RPC -----------------------------------------------------------------

/// What a server can get wrong in a message; each is warned about once per session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Defect {
    /// Not a JSON-RPC message at all.
    NotJsonRpc,
    /// A response under an id that was not the request's.
    UnknownId,
    /// An error response without an id.
    ErrorWithoutId,
    /// A message longer than agentry reads.
    TooLarge,
}

/// The defects a session has warned about.
#[derive(Debug, Default)]
pub(crate) struct Defects(std::collections::HashSet<Defect>);

impl Defects {
    /// Warns the first time a defect shows in this session; later ones go to `debug`.
    pub(crate) fn warn(&mut self, defect: Defect, what: &str, endpoint: &str) {
        if self.0.insert(defect) {
            tracing::warn!(endpoint, "{what} (later defects of this kind are logged at debug level)");
        } else {
            tracing::debug!(endpoint, "{what}");
        }
    }
}

/// What is wrong with a message that is not JSON-RPC, in words (`value`: its JSON, if it is).
pub(crate) fn malformation(value: Option<&Value>, error: &serde_json::Error) -> String {
    let Some(value) = value else {
        return format!("not JSON ({error})");
    };
    let Some(object) = value.as_object() else {
        return "not a JSON object".to_owned();
    };
    if object.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return "`jsonrpc` is not \"2.0\"".to_owned();
    }
    match (object.contains_key("method"), object.contains_key("result"), object.contains_key("error")) {
        (false, false, false) => "a response with neither `result` nor `error`".to_owned(),
        (false, true, true) => "a response with both `result` and `error`".to_owned(),
        (false, true, false) => format!("a response whose `result` cannot be read ({error})"),
        (false, false, true) => format!("an error response whose `error` cannot be read ({error})"),
        (true, ..) => format!("a request or notification that cannot be read ({error})"),
    }
}

/// The error answer that ends request `id` at once, saying `what` went wrong.
pub(crate) fn failure(id: RequestId, what: String) -> ServerJsonRpcMessage {
    ServerJsonRpcMessage::error(ErrorData::internal_error(what, None), Some(id))
}

/// Whether `answer` is the id of `request` (`"3"` answers `3`, as rmcp allows).
fn same_id(answer: &RequestId, request: &RequestId) -> bool {
    answer == request
        || matches!((answer, request), (RequestId::String(text), RequestId::Number(n)) if text.parse() == Ok(*n))
}

/// rmcp's reqwest client for Streamable HTTP, checking the reply to each request's POST (a
/// JSON body, or the request's own event stream): an answer under another id, an error
/// without an id, or an unreadable message naming the request becomes an error answer for
/// that request. Unchecked, rmcp drops the first two (the call waits for its timeout) and
/// ends the stream of the third as if the connection were lost.
#[derive(Clone)]
struct CheckedHttp {
    http: reqwest::Client,
    /// The MCP endpoint's path, for logs.
    endpoint: Arc<str>,
    defects: Arc<std::sync::Mutex<Defects>>,
}

impl CheckedHttp {
    fn new(http: reqwest::Client, endpoint: &str) -> Self {
        Self { http, endpoint: endpoint.into(), defects: Arc::default() }
    }

    fn warn(&self, defect: Defect, what: &str) {
        self.defects.lock().unwrap_or_else(std::sync::PoisonError::into_inner).warn(defect, what, &self.endpoint);
    }

    /// The reply to request `id`'s POST, checked.
    fn checked(&self, id: RequestId, reply: StreamableHttpPostResponse) -> StreamableHttpPostResponse {
        match reply {
            StreamableHttpPostResponse::Json(message, session) => {
                let message = self.mismatch(&id, &message).unwrap_or(message);
                StreamableHttpPostResponse::Json(message, session)
            }
            StreamableHttpPostResponse::Sse(events, session) => {
                let this = self.clone();
                let events = events.map(move |event| event.map(|event| this.checked_event(&id, event)));
                StreamableHttpPostResponse::Sse(events.boxed(), session)
            }
            other => other,
        }
    }

    /// For an answer received for request `id` that answers something else: the error that
    /// ends `id` instead.
    fn mismatch(&self, id: &RequestId, message: &ServerJsonRpcMessage) -> Option<ServerJsonRpcMessage> {
        let (what, defect) = match message {
            JsonRpcMessage::Response(response) if !same_id(&response.id, id) => {
                (format!("the MCP server answered request {id} with id {}", response.id), Defect::UnknownId)
            }
            JsonRpcMessage::Error(error) => match &error.id {
                Some(other) if !same_id(other, id) => (
                    format!(
                        "the MCP server answered request {id} with an error for id {other}: {}",
                        error.error.message
                    ),
                    Defect::UnknownId,
                ),
                None => (
                    format!(
                        "the MCP server answered request {id} with an error without an id (code {}: {})",
                        error.error.code.0, error.error.message
                    ),
                    Defect::ErrorWithoutId,
                ),
                Some(_) => return None,
            },
            _ => return None,
        };
        self.warn(defect, &what);
        Some(failure(id.clone(), what))
    }

    /// An event on request `id`'s stream, checked like a JSON reply; unreadable data that
    /// names `id` ends it too. Other events pass unchanged.
    fn checked_event(&self, id: &RequestId, mut event: sse_stream::Sse) -> sse_stream::Sse {
        let is_message = matches!(event.event.as_deref(), None | Some("" | "message"));
        let Some(data) = event.data.as_deref().filter(|d| is_message && !d.trim().is_empty()) else {
            return event;
        };
        let replacement = match serde_json::from_str::<ServerJsonRpcMessage>(data) {
            Ok(message) => self.mismatch(id, &message),
            Err(error) => {
                let value = serde_json::from_str::<Value>(data).ok();
                let what = format!(
                    "the MCP server sent a message that is not JSON-RPC: {}",
                    malformation(value.as_ref(), &error)
                );
                self.warn(Defect::NotJsonRpc, &what);
                let names_id = value
                    .as_ref()
                    .and_then(Value::as_object)
                    .filter(|object| !object.contains_key("method"))
                    .and_then(|object| serde_json::from_value::<RequestId>(object.get("id")?.clone()).ok())
                    .is_some_and(|answer| same_id(&answer, id));
                names_id.then(|| failure(id.clone(), what))
            }
        };
        if let Some(text) = replacement.and_then(|message| serde_json::to_string(&message).ok()) {
            event.data = Some(text);
        }
        event
    }
}

type HttpResult<T> = Result<T, StreamableHttpError<reqwest::Error>>;

impl StreamableHttpClient for CheckedHttp {
    type Error = reqwest::Error;

    fn post_message(
        &self,
        uri: Arc<str>,
        message: rmcp::model::ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<reqwest::header::HeaderName, HeaderValue>,
    ) -> impl Future<Output = HttpResult<StreamableHttpPostResponse>> + Send + '_ {
        let limits = StreamableHttpResponseLimits::default();
        self.post_message_with_response_limits(uri, message, session_id, auth_header, custom_headers, limits)
    }

    fn post_message_with_response_limits(
        &self,
        uri: Arc<str>,
        message: rmcp::model::ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<reqwest::header::HeaderName, HeaderValue>,
        limits: StreamableHttpResponseLimits,
    ) -> impl Future<Output = HttpResult<StreamableHttpPostResponse>> + Send + '_ {
        let request = match &message {
            JsonRpcMessage::Request(request) => Some(request.id.clone()),
            _ => None,
        };
        async move {
            let reply = self
                .http
                .post_message_with_response_limits(uri, message, session_id, auth_header, custom_headers, limits)
                .await?;
            Ok(match request {
                Some(id) => self.checked(id, reply),
                None => reply,
            })
        }
    }

    fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        auth_header: Option<String>,
        custom_headers: HashMap<reqwest::header::HeaderName, HeaderValue>,
    ) -> impl Future<Output = HttpResult<()>> + Send + '_ {
        self.http.delete_session(uri, session_id, auth_header, custom_headers)
    }

    fn get_stream(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<reqwest::header::HeaderName, HeaderValue>,
    ) -> impl Future<Output = HttpResult<futures::stream::BoxStream<'static, Result<sse_stream::Sse, SseError>>>> + Send + '_
    {
        self.http.get_stream(uri, session_id, last_event_id, auth_header, custom_headers)
    }

    fn get_stream_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<reqwest::header::HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> impl Future<Output = HttpResult<futures::stream::BoxStream<'static, Result<sse_stream::Sse, SseError>>>> + Send + '_
    {
        self.http.get_stream_with_max_sse_event_size(
            uri,
            session_id,
            last_event_id,
            auth_header,
            custom_headers,
            max_sse_event_size,
        )
    }
}
