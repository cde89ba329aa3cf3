//! Supervision keeps its promises (issue 12): a failed request is a failed request, not a dead
//! session; sessions are closed on every path out of McpSession.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use agentry::actors::mcp_session::ServerTools;
use agentry::app::Runtime;
use agentry::config::{McpEndpoint, McpServerSettings};
use agentry::demo::loopback::Loopback;
use agentry::demo::search_server::{DemoSearchHandler, mcp_url, serve_mcp};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::json;

use crate::mcp_restarts::{FAST_RESTARTS, in_process_settings};

/// A `tools/call` whose body holds this is answered 500 by the proxy.
const FAIL_MARKER: &str = "fail-this-post";

/// A reverse proxy in front of a Streamable HTTP MCP server that answers some `tools/call`
/// POSTs with HTTP 500, as a flaky gateway does, and counts what the client opens through it.
struct FlakyProxy {
    server: Loopback,
    counts: Arc<Counts>,
}

#[derive(Default)]
struct Counts {
    /// Handshakes (`initialize`, or `server/discover` in the stateless protocol): sessions opened.
    sessions: AtomicUsize,
    /// GET event streams open now.
    open_streams: AtomicUsize,
}

#[derive(Clone)]
struct Upstream {
    url: String,
    http: reqwest::Client,
    counts: Arc<Counts>,
}

/// Decrements the open-stream count when the streamed body is dropped.
struct OpenStream(Arc<Counts>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.open_streams.fetch_sub(1, Ordering::SeqCst);
    }
}

impl FlakyProxy {
    async fn start(upstream: String) -> Self {
        let counts = Arc::new(Counts::default());
        let state = Upstream { url: upstream, http: reqwest::Client::new(), counts: counts.clone() };
        let server =
            Loopback::start_local("flaky proxy", move |_| axum::Router::new().fallback(forward).with_state(state))
                .await
                .expect("the proxy binds");
        Self { server, counts }
    }

    fn url(&self) -> String {
        mcp_url(self.server.addr())
    }
}

async fn forward(State(upstream): State<Upstream>, method: Method, headers: HeaderMap, body: Bytes) -> Response {
    let text = String::from_utf8_lossy(&body);
    if method == Method::POST && text.contains("\"tools/call\"") && text.contains(FAIL_MARKER) {
        return (StatusCode::INTERNAL_SERVER_ERROR, "upstream failed").into_response();
    }
    if method == Method::POST && (text.contains("\"initialize\"") || text.contains("\"server/discover\"")) {
        upstream.counts.sessions.fetch_add(1, Ordering::SeqCst);
    }
    let mut request = upstream.http.request(method.clone(), &upstream.url).body(body);
    for (name, value) in &headers {
        if !matches!(name.as_str(), "host" | "content-length") {
            request = request.header(name, value);
        }
    }
    let Ok(reply) = request.send().await else {
        return (StatusCode::BAD_GATEWAY, "upstream unreachable").into_response();
    };
    let mut response = Response::builder().status(reply.status().as_u16());
    for (name, value) in reply.headers() {
        if !matches!(name.as_str(), "content-length" | "transfer-encoding" | "connection") {
            response = response.header(name, value);
        }
    }
    let body = if method == Method::GET && reply.status().is_success() {
        upstream.counts.open_streams.fetch_add(1, Ordering::SeqCst);
        let open = OpenStream(upstream.counts.clone());
        Body::from_stream(reply.bytes_stream().map(move |chunk| {
            let _open = &open;
            chunk
        }))
    } else {
        Body::from_stream(reply.bytes_stream())
    };
    response.body(body).unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
}

/// Case 1: a POST answered 500 fails that call (retried once: `search` is read-only), while the
/// session stays up: no restart, no second session, no stream left open.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_post_fails_its_call_not_the_session() {
    let upstream = serve_mcp(([127, 0, 0, 1], 0).into(), DemoSearchHandler).await.expect("the MCP server starts");
    let proxy = FlakyProxy::start(mcp_url(upstream.addr())).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = McpServerSettings::new("flaky", McpEndpoint::http(&proxy.url()).expect("url")).with_tools(&["search"]);
    let runtime =
        Runtime::start(in_process_settings(dir.path(), vec![server], FAST_RESTARTS), Arc::new(|_: &str| None))
            .await
            .expect("runtime");
    let session = &runtime.servers[0];
    assert!(matches!(session.settled(Duration::from_secs(30)).await, ServerTools::Ready(_)));

    for _ in 0..2 {
        let error = session
            .call_tool("search", json!({"query": FAIL_MARKER}).as_object().cloned())
            .await
            .expect_err("the POST failed");
        assert!(error.to_string().contains("500"), "the call's error says what failed: {error}");
    }
    let answered = session.call_tool("search", json!({"query": "rust"}).as_object().cloned()).await;
    answered.expect("the same session answers");
    assert_eq!(runtime.restarts()["mcp-session:flaky"], 0, "a failed POST is not a dead session");
    assert_eq!(proxy.counts.sessions.load(Ordering::SeqCst), 1, "one session");
    assert!(proxy.counts.open_streams.load(Ordering::SeqCst) <= 1, "at most the session's own stream");

    runtime.shutdown().await;
    for _ in 0..200 {
        if proxy.counts.open_streams.load(Ordering::SeqCst) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(proxy.counts.open_streams.load(Ordering::SeqCst), 0, "shutdown closes the session");
    upstream.shutdown().await;
}
