//! McpSession against an in-process MCP server (Streamable HTTP on loopback).

use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::config::McpEndpoint;
use crate::demo::loopback::Loopback;
use crate::demo::search_server::{mcp_url, serve_mcp};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, ContentBlock, ListToolsResult, PaginatedRequestParams, ServerCapabilities,
    ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::json;
use tokio::sync::Semaphore;

const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A server whose `tools/list` answers are counted and, after the first, held until the test
/// lets them through; each listing offers one tool named after its number (`listing_2`, …).
#[derive(Clone)]
struct Lister {
    listings: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
}

impl ServerHandler for Lister {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().enable_tool_list_changed().build())
    }

    async fn list_tools(
        &self,
        _: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let number = self.listings.fetch_add(1, Ordering::SeqCst) + 1;
        if number > 1 {
            let _held = self.gate.acquire().await.map_err(|_| ErrorData::internal_error("closed", None))?;
        }
        let schema = json!({"type": "object", "properties": {}});
        let tool = Tool::new(format!("listing_{number}"), "a listing", schema.as_object().cloned().unwrap_or_default());
        Ok(ListToolsResult::with_all_items(vec![tool]))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        Ok(CallToolResult::success(vec![ContentBlock::text(format!("ran {}", request.name))]).into())
    }
}

/// Serves `handler` over Streamable HTTP on loopback (the demo's server lifecycle); the server
/// stops when the returned value is dropped.
async fn serve<H: ServerHandler + Clone + Send + Sync + 'static>(handler: H) -> (Loopback, String) {
    let server = serve_mcp(std::net::SocketAddr::from(([127, 0, 0, 1], 0)), handler).await.expect("bind");
    let url = mcp_url(server.addr());
    (server, url)
}

/// A running McpSession for `url`, its handle and its actor.
async fn session(url: &str) -> (McpSessionHandle, ActorRef<McpSessionMsg>) {
    session_waiting(url, Duration::from_secs(5)).await
}

/// [`session`] whose handle waits up to `restart_wait` for a restarting session.
async fn session_waiting(url: &str, restart_wait: Duration) -> (McpSessionHandle, ActorRef<McpSessionMsg>) {
    let server = Arc::new(ServerSpec {
        name: "lister".into(),
        endpoint: McpEndpoint::StreamableHttp(url.parse().expect("url")),
        allow: Vec::new(),
        retry_tools: Vec::new(),
        max_concurrent_calls: 8,
        token_secret: None,
    });
    let (handle, slot, args) = test_session(server, restart_wait, Duration::from_secs(10), CALL_TIMEOUT);
    let (actor, _) = Actor::spawn(None, McpSession, args).await.expect("the session starts");
    slot.publish(actor.clone());
    (handle, actor)
}

fn tool_names(tools: &ServerTools) -> Vec<String> {
    tools.known().map(|t| t.iter().map(|t| t.name.to_string()).collect()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_list_changed_notifications_causes_one_relist_in_flight_and_one_queued() {
    let lister = Lister { listings: Arc::new(AtomicUsize::new(0)), gate: Arc::new(Semaphore::new(0)) };
    let (server, url) = serve(lister.clone()).await;
    let (handle, actor) = session(&url).await;
    let ready = handle.settled(Duration::from_secs(10)).await;
    assert_eq!(tool_names(&ready), ["listing_1"], "the first listing");

    // What the rmcp client hook does for each `notifications/tools/list_changed`, a hundred
    // times, while the first re-list is held by the server.
    for _ in 0..100 {
        actor.cast(McpSessionMsg::ToolsChanged(0)).expect("the session is running");
    }
    // The actor handles its mailbox in order: once this call is answered, it has seen every
    // notification.
    let answered = handle.call_tool("anything", None).await.expect("the call is answered");
    assert_eq!(mcp::result_text(&answered), "ran anything");
    assert!(
        lister.listings.load(Ordering::SeqCst) <= 2,
        "one re-list in flight, not one per notification: {} listings",
        lister.listings.load(Ordering::SeqCst)
    );

    lister.gate.add_permits(1000);
    let mut tools = handle.tools.clone();
    let later =
        |t: &ServerTools| tool_names(t).iter().any(|n| n.trim_start_matches("listing_").parse().unwrap_or(0) >= 3);
    tokio::time::timeout(Duration::from_secs(10), tools.wait_for(later))
        .await
        .expect("the queued re-list runs after the first one")
        .expect("the tools channel is open");
    // Another round trip: a re-list started after the queued one would have reached the server.
    handle.call_tool("anything", None).await.expect("the call is answered");
    assert_eq!(lister.listings.load(Ordering::SeqCst), 3, "the first listing, one re-list, one queued re-list");

    actor.stop(None);
    server.shutdown().await;
}

/// A server whose calls are counted and never answered.
#[derive(Clone, Default)]
struct Hanging {
    calls: Arc<AtomicUsize>,
}

impl ServerHandler for Hanging {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn call_tool(
        &self,
        _: CallToolRequestParams,
        _: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        std::future::pending().await
    }
}

/// A call cancelled with its question ends there: the handle does not take it for a call the
/// session never sent, and does not wait for another session to send it again.
#[tokio::test(flavor = "multi_thread")]
async fn a_call_cancelled_with_its_question_ends_without_waiting_for_a_restart() {
    let hanging = Hanging::default();
    let (server, url) = serve(hanging.clone()).await;
    // A handle that would wait ten minutes for a restarted session.
    let (handle, actor) = session_waiting(&url, Duration::from_secs(600)).await;
    handle.settled(Duration::from_secs(10)).await;
    let question = Deadline::none();
    let call = tokio::spawn({
        let (handle, question) = (handle.clone(), question.clone());
        async move { handle.call_tool_within("anything", None, &question).await }
    });
    while hanging.calls.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    question.cancel();
    actor.stop(None);
    let ended = tokio::time::timeout(Duration::from_secs(30), call).await;
    let error = ended.expect("the cancelled call ended, not waiting for a restart").expect("the call task");
    assert!(error.is_err(), "a cancelled call has no result");
    assert_eq!(hanging.calls.load(Ordering::SeqCst), 1);
    server.shutdown().await;
}

/// Issue 12, case 1: a session stopped while it is still connecting takes its connect with it:
/// a stdio server that never answers `initialize` is gone at once, not at `connect_timeout`.
#[tokio::test(flavor = "multi_thread")]
async fn a_session_stopped_while_connecting_ends_its_server() {
    let marker = format!("sleep {}", 30_000 + std::process::id() % 10_000);
    let server = Arc::new(ServerSpec {
        name: "silent".into(),
        endpoint: McpEndpoint::Stdio {
            command: vec!["sh".into(), "-c".into(), format!("exec {marker}")],
            env: vec!["PATH".into()],
        },
        allow: Vec::new(),
        retry_tools: Vec::new(),
        max_concurrent_calls: 8,
        token_secret: None,
    });
    let (_handle, _slot, args) = test_session(server, Duration::from_secs(5), Duration::from_secs(600), CALL_TIMEOUT);
    let running = || {
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
            .any(|cmdline| String::from_utf8_lossy(&cmdline).replace('\0', " ").trim_end() == marker)
    };
    let (actor, _) = Actor::spawn(None, McpSession, args).await.expect("the session starts");
    tokio::time::timeout(Duration::from_secs(30), async {
        while !running() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the server started");
    actor.stop_and_wait(None, None).await.expect("the session stops");
    let gone = tokio::time::timeout(Duration::from_secs(30), async {
        while running() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(gone.is_ok(), "the server outlived its session ({marker})");
}
