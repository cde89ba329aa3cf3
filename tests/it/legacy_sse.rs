//! Integration tests of the legacy MCP HTTP+SSE client transport
//! (`agentry::mcp::legacy_sse`).
//!
//! * Against the project's Python peer (`tests/peers/mcp_search_server.py`,
//!   the official MCP Python SDK on `--transport sse`): the full rmcp client
//!   session as agentry runs it (`agentry::mcp::client_info()`), tool calls,
//!   concurrency, server-to-client traffic, bearer authentication, the server
//!   dying mid-call, and closing.
//! * Against tiny hand-written HTTP servers on raw TCP, for what a real SDK
//!   server will not do on demand: odd statuses, a foreign endpoint, failing
//!   POSTs, streams that never announce an endpoint, malformed or huge events.
//!
//! No test asserts on elapsed time. Every await that could hang on a
//! regression is bounded by [`bounded`], so a hang fails the test instead.
//!
//! Each test runs on a current-thread runtime (the `#[tokio::test]` default),
//! which lets [`LogCapture`] record, per test, everything agentry and rmcp log
//! and check that no secret ends up there.
//!
//! Needs the Python peer venv (`.ci/run` creates it).

// The shared peer helper; when this file becomes a module of the main
// integration binary (`tests/it/main.rs`, which already declares `peers`),
// drop these two lines.

use std::{
    future::Future,
    io::Write,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use agentry::mcp::legacy_sse::{LegacySseConfig, LegacySseError, LegacySseTransport};
use reqwest::header::{AUTHORIZATION, HeaderValue};
#[allow(deprecated)] // LoggingMessageNotificationParam, see `Recorder`
use rmcp::{
    ClientHandler, ErrorData, ServiceError, ServiceExt,
    model::{
        CallToolRequestParams, CallToolResult, ClientConfig, ClientJsonRpcMessage, ClientRequest, JsonRpcMessage,
        LoggingMessageNotificationParam, PingRequest, RequestId,
    },
    service::{NotificationContext, QuitReason, RequestContext, RoleClient},
    transport::Transport,
};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use url::Url;

use crate::peers::PythonMcpServer;

/// Upper bound on any single step that could hang. Generous (a loaded CI
/// machine is slow), but far below what a hang would take: the slow calls
/// below sleep for a day, and the fakes hold their connections until the
/// client goes away.
const BOUND: Duration = Duration::from_secs(60);

/// A bearer token the fakes expect; must never appear in errors or logs.
const FAKE_TOKEN: &str = "fake-bearer-4f1c9a7e";
/// A secret in the query of the fakes' SSE URL; likewise never shown.
const QUERY_SECRET: &str = "query-secret-93be01";

/// Awaits `future`, failing the test if it takes longer than [`BOUND`].
async fn bounded<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(BOUND, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: did not finish within {BOUND:?} (hang?)"))
}

// ----------------------------------------------------------------- logging

/// Records what agentry (trace), rmcp and reqwest (debug) log on this thread
/// while alive. With a current-thread runtime that includes the transport's
/// reader task and rmcp's service loop.
struct LogCapture {
    buf: Arc<Mutex<Vec<u8>>>,
    _guard: tracing::subscriber::DefaultGuard,
}

#[derive(Clone)]
struct CaptureWriter(Arc<Mutex<Vec<u8>>>);

impl Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut log) = self.0.lock() {
            log.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    fn install() -> Self {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = CaptureWriter(Arc::clone(&buf));
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("agentry=trace,rmcp=debug,reqwest=debug"))
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        Self { buf, _guard: tracing::subscriber::set_default(subscriber) }
    }

    fn text(&self) -> String {
        self.buf.lock().map(|log| String::from_utf8_lossy(&log).into_owned()).unwrap_or_default()
    }

    /// Asserts that none of `secrets` was logged, and that the transport did
    /// log (so that the check is not vacuous).
    fn assert_clean(&self, secrets: &[&str]) {
        let text = self.text();
        assert!(
            text.contains("agentry::mcp::legacy_sse"),
            "the transport logged nothing; the capture is broken:\n{text}"
        );
        for secret in secrets {
            assert!(!text.contains(secret), "secret {secret:?} was logged:\n{text}");
        }
    }
}

// ------------------------------------------------------ rmcp client helpers

/// agentry's client handler (`client_info()`), also recording what the server
/// sends us unasked: pings and log notifications. (rmcp deprecates logging,
/// after SEP-2577, but servers on the protocols legacy SSE carries send it.)
#[derive(Clone, Default)]
#[allow(deprecated)]
struct Recorder {
    pings: Arc<Mutex<usize>>,
    logs: Arc<Mutex<Vec<LoggingMessageNotificationParam>>>,
}

#[allow(deprecated)]
impl ClientHandler for Recorder {
    async fn ping(&self, _context: RequestContext<RoleClient>) -> Result<(), ErrorData> {
        *self.pings.lock().expect("pings lock") += 1;
        Ok(())
    }

    async fn on_logging_message(
        &self,
        params: LoggingMessageNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.logs.lock().expect("logs lock").push(params);
    }

    fn get_info(&self) -> ClientConfig {
        agentry::mcp::client_info()
    }
}

fn sse_config(url: &str, token: Option<&str>) -> LegacySseConfig {
    let mut config = LegacySseConfig::new(Url::parse(url).expect("SSE URL"));
    if let Some(token) = token {
        config.headers.insert(AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {token}")).expect("header value"));
    }
    // Long: a call that fails must fail because the session ended, not
    // because a POST timed out.
    config.connect_timeout = Duration::from_secs(30);
    config.post_timeout = Duration::from_secs(300);
    config
}

async fn connect(server: &PythonMcpServer, token: Option<&str>) -> LegacySseTransport {
    bounded("connect", LegacySseTransport::connect(reqwest::Client::new(), sse_config(&server.url(), token)))
        .await
        .expect("legacy SSE connect")
}

fn tool(name: &str, arguments: Value) -> CallToolRequestParams {
    let Value::Object(arguments) = arguments else {
        panic!("tool arguments must be an object: {arguments}");
    };
    CallToolRequestParams::new(name.to_owned()).with_arguments(arguments)
}

// The text of a tool result, as agentry shows it to the model.
use agentry::mcp::result_text as text_of;

/// Starts a call that would take a day and returns once the server is running it.
async fn slow_call_in_flight(
    server: &PythonMcpServer,
    peer: &rmcp::service::Peer<rmcp::RoleClient>,
) -> tokio::task::JoinHandle<Result<CallToolResult, ServiceError>> {
    let peer = peer.clone();
    let in_flight = tokio::spawn(async move { peer.call_tool(tool("slow", json!({"seconds": 86_400}))).await });
    bounded("the slow call reaching the server", async {
        while !server.stderr().contains("tool=slow") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    in_flight
}

/// Display, Debug and the whole source chain of an error.
fn everything_shown(error: &(dyn std::error::Error + 'static)) -> String {
    let mut shown = format!("{error} / {error:?}");
    let mut source = error.source();
    while let Some(cause) = source {
        shown.push_str(&format!(" / caused by: {cause} / {cause:?}"));
        source = cause.source();
    }
    shown
}

fn ping(id: i64) -> ClientJsonRpcMessage {
    ClientJsonRpcMessage::request(ClientRequest::PingRequest(PingRequest::default()), RequestId::Number(id))
}

// ------------------------------------------------- against the Python peer

#[tokio::test]
async fn python_peer_session_lists_and_calls_tools() {
    let logs = LogCapture::install();
    let server = PythonMcpServer::start("sse").await;
    let transport = connect(&server, None).await;
    let client = bounded("initialize", Recorder::default().serve(transport)).await.expect("initialize over legacy SSE");

    let info = client.peer_info().expect("server info after initialize");
    assert_eq!(info.server_info.as_ref().map(|i| i.name.as_str()), Some("agentry-test-search"), "{info:?}");

    let tools = bounded("tools/list", client.list_all_tools()).await.expect("tools/list");
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    for wanted in ["search", "echo", "fail"] {
        assert!(names.contains(&wanted), "{wanted} missing from {names:?}");
    }
    let search = tools.iter().find(|t| t.name == "search").expect("search");
    let query = search.input_schema.get("properties").and_then(|p| p.get("query"));
    assert!(query.is_some_and(Value::is_object), "{:?}", search.input_schema);

    let found =
        bounded("search", client.call_tool(tool("search", json!({"query": "rust concurrency", "max_results": 2}))))
            .await
            .expect("search call");
    assert_ne!(found.is_error, Some(true), "{found:?}");
    assert!(text_of(&found).contains("Fearless Concurrency"), "{}", text_of(&found));

    // Non-ASCII, an escaped newline, a raw U+2028 (not a line end for SSE).
    let unicode = "héllo\nwörld ✓ 🦀 日本語 \u{2028} end";
    let echoed = bounded("echo", client.call_tool(tool("echo", json!({"text": unicode})))).await.expect("unicode echo");
    assert_eq!(text_of(&echoed), unicode);

    // A ~2 MiB result of multi-byte characters: it arrives in many body
    // chunks, which split characters and the event between them.
    let mut big = "🦀日本語é-".repeat(140_000);
    big.push_str("THE END");
    assert!(big.len() > 2 * 1024 * 1024);
    let echoed = bounded("big echo", client.call_tool(tool("echo", json!({"text": big})))).await.expect("big echo");
    let got = text_of(&echoed);
    assert!(got == big, "big echo differs: {} bytes back, {} sent", got.len(), big.len());

    // A failing tool is a result with isError, not a protocol error; the
    // session goes on.
    let failed = bounded("fail", client.call_tool(tool("fail", json!({"message": "planned failure ✗"}))))
        .await
        .expect("fail call is still a result");
    assert_eq!(failed.is_error, Some(true), "{failed:?}");
    assert!(text_of(&failed).contains("planned failure ✗"), "{failed:?}");

    let quit = bounded("close", client.cancel()).await.expect("service task");
    assert!(matches!(quit, QuitReason::Cancelled), "{quit:?}");

    let logs_text = logs.text();
    assert!(logs_text.contains("tools/call"), "method names are traced:\n{logs_text}");
    // The session id lives in the endpoint's query: never logged.
    assert!(!logs_text.contains("session_id="), "session id logged:\n{logs_text}");
}

#[tokio::test]
async fn python_peer_server_to_client_ping_and_log_mid_call() {
    let _logs = LogCapture::install();
    let server = PythonMcpServer::start("sse").await;
    let recorder = Recorder::default();
    let client = bounded("initialize", recorder.clone().serve(connect(&server, None).await)).await.expect("initialize");

    // `chatty` waits for our answer to its ping before it answers: the ping
    // request came in on the stream and our response went out as a POST.
    let result = bounded("chatty", client.call_tool(CallToolRequestParams::new("chatty"))).await.expect("chatty");
    assert_eq!(text_of(&result), "pong ok", "{result:?}");
    assert_eq!(*recorder.pings.lock().expect("pings"), 1);

    // The log notification was sent before the result, on the same stream,
    // so it has been handled by now.
    #[allow(deprecated)]
    let logged: Vec<Value> = recorder.logs.lock().expect("logs").iter().map(|m| m.data.clone()).collect();
    assert!(logged.contains(&json!("chatty says hello")), "{logged:?}");
    bounded("close", client.cancel()).await.expect("service task");
}

#[tokio::test]
async fn python_peer_fifty_concurrent_calls() {
    let _logs = LogCapture::install();
    let server = PythonMcpServer::start("sse").await;
    let client =
        bounded("initialize", Recorder::default().serve(connect(&server, None).await)).await.expect("initialize");
    const CALLS: usize = 50;

    // Each `barrier` call returns only once all 50 are in progress at the
    // server at the same time, so this passes only if neither the transport
    // nor rmcp serialises calls. (Serialised, the first call would fail with
    // "only 1 of 50 calls arrived".)
    let meet = (0..CALLS)
        .map(|_| client.call_tool(tool("barrier", json!({"group": "fifty", "parties": CALLS, "timeout": 30}))));
    let results = bounded("50 barrier calls", futures::future::join_all(meet)).await;
    for result in results {
        let result = result.expect("barrier call");
        assert_ne!(result.is_error, Some(true), "{}", text_of(&result));
        assert_eq!(text_of(&result), "50 calls met at barrier fifty");
    }

    // 50 concurrent calls with distinct arguments: every response reaches
    // the call it answers.
    let echoes = (0..CALLS).map(|i| {
        let text = format!("call {i}: {}", "ü".repeat(i * 37));
        let call = client.call_tool(tool("echo", json!({"text": text})));
        async move { (text, call.await) }
    });
    for (sent, result) in bounded("50 echo calls", futures::future::join_all(echoes)).await {
        let result = result.expect("echo call");
        assert_eq!(text_of(&result), sent);
    }
    bounded("close", client.cancel()).await.expect("service task");
}

#[tokio::test]
async fn python_peer_bearer_token_is_required_and_never_shown() {
    let logs = LogCapture::install();
    const TOKEN: &str = "peer-bearer-7d2e55c1b0";
    const WRONG: &str = "wrong-bearer-e81a04";
    let dir = tempfile::tempdir().expect("temp dir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("write token file");
    let token_arg = token_file.to_str().expect("UTF-8 temp path");
    let server = PythonMcpServer::start_with_args("sse", &["--require-bearer", token_arg]).await;

    for presented in [None, Some(WRONG)] {
        let error = bounded(
            "rejected connect",
            LegacySseTransport::connect(reqwest::Client::new(), sse_config(&server.url(), presented)),
        )
        .await
        .expect_err("connect without the right token must fail");
        assert!(
            matches!(&error, LegacySseError::Status { status, .. } if status.as_u16() == 401),
            "{presented:?}: {error:?}"
        );
        let shown = everything_shown(&error);
        assert!(!shown.contains(TOKEN) && !shown.contains(WRONG), "{shown}");
    }

    // With the right token the GET and every POST pass the check.
    let client = bounded("initialize", Recorder::default().serve(connect(&server, Some(TOKEN)).await))
        .await
        .expect("initialize with the token");
    let echoed = bounded("echo", client.call_tool(tool("echo", json!({"text": "authorised"}))))
        .await
        .expect("echo with the token");
    assert_eq!(text_of(&echoed), "authorised");
    bounded("close", client.cancel()).await.expect("service task");

    assert!(server.stderr().contains("rejected: 401"), "the peer never rejected anything:\n{}", server.stderr());
    logs.assert_clean(&[TOKEN, WRONG]);
}

#[tokio::test]
async fn python_peer_killed_mid_call_ends_the_session() {
    let logs = LogCapture::install();
    let mut server = PythonMcpServer::start("sse").await;
    let client =
        bounded("initialize", Recorder::default().serve(connect(&server, None).await)).await.expect("initialize");
    let peer = client.peer().clone();

    // A call that would take a day, in flight when the server dies.
    let in_flight = slow_call_in_flight(&server, &peer).await;
    server.kill().await;

    // The stream's end is the session's end.
    let quit = bounded("waiting() after the kill", client.waiting()).await.expect("service task");
    assert!(matches!(quit, QuitReason::Closed), "{quit:?}");

    let in_flight = bounded("the in-flight call", in_flight).await.expect("join");
    assert!(matches!(in_flight, Err(ServiceError::TransportClosed)), "{in_flight:?}");

    // Later calls fail at once instead of waiting for a POST timeout.
    let after = bounded("a call after the death", peer.list_all_tools()).await;
    assert!(after.is_err(), "{after:?}");

    // Legacy SSE has no resumption: a new transport, a new session, on the
    // restarted server.
    server.restart_same_port().await;
    let client = bounded("re-initialize", Recorder::default().serve(connect(&server, None).await))
        .await
        .expect("a new session on the restarted server");
    let echoed = bounded("echo", client.call_tool(tool("echo", json!({"text": "again"}))))
        .await
        .expect("echo on the new session");
    assert_eq!(text_of(&echoed), "again");
    bounded("close", client.cancel()).await.expect("service task");

    let text = logs.text();
    assert!(text.contains("legacy SSE reader stopped"), "{text}");
}

#[tokio::test]
async fn python_peer_close_semantics() {
    let _logs = LogCapture::install();
    let server = PythonMcpServer::start("sse").await;

    // The raw transport: close ends receiving, later sends fail with Closed,
    // and closing twice is harmless.
    let mut transport = connect(&server, None).await;
    bounded("close", transport.close()).await.expect("close");
    assert!(bounded("receive after close", transport.receive()).await.is_none());
    let error = bounded("send after close", transport.send(ping(1))).await.expect_err("send after close");
    assert!(matches!(error, LegacySseError::Closed), "{error:?}");
    bounded("second close", transport.close()).await.expect("second close");

    // Through rmcp: closing the service closes the transport; a call in
    // flight fails instead of waiting for its answer, later calls fail too.
    let mut client =
        bounded("initialize", Recorder::default().serve(connect(&server, None).await)).await.expect("initialize");
    let peer = client.peer().clone();
    let in_flight = slow_call_in_flight(&server, &peer).await;
    let quit = bounded("client close", client.close()).await.expect("service task");
    assert!(matches!(quit, QuitReason::Cancelled), "{quit:?}");
    let in_flight = bounded("the in-flight call", in_flight).await.expect("join");
    assert!(in_flight.is_err(), "{in_flight:?}");
    let after = bounded("a call after close", peer.list_all_tools()).await;
    assert!(after.is_err(), "{after:?}");
}

// ------------------------------------------------------------------- fakes

/// The head of an HTTP request read by a fake.
struct Head {
    method: String,
    raw: String,
}

/// Reads a request head (and its body, if it has a content length).
async fn read_head(stream: &mut TcpStream) -> Head {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => buf.push(byte[0]),
            _ => break,
        }
    }
    let raw = String::from_utf8_lossy(&buf).into_owned();
    let method = raw.split(' ').next().unwrap_or_default().to_owned();
    let length = raw
        .to_ascii_lowercase()
        .lines()
        .find_map(|line| line.strip_prefix("content-length:")?.trim().parse::<usize>().ok());
    if let Some(length) = length {
        let mut body = vec![0u8; length];
        let _ = stream.read_exact(&mut body).await;
    }
    Head { method, raw }
}

/// Waits until the client closes `stream` (or `limit` passes); `true` if it
/// closed.
async fn client_closes(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut sink = [0u8; 64];
    loop {
        match tokio::time::timeout(limit, stream.read(&mut sink)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

const SSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\r\n";

/// A fake server answering every connection with `handler(stream, port)`;
/// returns its SSE URL, which carries a secret in its query.
async fn fake<F, Fut>(handler: F) -> Url
where
    F: Fn(TcpStream, u16) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind fake");
    let port = listener.local_addr().expect("fake address").port();
    let handler = Arc::new(handler);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(handler(stream, port));
        }
    });
    Url::parse(&format!("http://127.0.0.1:{port}/sse?token={QUERY_SECRET}")).expect("fake URL")
}

fn fake_config(url: Url) -> LegacySseConfig {
    let mut config = LegacySseConfig::new(url);
    config.headers.insert(AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {FAKE_TOKEN}")).expect("header value"));
    // Long enough never to be hit on a loaded machine, short of `BOUND`; the
    // tests of the connect timeout set a short one.
    config.connect_timeout = Duration::from_secs(20);
    config.post_timeout = Duration::from_secs(10);
    config
}

/// Connects to a fake expecting failure; checks no secret is shown.
async fn connect_err(url: Url) -> LegacySseError {
    connect_err_with(fake_config(url)).await
}

async fn connect_err_with(config: LegacySseConfig) -> LegacySseError {
    let error = bounded("failing connect", LegacySseTransport::connect(reqwest::Client::new(), config))
        .await
        .expect_err("connect should fail");
    let shown = everything_shown(&error);
    assert!(!shown.contains(FAKE_TOKEN) && !shown.contains(QUERY_SECRET), "{shown}");
    error
}

#[tokio::test]
async fn fake_404_is_a_status_error() {
    let url = fake(|mut stream, _| async move {
        read_head(&mut stream).await;
        let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n").await;
    })
    .await;
    let error = connect_err(url).await;
    assert!(matches!(&error, LegacySseError::Status { status, .. } if status.as_u16() == 404), "{error:?}");
}

#[tokio::test]
async fn fake_unreachable_is_a_connect_error() {
    // A port that was free a moment ago: nothing listens there.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    drop(listener);
    let url = Url::parse(&format!("http://127.0.0.1:{port}/sse?token={QUERY_SECRET}")).expect("URL");
    let error = connect_err(url).await;
    assert!(matches!(error, LegacySseError::Connect { .. }), "{error:?}");
}

#[tokio::test]
async fn fake_without_response_headers_hits_the_connect_timeout() {
    let url = fake(|mut stream, _| async move {
        read_head(&mut stream).await;
        // Never answer; hold the connection until the client gives up.
        client_closes(&mut stream, BOUND * 2).await;
    })
    .await;
    let mut config = fake_config(url);
    config.connect_timeout = Duration::from_millis(500);
    let error = connect_err_with(config).await;
    let LegacySseError::Connect { source, .. } = &error else {
        panic!("expected a connect error: {error:?}");
    };
    assert!(source.downcast_ref::<tokio::time::error::Elapsed>().is_some(), "expected the connect timeout: {error:?}");
}

#[tokio::test]
async fn fake_stream_without_endpoint_hits_the_connect_timeout() {
    let url = fake(|mut stream, _| async move {
        read_head(&mut stream).await;
        let _ = stream.write_all(SSE_HEAD).await;
        // Keep-alive comments and foreign events, but never an endpoint,
        // until the client goes away.
        while stream.write_all(b": ping\r\n\r\nevent: other\ndata: x\n\n").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let mut config = fake_config(url);
    config.connect_timeout = Duration::from_millis(500);
    let error = connect_err_with(config).await;
    assert!(matches!(error, LegacySseError::NoEndpoint { timed_out: true, .. }), "{error:?}");
}

#[tokio::test]
async fn fake_stream_ending_before_endpoint() {
    let url = fake(|mut stream, _| async move {
        read_head(&mut stream).await;
        let _ = stream.write_all(SSE_HEAD).await;
        let _ = stream.write_all(b": hello\n\n").await;
    })
    .await;
    let error = connect_err(url).await;
    assert!(matches!(error, LegacySseError::NoEndpoint { timed_out: false, .. }), "{error:?}");
}

#[tokio::test]
async fn fake_cross_origin_endpoint_is_refused() {
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let url = fake(move |mut stream, _| {
        let seen_tx = seen_tx.clone();
        async move {
            let head = read_head(&mut stream).await;
            let _ = seen_tx.send(head.method);
            let _ = stream.write_all(SSE_HEAD).await;
            let _ = stream.write_all(b"event: endpoint\ndata: http://evil.example/messages?session_id=1\n\n").await;
            client_closes(&mut stream, BOUND * 2).await;
        }
    })
    .await;
    let error = connect_err(url).await;
    let LegacySseError::Protocol { reason } = &error else {
        panic!("expected a protocol error: {error:?}");
    };
    assert!(reason.contains("evil.example"), "{reason}");
    // Only the GET reached the fake; nothing was posted anywhere.
    assert_eq!(seen.recv().await.as_deref(), Some("GET"));
    assert!(seen.try_recv().is_err());
}

#[tokio::test]
async fn fake_wrong_content_type_is_a_protocol_error() {
    let url = fake(|mut stream, _| async move {
        read_head(&mut stream).await;
        let _ =
            stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}").await;
    })
    .await;
    let error = connect_err(url).await;
    assert!(matches!(error, LegacySseError::Protocol { .. }), "{error:?}");
}

/// A fake legacy SSE server session; see [`fake_session`].
struct FakeSession {
    url: Url,
    /// Every request head, and "GET closed by client" when that happens.
    seen: mpsc::UnboundedReceiver<String>,
    /// Lets the GET go on from its `endpoint` event to the `events`.
    release: Arc<tokio::sync::Notify>,
}

/// A fake session: the GET gets an `endpoint` event, then, once `release`d
/// (so the events never share a network read with the endpoint), `events`;
/// then it is held open for `hold_open` or until the client closes it. POSTs
/// get `post_status`.
async fn fake_session(events: &'static [u8], post_status: u16, hold_open: Duration) -> FakeSession {
    let (seen_tx, seen) = mpsc::unbounded_channel();
    let release = Arc::new(tokio::sync::Notify::new());
    let gate = Arc::clone(&release);
    let url = fake(move |mut stream, port| {
        let seen_tx = seen_tx.clone();
        let gate = Arc::clone(&gate);
        async move {
            let head = read_head(&mut stream).await;
            let _ = seen_tx.send(head.raw.clone());
            if head.method == "GET" {
                let _ = stream.write_all(SSE_HEAD).await;
                let endpoint =
                    format!(": ping\n\nevent: endpoint\ndata: http://127.0.0.1:{port}/messages/?session_id=abc\n\n");
                let _ = stream.write_all(endpoint.as_bytes()).await;
                gate.notified().await;
                let _ = stream.write_all(events).await;
                if client_closes(&mut stream, hold_open).await && !hold_open.is_zero() {
                    let _ = seen_tx.send("GET closed by client".to_owned());
                }
            } else {
                let reply = format!("HTTP/1.1 {post_status} X\r\ncontent-length: 8\r\n\r\nAccepted");
                let _ = stream.write_all(reply.as_bytes()).await;
            }
        }
    })
    .await;
    FakeSession { url, seen, release }
}

/// Connects to a fake session, then lets it send its events.
async fn fake_connect(session: &FakeSession) -> LegacySseTransport {
    let transport = bounded(
        "connect to fake",
        LegacySseTransport::connect(reqwest::Client::new(), fake_config(session.url.clone())),
    )
    .await
    .expect("connect to fake session");
    session.release.notify_one();
    transport
}

#[tokio::test]
async fn fake_messages_are_delivered_then_stream_end_is_none() {
    let logs = LogCapture::install();
    let events: &[u8] = b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\n\
        data: not json\n\n\
        event: mystery\ndata: {}\n\n\
        event: endpoint\ndata: /elsewhere\n\n\
        event: message\r\ndata: {\"jsonrpc\":\"2.0\",\r\ndata: \"method\":\"notifications/tools/list_changed\"}\r\n\r\n";
    let mut session = fake_session(events, 202, Duration::ZERO).await;
    let mut transport = fake_connect(&session).await;
    let get = bounded("GET head", session.seen.recv()).await.expect("GET seen").to_ascii_lowercase();
    assert!(get.contains("accept: text/event-stream"), "{get}");
    assert!(get.contains(&format!("authorization: bearer {FAKE_TOKEN}")), "{get}");

    // A response, then (skipping junk, foreign events and a second endpoint)
    // a notification split over two CRLF data lines.
    let first = bounded("first message", transport.receive()).await;
    assert!(matches!(first, Some(JsonRpcMessage::Response(_))), "{first:?}");
    let second = bounded("second message", transport.receive()).await;
    assert!(matches!(second, Some(JsonRpcMessage::Notification(_))), "{second:?}");
    // The fake then ends the stream: the session is over.
    let end = bounded("end of stream", transport.receive()).await;
    assert!(end.is_none(), "{end:?}");
    let error = bounded("send after the end", transport.send(ping(2))).await.expect_err("send after the stream ended");
    assert!(matches!(error, LegacySseError::Closed), "{error:?}");
    logs.assert_clean(&[FAKE_TOKEN, QUERY_SECRET, "session_id=abc"]);
}

#[tokio::test]
async fn fake_post_500_is_a_send_error_and_the_session_survives() {
    let logs = LogCapture::install();
    let mut session = fake_session(b"", 500, BOUND * 2).await;
    let mut transport = fake_connect(&session).await;
    let _get = bounded("GET head", session.seen.recv()).await;

    let error = bounded("POST", transport.send(ping(3))).await.expect_err("a 500 fails the send");
    assert!(
        matches!(&error, LegacySseError::Send { status: Some(s), endpoint, .. }
            if s.as_u16() == 500 && endpoint == "/messages/"),
        "{error:?}"
    );
    let shown = everything_shown(&error);
    assert!(!shown.contains("session_id") && !shown.contains(FAKE_TOKEN), "{shown}");

    // The POST went to the announced endpoint, with the configured headers.
    let post = bounded("POST head", session.seen.recv()).await.expect("POST seen").to_ascii_lowercase();
    assert!(post.starts_with("post /messages/?session_id=abc "), "{post}");
    assert!(post.contains("content-type: application/json"), "{post}");
    assert!(post.contains(&format!("authorization: bearer {FAKE_TOKEN}")), "{post}");

    // Only that message was lost: the stream is up, so sending goes on
    // (and fails the same way) rather than reporting a closed transport.
    let again = bounded("second POST", transport.send(ping(4))).await.expect_err("still 500");
    assert!(matches!(again, LegacySseError::Send { .. }), "{again:?}");
    logs.assert_clean(&[FAKE_TOKEN, QUERY_SECRET, "session_id=abc"]);
}

#[tokio::test]
async fn fake_drop_and_close_release_the_stream() {
    for close in [false, true] {
        let mut session = fake_session(b"", 202, BOUND * 2).await;
        let mut transport = fake_connect(&session).await;
        let _get = bounded("GET head", session.seen.recv()).await;
        if close {
            bounded("close", transport.close()).await.expect("close");
            assert!(bounded("receive", transport.receive()).await.is_none());
        } else {
            drop(transport);
        }
        let closed = bounded("the fake seeing the GET closed", session.seen.recv()).await;
        assert_eq!(closed.as_deref(), Some("GET closed by client"), "close={close}");
    }
}

#[tokio::test]
async fn fake_malformed_or_oversized_stream_ends_the_session() {
    static HUGE: OnceLock<Vec<u8>> = OnceLock::new();
    let huge = HUGE.get_or_init(|| {
        let mut event = b"event: message\ndata: ".to_vec();
        event.resize(17 * 1024 * 1024, b'x');
        event
    });
    for (what, events) in [("malformed", &b"bogus: field\n\n"[..]), ("oversized", &huge[..])] {
        let session = fake_session(events, 202, BOUND * 2).await;
        let mut transport = fake_connect(&session).await;
        let end = bounded(what, transport.receive()).await;
        assert!(end.is_none(), "{what}: {end:?}");
        let error = bounded("send", transport.send(ping(5))).await.expect_err("send after the session ended");
        assert!(matches!(error, LegacySseError::Closed), "{what}: {error:?}");
    }
}

// ------------------------------------------------- malformed JSON-RPC

/// How many times a warning containing `needle` was logged.
fn warnings(logs: &LogCapture, needle: &str) -> usize {
    logs.text().lines().filter(|line| line.contains("WARN") && line.contains(needle)).count()
}

#[tokio::test]
async fn malformed_answers_fail_their_call_at_once_and_are_logged_once_per_session() {
    use agentry_testkit::hostile_mcp::MalformedSseServer;

    let logs = LogCapture::install();
    let server = MalformedSseServer::start().await.expect("the malformed server starts");
    // `bounded` is far longer than any answer here: a call that waits for an answer that can no
    // longer come fails the test.
    let transport =
        bounded("connect", LegacySseTransport::connect(reqwest::Client::new(), sse_config(&server.url(), None)))
            .await
            .expect("legacy SSE connect");
    let client = bounded("initialize", agentry::mcp::client_info().serve(transport)).await.expect("initialize");
    let peer = client.peer().clone();
    let ok = bounded("ok", peer.call_tool(tool("ok", json!({})))).await.expect("a proper answer");
    assert_eq!(text_of(&ok), "ok");

    for _ in 0..2 {
        let error = bounded("no_result", peer.call_tool(tool("no_result", json!({})))).await.expect_err("no result");
        let ServiceError::McpError(error) = &error else { panic!("expected the call's own error: {error:?}") };
        assert!(error.message.contains("neither `result` nor `error`"), "{}", error.message);
    }
    let error = bounded("wrong_id", peer.call_tool(tool("wrong_id", json!({})))).await.expect_err("wrong id");
    let ServiceError::McpError(error) = &error else { panic!("expected the call's own error: {error:?}") };
    assert!(error.message.contains("answered with id"), "{}", error.message);
    let error = bounded("no_id_error", peer.call_tool(tool("no_id_error", json!({})))).await.expect_err("no id");
    let ServiceError::McpError(error) = &error else { panic!("expected the call's own error: {error:?}") };
    assert!(error.message.contains("Invalid Request"), "the server's words are kept: {}", error.message);

    // Garbage with no id cannot be matched to a call: it is logged, and the session goes on.
    let garbage = tokio::spawn({
        let peer = peer.clone();
        async move { peer.call_tool(tool("not_json", json!({}))).await }
    });
    bounded("the garbage being logged", async {
        while warnings(&logs, "not JSON-RPC") == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    garbage.abort();
    let ok = bounded("ok after the garbage", peer.call_tool(tool("ok", json!({})))).await.expect("the session lives");
    assert_eq!(text_of(&ok), "ok");

    assert_eq!(warnings(&logs, "not JSON-RPC"), 1, "once per session:\n{}", logs.text());
    assert_eq!(warnings(&logs, "answered with id"), 1, "{}", logs.text());
    assert_eq!(warnings(&logs, "without an id"), 1, "{}", logs.text());
    bounded("close", client.cancel()).await.expect("close");
    server.shutdown().await;
}
