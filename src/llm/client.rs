//! One chat request over HTTP: timeouts, retries with capped exponential backoff and jitter
//! on connect errors, 408, 409, 429, 5xx (honouring `Retry-After`), stalled bodies and 2xx
//! bodies that cannot be read; never on 400, 401, 403 or 404. The request body is serialised
//! once and reused for every attempt.
//!
//! The response body is read chunk by chunk: past 16 MiB reading stops, and a
//! body that sends nothing for the idle timeout is given up (the request timeout still bounds
//! the whole exchange). Text from the server that ends up in an error (an error message, the
//! first bytes of a body that cannot be read) goes through the [`Redactor`] first.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use bytes::{Bytes, BytesMut};
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use url::Url;

use futures::StreamExt;
use sse_stream::SseStream;

use super::LlmError;
use super::rate_limit::{self, Limiter, Permit, RateLimitHeaders};
use super::stream::{Assembler, ChatChunk, Echo, Shown, Streamed};
use super::wire::{ChatRequest, ChatResponse, ErrorBody};
use crate::deadline::Deadline;
use crate::secrets::{Credential, Redactor};
use crate::telemetry::metrics::{kv, metrics};
use crate::telemetry::names::attr;

/// Where a request goes: base URL, model and (for the cloud) the key.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Base URL, ending in '/'.
    pub base_url: Url,
    /// Model name.
    pub model: String,
    /// The key, if the route uses one.
    pub credential: Option<Credential>,
}

/// Timeouts, streaming and retry policy. The default is `config/default.toml`'s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientPolicy {
    /// Ask for streamed answers (`"stream": true`).
    pub stream: bool,
    /// A streamed answer's first chunk comes within this of the request.
    pub first_token_timeout: Duration,
    /// The longest gap between two pieces of a response (chunks of a stream, or bytes of a body).
    pub idle_timeout: Duration,
    /// One attempt, including reading the response: the cap over a stream that keeps coming.
    pub request_timeout: Duration,
    /// Retries after a retryable failure.
    pub max_retries: u32,
    /// Smallest backoff.
    pub min_delay: Duration,
    /// Largest backoff (and largest `Retry-After` honoured).
    pub max_delay: Duration,
}

impl Default for ClientPolicy {
    fn default() -> Self {
        Self {
            stream: true,
            first_token_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(600),
            max_retries: 4,
            min_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(20),
        }
    }
}

/// A successful call.
#[derive(Debug, Clone)]
pub struct Completion {
    /// The response.
    pub response: ChatResponse,
    /// How long its stream took to begin (`None` when it was not streamed).
    pub time_to_first_chunk: Option<Duration>,
}

/// What a question's model calls went through, counted as it happens: shared with whoever
/// reports the question, so the counts survive a call that fails and a question that is given
/// up on mid-retry.
///
/// It also says where the text of the question's answers goes as it is written, if anywhere
/// ([`CallLog::showing`]: `agentry ask` prints it).
#[derive(Debug, Default)]
pub struct CallLog {
    retries: AtomicU32,
    rate_limited: AtomicU32,
    paced_ms: AtomicU64,
    last_failure: std::sync::Mutex<Option<String>>,
    echo: Option<Echo>,
}

impl CallLog {
    /// A log whose calls show their answers' text to `echo` as it is written.
    pub fn showing(echo: Echo) -> Self {
        Self { echo: Some(echo), ..Self::default() }
    }

    /// Shows `what` to whoever watches the question's answers (nobody, in a batch).
    pub fn show(&self, what: Shown) {
        if let Some(echo) = &self.echo {
            echo.show(what);
        }
    }

    /// Requests sent again after a transient failure (timeouts, resets, 5xx, unreadable bodies).
    pub fn retries(&self) -> u32 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Requests refused with 429.
    pub fn rate_limited(&self) -> u32 {
        self.rate_limited.load(Ordering::Relaxed)
    }

    /// The last failure a call was retrying after, in words (already scrubbed).
    pub fn last_failure(&self) -> Option<String> {
        self.last_failure.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// An attempt failed: 429s are counted (whether or not they are tried again), and the
    /// failure is kept for a question that runs out of time.
    fn failed(&self, error: &LlmError) {
        if matches!(error, LlmError::RateLimited { .. }) {
            self.rate_limited.fetch_add(1, Ordering::Relaxed);
        }
        let what = match error {
            LlmError::RateLimited { .. } => "rate limited (HTTP 429)".to_owned(),
            other => other.to_string(),
        };
        *self.last_failure.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(what);
    }

    /// A request waited `waited` for the route's rate limits before it was sent.
    fn paced(&self, waited: Duration) {
        self.paced_ms.fetch_add(u64::try_from(waited.as_millis()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Time spent waiting for the route's rate limits.
    pub fn paced_for(&self) -> Duration {
        Duration::from_millis(self.paced_ms.load(Ordering::Relaxed))
    }

    /// A request is sent again after `error` (a 429 is back-pressure, not a retry).
    fn retrying(&self, error: &LlmError) {
        if !matches!(error, LlmError::RateLimited { .. }) {
            self.retries.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Sends chat requests; cheap to clone (one connection pool).
#[derive(Debug, Clone)]
pub struct ChatClient {
    http: reqwest::Client,
    policy: ClientPolicy,
    redactor: Redactor,
}

/// Reading a response stops past this many bytes.
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// How much of a body an error shows, in characters.
const HEAD_CHARS: usize = 200;

/// How much of a body is scrubbed before [`HEAD_CHARS`] are taken from it: enough that a secret
/// starting within the shown part is scrubbed whole.
const HEAD_SCAN_BYTES: usize = 1024;

/// How much of an error message is kept (in characters), and how much is read to find it.
const MESSAGE_CHARS: usize = 300;
const MESSAGE_SCAN_BYTES: usize = 4096;

impl ChatClient {
    /// A client with its own connection pool and a [`Redactor`] that knows key shapes only.
    pub fn new(policy: ClientPolicy) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("agentry/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(policy.request_timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()?;
        Ok(Self { http, policy, redactor: Redactor::default() })
    }

    /// Scrubs server text in errors with `redactor` (SecretKeeper's, in the running tree).
    pub fn with_redactor(mut self, redactor: Redactor) -> Self {
        self.redactor = redactor;
        self
    }

    /// Sends `request` to `endpoint` through `limiter` (the route's pacing), retrying transient
    /// failures while `deadline` allows (each attempt takes at most what is left; a wait that
    /// would end past it is not begun); counts what happens in `log`.
    ///
    /// A 429 is back-pressure, not a failure: it never uses up `max_retries`. With the
    /// provider's `Retry-After` (or the message's "try again in") the limiter holds every
    /// request of the route until then; without, this request backs off on its own, doubling
    /// from `min_delay` up to `max_delay`; either way only the deadline ends it.
    ///
    /// A failure that says what to do about it ([`LlmError::hint`]) logs that `hint:` once per
    /// process: a batch whose questions all fail the same way says it once.
    pub async fn complete(
        &self,
        endpoint: &Endpoint,
        request: &ChatRequest<'_>,
        log: &CallLog,
        deadline: &Deadline,
        limiter: &Limiter,
    ) -> Result<Completion, LlmError> {
        let result = self.send(endpoint, request, log, deadline, limiter).await;
        if let Err(error) = &result {
            error.tell_hint();
        }
        result
    }

    /// [`Self::complete`] without the hint (`agentry doctor` prints its own).
    pub async fn send(
        &self,
        endpoint: &Endpoint,
        request: &ChatRequest<'_>,
        log: &CallLog,
        deadline: &Deadline,
        limiter: &Limiter,
    ) -> Result<Completion, LlmError> {
        let url = super::chat_completions_url(&endpoint.base_url);
        let encoded = match self.policy.stream {
            true => serde_json::to_vec(&Streamed::new(request)),
            false => serde_json::to_vec(request),
        };
        let body = Bytes::from(encoded.map_err(|e| LlmError::Protocol {
            url: url.to_string(),
            message: format!("cannot encode the request: {e}"),
        })?);
        let mut headers = headers(endpoint)?;
        if let Some(traceparent) = crate::telemetry::traceparent().and_then(|t| HeaderValue::from_str(&t).ok()) {
            headers.insert("traceparent", traceparent);
        }
        let backoff = || {
            ExponentialBuilder::default()
                .with_min_delay(self.policy.min_delay)
                .with_max_delay(self.policy.max_delay)
                .with_jitter()
        };
        let mut retries = backoff().with_max_times(self.policy.max_retries as usize).build();
        let mut rate_limited = backoff().without_max_times().build();
        // What the provider counts against the token limit on arrival (its prompt characters / 4
        // plus max_tokens): the limiter's charge equals the provider's.
        let estimate = rate_limit::estimate_tokens(request);
        let credential = endpoint.credential.as_ref();
        loop {
            let permit = limiter
                .admit(estimate, deadline)
                .await
                .map_err(|cause| LlmError::Paced { url: url.to_string(), cause })?;
            let route = kv(attr::ROUTE, limiter.route());
            let waited = permit.waited();
            metrics()
                .rate_limit_wait
                .record(waited.map_or(0.0, |w| w.waited.as_secs_f64()), std::slice::from_ref(&route));
            if let Some(wait) = waited {
                log.paced(wait.waited);
                tracing::info!(rate_limit.bucket = %wait.bucket, rate_limit.wait_s = wait.waited.as_secs_f64(),
                    "rate_limit.wait");
            }
            let attempt =
                self.attempt(&url, &endpoint.model, &headers, body.clone(), credential, deadline, &permit, log).await;
            let in_flight_limit = || u64::try_from(limiter.snapshot().in_flight_limit).unwrap_or(u64::MAX);
            let error = match attempt {
                Ok(completion) => {
                    let usage = completion.response.usage.as_ref();
                    permit.settle(usage.map_or(estimate, |u| u.prompt_tokens + u.completion_tokens));
                    metrics().rate_limit_in_flight.record(in_flight_limit(), std::slice::from_ref(&route));
                    return Ok(completion);
                }
                Err(error) => error,
            };
            // Whatever this attempt showed of its answer is not the answer.
            log.show(Shown::Abandoned);
            if matches!(error, LlmError::RateLimited { .. }) {
                metrics().rate_limit_refusals.add(1, std::slice::from_ref(&route));
            }
            log.failed(&error);
            // How long until the next try, and whether this request sleeps it itself.
            let (wait, sleep) = match &error {
                LlmError::RateLimited { retry_after: Some(asked), .. } => {
                    permit.rate_limited(Some(*asked));
                    (*asked, false)
                }
                LlmError::RateLimited { retry_after: None, .. } => {
                    permit.rate_limited(None);
                    metrics().rate_limit_in_flight.record(in_flight_limit(), std::slice::from_ref(&route));
                    (rate_limited.next().unwrap_or(self.policy.max_delay), true)
                }
                retryable if retryable.is_retryable() => {
                    drop(permit);
                    let Some(delay) = retries.next() else { return Err(error) };
                    (retryable.retry_after().map_or(delay, |asked| asked.min(self.policy.max_delay)), true)
                }
                _ => return Err(error),
            };
            let left = deadline.left();
            if wait >= left {
                return Err(LlmError::OutOfTime { last: Box::new(error), left });
            }
            log.retrying(&error);
            tracing::warn!(error.type = error.kind(), %error, retry_in = ?wait, "model call failed; retrying");
            if sleep {
                tokio::time::sleep(wait).await;
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        url: &Url,
        model: &str,
        headers: &HeaderMap,
        body: Bytes,
        credential: Option<&Credential>,
        deadline: &Deadline,
        permit: &Permit,
        log: &CallLog,
    ) -> Result<Completion, LlmError> {
        let shown = url.to_string();
        let overall = deadline.cap(self.policy.request_timeout);
        let exchange = async {
            let sent = Instant::now();
            let send = self.http.post(url.clone()).headers(headers.clone()).body(body).send();
            let response = if self.policy.stream {
                // A streamed answer begins within the first-chunk timeout, or not at all.
                tokio::time::timeout(self.policy.first_token_timeout, send).await.map_err(|_| {
                    LlmError::NoFirstChunk { url: shown.clone(), waited: self.policy.first_token_timeout }
                })?
            } else {
                send.await
            };
            let response = response.map_err(|source| classify_transport(&shown, overall, source))?;
            // Success or error, the provider says how much of its limits is left.
            permit.observe(&RateLimitHeaders::from_headers(response.headers()));
            let scrub = |text: &str| self.redactor.scrub_with(text, credential);
            if response.status().is_success() && is_event_stream(response.headers()) {
                return self.read_stream(response, &shown, sent, log, &scrub).await;
            }
            self.read_whole(response, &shown, model, &scrub).await
        };
        tokio::time::timeout(overall, exchange)
            .await
            .map_err(|_| LlmError::Timeout { url: shown.clone(), timeout: overall })?
    }

    /// A response that is not a stream: an error, or the whole completion as one JSON body
    /// (also what a server that cannot stream sends to a streamed request).
    async fn read_whole(
        &self,
        response: reqwest::Response,
        shown: &str,
        model: &str,
        scrub: &Scrub<'_>,
    ) -> Result<Completion, LlmError> {
        let status = response.status();
        let headers = response.headers().clone();
        let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let read = self.read_body(response).await;
        if !status.is_success() {
            // Whatever came of the body, the status says what to do next.
            let retry_after = rate_limit::retry_delay(&headers, &read.bytes);
            return Err(status_error(status, retry_after, &read.bytes, shown.to_owned(), model, scrub));
        }
        let malformed = |problem: String| LlmError::Malformed {
            url: shown.to_owned(),
            status: status.as_u16(),
            // A header is server text too.
            content_type: content_type.as_deref().map(|value| scrub(value).chars().take(HEAD_CHARS).collect()),
            problem: scrub(&problem),
            head: head(&read.bytes, scrub),
        };
        match read.ended {
            Ended::Whole => {}
            Ended::TooLarge => return Err(too_large(shown)),
            Ended::Stalled => {
                return Err(LlmError::Stalled {
                    url: shown.to_owned(),
                    idle: self.policy.idle_timeout,
                    received: read.bytes.len(),
                });
            }
            Ended::Cut(cause) => {
                return Err(malformed(format!(
                    "cut short after {} bytes: {}",
                    read.bytes.len(),
                    crate::error_chain(&cause.without_url())
                )));
            }
        }
        let response: ChatResponse =
            serde_json::from_slice(&read.bytes).map_err(|e| malformed(format!("not a chat completion: {e}")))?;
        if response.choices.is_empty() {
            return Err(malformed("the response has no choices".into()));
        }
        Ok(Completion { response, time_to_first_chunk: None })
    }

    /// A streamed completion (`text/event-stream`): its chunks assembled as they come, its
    /// text shown through `log` as it is written. The first chunk must come within the
    /// first-chunk timeout of `sent`, each next one within the idle timeout of the last: a
    /// generation that keeps writing is never cut (only the request timeout and the
    /// question's deadline bound it). A stream that ends before its answer does is
    /// [`LlmError::Incomplete`], never a half answer.
    async fn read_stream(
        &self,
        response: reqwest::Response,
        shown: &str,
        sent: Instant,
        log: &CallLog,
        scrub: &Scrub<'_>,
    ) -> Result<Completion, LlmError> {
        let mut events = SseStream::from_bytes_stream(response.bytes_stream());
        let mut assembler = Assembler::default();
        let (mut received, mut time_to_first_chunk) = (0usize, None);
        loop {
            let wait = if assembler.started() {
                self.policy.idle_timeout
            } else {
                self.policy.first_token_timeout.saturating_sub(sent.elapsed())
            };
            let event = match tokio::time::timeout(wait, events.next()).await {
                Err(_) if !assembler.started() => {
                    return Err(LlmError::NoFirstChunk {
                        url: shown.to_owned(),
                        waited: self.policy.first_token_timeout,
                    });
                }
                Err(_) => {
                    return Err(LlmError::Stalled { url: shown.to_owned(), idle: self.policy.idle_timeout, received });
                }
                Ok(None) => break,
                Ok(Some(Err(cause))) => {
                    let problem = format!("the stream broke after {received} bytes: {}", crate::error_chain(&cause));
                    return Err(LlmError::Incomplete { url: shown.to_owned(), problem: scrub(&problem) });
                }
                Ok(Some(Ok(event))) => event,
            };
            // An event without data carries no chunk. (Comment lines, `: keep-alive`, make no
            // event at all: a server that only keeps the connection alive is not writing.)
            let Some(data) = event.data else { continue };
            received += data.len();
            if received > MAX_RESPONSE_BYTES {
                return Err(too_large(shown));
            }
            if data.trim() == "[DONE]" {
                assembler.done();
                break;
            }
            let chunk: ChatChunk = serde_json::from_str(&data).map_err(|e| LlmError::Malformed {
                url: shown.to_owned(),
                status: 200,
                content_type: Some("text/event-stream".to_owned()),
                problem: scrub(&format!("a stream event is not a chat.completion.chunk: {e}")),
                head: head(data.as_bytes(), scrub),
            })?;
            if let Some(error) = &chunk.error {
                let problem = format!("the server reported an error mid-stream: {}", error.message);
                return Err(LlmError::Incomplete { url: shown.to_owned(), problem: scrub(&problem) });
            }
            if !assembler.started() {
                time_to_first_chunk = Some(sent.elapsed());
                first_chunk_event();
            }
            if let Some(text) = assembler.push(chunk) {
                log.show(Shown::Text(text));
            }
        }
        let response = assembler.finish().map_err(|incomplete| match incomplete.is_cut() {
            true => LlmError::Incomplete { url: shown.to_owned(), problem: incomplete.to_string() },
            // Wrong, not cut: the next stream of this server would be wrong the same way.
            false => LlmError::Protocol { url: shown.to_owned(), message: incomplete.to_string() },
        })?;
        Ok(Completion { response, time_to_first_chunk })
    }

    /// Reads the body piece by piece, stopping past [`MAX_RESPONSE_BYTES`] or when nothing comes
    /// for the idle timeout; keeps what arrived either way.
    async fn read_body(&self, mut response: reqwest::Response) -> Body {
        let mut bytes = BytesMut::new();
        if response.content_length().is_some_and(|length| length > MAX_RESPONSE_BYTES as u64) {
            return Body { bytes: bytes.freeze(), ended: Ended::TooLarge };
        }
        let ended = loop {
            match tokio::time::timeout(self.policy.idle_timeout, response.chunk()).await {
                Err(_) => break Ended::Stalled,
                Ok(Ok(None)) => break Ended::Whole,
                Ok(Ok(Some(chunk))) if bytes.len() + chunk.len() > MAX_RESPONSE_BYTES => break Ended::TooLarge,
                Ok(Ok(Some(chunk))) => bytes.extend_from_slice(&chunk),
                Ok(Err(cause)) => break Ended::Cut(cause),
            }
        };
        Body { bytes: bytes.freeze(), ended }
    }
}

/// The first chunk of a stream came: an event on the chat span, when it came (exported
/// whatever the log level; the time it took is recorded with the call).
fn first_chunk_event() {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    tracing::Span::current().add_event("gen_ai.first_chunk", Vec::new());
}

fn too_large(shown: &str) -> LlmError {
    LlmError::Protocol {
        url: shown.to_owned(),
        message: format!("the response is larger than {} MiB; agentry stopped reading it", MAX_RESPONSE_BYTES >> 20),
    }
}

fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.trim_start().to_ascii_lowercase().starts_with("text/event-stream"))
}

/// Scrubs secrets from server text (held across awaits, so `Sync`).
type Scrub<'a> = dyn Fn(&str) -> String + Sync + 'a;

/// A response body as far as it was read.
struct Body {
    bytes: Bytes,
    ended: Ended,
}

/// How reading a body ended.
enum Ended {
    Whole,
    /// Past [`MAX_RESPONSE_BYTES`] (or announced so by `Content-Length`).
    TooLarge,
    /// Nothing for the idle timeout.
    Stalled,
    /// The connection broke.
    Cut(reqwest::Error),
}

/// The first [`HEAD_CHARS`] characters of a body, scrubbed, for an error message.
fn head(bytes: &[u8], scrub: &dyn Fn(&str) -> String) -> String {
    let scanned = String::from_utf8_lossy(&bytes[..bytes.len().min(HEAD_SCAN_BYTES)]);
    let scrubbed = scrub(&scanned);
    let mut shown: String = scrubbed.chars().take(HEAD_CHARS).collect();
    if shown.len() < scrubbed.len() || bytes.len() > HEAD_SCAN_BYTES {
        shown.push('…');
    }
    shown
}

fn headers(endpoint: &Endpoint) -> Result<HeaderMap, LlmError> {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(credential) = &endpoint.credential {
        let mut value = HeaderValue::from_str(&format!("Bearer {}", credential.expose())).map_err(|_| {
            LlmError::KeyNotHeaderSafe {
                secret: credential.name().to_owned(),
                fingerprint: credential.fingerprint().to_string(),
            }
        })?;
        // Marked sensitive so HTTP-level debug logging redacts it.
        value.set_sensitive(true);
        headers.insert(AUTHORIZATION, value);
    }
    Ok(headers)
}

fn classify_transport(url: &str, timeout: Duration, source: reqwest::Error) -> LlmError {
    if source.is_timeout() {
        LlmError::Timeout { url: url.to_owned(), timeout }
    } else {
        LlmError::Connect { url: url.to_owned(), source: source.without_url() }
    }
}

/// The error for a non-2xx status. The server's message is scrubbed: servers quote keys (in
/// part or whole) in 400, 403 and 5xx messages too.
fn status_error(
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &[u8],
    url: String,
    model: &str,
    scrub: &dyn Fn(&str) -> String,
) -> LlmError {
    let code = status.as_u16();
    if code == 401 {
        // The API's 401 message quotes part of the key: it is deliberately dropped.
        return LlmError::Auth { url };
    }
    let message = serde_json::from_slice::<ErrorBody>(body)
        .map(|b| b.error.message)
        .unwrap_or_else(|_| String::from_utf8_lossy(&body[..body.len().min(MESSAGE_SCAN_BYTES)]).into_owned());
    let cut = (0..=message.len().min(MESSAGE_SCAN_BYTES)).rev().find(|&i| message.is_char_boundary(i)).unwrap_or(0);
    let message: String = scrub(&message[..cut]).chars().take(MESSAGE_CHARS).collect();
    LlmError::from_status(code, retry_after, body, message, url, model)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_what_the_caller_does_next() {
        let body = br#"{"error":{"message":"Incorrect API key provided: sk-ab***yz","type":"invalid_request_error","code":"invalid_api_key"}}"#;
        let scrub = |text: &str| Redactor::default().scrub(text);
        let auth = status_error(StatusCode::UNAUTHORIZED, None, body, "u".into(), "m", &scrub);
        assert!(matches!(auth, LlmError::Auth { .. }));
        assert!(!auth.is_retryable());
        assert!(!auth.to_string().contains("sk-ab"), "the API's echo of the key is dropped");
        for (status, retryable) in
            [(400, false), (403, false), (404, false), (408, true), (429, true), (500, true), (503, true)]
        {
            let error =
                status_error(StatusCode::from_u16(status).expect("status"), None, b"{}", "u".into(), "m", &scrub);
            assert_eq!(error.is_retryable(), retryable, "{status}");
        }
    }

    const KEY: &str = "plain-0123456789abcdef";

    fn key() -> Credential {
        let source = crate::secrets::SecretSource::Environment("OPENAI_API_KEY".into());
        Credential::new("openai_api_key", secrecy::SecretString::from(KEY.to_owned()), source)
    }

    #[test]
    fn server_messages_are_scrubbed_of_the_key_whatever_the_status() {
        let (redactor, key) = (Redactor::default(), key());
        let scrub = |text: &str| redactor.scrub_with(text, Some(&key));
        let json = format!(r#"{{"error":{{"message":"key {KEY} (or sk-proj-abcdefgh12345678) refused"}}}}"#);
        let html = format!("<html><body>Forbidden: {KEY}</body></html>");
        for status in [400, 403, 404, 408, 500, 503] {
            for body in [&json, &html] {
                let error = status_error(
                    StatusCode::from_u16(status).expect("status"),
                    None,
                    body.as_bytes(),
                    "u".into(),
                    "m",
                    &scrub,
                );
                let text = error.to_string();
                assert!(!text.contains(&KEY[6..18]) && !text.contains("abcdefgh1234"), "{status}: {text}");
                assert!(text.contains("[redacted openai_api_key]"), "{status}: {text}");
                assert!(text.contains(&format!("HTTP {status}")), "{status}: {text}");
            }
        }
    }

    #[test]
    fn the_head_of_a_body_is_scrubbed_then_cut() {
        let (redactor, key) = (Redactor::default(), key());
        let scrub = |text: &str| redactor.scrub_with(text, Some(&key));
        // The key straddles the cut: it is scrubbed whole before characters are taken.
        let body = format!("{}{KEY}{}", "a".repeat(HEAD_CHARS - 20), "b".repeat(5000));
        let shown = head(body.as_bytes(), &scrub);
        assert!(!shown.contains("plain") && shown.ends_with('…'), "{shown}");
        assert!(shown.starts_with("aaaa") && shown.contains("[redac"), "{shown}");
        assert_eq!(head(b"<html>short</html>", &scrub), "<html>short</html>");
        assert_eq!(head(b"\xff\xfe{", &scrub), "\u{fffd}\u{fffd}{");
    }
}
