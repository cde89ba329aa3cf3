use std::time::Duration;

/// A failed model call, named by what the caller does next.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LlmError {
    /// 429: wait (the server may say how long) and retry.
    #[error("rate limited by {url} (HTTP 429){}", retry_after.map(|d| format!(", retry after {d:?}")).unwrap_or_default())]
    RateLimited {
        /// The `Retry-After` the server sent.
        retry_after: Option<Duration>,
        /// Endpoint (no credentials in it).
        url: String,
    },
    /// 408, 409 or 5xx: retry with backoff.
    #[error("{url} answered HTTP {status}: {message}")]
    Server {
        /// Status code.
        status: u16,
        /// The API's error message.
        message: String,
        /// The `Retry-After` the server sent, if any.
        retry_after: Option<Duration>,
        /// Endpoint.
        url: String,
    },
    /// Could not connect, or the connection broke: retry with backoff.
    #[error("cannot reach {url}: {}", crate::error_chain(source))]
    Connect {
        /// Endpoint.
        url: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// No complete answer within the request timeout: retry with backoff.
    #[error("{url} did not answer within {timeout:?}")]
    Timeout {
        /// Endpoint.
        url: String,
        /// The timeout.
        timeout: Duration,
    },
    /// A streamed answer did not begin (no chunk) within `model.first_token_timeout`: retry
    /// with backoff.
    #[error("{url} did not begin its answer within {waited:?} (model.first_token_timeout)")]
    NoFirstChunk {
        /// Endpoint.
        url: String,
        /// The first-chunk timeout.
        waited: Duration,
    },
    /// A streamed answer ended (or broke, or carried an error) before it was whole: retry with
    /// backoff, never pass the half answer on.
    #[error("{url} streamed an incomplete answer: {problem}")]
    Incomplete {
        /// Endpoint.
        url: String,
        /// What was missing (secrets scrubbed).
        problem: String,
    },
    /// The route's rate limits would not let the request through before the question's
    /// deadline (or the question ended while it waited).
    #[error("not sent to {url}: {cause}")]
    Paced {
        /// Endpoint.
        url: String,
        /// What the limiter said.
        #[source]
        cause: super::rate_limit::WaitError,
    },
    /// A transient failure whose next try would come after the question's deadline.
    #[error("{last}; not tried again: the question's deadline is {} away", humantime::format_duration(Duration::from_millis(left.as_millis() as u64)))]
    OutOfTime {
        /// The last failure.
        last: Box<LlmError>,
        /// What was left of the deadline.
        left: Duration,
    },
    /// 401: the key was rejected. Reload the credential; never retry with the same one.
    #[error("{url} rejected the API key (HTTP 401)")]
    Auth {
        /// Endpoint.
        url: String,
    },
    /// 400, 403, 404, 422…: the request itself is wrong; do not retry.
    #[error("{url} refused the request (HTTP {status}): {message}")]
    Rejected {
        /// Status code.
        status: u16,
        /// The API's error message.
        message: String,
        /// Endpoint.
        url: String,
    },
    /// A 2xx whose body cannot be read: cut short, not JSON, an HTML page, no choices. Retry
    /// with backoff: the next answer is most likely whole.
    #[error(
        "{url} answered HTTP {status} with a body agentry cannot read ({problem}); content type {}, first bytes: {head:?}",
        content_type.as_deref().unwrap_or("none")
    )]
    Malformed {
        /// Endpoint.
        url: String,
        /// Status code (2xx).
        status: u16,
        /// The `Content-Type` sent, if any.
        content_type: Option<String>,
        /// What is wrong with the body (secrets scrubbed).
        problem: String,
        /// The first bytes of the body, as text (secrets scrubbed).
        head: String,
    },
    /// The response began and then stopped coming for longer than the idle timeout: retry with
    /// backoff.
    #[error("{url} stopped sending the response: nothing for {idle:?} after {received} bytes")]
    Stalled {
        /// Endpoint.
        url: String,
        /// The idle timeout.
        idle: Duration,
        /// Bytes of the body received before it stopped.
        received: usize,
    },
    /// The response cannot be used, and asking again would not help (too large, say).
    #[error("{url} sent a response agentry cannot read: {message}")]
    Protocol {
        /// Endpoint.
        url: String,
        /// What was wrong.
        message: String,
    },
    /// The cloud rejected the key (401) and re-reading the secret found the same value.
    #[error(
        "the API key {secret} ({fingerprint}) was rejected (HTTP 401) and reloading it found the same value: \
             rotate the secret (overwrite its file; agentry picks up the new value without a restart) \
             or set model.fallback = \"local\""
    )]
    KeyRejected {
        /// Secret name.
        secret: String,
        /// Fingerprint of the rejected value.
        fingerprint: String,
    },
    /// The key holds characters an HTTP header cannot carry (a newline inside it, say).
    #[error(
        "the API key {secret} ({fingerprint}) holds characters that cannot go in an HTTP header: \
         rewrite the secret with the key alone on one line"
    )]
    KeyNotHeaderSafe {
        /// Secret name.
        secret: String,
        /// Fingerprint of the value.
        fingerprint: String,
    },
    /// No route can take the request (no key and no fallback, or the key was rejected).
    #[error("no model route: {reason}")]
    NoRoute {
        /// Why, naming the secret and its fingerprint where one is involved.
        reason: String,
    },
    /// The router did not answer (restarting, stopped, or past the deadline).
    #[error("the model router is unavailable: {reason}")]
    Unavailable {
        /// What happened to it.
        reason: String,
    },
}

impl LlmError {
    /// Whether a retry may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::RateLimited { .. }
                | Self::Server { .. }
                | Self::Connect { .. }
                | Self::Timeout { .. }
                | Self::Stalled { .. }
                | Self::NoFirstChunk { .. }
                | Self::Incomplete { .. }
                | Self::Malformed { .. }
        )
    }

    /// The delay the server asked for.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after, .. } | Self::Server { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The `error.type` telemetry label.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::OutOfTime { last, .. } => last.kind(),
            Self::Paced { .. } => "rate_limited",
            Self::RateLimited { .. } => "rate_limited",
            Self::Server { .. } => "server_error",
            Self::Connect { .. } => "connect_error",
            Self::Timeout { .. } => "timeout",
            Self::Stalled { .. } => "idle_timeout",
            Self::NoFirstChunk { .. } => "first_chunk_timeout",
            Self::Incomplete { .. } => "incomplete_stream",
            Self::Malformed { .. } => "malformed_response",
            Self::Auth { .. } | Self::KeyRejected { .. } => "auth_rejected",
            Self::KeyNotHeaderSafe { .. } => "invalid_key",
            Self::Rejected { .. } => "request_rejected",
            Self::Protocol { .. } => "protocol_error",
            Self::NoRoute { .. } => "no_route",
            Self::Unavailable { .. } => "unavailable",
        }
    }
}
