//! MCP servers that misbehave on purpose.
//!
//! - [`HostileNamesServer`] (Streamable HTTP, rmcp): tools whose names no model accepts
//!   (spaces, NUL, a newline, an escape sequence, 300 characters) and descriptions with control
//!   characters; every call answers with the name the server received.
//! - [`MalformedSseServer`] (legacy HTTP+SSE, by hand): answers tool calls with what no SDK
//!   server sends: a response with neither `result` nor `error`, a response under another id,
//!   an error without an id, an event that is not JSON.
//! - [`MalformedHttpServer`] (Streamable HTTP, by hand): the same kinds of answers, as the
//!   JSON body of a tool call's POST or on its own event stream.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use agentry::demo::loopback::Loopback;
use agentry::demo::search_server::{mcp_url, serve_mcp};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ListToolsResult, PaginatedRequestParams,
    ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler};

/// The tool names [`HostileNamesServer`] offers, in order.
pub fn hostile_tool_names() -> Vec<String> {
    vec![
        "web search".to_owned(),
        "nul\0byte".to_owned(),
        "line\nbreak".to_owned(),
        "\u{1b}[31mred\u{1b}[0m".to_owned(),
        "x".repeat(300),
        "search".to_owned(),
    ]
}

#[derive(Debug, Clone, Copy)]
struct HostileNames;

impl ServerHandler for HostileNames {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        _: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let schema = serde_json::json!({"type": "object", "properties": {}});
        let schema = schema.as_object().cloned().unwrap_or_default();
        let tools = hostile_tool_names()
            .into_iter()
            .map(|name| Tool::new(name, "Rings the bell\u{7}\r\nand clears the screen\u{1b}[2J", schema.clone()))
            .collect();
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        Ok(CallToolResult::success(vec![ContentBlock::text(format!("ran {:?}", request.name.as_ref()))]).into())
    }
}

/// A Streamable HTTP MCP server offering [`hostile_tool_names`]. Stops on
/// [`shutdown`](Self::shutdown) or drop.
#[derive(Debug)]
pub struct HostileNamesServer {
    server: Loopback,
}

impl HostileNamesServer {
    /// Serves on `127.0.0.1`, any free port.
    pub async fn start() -> std::io::Result<Self> {
        Ok(Self { server: serve_mcp(SocketAddr::from(([127, 0, 0, 1], 0)), HostileNames).await? })
    }

    /// The MCP endpoint, `http://127.0.0.1:PORT/mcp`.
    pub fn url(&self) -> String {
        mcp_url(self.server.addr())
    }

    /// Stops the server.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}

/// The tools [`MalformedSseServer`] offers and what each answers (`id` is the request's):
/// - `ok`: a proper result, the text `ok`;
/// - `no_result`: `{"jsonrpc":"2.0","id":id}`;
/// - `wrong_id`: a proper result under the id `id + 1000000`;
/// - `no_id_error`: an error response with `"id": null`;
/// - `not_json`: an event whose data is `{"jsonrpc":"2.0","id":` and nothing more.
pub const MALFORMED_TOOLS: [&str; 5] = ["ok", "no_result", "wrong_id", "no_id_error", "not_json"];

/// The one open event stream (the latest GET wins).
type Events = Arc<Mutex<Option<mpsc::UnboundedSender<String>>>>;

/// A legacy HTTP+SSE MCP server (protocol 2024-11-05: `GET /sse`, `POST /messages`) whose
/// tool calls answer with malformed JSON-RPC; see [`MALFORMED_TOOLS`]. Stops on
/// [`shutdown`](Self::shutdown) or drop.
#[derive(Debug)]
pub struct MalformedSseServer {
    server: Loopback,
}

impl MalformedSseServer {
    /// Serves on `127.0.0.1`, any free port.
    pub async fn start() -> std::io::Result<Self> {
        let events: Events = Arc::default();
        let server = Loopback::start_local("malformed legacy SSE MCP server", move |_| {
            axum::Router::new()
                .route("/sse", axum::routing::get(open_stream))
                .route("/messages", axum::routing::post(receive))
                .with_state(events)
        })
        .await?;
        Ok(Self { server })
    }

    /// The SSE URL, `http://127.0.0.1:PORT/sse`.
    pub fn url(&self) -> String {
        format!("http://{}/sse", self.server.addr())
    }

    /// Stops the server.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}

async fn open_stream(State(events): State<Events>) -> Response {
    let (tx, rx) = mpsc::unbounded_channel::<String>();
    if let Ok(mut open) = events.lock() {
        *open = Some(tx);
    }
    let endpoint =
        futures::stream::once(async { Ok::<_, Infallible>(Bytes::from("event: endpoint\ndata: /messages\n\n")) });
    let messages = futures::stream::unfold(rx, |mut rx| async move {
        let data = rx.recv().await?;
        Some((Ok::<_, Infallible>(Bytes::from(format!("event: message\ndata: {data}\n\n"))), rx))
    });
    let body = Body::from_stream(futures::StreamExt::chain(endpoint, messages));
    ([(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

async fn receive(State(events): State<Events>, body: String) -> StatusCode {
    let Ok(message) = serde_json::from_str::<Value>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    let (Some(id), Some(method)) = (message.get("id").cloned(), message.get("method").and_then(Value::as_str)) else {
        return StatusCode::ACCEPTED; // a notification, or our answer to a request of ours
    };
    let answer = match method {
        "initialize" => Some(result(
            &id,
            json!({
                "protocolVersion": "2024-11-05",
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "malformed", "version": "0"}
            }),
        )),
        "ping" => Some(result(&id, json!({}))),
        "tools/list" => {
            let tools: Vec<Value> = MALFORMED_TOOLS
                .iter()
                .map(|name| json!({"name": name, "inputSchema": {"type": "object", "properties": {}}}))
                .collect();
            Some(result(&id, json!({"tools": tools})))
        }
        "tools/call" => match message.pointer("/params/name").and_then(Value::as_str).unwrap_or_default() {
            "ok" => Some(result(&id, json!({"content": [{"type": "text", "text": "ok"}]}))),
            "no_result" => Some(json!({"jsonrpc": "2.0", "id": id}).to_string()),
            "wrong_id" => {
                let wrong = json!(id.as_i64().unwrap_or_default() + 1_000_000);
                Some(result(&wrong, json!({"content": [{"type": "text", "text": "for someone else"}]})))
            }
            "no_id_error" => Some(
                json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32600, "message": "Invalid Request"}})
                    .to_string(),
            ),
            "not_json" => Some(r#"{"jsonrpc":"2.0","id":"#.to_owned()),
            other => Some(
                json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32602, "message": format!("no tool {other}")}})
                    .to_string(),
            ),
        },
        _ => Some(
            json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": "Method not found"}}).to_string(),
        ),
    };
    if let (Some(answer), Ok(open)) = (answer, events.lock())
        && let Some(tx) = open.as_ref()
    {
        let _ = tx.send(answer);
    }
    StatusCode::ACCEPTED
}

fn result(id: &Value, result: Value) -> String {
    json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string()
}

/// The tools [`MalformedHttpServer`] offers and what each call's POST gets back:
/// - `ok`: a proper JSON result, the text `ok`;
/// - `wrong_id_json`: a JSON result under the id `id + 1000000`;
/// - `wrong_id_sse`: the same, as the one event of the request's stream;
/// - `no_result_sse`: `{"jsonrpc":"2.0","id":id}` on the request's stream;
/// - `no_id_error`: a JSON error response with `"id": null`;
/// - `wrong_shape`: well-formed JSON-RPC, but the result is a tool list, not a call's result.
pub const MALFORMED_HTTP_TOOLS: [&str; 6] =
    ["ok", "wrong_id_json", "wrong_id_sse", "no_result_sse", "no_id_error", "wrong_shape"];

/// A Streamable HTTP MCP server (`/mcp`, JSON replies, no server-to-client stream) whose tool
/// calls answer with malformed JSON-RPC; see [`MALFORMED_HTTP_TOOLS`]. Stops on
/// [`shutdown`](Self::shutdown) or drop.
#[derive(Debug)]
pub struct MalformedHttpServer {
    server: Loopback,
}

impl MalformedHttpServer {
    /// Serves on `127.0.0.1`, any free port.
    pub async fn start() -> std::io::Result<Self> {
        let server = Loopback::start_local("malformed Streamable HTTP MCP server", |_| {
            axum::Router::new().route(
                "/mcp",
                axum::routing::post(answer_post)
                    .get(|| async { StatusCode::METHOD_NOT_ALLOWED })
                    .delete(|| async { StatusCode::METHOD_NOT_ALLOWED }),
            )
        })
        .await?;
        Ok(Self { server })
    }

    /// The MCP endpoint, `http://127.0.0.1:PORT/mcp`.
    pub fn url(&self) -> String {
        mcp_url(self.server.addr())
    }

    /// Stops the server.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}

async fn answer_post(body: String) -> Response {
    let Ok(message) = serde_json::from_str::<Value>(&body) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let (Some(id), Some(method)) = (message.get("id").cloned(), message.get("method").and_then(Value::as_str)) else {
        return StatusCode::ACCEPTED.into_response();
    };
    let json_reply = |text: String| {
        ([(header::CONTENT_TYPE, "application/json"), (header::HeaderName::from_static("mcp-session-id"), "s1")], text)
            .into_response()
    };
    let sse_reply = |text: String| {
        let body = format!("event: message\ndata: {text}\n\n");
        ([(header::CONTENT_TYPE, "text/event-stream"), (header::HeaderName::from_static("mcp-session-id"), "s1")], body)
            .into_response()
    };
    match method {
        "initialize" => json_reply(result(
            &id,
            json!({
                "protocolVersion": "2025-03-26",
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "malformed", "version": "0"}
            }),
        )),
        "ping" => json_reply(result(&id, json!({}))),
        "tools/list" => {
            let tools: Vec<Value> = MALFORMED_HTTP_TOOLS
                .iter()
                .map(|name| json!({"name": name, "inputSchema": {"type": "object", "properties": {}}}))
                .collect();
            json_reply(result(&id, json!({"tools": tools})))
        }
        "tools/call" => {
            let text = |t: &str| json!({"content": [{"type": "text", "text": t}]});
            let wrong = json!(id.as_i64().unwrap_or_default() + 1_000_000);
            match message.pointer("/params/name").and_then(Value::as_str).unwrap_or_default() {
                "ok" => json_reply(result(&id, text("ok"))),
                "wrong_id_json" => json_reply(result(&wrong, text("for someone else"))),
                "wrong_id_sse" => sse_reply(result(&wrong, text("for someone else"))),
                "no_result_sse" => sse_reply(json!({"jsonrpc": "2.0", "id": id}).to_string()),
                "wrong_shape" => json_reply(result(&id, json!({"tools": []}))),
                "no_id_error" => json_reply(
                    json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32600, "message": "Invalid Request"}})
                        .to_string(),
                ),
                other => json_reply(
                    json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32602, "message": format!("no tool {other}")}})
                        .to_string(),
                ),
            }
        }
        // `server/discover` included: the server speaks only the `initialize` handshake.
        _ => json_reply(
            json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": "Method not found"}}).to_string(),
        ),
    }
}
