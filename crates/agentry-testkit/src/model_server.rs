//! A loopback, OpenAI-compatible Chat Completions server.
//!
//! [`ModelServer`] listens on `127.0.0.1:<ephemeral port>` and speaks the
//! OpenAI Chat Completions wire format closely enough that an agent cannot
//! tell it from the real API: the same success body, the same error JSON
//! (`{"error":{"message","type","param","code"}}`), the same status codes,
//! `Retry-After` / `retry-after-ms` headers on 429s, and request validation
//! that rejects the mistakes the real API rejects (unanswered `tool_calls`,
//! orphan `tool` messages, bad tool names, non-string `arguments`, ...).
//!
//! What the "model" answers is decided by a [`Behaviour`]: the scripted demo
//! researcher ([`ScriptedResearcher`]), a FIFO of canned
//! replies ([`Queue`]) for tests, or any closure ([`FnBehaviour`]).
//!
//! Besides the real API's answers, a [`Reply`] can be hostile: an error that quotes
//! the bearer key ([`Reply::EchoKey`]), an HTML page ([`Reply::Raw`]), a body cut
//! short ([`Reply::CutShort`]), one that stalls ([`Reply::Stall`]) or never ends
//! ([`Reply::EndlessBody`]), a dropped connection ([`Reply::Disconnect`]).
//!
//! A request with `"stream": true` is answered as OpenAI streams: `chat.completion.chunk`s as
//! SSE events, one body write each, then `data: [DONE]`; see [`stream`]. The pieces and pace are
//! the demo's unless a [`StreamStyle`] says otherwise ([`ModelServer::with_stream_style`], or
//! [`Reply::Pieces`] for one reply), and a stream can be hostile too: slow but alive
//! ([`Reply::Trickle`]), stalled after some events with the connection open
//! ([`Reply::StallAfter`]), ended cleanly before its finish reason ([`Reply::EndAfter`]), written
//! in writes cut inside lines and UTF-8 characters ([`Reply::SplitWrites`]).
//!
//! With [`RateLimits`] ([`ModelServer::with_rate_limits`]) it enforces OpenAI-style
//! requests and tokens per window in front of the behaviour, with `x-ratelimit-*` headers on
//! every answer and OpenAI's 429s; see [`rate_limit`].
//!
//! Every chat-completion request is recorded ([`ModelServer::requests`]) and
//! concurrency is measured ([`ModelServer::peak_in_flight`]), so integration
//! tests can assert on exactly what the agent sent and how. Request validation
//! is in the `validate` module; the completion body is the demo's
//! ([`agentry::demo::model::completion_body`]), so both answer alike.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use std::sync::Arc;
//! use agentry_testkit::model_server::{ModelServer, Queue, Reply};
//!
//! let server = ModelServer::start(Arc::new(Queue::new([
//!     Reply::rate_limited(std::time::Duration::from_secs(1)),
//!     Reply::text("hello"),
//! ])))
//! .await?;
//! let base_url = server.base_url(); // http://127.0.0.1:PORT/v1
//! # let _ = base_url;
//! server.shutdown().await;
//! # Ok(())
//! # }
//! ```

pub mod rate_limit;
pub mod stream;
mod validate;

use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agentry::demo::loopback::Loopback;
use agentry::demo::model::{self as shape, CallOut, Completion};
use agentry::demo::scripted::{ScriptedReply, ScriptedResearcher};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::response::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use stream::{Overrides, Writing};
use tokio_util::sync::CancellationToken;
use validate::validate;

pub use rate_limit::{RateLimitCounts, RateLimits};
pub use stream::{CallOrder, StreamStyle};

/// Model name listed by `GET /v1/models` even before any request names one.
pub const DEMO_MODEL: &str = "agentry-demo";

/// Largest request body accepted (long conversations are large).
const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

// ---------------------------------------------------------------------------
// Behaviour and replies
// ---------------------------------------------------------------------------

/// Decides what the simulated model answers to one (already validated)
/// chat-completion request.
///
/// Called synchronously on the server's task; keep it cheap and non-blocking.
/// Use [`Reply::Delay`] (or [`ModelServer::with_latency`]) to simulate slow
/// models instead of sleeping.
pub trait Behaviour: Send + Sync + 'static {
    /// Produces the reply to `request`.
    fn reply(&self, request: &ChatRequestView<'_>) -> Reply;
}

/// One tool call the simulated model makes. The server assigns its id
/// (`call_<n>`, unique for the server's lifetime).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptedToolCall {
    /// Function name, e.g. `search`.
    pub name: String,
    /// Raw `function.arguments` string. It is sent verbatim, so it may be
    /// invalid JSON on purpose to test the client's robustness.
    pub arguments: String,
}

impl ScriptedToolCall {
    /// A call whose arguments are `arguments` serialized as JSON.
    pub fn new(name: impl Into<String>, arguments: &Value) -> Self {
        Self { name: name.into(), arguments: arguments.to_string() }
    }

    /// A call whose `arguments` string is sent exactly as given.
    pub fn raw(name: impl Into<String>, arguments: impl Into<String>) -> Self {
        Self { name: name.into(), arguments: arguments.into() }
    }
}

/// What the server sends back for one chat-completion request.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// A successful (HTTP 200) completion.
    Message {
        /// Assistant text; `None` is sent as `"content": null`.
        content: Option<String>,
        /// Tool calls; an empty list omits `tool_calls` from the message.
        tool_calls: Vec<ScriptedToolCall>,
        /// `finish_reason`; `None` means `"tool_calls"` when there are tool
        /// calls and `"stop"` otherwise. Use `"length"` to simulate truncation.
        finish_reason: Option<String>,
    },
    /// An error with the OpenAI error body
    /// `{"error":{"message","type","param":null,"code"}}`.
    Error {
        /// HTTP status, e.g. 429, 500, 503.
        status: u16,
        /// When set, sent as `Retry-After` (whole seconds, rounded up) and
        /// `retry-after-ms` headers.
        retry_after: Option<Duration>,
        /// `error.type`, e.g. `requests`, `server_error`, `invalid_request_error`.
        kind: String,
        /// `error.code`, e.g. `rate_limit_exceeded`; `None` is sent as `null`.
        code: Option<String>,
        /// `error.message`.
        message: String,
    },
    /// HTTP 200 with `Content-Type: application/json` and this (broken) body.
    Malformed(String),
    /// Any status with any content type and body, sent as is: an HTML page from a proxy in
    /// front of the model, say.
    Raw {
        /// HTTP status.
        status: u16,
        /// `Content-Type`.
        content_type: String,
        /// The body.
        body: String,
    },
    /// An OpenAI error body whose message quotes the bearer token the request carried, whole,
    /// as a careless server (or proxy) does.
    EchoKey {
        /// HTTP status, e.g. 400, 403, 429, 500.
        status: u16,
    },
    /// The inner reply's headers (with the `Content-Length` of its whole body) and only the
    /// first `after` bytes of its body; then the connection drops. A `Delay` inside it is not
    /// waited for.
    CutShort {
        /// The reply that is cut.
        reply: Box<Reply>,
        /// How many bytes of its body are sent.
        after: usize,
    },
    /// HTTP 200 `application/json`, chunked, with no length and no end: `{"choices":[` and then
    /// blanks for as long as the client reads.
    EndlessBody,
    /// HTTP 200 `application/json`: the headers and `head`, then nothing more (the connection
    /// stays open) until the server stops.
    Stall(String),
    /// Drop the connection without sending a complete response.
    Disconnect,
    /// Wait this long (counted as in flight), then send the inner reply.
    Delay(Duration, Box<Reply>),
    /// The inner reply's body slowly: each body write (each event of a stream, the whole body
    /// of any other reply, or each piece of either with [`SplitWrites`](Reply::SplitWrites))
    /// `every` after the one before, the first `every` after the headers.
    Trickle {
        /// The reply that trickles.
        reply: Box<Reply>,
        /// The wait before each body write.
        every: Duration,
    },
    /// The inner reply's headers and first `events` events (a body that is not a stream is one
    /// event), then nothing: the connection stays open until the client goes or the server
    /// stops, which drops it.
    StallAfter {
        /// The reply that stalls.
        reply: Box<Reply>,
        /// How many events are sent.
        events: usize,
    },
    /// The inner reply's headers and first `events` events, then a clean end of the body: a
    /// stream cut before its finish reason and `[DONE]` (when `events` is below its count).
    EndAfter {
        /// The reply that ends early.
        reply: Box<Reply>,
        /// How many events are sent.
        events: usize,
    },
    /// The inner reply's body in writes of at most `bytes` bytes (a 0 counts as 1), cut
    /// anywhere: inside an SSE line, inside a multi-byte UTF-8 character.
    SplitWrites {
        /// The reply that is split.
        reply: Box<Reply>,
        /// The largest write.
        bytes: usize,
    },
    /// When streamed, the inner reply's text and arguments in pieces of `sizes` characters, taken
    /// in turn, and its tool calls in `calls` order (see [`StreamStyle`]). Unstreamed: the
    /// inner reply.
    Pieces {
        /// The reply that is cut.
        reply: Box<Reply>,
        /// Characters per piece, in turn.
        sizes: Vec<usize>,
        /// The order of the calls' pieces.
        calls: CallOrder,
    },
}

impl Reply {
    /// A plain assistant message (`finish_reason: "stop"`).
    pub fn text(content: impl Into<String>) -> Self {
        Reply::Message { content: Some(content.into()), tool_calls: Vec::new(), finish_reason: None }
    }

    /// A message cut short by `max_tokens` (`finish_reason: "length"`).
    pub fn truncated(content: impl Into<String>) -> Self {
        Reply::Message {
            content: Some(content.into()),
            tool_calls: Vec::new(),
            finish_reason: Some("length".to_owned()),
        }
    }

    /// One tool call with JSON arguments (`content: null`,
    /// `finish_reason: "tool_calls"`).
    pub fn tool_call(name: impl Into<String>, arguments: &Value) -> Self {
        Self::tool_calls(vec![ScriptedToolCall::new(name, arguments)])
    }

    /// Several (parallel) tool calls in one message.
    pub fn tool_calls(calls: Vec<ScriptedToolCall>) -> Self {
        Reply::Message { content: None, tool_calls: calls, finish_reason: None }
    }

    /// Any error status with an OpenAI error body.
    pub fn error(status: u16, kind: impl Into<String>, code: Option<&str>, message: impl Into<String>) -> Self {
        Reply::Error {
            status,
            retry_after: None,
            kind: kind.into(),
            code: code.map(str::to_owned),
            message: message.into(),
        }
    }

    /// HTTP 429 `rate_limit_exceeded` (type `requests`) with `Retry-After`
    /// and `retry-after-ms` headers.
    pub fn rate_limited(retry_after: Duration) -> Self {
        Reply::Error {
            status: 429,
            retry_after: Some(retry_after),
            kind: "requests".to_owned(),
            code: Some("rate_limit_exceeded".to_owned()),
            message: format!(
                "Rate limit reached for {DEMO_MODEL} in organization org-demo on requests per \
                 min (RPM): Limit 3, Used 3, Requested 1. Please try again in {:.3}s. Visit \
                 https://platform.openai.com/account/rate-limits to learn more.",
                retry_after.as_secs_f64()
            ),
        }
    }

    /// HTTP 500 `server_error`, worded like the real API.
    pub fn server_error() -> Self {
        Self::error(
            500,
            "server_error",
            None,
            "The server had an error while processing your request. Sorry about that!",
        )
    }

    /// HTTP 503 `server_error` ("overloaded").
    pub fn overloaded() -> Self {
        Self::error(503, "server_error", None, "The server is overloaded or not ready yet.")
    }

    /// HTTP 200 with a body that is not valid JSON (or not a completion).
    pub fn malformed(body: impl Into<String>) -> Self {
        Reply::Malformed(body.into())
    }

    /// HTTP 200 with an HTML page, as a proxy or captive portal answers.
    pub fn html(body: impl Into<String>) -> Self {
        Reply::Raw { status: 200, content_type: "text/html; charset=utf-8".to_owned(), body: body.into() }
    }

    /// An error with status `status` whose message quotes the request's bearer token.
    pub fn echo_key(status: u16) -> Self {
        Reply::EchoKey { status }
    }

    /// `self`, cut after `after` bytes of its body.
    pub fn cut_short(self, after: usize) -> Self {
        Reply::CutShort { reply: Box::new(self), after }
    }

    /// Sends `self` after waiting `delay`.
    pub fn delayed(self, delay: Duration) -> Self {
        Reply::Delay(delay, Box::new(self))
    }

    /// `self`, each body write `every` after the one before.
    pub fn trickle(self, every: Duration) -> Self {
        Reply::Trickle { reply: Box::new(self), every }
    }

    /// `self`'s first `events` events, then a stall with the connection open.
    pub fn stall_after(self, events: usize) -> Self {
        Reply::StallAfter { reply: Box::new(self), events }
    }

    /// `self`'s first `events` events, then a clean end.
    pub fn end_after(self, events: usize) -> Self {
        Reply::EndAfter { reply: Box::new(self), events }
    }

    /// `self` in body writes of at most `bytes` bytes.
    pub fn split_writes(self, bytes: usize) -> Self {
        Reply::SplitWrites { reply: Box::new(self), bytes }
    }

    /// OpenAI's 400 for a conversation longer than the model's context (`param: "messages"`,
    /// `code: "context_length_exceeded"`), worded as the API words it.
    pub fn context_length_exceeded(limit: u64, asked: u64) -> Self {
        api_error(
            400,
            "invalid_request_error",
            Some("messages"),
            Some("context_length_exceeded"),
            &format!(
                "This model's maximum context length is {limit} tokens. However, your messages resulted in {asked} \
                 tokens. Please reduce the length of the messages."
            ),
        )
    }

    /// llama.cpp's server (Docker Model Runner's engine) for the same: 400 with its own body,
    /// `{"error":{"code":400,"message","type":"exceed_context_size_error","n_prompt_tokens","n_ctx"}}`.
    pub fn llama_cpp_context_exceeded(n_ctx: u64, asked: u64) -> Self {
        let body = json!({"error": {
            "code": 400,
            "message": format!("request ({asked} tokens) exceeds the available context size ({n_ctx} tokens), try increasing it"),
            "type": "exceed_context_size_error",
            "n_prompt_tokens": asked,
            "n_ctx": n_ctx,
        }});
        Reply::Raw { status: 400, content_type: "application/json; charset=utf-8".to_owned(), body: body.to_string() }
    }

    /// OpenAI's 400 for `tools` sent to a model without function calling (`param: "tools"`).
    pub fn tools_unsupported() -> Self {
        api_error(
            400,
            "invalid_request_error",
            Some("tools"),
            None,
            "tools is not supported in this model. For a list of supported models, refer to \
             https://platform.openai.com/docs/guides/function-calling#models-supporting-function-calling.",
        )
    }

    /// llama.cpp's server started without `--jinja` when a request has `tools`: a 500
    /// `server_error` (its parser throws), `{"error":{"code":500,"message","type"}}`.
    pub fn llama_cpp_tools_without_jinja() -> Self {
        let body =
            json!({"error": {"code": 500, "message": "tools param requires --jinja flag", "type": "server_error"}});
        Reply::Raw { status: 500, content_type: "application/json; charset=utf-8".to_owned(), body: body.to_string() }
    }

    /// `self`, streamed in pieces of `sizes` characters in turn, its calls in `calls` order.
    pub fn in_pieces(self, sizes: impl IntoIterator<Item = usize>, calls: CallOrder) -> Self {
        Reply::Pieces { reply: Box::new(self), sizes: sizes.into_iter().collect(), calls }
    }
}

/// An OpenAI error body with a `param`, sent as is.
fn api_error(status: u16, kind: &str, param: Option<&str>, code: Option<&str>, message: &str) -> Reply {
    let body = json!({"error": {"message": message, "type": kind, "param": param, "code": code}});
    Reply::Raw { status, content_type: "application/json".to_owned(), body: body.to_string() }
}

/// Read-only view of one validated chat-completion request, handed to
/// [`Behaviour::reply`].
#[derive(Clone, Copy)]
pub struct ChatRequestView<'a> {
    body: &'a Value,
    bearer: Option<&'a str>,
    number: u64,
}

impl fmt::Debug for ChatRequestView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatRequestView")
            .field("number", &self.number)
            .field("bearer", &self.bearer.map(|_| "<redacted>"))
            .field("body", self.body)
            .finish()
    }
}

impl<'a> ChatRequestView<'a> {
    /// Wraps a request body (useful to unit-test behaviours without a server).
    pub fn new(body: &'a Value, bearer: Option<&'a str>, number: u64) -> Self {
        Self { body, bearer, number }
    }

    /// The whole parsed request body.
    pub fn body(&self) -> &'a Value {
        self.body
    }

    /// The requested `model` (empty if absent).
    pub fn model(&self) -> &'a str {
        self.body.get("model").and_then(Value::as_str).unwrap_or("")
    }

    /// The `messages` array (empty if absent).
    pub fn messages(&self) -> &'a [Value] {
        shape::messages(self.body)
    }

    /// Names of the functions offered in `tools`, in order.
    pub fn tool_names(&self) -> Vec<&'a str> {
        shape::tool_names(self.body)
    }

    /// Whether a function called `name` is offered.
    pub fn offers_tool(&self, name: &str) -> bool {
        self.tool_names().contains(&name)
    }

    /// The bearer token sent, if any. Never log it.
    pub fn bearer(&self) -> Option<&'a str> {
        self.bearer
    }

    /// 0-based number of this request among all chat-completion requests the
    /// server received (including rejected ones); equals its index in
    /// [`ModelServer::requests`].
    pub fn number(&self) -> u64 {
        self.number
    }

    /// `max_tokens` (or `max_completion_tokens`), if sent.
    pub fn max_tokens(&self) -> Option<u64> {
        self.body.get("max_tokens").or_else(|| self.body.get("max_completion_tokens")).and_then(Value::as_u64)
    }

    /// `temperature`, if sent.
    pub fn temperature(&self) -> Option<f64> {
        self.body.get("temperature").and_then(Value::as_f64)
    }

    /// Text of the last `user` message, if any.
    pub fn last_user_text(&self) -> Option<String> {
        shape::last_user_text(self.body)
    }
}

/// A [`Behaviour`] that answers with a fixed script of replies, in order.
///
/// Once the script is exhausted every further request gets an HTTP 500
/// saying so, which makes an unexpected extra request fail loudly.
#[derive(Debug, Default)]
pub struct Queue {
    replies: Mutex<VecDeque<Reply>>,
}

impl Queue {
    /// A queue holding `replies`.
    pub fn new(replies: impl IntoIterator<Item = Reply>) -> Self {
        Self { replies: Mutex::new(replies.into_iter().collect()) }
    }

    /// Appends a reply to the end of the script.
    pub fn push(&self, reply: Reply) {
        lock(&self.replies).push_back(reply);
    }

    /// How many scripted replies are left.
    pub fn remaining(&self) -> usize {
        lock(&self.replies).len()
    }
}

impl Behaviour for Queue {
    fn reply(&self, request: &ChatRequestView<'_>) -> Reply {
        lock(&self.replies).pop_front().unwrap_or_else(|| {
            Reply::error(
                500,
                "server_error",
                Some("script_exhausted"),
                format!("The demo model server's scripted reply queue ran out at request #{}.", request.number()),
            )
        })
    }
}

/// A model that never calls tools, whatever it is offered: it answers every request in plain
/// text, as a small local model without a tool-calling chat template does (Gemma 3 270M on
/// llama.cpp's server: the `tools` array is ignored). The answer restates the last user message.
#[derive(Debug, Default, Clone, Copy)]
pub struct TextOnly;

impl Behaviour for TextOnly {
    fn reply(&self, request: &ChatRequestView<'_>) -> Reply {
        let question = request.last_user_text().unwrap_or_default();
        Reply::text(format!("{question}\n\nThis is an answer in plain text; no tool was called."))
    }
}

/// The demo's researcher, served by the test server (with validation and recording).
impl Behaviour for ScriptedResearcher {
    fn reply(&self, request: &ChatRequestView<'_>) -> Reply {
        match self.respond(request.body()) {
            ScriptedReply::Answer(text) => Reply::text(text),
            ScriptedReply::Call { name, arguments } => Reply::tool_call(name, &arguments),
        }
    }
}

/// A [`Behaviour`] backed by a closure.
pub struct FnBehaviour<F>(pub F);

impl<F> FnBehaviour<F>
where
    F: Fn(&ChatRequestView<'_>) -> Reply + Send + Sync + 'static,
{
    /// Wraps `f`.
    pub fn new(f: F) -> Self {
        Self(f)
    }
}

impl<F> fmt::Debug for FnBehaviour<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnBehaviour")
    }
}

impl<F> Behaviour for FnBehaviour<F>
where
    F: Fn(&ChatRequestView<'_>) -> Reply + Send + Sync + 'static,
{
    fn reply(&self, request: &ChatRequestView<'_>) -> Reply {
        (self.0)(request)
    }
}

// ---------------------------------------------------------------------------
// Recording
// ---------------------------------------------------------------------------

/// One chat-completion request as received.
#[derive(Clone)]
pub struct RecordedRequest {
    /// 0-based request number (its index in [`ModelServer::requests`]).
    pub number: u64,
    /// Parsed JSON body; `Value::Null` when the body was not valid JSON.
    pub body: Value,
    /// The body exactly as it arrived (byte order and spacing are the client's).
    pub raw: Bytes,
    /// Bearer token from `Authorization: Bearer <token>`, if any.
    pub bearer: Option<String>,
    /// The W3C `traceparent` header, if any.
    pub traceparent: Option<String>,
    /// When the request arrived.
    pub at: Instant,
    /// HTTP status sent back; `None` while in flight or if the connection
    /// was dropped without a response.
    pub status: Option<u16>,
}

impl fmt::Debug for RecordedRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordedRequest")
            .field("number", &self.number)
            .field("body", &self.body)
            .field("bearer", &self.bearer.as_ref().map(|_| "<redacted>"))
            .field("traceparent", &self.traceparent)
            .field("at", &self.at)
            .field("status", &self.status)
            .finish()
    }
}

// ---------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------

struct Shared {
    behaviour: Arc<dyn Behaviour>,
    latency_ms: AtomicU64,
    accepted_key: Mutex<Option<String>>,
    requests: Mutex<Vec<RecordedRequest>>,
    /// Requests received since start or reset (all of them are in `requests` unless only the
    /// first is kept).
    received: AtomicU64,
    /// Keep every request's record (tests), or only the first one's (benchmarks: a million
    /// questions' bodies would fill the peer's memory).
    keep_every_request: AtomicBool,
    models_seen: Mutex<BTreeSet<String>>,
    /// When set, the only models served: `/v1/models` lists them, any other gets OpenAI's 404.
    served_models: Mutex<Option<Vec<String>>>,
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
    next_call_id: AtomicU64,
    cached_tokens: AtomicU64,
    started: u64,
    rate_limits: Mutex<Option<rate_limit::Limiter>>,
    stream_style: Mutex<StreamStyle>,
    /// Cancelled when the server stops (a stalled stream then drops its connection).
    stopping: OnceLock<CancellationToken>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave the data
    // half-updated in a way that matters for a test double.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn record(&self, mut request: RecordedRequest) -> u64 {
        let mut requests = lock(&self.requests);
        let number = self.received.fetch_add(1, Ordering::SeqCst);
        request.number = number;
        if self.keep_every_request.load(Ordering::Relaxed) || requests.is_empty() {
            requests.push(request);
        }
        number
    }

    fn set_status(&self, number: u64, status: u16) {
        if let Some(r) = lock(&self.requests).get_mut(number as usize) {
            r.status = Some(status);
        }
    }
}

/// Counts a request as in flight until dropped (also when the client goes
/// away and the handler future is cancelled). A body written event by event
/// (a stream, a trickled or stalled body) holds it until it ends.
struct InFlight(Arc<Shared>);

impl InFlight {
    fn enter(shared: &Arc<Shared>) -> Self {
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.peak_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(Arc::clone(shared))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A running loopback OpenAI-compatible server. Stops on
/// [`shutdown`](Self::shutdown) or when dropped.
pub struct ModelServer {
    server: Loopback,
    shared: Arc<Shared>,
}

impl fmt::Debug for ModelServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelServer")
            .field("addr", &self.addr())
            .field("request_count", &self.request_count())
            .finish_non_exhaustive()
    }
}

impl ModelServer {
    /// Binds `127.0.0.1:0` and starts serving with `behaviour`.
    pub async fn start(behaviour: Arc<dyn Behaviour>) -> std::io::Result<ModelServer> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), behaviour).await
    }

    /// Serves on `addr` (port 0: any free port).
    pub async fn start_on(addr: SocketAddr, behaviour: Arc<dyn Behaviour>) -> std::io::Result<ModelServer> {
        let started = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let shared = Arc::new(Shared {
            behaviour,
            latency_ms: AtomicU64::new(0),
            accepted_key: Mutex::new(None),
            requests: Mutex::new(Vec::new()),
            received: AtomicU64::new(0),
            keep_every_request: AtomicBool::new(true),
            models_seen: Mutex::new(BTreeSet::new()),
            served_models: Mutex::new(None),
            in_flight: AtomicUsize::new(0),
            peak_in_flight: AtomicUsize::new(0),
            next_call_id: AtomicU64::new(1),
            cached_tokens: AtomicU64::new(0),
            started,
            rate_limits: Mutex::new(None),
            stream_style: Mutex::new(StreamStyle::default()),
            stopping: OnceLock::new(),
        });
        // Docker Model Runner serves the same API under these prefixes too.
        let mut router = Router::new();
        for prefix in ["/v1", "/engines/v1", "/engines/llama.cpp/v1"] {
            router = router
                .route(&format!("{prefix}/chat/completions"), post(chat_completions).fallback(method_not_allowed))
                .route(&format!("{prefix}/models"), get(list_models).fallback(method_not_allowed));
        }
        let router =
            router.fallback(not_found).layer(DefaultBodyLimit::max(MAX_BODY_BYTES)).with_state(Arc::clone(&shared));
        let server = Loopback::start(addr, "test model server", |stopping| {
            let _ = shared.stopping.set(stopping.clone());
            router
        })
        .await?;
        Ok(ModelServer { server, shared })
    }

    /// Adds a fixed delay to every completion (counted as in flight).
    pub fn with_latency(self, latency: Duration) -> Self {
        self.set_latency(latency);
        self
    }

    /// Changes the per-completion delay while running.
    pub fn set_latency(&self, latency: Duration) {
        let ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        self.shared.latency_ms.store(ms, Ordering::SeqCst);
    }

    /// Reports up to `tokens` of every completion's prompt as read from a prompt cache
    /// (`usage.prompt_tokens_details.cached_tokens`, at most the prompt), as OpenAI and
    /// llama.cpp's server do for a prefix they have seen.
    pub fn with_cached_tokens(self, tokens: u64) -> Self {
        self.shared.cached_tokens.store(tokens, Ordering::SeqCst);
        self
    }

    /// Enforces `limits` in front of the behaviour (builder form of
    /// [`set_rate_limits`](Self::set_rate_limits)).
    pub fn with_rate_limits(self, limits: RateLimits) -> Self {
        self.set_rate_limits(Some(limits));
        self
    }

    /// Enforces `limits` (full buckets from now, counts from zero), or, with `None`, none.
    pub fn set_rate_limits(&self, limits: Option<RateLimits>) {
        *lock(&self.shared.rate_limits) = limits.map(rate_limit::Limiter::new);
    }

    /// What the rate limits did since they were set (zero without limits).
    pub fn rate_limit_counts(&self) -> RateLimitCounts {
        lock(&self.shared.rate_limits).as_ref().map(rate_limit::Limiter::counts).unwrap_or_default()
    }

    /// Streams answers in `style` (builder form of [`set_stream_style`](Self::set_stream_style)).
    pub fn with_stream_style(self, style: StreamStyle) -> Self {
        self.set_stream_style(style);
        self
    }

    /// How answers to `"stream": true` are cut and paced from now on (a reply's own
    /// [`Reply::Pieces`], [`Reply::Trickle`] and [`Reply::SplitWrites`] win over it).
    pub fn set_stream_style(&self, style: StreamStyle) {
        *lock(&self.shared.stream_style) = style;
    }

    /// Serves only `models` (builder form of [`set_models`](Self::set_models)).
    pub fn with_models(self, models: &[&str]) -> Self {
        self.set_models(Some(models.iter().map(|m| (*m).to_owned()).collect()));
        self
    }

    /// Serves only `models` from now on (`None`: any model, as the demo does): `GET /v1/models`
    /// lists exactly them, and a completion for another gets OpenAI's 404 `model_not_found`.
    pub fn set_models(&self, models: Option<Vec<String>>) {
        *lock(&self.shared.served_models) = models;
    }

    /// Requires `Authorization: Bearer <key>` (builder form of
    /// [`set_accepted_key`](Self::set_accepted_key)).
    pub fn require_key(self, key: Option<String>) -> Self {
        self.set_accepted_key(key);
        self
    }

    /// Sets (or, with `None`, clears) the only accepted bearer token. When
    /// set, any other token (or none) gets OpenAI's 401 `invalid_api_key`.
    pub fn set_accepted_key(&self, key: Option<String>) {
        *lock(&self.shared.accepted_key) = key;
    }

    /// The OpenAI base URL, `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr())
    }

    /// The same API as Docker Model Runner's URLs give it: `http://127.0.0.1:PORT/engines/v1`,
    /// or with `engine` named, `…/engines/llama.cpp/v1`.
    pub fn model_runner_url(&self, engine: Option<&str>) -> String {
        match engine {
            Some(engine) => format!("http://{}/engines/{engine}/v1", self.addr()),
            None => format!("http://{}/engines/v1", self.addr()),
        }
    }

    /// The bound socket address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Every chat-completion request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }

    /// Number of chat-completion requests received so far.
    pub fn request_count(&self) -> usize {
        self.shared.received.load(Ordering::SeqCst) as usize
    }

    /// The same server, keeping the record of only the first request (since start or
    /// [`reset`](Self::reset)) and counting the rest: what a benchmark of a million questions
    /// needs ([`requests`](Self::requests) then holds one).
    pub fn recording_only_the_first(self) -> Self {
        self.shared.keep_every_request.store(false, Ordering::Relaxed);
        self
    }

    /// Chat-completion requests being handled right now: a stream until its last event is
    /// written (or its client goes).
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// The most chat-completion requests ever handled at the same time.
    pub fn peak_in_flight(&self) -> usize {
        self.shared.peak_in_flight.load(Ordering::SeqCst)
    }

    /// When the first request (since start or [`reset`](Self::reset)) arrived.
    pub fn first_request_at(&self) -> Option<Instant> {
        lock(&self.shared.requests).first().map(|request| request.at)
    }

    /// Forgets the requests seen and the in-flight peak, and refills the rate limits' buckets
    /// and zeroes their counts (between benchmark runs).
    pub fn reset(&self) {
        let limits = lock(&self.shared.rate_limits).as_ref().map(rate_limit::Limiter::config);
        self.set_rate_limits(limits);
        let mut requests = lock(&self.shared.requests);
        requests.clear();
        self.shared.received.store(0, Ordering::SeqCst);
        drop(requests);
        self.shared.peak_in_flight.store(self.shared.in_flight.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    /// Stops accepting connections and waits (up to a few seconds) for
    /// in-flight requests to finish.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}

// ---------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------

/// An OpenAI-style API error.
#[derive(Debug, Clone, PartialEq)]
struct ApiError {
    status: u16,
    kind: &'static str,
    message: String,
    param: Option<String>,
    code: Option<&'static str>,
}

impl ApiError {
    fn invalid(message: impl Into<String>, param: Option<String>, code: Option<&'static str>) -> Self {
        ApiError { status: 400, kind: "invalid_request_error", message: message.into(), param, code }
    }

    fn into_response(self) -> Response {
        error_response(self.status, self.kind, self.param.as_deref(), self.code, &self.message, None)
    }
}

fn error_response(
    status: u16,
    kind: &str,
    param: Option<&str>,
    code: Option<&str>,
    message: &str,
    retry_after: Option<Duration>,
) -> Response {
    let body = json!({
        "error": { "message": message, "type": kind, "param": param, "code": code }
    });
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, axum::Json(body)).into_response();
    if let Some(delay) = retry_after {
        let headers = response.headers_mut();
        let secs = delay.as_millis().div_ceil(1000);
        headers.insert(header::RETRY_AFTER, HeaderValue::from(secs as u64));
        headers.insert("retry-after-ms", HeaderValue::from(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX)));
    }
    response
}

fn bearer_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned())
}

/// Masks a key the way OpenAI's 401 message does: a few leading and
/// trailing characters, stars in between.
fn mask_key(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    let n = chars.len();
    let (head, tail) = match n {
        0..=5 => return "*".repeat(n),
        6..=11 => (2, 2),
        _ => (5, 4),
    };
    let mut out: String = chars[..head].iter().collect();
    out.push_str(&"*".repeat(n - head - tail));
    out.extend(&chars[n - tail..]);
    out
}

fn check_key(shared: &Shared, bearer: Option<&str>) -> Result<(), ApiError> {
    let accepted = lock(&shared.accepted_key);
    let Some(accepted) = accepted.as_deref() else {
        return Ok(());
    };
    match bearer {
        Some(token) if token == accepted => Ok(()),
        Some(token) => Err(ApiError {
            status: 401,
            kind: "invalid_request_error",
            message: format!(
                "Incorrect API key provided: {}. You can find your API key at \
                 https://platform.openai.com/account/api-keys.",
                mask_key(token)
            ),
            param: None,
            code: Some("invalid_api_key"),
        }),
        None => Err(ApiError {
            status: 401,
            kind: "invalid_request_error",
            message: "You didn't provide an API key. You need to provide your API key in an \
                      Authorization header using Bearer auth (i.e. Authorization: Bearer \
                      YOUR_KEY), or as the password field (with blank username) if you're \
                      accessing the API from your browser and are prompted for a username and \
                      password. You can obtain an API key from \
                      https://platform.openai.com/account/api-keys."
                .to_owned(),
            param: None,
            code: None,
        }),
    }
}

async fn chat_completions(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let at = Instant::now();
    let bearer = bearer_token(&headers);
    let traceparent = headers.get("traceparent").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let parsed = serde_json::from_slice::<Value>(&body);
    let number = shared.record(RecordedRequest {
        number: 0,
        body: parsed.as_ref().cloned().unwrap_or(Value::Null),
        raw: body.clone(),
        bearer: bearer.clone(),
        traceparent,
        at,
        status: None,
    });
    let in_flight = InFlight::enter(&shared);

    let Prepared { body, mut reply, rate_limit_headers, refused } =
        match prepare(&shared, number, parsed, bearer.as_deref()) {
            Ok(prepared) => prepared,
            Err(error) => {
                shared.set_status(number, error.status);
                return error.into_response();
            }
        };

    let latency = shared.latency_ms.load(Ordering::SeqCst);
    // The real API refuses at once: a 429 does not wait for the model.
    if latency > 0 && !refused {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    let streamed = body.get("stream") == Some(&Value::Bool(true));
    let stopping = shared.stopping.get().cloned().unwrap_or_default();
    let mut overrides = Overrides::default();
    let mut response = loop {
        match reply {
            Reply::Delay(delay, inner) => {
                tokio::time::sleep(delay).await;
                reply = *inner;
            }
            Reply::Trickle { reply: inner, every } => {
                overrides.trickle(every);
                reply = *inner;
            }
            Reply::StallAfter { reply: inner, events } => {
                overrides.stall_after(events);
                reply = *inner;
            }
            Reply::EndAfter { reply: inner, events } => {
                overrides.end_after(events);
                reply = *inner;
            }
            Reply::SplitWrites { reply: inner, bytes } => {
                overrides.split_writes(bytes);
                reply = *inner;
            }
            Reply::Pieces { reply: inner, sizes, calls } => {
                overrides.pieces(sizes, calls);
                reply = *inner;
            }
            Reply::CutShort { reply, after } => {
                let style = overrides.style(&lock(&shared.stream_style), streamed);
                let rendered = render(&shared, number, &body, bearer.as_deref(), *reply, &style);
                let whole = deliver(rendered, Writing::plain(), stopping, in_flight).await;
                break cut_short(whole, after).await;
            }
            Reply::Disconnect => {
                // A body that fails on its first poll makes hyper abort the
                // connection before a complete response is written.
                return Response::new(Body::from_stream(futures::stream::once(async { Err::<Bytes, _>(aborted()) })));
            }
            other => {
                let style = overrides.style(&lock(&shared.stream_style), streamed);
                let rendered = render(&shared, number, &body, bearer.as_deref(), other, &style);
                break deliver(rendered, overrides.writing(&style), stopping, in_flight).await;
            }
        }
    };
    response.headers_mut().extend(rate_limit_headers);
    shared.set_status(number, response.status().as_u16());
    response
}

/// A reply's response before it is written out.
enum Rendered {
    /// A stream: its head and its SSE events.
    Stream(Parts, Vec<Bytes>),
    /// A response whose body is in memory: one event.
    Whole(Response),
    /// A body hostile on its own (endless, stalled, aborted), sent as it is.
    Fixed(Response),
}

/// What a reply that needs no waiting sends, a stream cut in `style`'s pieces. Inside
/// [`Reply::CutShort`] the reply is rendered whole: the waits and early ends wrapped around it
/// are not kept, its pieces are.
fn render(
    shared: &Shared,
    number: u64,
    body: &Value,
    bearer: Option<&str>,
    reply: Reply,
    style: &StreamStyle,
) -> Rendered {
    match reply {
        Reply::Message { content, tool_calls, finish_reason } => {
            completion(shared, number, body, content, tool_calls, finish_reason, style)
        }
        Reply::Error { status, retry_after, kind, code, message } => {
            Rendered::Whole(error_response(status, &kind, None, code.as_deref(), &message, retry_after))
        }
        Reply::EchoKey { status } => {
            let key = bearer.unwrap_or("(none)");
            let message = format!(
                "The API key {key} is not allowed to use this model in this organization. \
                 Request headers: Authorization: Bearer {key}"
            );
            Rendered::Whole(error_response(status, "invalid_request_error", None, None, &message, None))
        }
        Reply::Malformed(text) => Rendered::Whole(raw_response(200, "application/json", text)),
        Reply::Raw { status, content_type, body } => Rendered::Whole(raw_response(status, &content_type, body)),
        Reply::EndlessBody => {
            let blanks = Bytes::from(vec![b' '; 64 * 1024]);
            let chunks = std::iter::once(Bytes::from_static(b"{\"choices\":[")).chain(std::iter::repeat(blanks));
            Rendered::Fixed(streamed(futures::stream::iter(chunks.map(Ok::<_, std::io::Error>))))
        }
        Reply::Stall(head) => {
            let head = futures::stream::once(async move { Ok::<_, std::io::Error>(Bytes::from(head)) });
            Rendered::Fixed(streamed(futures::StreamExt::chain(head, futures::stream::pending())))
        }
        Reply::Pieces { reply: inner, sizes, calls } => {
            let style = StreamStyle { pieces: sizes, calls, ..style.clone() };
            render(shared, number, body, bearer, *inner, &style)
        }
        Reply::Delay(_, inner)
        | Reply::CutShort { reply: inner, .. }
        | Reply::Trickle { reply: inner, .. }
        | Reply::StallAfter { reply: inner, .. }
        | Reply::EndAfter { reply: inner, .. }
        | Reply::SplitWrites { reply: inner, .. } => render(shared, number, body, bearer, *inner, style),
        Reply::Disconnect => Rendered::Fixed(Response::new(Body::from_stream(futures::stream::once(async {
            Err::<Bytes, _>(aborted())
        })))),
    }
}

/// `rendered` written out: at once in one piece when `writing` is plain and the body is not a
/// stream (with its `Content-Length`), else event by event as `writing` says, the request
/// counted in flight until the last event is written (a model still generating).
async fn deliver(rendered: Rendered, writing: Writing, stopping: CancellationToken, in_flight: InFlight) -> Response {
    match rendered {
        Rendered::Fixed(response) => response,
        Rendered::Whole(response) if writing.is_plain() => response,
        Rendered::Whole(response) => {
            let (mut parts, body) = response.into_parts();
            let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES).await.unwrap_or_default();
            parts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(parts, writing.body(vec![bytes], stopping, in_flight))
        }
        Rendered::Stream(parts, events) => Response::from_parts(parts, writing.body(events, stopping, in_flight)),
    }
}

fn aborted() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "scripted disconnect")
}

fn raw_response(status: u16, content_type: &str, body: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, body).into_response();
    if let Ok(value) = HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

/// HTTP 200 `application/json` with a body of unknown length (chunked).
fn streamed<S>(chunks: S) -> Response
where
    S: futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
{
    let mut response = Response::new(Body::from_stream(chunks));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// `whole`'s status and headers (its `Content-Length` included) with only the first `after`
/// bytes of its body, then an error, which makes hyper drop the connection.
async fn cut_short(whole: Response, after: usize) -> Response {
    let (mut parts, body) = whole.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES).await.unwrap_or_default();
    parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    let head = bytes.slice(..after.min(bytes.len()));
    // hyper writes out what it has when the body is not ready: the head reaches the client
    // before the error drops the connection.
    let cut = async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Err(aborted())
    };
    let chunks = futures::StreamExt::chain(futures::stream::once(async { Ok(head) }), futures::stream::once(cut));
    Response::from_parts(parts, Body::from_stream(chunks))
}

/// A valid request and what to answer it.
struct Prepared {
    body: Value,
    reply: Reply,
    /// `x-ratelimit-*`, when rate limits are set and said.
    rate_limit_headers: HeaderMap,
    /// The rate limits refused it: `reply` is their 429.
    refused: bool,
}

/// Auth, JSON parsing, validation, the rate limits, then the behaviour's reply.
fn prepare(
    shared: &Shared,
    number: u64,
    parsed: Result<Value, serde_json::Error>,
    bearer: Option<&str>,
) -> Result<Prepared, ApiError> {
    check_key(shared, bearer)?;
    let body = parsed.map_err(|_| {
        ApiError::invalid(
            "We could not parse the JSON body of your request. (HINT: This likely means you \
             aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, \
             but what was sent was not valid JSON. If you have trouble figuring out how to fix \
             this, please contact us through our help center at help.openai.com.)",
            None,
            None,
        )
    })?;
    validate(&body)?;
    if let Some(model) = body.get("model").and_then(Value::as_str) {
        if lock(&shared.served_models).as_ref().is_some_and(|served| !served.iter().any(|m| m == model)) {
            return Err(ApiError {
                status: 404,
                kind: "invalid_request_error",
                message: format!("The model `{model}` does not exist or you do not have access to it."),
                param: None,
                code: Some("model_not_found"),
            });
        }
        lock(&shared.models_seen).insert(model.to_owned());
    }
    let admission = lock(&shared.rate_limits).as_mut().map(|limits| limits.admit(&body));
    let (rate_limit_headers, refused) = admission.map(|a| (a.headers, a.refused)).unwrap_or_default();
    let refused_now = refused.is_some();
    // A refused request never reaches the model: a scripted reply is not used up by it.
    let reply = refused.unwrap_or_else(|| shared.behaviour.reply(&ChatRequestView::new(&body, bearer, number)));
    Ok(Prepared { body, reply, rate_limit_headers, refused: refused_now })
}

/// The completion: the JSON body, or with `"stream": true` its SSE events in `style`'s pieces.
fn completion(
    shared: &Shared,
    number: u64,
    body: &Value,
    content: Option<String>,
    tool_calls: Vec<ScriptedToolCall>,
    finish_reason: Option<String>,
    style: &StreamStyle,
) -> Rendered {
    let tool_calls = tool_calls
        .into_iter()
        .map(|call| CallOut {
            id: format!("call_{}", shared.next_call_id.fetch_add(1, Ordering::SeqCst)),
            name: call.name,
            arguments: call.arguments,
        })
        .collect();
    let completion = Completion {
        id: format!("chatcmpl-demo{:x}{number:06}", shared.started),
        model: body.get("model").cloned().unwrap_or(Value::Null),
        content,
        tool_calls,
        finish_reason,
        prompt_tokens: shape::prompt_tokens(body),
        cached_tokens: shared.cached_tokens.load(Ordering::SeqCst),
    };
    let whole = shape::completion_body(&completion);
    let streamed = body.get("stream") == Some(&Value::Bool(true));
    let mut response = if streamed {
        [(header::CONTENT_TYPE, "text/event-stream")].into_response()
    } else {
        axum::Json(&whole).into_response()
    };
    if let Ok(value) = HeaderValue::from_str(&format!("req_demo_{number}")) {
        response.headers_mut().insert("x-request-id", value);
    }
    if !streamed {
        return Rendered::Whole(response);
    }
    let include_usage = body.pointer("/stream_options/include_usage") == Some(&Value::Bool(true));
    let (head, _) = response.into_parts();
    Rendered::Stream(head, stream::sse_events(&whole, include_usage, style))
}

async fn list_models(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let bearer = bearer_token(&headers);
    if let Err(error) = check_key(&shared, bearer.as_deref()) {
        return error.into_response();
    }
    let names = match lock(&shared.served_models).clone() {
        Some(served) => served.into_iter().collect(),
        None => {
            let mut names = lock(&shared.models_seen).clone();
            names.insert(DEMO_MODEL.to_owned());
            names
        }
    };
    let data: Vec<Value> = names
        .into_iter()
        .map(|id| json!({ "id": id, "object": "model", "created": shared.started, "owned_by": "agentry-demo" }))
        .collect();
    axum::Json(json!({ "object": "list", "data": data })).into_response()
}

fn not_found_response(method: &Method, path: &str) -> Response {
    error_response(404, "invalid_request_error", None, None, &format!("Invalid URL ({method} {path})"), None)
}

async fn not_found(method: Method, uri: Uri) -> Response {
    not_found_response(&method, uri.path())
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    error_response(
        405,
        "invalid_request_error",
        None,
        None,
        &format!("Invalid method for URL ({method} {})", uri.path()),
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_keys_like_openai() {
        assert_eq!(mask_key("sk-abcdefghijklmnopxyz1"), format!("sk-ab{}xyz1", "*".repeat(14)));
        assert_eq!(mask_key("sk-12345"), "sk****45");
        assert_eq!(mask_key("abc"), "***");
        assert!(!mask_key("sk-secret-value-1234").contains("secret"));
    }

    #[test]
    fn view_reads_the_request() {
        let body = json!({
            "model": "gpt-x",
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "hello"}]}
            ],
            "tools": [{"type": "function", "function": {"name": "search", "parameters": {}}}],
            "max_tokens": 10
        });
        let view = ChatRequestView::new(&body, Some("k"), 7);
        assert_eq!(view.model(), "gpt-x");
        assert_eq!(view.tool_names(), vec!["search"]);
        assert!(view.offers_tool("search"));
        assert_eq!(view.last_user_text().as_deref(), Some("hello"));
        assert_eq!(view.max_tokens(), Some(10));
        assert_eq!(view.number(), 7);
    }

    #[test]
    fn queue_runs_out_with_a_500() {
        let queue = Queue::new([Reply::text("one")]);
        let body = json!({});
        let view = ChatRequestView::new(&body, None, 0);
        assert_eq!(queue.reply(&view), Reply::text("one"));
        assert!(matches!(queue.reply(&view), Reply::Error { status: 500, .. }));
        assert_eq!(queue.remaining(), 0);
    }
}
