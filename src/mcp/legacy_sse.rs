//! Client side of the legacy MCP "HTTP with SSE" transport (protocol revision
//! 2024-11-05), as an [`rmcp`] client [`Transport`].
//!
//! # Why this exists
//!
//! The Docker MCP Gateway can only be reached over this transport when it runs
//! with `--transport=sse` (e.g. `http://mcp-gateway:8811/sse`), and many other
//! deployed MCP servers still speak only it. rmcp 3.x dropped its own SSE
//! client in favour of streamable HTTP, so agentry carries this small one.
//!
//! # Protocol
//!
//! 1. The client opens a long-lived `GET <url>` with
//!    `Accept: text/event-stream`.
//! 2. The server's first event is `event: endpoint`; its data is a URI
//!    reference (usually relative, e.g. `/messages/?session_id=abc` from the
//!    Python SDK or `/sse?sessionid=abc` from the Go SDK that the Docker
//!    gateway uses). It is resolved against the SSE URL and must be
//!    same-origin with the configured URL: the spec asks clients to check
//!    this, and the configured headers (bearer tokens) are sent to it.
//! 3. Every client message (request, notification or response) is POSTed as
//!    `Content-Type: application/json` to that endpoint; the server answers
//!    `202 Accepted` (any 2xx is accepted) with no JSON-RPC content.
//! 4. Every server message (responses to our requests, server requests and
//!    notifications) arrives on the GET stream as an `event: message` (or
//!    untyped) SSE event whose data is one JSON-RPC message.
//!
//! Comments (keep-alive pings), repeated `endpoint` events and unknown event
//! types are ignored. A line the SSE parser rejects (`sse-stream` is
//! stricter than browsers: a line with an unknown field name is an error) or
//! an event over 16 MiB ends the stream, like a dropped connection.
//!
//! # Malformed JSON-RPC
//!
//! rmcp drops, without a word, what it cannot match to a request, so a call
//! whose answer was mangled would wait for its timeout. This transport sees
//! both sides (the requests it posts, the messages it reads) and keeps a
//! [`Ledger`](super::ledger): a mangled answer that can be tied to a request
//! fails that request at once, and each kind of defect is warned about once
//! per session.
//!
//! # Failure semantics
//!
//! * [`LegacySseTransport::connect`] fails with a [`LegacySseError`] whose
//!   variant says what to do next: [`LegacySseError::Connect`] (unreachable,
//!   retry with backoff), [`LegacySseError::Status`] (e.g. 401 or 404: fix the
//!   configuration or credentials), [`LegacySseError::NoEndpoint`] (the
//!   server accepted the stream but never announced where to POST),
//!   [`LegacySseError::Protocol`] (a server that is not a legacy SSE MCP
//!   server, or one announcing a foreign endpoint).
//! * Once connected, a background reader task owns the GET stream. When the
//!   stream ends or fails (the server restarted, the gateway was stopped, the
//!   network dropped the connection), messages already received are still
//!   delivered and then [`Transport::receive`] returns `None`. rmcp treats
//!   that as the end of the session: its service loop stops with
//!   `QuitReason::Closed`, every pending request fails with
//!   `ServiceError::TransportClosed`, and `RunningService::waiting()`
//!   completes. The legacy protocol has no resumption, so the caller must
//!   build a new transport and run a new `initialize` handshake.
//! * From that moment on, [`Transport::send`] fails fast with
//!   [`LegacySseError::Closed`]; POSTs still in flight are abandoned.
//! * A POST that fails or gets a non-2xx status is a
//!   [`LegacySseError::Send`] for that one message only; the session stays up
//!   as long as the stream does.
//! * [`Transport::close`] and dropping the transport both stop the reader
//!   task, which drops the GET stream and so ends the server-side session.
//!
//! A half-open connection (peer vanished without a FIN or RST) is only
//! noticed if the [`reqwest::Client`] has TCP keep-alive enabled
//! ([`reqwest::ClientBuilder::tcp_keepalive`]). Do not give that client a
//! total request timeout ([`reqwest::ClientBuilder::timeout`]): it would cut
//! the long-lived GET. A read timeout is only safe if the server sends pings
//! more often than it (the Python SDK does every 15 s; the Go SDK behind the
//! Docker gateway does not ping at all).
//!
//! # Secrets
//!
//! Header values (bearer tokens) never appear in logs or errors, and are
//! marked sensitive before use. Errors name the SSE URL without its user
//! info, query or fragment, and the message endpoint by its path only (its
//! query carries the session id). Logs are at `debug`/`trace` level and name
//! only the endpoint path and JSON-RPC method names.

use std::{
    borrow::Cow,
    fmt,
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{StreamExt, stream::BoxStream};
use reqwest::{
    StatusCode,
    header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE, HeaderMap, HeaderValue},
};
use rmcp::{
    RoleClient,
    model::{ClientJsonRpcMessage, ClientNotification, ConstString, JsonRpcMessage, ServerJsonRpcMessage},
    transport::Transport,
};
use sse_stream::{Sse, SseStream};
use tokio::{sync::mpsc, task::JoinHandle, time::Instant};
use tokio_util::sync::{CancellationToken, DropGuard};
use url::Url;

use super::ledger::{Ledger, lock};

/// Largest single SSE event accepted from the server (the same bound rmcp
/// uses for its own SSE streams); a larger one ends the session.
const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// How many received messages may wait for [`Transport::receive`] before the
/// reader task stops pulling from the network.
const INBOX_CAPACITY: usize = 64;

/// Where and how to open a legacy HTTP+SSE MCP session.
#[derive(Clone)]
pub struct LegacySseConfig {
    /// The SSE URL the client `GET`s, e.g. `http://mcp-gateway:8811/sse`.
    pub url: Url,
    /// Headers sent with the `GET` and with every `POST`, e.g.
    /// `Authorization: Bearer …`. Their values are marked sensitive by
    /// [`LegacySseTransport::connect`] and never logged or put in errors.
    pub headers: HeaderMap,
    /// Bound on the whole connect phase: TCP/TLS connect, response headers and
    /// the server's `endpoint` event.
    pub connect_timeout: Duration,
    /// Bound on each message `POST`, from sending it to reading the reply.
    pub post_timeout: Duration,
}

impl LegacySseConfig {
    /// Default for [`LegacySseConfig::connect_timeout`].
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
    /// Default for [`LegacySseConfig::post_timeout`].
    pub const DEFAULT_POST_TIMEOUT: Duration = Duration::from_secs(30);

    /// A configuration for `url` with no extra headers and default timeouts.
    pub fn new(url: Url) -> Self {
        Self {
            url,
            headers: HeaderMap::new(),
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            post_timeout: Self::DEFAULT_POST_TIMEOUT,
        }
    }
}

impl fmt::Debug for LegacySseConfig {
    /// Shows the URL without credentials or query and header names only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LegacySseConfig")
            .field("url", &redacted(&self.url).as_str())
            .field("headers", &HeaderNames(&self.headers))
            .field("connect_timeout", &self.connect_timeout)
            .field("post_timeout", &self.post_timeout)
            .finish()
    }
}

/// Debug-formats a header map as its names only.
struct HeaderNames<'a>(&'a HeaderMap);

impl fmt::Debug for HeaderNames<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.keys().map(|k| k.as_str())).finish()
    }
}

/// Why a legacy SSE session could not be opened or used.
///
/// Variants are grouped by what the caller does next. No variant carries a
/// header value; URLs are shown without user info, query or fragment.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LegacySseError {
    /// The configuration cannot work at all (e.g. a non-HTTP URL scheme).
    /// Fix the configuration; retrying is pointless.
    #[error("invalid legacy SSE configuration: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: String,
    },

    /// The server could not be reached, or did not answer the `GET` within
    /// the connect timeout. Usually transient: retry with backoff.
    #[error("cannot reach legacy SSE server at {url}")]
    Connect {
        /// The SSE URL (redacted).
        url: Url,
        /// The underlying transport error or timeout.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The server answered the `GET` with a non-2xx status, e.g. 401 (bad
    /// credentials) or 404 (wrong path, or not an SSE server).
    #[error("legacy SSE server at {url} answered HTTP {status}")]
    Status {
        /// The HTTP status of the `GET`.
        status: StatusCode,
        /// The SSE URL (redacted).
        url: Url,
    },

    /// The stream opened but ended, failed or timed out before the server's
    /// `endpoint` event. Retry with backoff; if it persists, the URL is
    /// probably not a legacy SSE MCP endpoint.
    #[error(
        "legacy SSE stream at {url} {}",
        if *.timed_out { "sent no `endpoint` event within the connect timeout" }
        else { "ended before its `endpoint` event" }
    )]
    NoEndpoint {
        /// The SSE URL (redacted).
        url: Url,
        /// `true` if the connect timeout elapsed while waiting.
        timed_out: bool,
        /// The stream error that ended the wait, if any.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },

    /// The server broke the protocol: the `GET` did not return an event
    /// stream, or the `endpoint` event was empty, not a valid URI, or pointed
    /// at another origin. Not transient: fix the server or the URL.
    #[error("legacy SSE protocol violation: {reason}")]
    Protocol {
        /// What the server did wrong.
        reason: String,
    },

    /// A message `POST` failed (network error, timeout, or non-2xx status).
    /// Only that message is lost; the session lives as long as its stream.
    #[error(
        "POST to legacy SSE message endpoint {endpoint} failed{}",
        status_suffix(.status)
    )]
    Send {
        /// Path of the message endpoint (its query is left out: it carries
        /// the session id).
        endpoint: String,
        /// The HTTP status, if the server answered.
        status: Option<StatusCode>,
        /// The HTTP client error, if the request itself failed.
        #[source]
        source: Option<reqwest::Error>,
    },

    /// An outgoing message could not be encoded as JSON.
    #[error("cannot encode JSON-RPC message")]
    Encode(#[source] serde_json::Error),

    /// The transport was closed, or its SSE stream has ended: the session is
    /// over and a new transport must be connected.
    #[error("legacy SSE transport is closed")]
    Closed,
}

fn status_suffix(status: &Option<StatusCode>) -> String {
    status.map(|s| format!(" with HTTP {s}")).unwrap_or_default()
}

/// A connected legacy HTTP+SSE MCP session, usable as an rmcp client
/// transport: `rmcp::serve_client(client_info, transport)` or
/// `client_info.serve(transport)`.
///
/// See the [module docs](self) for how the end of the session is surfaced.
pub struct LegacySseTransport {
    poster: std::sync::Arc<Poster>,
    ledger: Arc<Mutex<Ledger>>,
    inbox: Option<mpsc::Receiver<ServerJsonRpcMessage>>,
    /// Cancelled by `close()`, by drop (through `_cancel_on_drop`), and by
    /// the reader task when the stream ends.
    cancel: CancellationToken,
    reader: Option<JoinHandle<()>>,
    _cancel_on_drop: DropGuard,
}

impl fmt::Debug for LegacySseTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LegacySseTransport")
            .field("endpoint", &self.poster.endpoint_path)
            .field("closed", &self.cancel.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl LegacySseTransport {
    /// Opens the SSE stream, waits (at most `config.connect_timeout`) for the
    /// server's `endpoint` event, checks that the endpoint is same-origin
    /// with `config.url`, and starts the task that reads server messages.
    ///
    /// `client` must not have a total request timeout, which would cut the
    /// long-lived stream (see the [module docs](self)).
    pub async fn connect(client: reqwest::Client, config: LegacySseConfig) -> Result<Self, LegacySseError> {
        let LegacySseConfig { url, mut headers, connect_timeout, post_timeout } = config;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(LegacySseError::InvalidConfig {
                reason: format!("URL scheme `{}` is not http or https", url.scheme()),
            });
        }
        for value in headers.values_mut() {
            value.set_sensitive(true);
        }
        let shown_url = redacted(&url);
        let deadline = Instant::now() + connect_timeout;

        let mut get_headers = headers.clone();
        get_headers.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
        get_headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        let request = client.get(url.clone()).headers(get_headers).send();
        let response = match tokio::time::timeout_at(deadline, request).await {
            Err(elapsed) => {
                return Err(LegacySseError::Connect { url: shown_url, source: Box::new(elapsed) });
            }
            Ok(Err(error)) => {
                return Err(LegacySseError::Connect { url: shown_url, source: Box::new(error.without_url()) });
            }
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        if !status.is_success() {
            return Err(LegacySseError::Status { status, url: shown_url });
        }
        if let Some(content_type) = response.headers().get(CONTENT_TYPE) {
            let essence = content_type.to_str().unwrap_or_default().split(';').next().unwrap_or_default().trim();
            if !essence.eq_ignore_ascii_case("text/event-stream") {
                return Err(LegacySseError::Protocol {
                    reason: format!("the SSE URL answered with content type `{essence}`, not `text/event-stream`"),
                });
            }
        }
        // Resolve against the URL that actually answered (after redirects),
        // but only trust the origin the caller configured.
        let base = response.url().clone();
        let mut events = event_stream(response);

        let raw_endpoint = match tokio::time::timeout_at(deadline, next_endpoint(&mut events)).await {
            Err(_elapsed) => {
                return Err(LegacySseError::NoEndpoint { url: shown_url, timed_out: true, source: None });
            }
            Ok(Err(source)) => {
                return Err(LegacySseError::NoEndpoint { url: shown_url, timed_out: false, source });
            }
            Ok(Ok(raw)) => raw,
        };
        let endpoint = resolve_endpoint(&base, &url, &raw_endpoint)?;
        let endpoint_path = endpoint.path().to_owned();
        tracing::debug!(endpoint = %endpoint_path, "legacy SSE session established");

        let mut post_headers = headers;
        post_headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let poster = std::sync::Arc::new(Poster {
            client,
            endpoint,
            endpoint_path,
            headers: post_headers,
            timeout: post_timeout,
        });

        let cancel = CancellationToken::new();
        let (inbox_tx, inbox) = mpsc::channel(INBOX_CAPACITY);
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let reader =
            tokio::spawn(read_messages(events, inbox_tx, cancel.clone(), poster.endpoint_path.clone(), ledger.clone()));
        Ok(Self {
            poster,
            ledger,
            inbox: Some(inbox),
            _cancel_on_drop: cancel.clone().drop_guard(),
            cancel,
            reader: Some(reader),
        })
    }
}

impl Transport<RoleClient> for LegacySseTransport {
    type Error = LegacySseError;

    fn name() -> Cow<'static, str> {
        Cow::Borrowed("LegacySseTransport")
    }

    fn send(&mut self, item: ClientJsonRpcMessage) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let poster = self.poster.clone();
        let cancel = self.cancel.clone();
        let ledger = self.ledger.clone();
        // Noted before the POST: the answer may arrive before the POST returns.
        let request = lock(&ledger).sending(&item);
        async move {
            let result = post(&poster, &cancel, item).await;
            if let (Err(_), Some(id)) = (&result, request) {
                // rmcp fails the request itself; no answer is expected any more.
                lock(&ledger).answered(&id);
            }
            result
        }
    }
    async fn receive(&mut self) -> Option<ServerJsonRpcMessage> {
        let inbox = self.inbox.as_mut()?;
        let message = inbox.recv().await;
        if message.is_none() {
            self.inbox = None;
        }
        message
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        self.cancel.cancel();
        self.inbox = None;
        if let Some(reader) = self.reader.take() {
            // The reader watches the token, so this returns promptly; a
            // panic in it has nothing left to clean up.
            let _ = reader.await;
        }
        tracing::debug!(endpoint = %self.poster.endpoint_path, "legacy SSE transport closed");
        Ok(())
    }
}

/// Posts one client message, unless the transport is closed (or closes meanwhile).
async fn post(poster: &Poster, cancel: &CancellationToken, item: ClientJsonRpcMessage) -> Result<(), LegacySseError> {
    if cancel.is_cancelled() {
        return Err(LegacySseError::Closed);
    }
    // W3C trace context travels in the message's `params._meta` (MCP) and, for HTTP
    // peers that trace requests, as the `traceparent` header of the POST too.
    let value = serde_json::to_value(&item).map_err(LegacySseError::Encode)?;
    let traceparent = value
        .pointer("/params/_meta/traceparent")
        .and_then(serde_json::Value::as_str)
        .and_then(|t| reqwest::header::HeaderValue::from_str(t).ok());
    let body = serde_json::to_vec(&value).map_err(LegacySseError::Encode)?;
    tracing::trace!(
        endpoint = %poster.endpoint_path,
        rpc = %client_message_label(&item),
        "posting message"
    );
    tokio::select! {
        biased;
        () = cancel.cancelled() => Err(LegacySseError::Closed),
        result = poster.post(body, traceparent) => result,
    }
}

/// What a message `POST` needs; shared by all in-flight sends.
struct Poster {
    client: reqwest::Client,
    endpoint: Url,
    endpoint_path: String,
    headers: HeaderMap,
    timeout: Duration,
}

impl Poster {
    async fn post(
        &self,
        body: Vec<u8>,
        traceparent: Option<reqwest::header::HeaderValue>,
    ) -> Result<(), LegacySseError> {
        let mut headers = self.headers.clone();
        if let Some(traceparent) = traceparent {
            headers.insert("traceparent", traceparent);
        }
        let response = self
            .client
            .post(self.endpoint.clone())
            .headers(headers)
            .timeout(self.timeout)
            .body(body)
            .send()
            .await
            .map_err(|error| self.send_error(None, Some(error)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(self.send_error(Some(status), None));
        }
        // The body ("Accepted") carries nothing; read it so the connection
        // goes back to the pool. The message was accepted either way.
        if let Err(error) = response.bytes().await {
            tracing::trace!(error = %error.without_url(), "could not drain POST reply body");
        }
        Ok(())
    }

    fn send_error(&self, status: Option<StatusCode>, source: Option<reqwest::Error>) -> LegacySseError {
        LegacySseError::Send {
            endpoint: self.endpoint_path.clone(),
            status,
            source: source.map(reqwest::Error::without_url),
        }
    }
}

type EventStream = BoxStream<'static, Result<Sse, sse_stream::Error>>;

/// Parses the `GET` body as SSE, bounding the size of each event.
fn event_stream(response: reqwest::Response) -> EventStream {
    let mut guard = EventSizeGuard::default();
    let bytes = response.bytes_stream().map(move |chunk| match chunk {
        Ok(bytes) if guard.observe(&bytes, MAX_EVENT_BYTES) => Ok(bytes),
        Ok(_) => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("SSE event larger than {MAX_EVENT_BYTES} bytes"),
        )),
        // Drop the URL: its query may carry secrets.
        Err(error) => Err(std::io::Error::other(error.without_url())),
    });
    SseStream::from_bytes_stream(bytes).boxed()
}

/// Reads events until the `endpoint` one and returns its data.
async fn next_endpoint(events: &mut EventStream) -> Result<String, Option<Box<dyn std::error::Error + Send + Sync>>> {
    while let Some(event) = events.next().await {
        let event = event.map_err(|error| Some(Box::new(error) as _))?;
        match event.event.as_deref() {
            Some("endpoint") => return Ok(event.data.unwrap_or_default()),
            other => {
                tracing::debug!(event = ?other, "ignoring SSE event before `endpoint`");
            }
        }
    }
    Err(None)
}

/// Resolves the `endpoint` event's data against `base` (the URL that served
/// the stream) and checks it is an http(s) URL of the same origin as
/// `trusted` (the configured SSE URL, whose origin gets the headers).
fn resolve_endpoint(base: &Url, trusted: &Url, raw: &str) -> Result<Url, LegacySseError> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(LegacySseError::Protocol { reason: "the `endpoint` event has no data".to_owned() });
    }
    let mut endpoint = base.join(raw).map_err(|error| LegacySseError::Protocol {
        reason: format!("the `endpoint` event is not a valid URI reference: {error}"),
    })?;
    endpoint.set_fragment(None);
    if !matches!(endpoint.scheme(), "http" | "https") {
        return Err(LegacySseError::Protocol {
            reason: format!("the `endpoint` event names a `{}` URL, not http or https", endpoint.scheme()),
        });
    }
    let (origin, expected) = (endpoint.origin(), trusted.origin());
    if origin != expected {
        return Err(LegacySseError::Protocol {
            reason: format!(
                "the `endpoint` event points at origin {}, not the SSE origin {}",
                origin.ascii_serialization(),
                expected.ascii_serialization()
            ),
        });
    }
    Ok(endpoint)
}

/// The reader task: forwards `message` events to the inbox until the stream
/// ends or fails, the transport is closed, or the inbox is dropped. Dropping
/// the inbox sender is what makes `receive()` return `None`.
async fn read_messages(
    mut events: EventStream,
    inbox: mpsc::Sender<ServerJsonRpcMessage>,
    cancel: CancellationToken,
    endpoint_path: String,
    ledger: Arc<Mutex<Ledger>>,
) {
    let ended = loop {
        let event = tokio::select! {
            biased;
            () = cancel.cancelled() => break "transport closed",
            event = events.next() => event,
        };
        let event = match event {
            None => break "stream ended",
            Some(Err(error)) if is_network_error(&error) => {
                tracing::debug!(endpoint = %endpoint_path, %error, "legacy SSE stream failed");
                break "stream failed";
            }
            Some(Err(error)) => {
                // Malformed SSE or an oversized event: the server is at fault.
                tracing::warn!(endpoint = %endpoint_path, %error, "legacy SSE stream is unusable");
                break "stream unusable";
            }
            Some(Ok(event)) => event,
        };
        match event.event.as_deref() {
            None | Some("" | "message") => {}
            Some("endpoint") => {
                tracing::debug!(endpoint = %endpoint_path, "ignoring repeated `endpoint` event");
                continue;
            }
            Some(other) => {
                tracing::trace!(event = other, "ignoring unknown SSE event");
                continue;
            }
        }
        let Some(data) = event.data else { continue };
        let (message, failed) = match serde_json::from_str::<ServerJsonRpcMessage>(&data) {
            Ok(message) => {
                let failed = lock(&ledger).received(&message, &endpoint_path);
                (Some(message), failed)
            }
            Err(error) => (None, lock(&ledger).malformed(&data, &error, &endpoint_path)),
        };
        if let Some(message) = &message
            && tracing::enabled!(tracing::Level::TRACE)
        {
            tracing::trace!(
                endpoint = %endpoint_path,
                rpc = %server_message_label(message, &data),
                "received message"
            );
        }
        let mut stopped = None;
        for message in message.into_iter().chain(failed) {
            tokio::select! {
                biased;
                () = cancel.cancelled() => stopped = Some("transport closed"),
                sent = inbox.send(message) => if sent.is_err() { stopped = Some("receiver dropped") },
            }
            if stopped.is_some() {
                break;
            }
        }
        if let Some(reason) = stopped {
            break reason;
        }
    };
    tracing::debug!(endpoint = %endpoint_path, reason = ended, "legacy SSE reader stopped");
    // Later sends fail fast; `receive()` drains what is buffered, then
    // returns `None` once `inbox` is dropped here.
    cancel.cancel();
}

/// Whether a stream error is the connection failing (as opposed to the
/// server sending malformed SSE or an oversized event).
fn is_network_error(error: &sse_stream::Error) -> bool {
    match error {
        sse_stream::Error::Body(source) => {
            source.downcast_ref::<std::io::Error>().is_none_or(|io| io.kind() != std::io::ErrorKind::InvalidData)
        }
        _ => false,
    }
}

/// A short label for an outgoing message: its method, or its kind and id.
fn client_message_label(message: &ClientJsonRpcMessage) -> Cow<'_, str> {
    match message {
        JsonRpcMessage::Request(request) => Cow::Borrowed(request.request.method()),
        JsonRpcMessage::Notification(notification) => Cow::Borrowed(match &notification.notification {
            ClientNotification::CancelledNotification(n) => n.method.as_str(),
            ClientNotification::ProgressNotification(n) => n.method.as_str(),
            ClientNotification::InitializedNotification(n) => n.method.as_str(),
            ClientNotification::RootsListChangedNotification(n) => n.method.as_str(),
            ClientNotification::CustomNotification(n) => n.method.as_str(),
            _ => "notification",
        }),
        JsonRpcMessage::Response(response) => Cow::Owned(format!("response {}", response.id)),
        JsonRpcMessage::Error(error) => match &error.id {
            Some(id) => Cow::Owned(format!("error response {id}")),
            None => Cow::Borrowed("error response"),
        },
    }
}

/// A short label for an incoming message; `raw` is its JSON text.
fn server_message_label(message: &ServerJsonRpcMessage, raw: &str) -> String {
    match message {
        JsonRpcMessage::Request(_) | JsonRpcMessage::Notification(_) => serde_json::from_str::<serde_json::Value>(raw)
            .ok()
            .and_then(|value| value.get("method")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| "request or notification".to_owned()),
        JsonRpcMessage::Response(response) => format!("response {}", response.id),
        JsonRpcMessage::Error(error) => match &error.id {
            Some(id) => format!("error response {id}"),
            None => "error response".to_owned(),
        },
    }
}

/// `url` without user info, query or fragment, for errors and logs.
fn redacted(url: &Url) -> Url {
    let mut url = url.clone();
    // These only fail for URLs that cannot have credentials.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.set_query(None);
    url.set_fragment(None);
    url
}

/// Tracks the size of the SSE event being received across body chunks, the
/// way the SSE parser will assemble it (a blank line ends an event).
#[derive(Debug, Default)]
struct EventSizeGuard {
    /// Bytes of complete lines in the current event, plus one per line end.
    event: usize,
    /// Bytes of the line being received.
    line: usize,
    /// The previous byte was `\r`, so a `\n` now belongs to the same line end.
    after_cr: bool,
}

impl EventSizeGuard {
    /// Feeds a chunk; `false` once the current event exceeds `max` bytes.
    fn observe(&mut self, chunk: &[u8], max: usize) -> bool {
        for &byte in chunk {
            if std::mem::take(&mut self.after_cr) && byte == b'\n' {
                continue;
            }
            match byte {
                b'\r' | b'\n' => {
                    if self.line == 0 {
                        self.event = 0;
                    } else {
                        self.event = self.event.saturating_add(self.line).saturating_add(1);
                        self.line = 0;
                    }
                    self.after_cr = byte == b'\r';
                }
                _ => self.line = self.line.saturating_add(1),
            }
            if self.event.saturating_add(self.line) > max {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use rmcp::model::{CallToolRequest, CallToolRequestParams, ClientRequest, InitializedNotification, RequestId};

    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).expect("test URL parses")
    }

    fn resolve(base: &str, raw: &str) -> Result<Url, LegacySseError> {
        resolve_endpoint(&url(base), &url(base), raw)
    }

    #[test]
    fn relative_path_resolves_against_sse_url() {
        let endpoint = resolve("http://mcp-gateway:8811/sse", "/messages/?session_id=abc").expect("relative endpoint");
        assert_eq!(endpoint.as_str(), "http://mcp-gateway:8811/messages/?session_id=abc");
    }

    #[test]
    fn query_only_reference_keeps_sse_path() {
        // What the Go SDK (and so the Docker gateway) sends.
        let endpoint = resolve("http://mcp-gateway:8811/sse", "?sessionid=XYZ").expect("query-only endpoint");
        assert_eq!(endpoint.as_str(), "http://mcp-gateway:8811/sse?sessionid=XYZ");
    }

    #[test]
    fn path_relative_reference_and_whitespace() {
        let endpoint = resolve("https://host/mcp/sse?token=t", "  messages?session_id=1&x=%20y \n")
            .expect("path-relative endpoint");
        assert_eq!(endpoint.as_str(), "https://host/mcp/messages?session_id=1&x=%20y");
    }

    #[test]
    fn absolute_same_origin_is_accepted_and_fragment_dropped() {
        let endpoint =
            resolve("http://gw:8811/sse", "http://gw:8811/messages?session_id=a#frag").expect("same-origin endpoint");
        assert_eq!(endpoint.as_str(), "http://gw:8811/messages?session_id=a");
        // An explicit default port is the same origin.
        let endpoint = resolve("https://gw/sse", "https://gw:443/m?s=1").expect("default port is same origin");
        assert_eq!(endpoint.as_str(), "https://gw/m?s=1");
    }

    #[test]
    fn cross_origin_endpoints_are_rejected() {
        for raw in [
            "http://evil.example:8811/messages?session_id=a",
            "http://gw:9999/messages",
            "https://gw:8811/messages",
            "//evil.example/messages",
            "http://localhost:8811/messages",
        ] {
            let error = resolve("http://gw:8811/sse", raw).expect_err(raw);
            assert!(matches!(error, LegacySseError::Protocol { .. }), "{raw}: {error:?}");
            assert!(error.to_string().contains("http://gw:8811"), "{error}");
        }
    }

    #[test]
    fn cross_origin_is_judged_against_the_configured_url() {
        // A redirect moved the stream elsewhere: a relative endpoint on the
        // new origin must not receive the caller's headers.
        let error = resolve_endpoint(&url("http://other:1/sse"), &url("http://gw:8811/sse"), "/messages?session_id=a")
            .expect_err("redirected origin");
        assert!(matches!(error, LegacySseError::Protocol { .. }));
    }

    #[test]
    fn non_http_and_empty_endpoints_are_rejected() {
        for raw in ["", "   ", "javascript:alert(1)", "data:text/plain,x", "file:///etc/passwd"] {
            let error = resolve("http://gw:8811/sse", raw).expect_err(raw);
            assert!(matches!(error, LegacySseError::Protocol { .. }), "{raw:?}: {error:?}");
        }
    }

    #[tokio::test]
    async fn non_http_url_is_invalid_config() {
        let config = LegacySseConfig::new(url("ftp://gw/sse"));
        let error = LegacySseTransport::connect(reqwest::Client::new(), config).await.expect_err("ftp URL");
        assert!(matches!(error, LegacySseError::InvalidConfig { .. }), "{error:?}");
    }

    #[test]
    fn oversize_is_not_a_network_error() {
        let oversize =
            sse_stream::Error::Body(Box::new(std::io::Error::new(std::io::ErrorKind::InvalidData, "too big")));
        assert!(!is_network_error(&oversize));
        let reset = sse_stream::Error::Body(Box::new(std::io::Error::other("reset")));
        assert!(is_network_error(&reset));
        assert!(!is_network_error(&sse_stream::Error::InvalidLine));
    }

    #[test]
    fn redaction_drops_credentials_query_and_fragment() {
        let shown = redacted(&url("https://user:pw@host:8443/sse?token=secret#x"));
        assert_eq!(shown.as_str(), "https://host:8443/sse");
        let error = LegacySseError::Status { status: StatusCode::UNAUTHORIZED, url: shown };
        assert_eq!(error.to_string(), "legacy SSE server at https://host:8443/sse answered HTTP 401 Unauthorized");
    }

    #[test]
    fn config_debug_shows_header_names_only() {
        let mut config = LegacySseConfig::new(url("http://gw:8811/sse?k=secret-query"));
        config.headers.insert(reqwest::header::AUTHORIZATION, HeaderValue::from_static("Bearer secret-token"));
        let shown = format!("{config:?}");
        assert!(shown.contains("authorization"), "{shown}");
        assert!(!shown.contains("secret"), "{shown}");
    }

    #[test]
    fn send_error_names_path_and_status_only() {
        let error = LegacySseError::Send {
            endpoint: "/messages/".to_owned(),
            status: Some(StatusCode::NOT_FOUND),
            source: None,
        };
        assert_eq!(error.to_string(), "POST to legacy SSE message endpoint /messages/ failed with HTTP 404 Not Found");
    }

    #[test]
    fn size_guard_resets_on_blank_lines() {
        let mut guard = EventSizeGuard::default();
        assert!(guard.observe(b"data: 12345\r\n\r\n", 12));
        assert!(guard.observe(b"data: 12345\n\n", 12));
        // Across chunks, with a CRLF split between them.
        assert!(guard.observe(b"data: 1234\r", 12));
        assert!(guard.observe(b"\n\r\n: ping\n\n", 12));
        assert_eq!((guard.event, guard.line), (0, 0));
    }

    #[test]
    fn size_guard_rejects_oversized_event_across_chunks() {
        let mut guard = EventSizeGuard::default();
        // 10 bytes + line end, then a 10-byte line still open: 21 <= 25.
        assert!(guard.observe(b"data: aaaa\n", 25));
        assert!(guard.observe(b"data: bbbb", 25));
        assert!(!guard.observe(b"bbbbbbbbbb", 25));
    }

    #[test]
    fn message_labels_name_methods() {
        let request = ClientJsonRpcMessage::request(
            ClientRequest::CallToolRequest(CallToolRequest::new(CallToolRequestParams::new("echo"))),
            RequestId::Number(7),
        );
        assert_eq!(client_message_label(&request), "tools/call");
        let notification = ClientJsonRpcMessage::notification(ClientNotification::InitializedNotification(
            InitializedNotification::default(),
        ));
        assert_eq!(client_message_label(&notification), "notifications/initialized");
    }

    #[test]
    fn server_messages_decode_and_label() {
        let raw = r#"{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}"#;
        let message: ServerJsonRpcMessage = serde_json::from_str(raw).expect("notification");
        assert_eq!(server_message_label(&message, raw), "notifications/tools/list_changed");
        let raw = r#"{"jsonrpc":"2.0","id":3,"result":{}}"#;
        let message: ServerJsonRpcMessage = serde_json::from_str(raw).expect("response");
        assert_eq!(server_message_label(&message, raw), "response 3");
    }
}
