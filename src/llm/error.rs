//! [`LlmError`], named by what the caller does next, and [`LlmError::hint`]: for the failures
//! of a first hour (Docker Model Runner not running, a model not pulled, a model without tool
//! calling, a conversation too long for the model), the one line that says what to do.

use std::time::Duration;

use serde_json::Value;
use url::Url;

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
    #[error("cannot reach {}{url}: {}", model_runner_note(url), crate::error_chain(source))]
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
    /// 404 from chat completions: the server does not serve this model (not pulled, misspelt),
    /// or the base URL is not an OpenAI API. Do not retry.
    #[error("{url} does not serve model {model:?} (HTTP 404): {message}")]
    UnknownModel {
        /// The model asked for.
        model: String,
        /// The API's error message.
        message: String,
        /// Endpoint.
        url: String,
    },
    /// 400 (or llama.cpp's 500 without `--jinja`) refusing the `tools` parameter: the model
    /// cannot be offered tools. Do not retry.
    #[error("model {model:?} at {url} does not support tools (HTTP {status}): {message}")]
    ToolsUnsupported {
        /// The model asked for.
        model: String,
        /// Status code.
        status: u16,
        /// The API's error message.
        message: String,
        /// Endpoint.
        url: String,
    },
    /// 400 `context_length_exceeded` (OpenAI) or `exceed_context_size_error` (llama.cpp, Docker
    /// Model Runner): the conversation no longer fits the model's context. Do not retry.
    #[error("the conversation is longer than model {model:?} at {url} can read (HTTP 400): {message}")]
    ContextTooLong {
        /// The model asked for.
        model: String,
        /// The API's error message.
        message: String,
        /// Endpoint.
        url: String,
    },
    /// 400, 403, 422…: the request itself is wrong; do not retry.
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
            Self::UnknownModel { .. } => "model_not_found",
            Self::ToolsUnsupported { .. } => "tools_unsupported",
            Self::ContextTooLong { .. } => "context_length_exceeded",
            Self::Protocol { .. } => "protocol_error",
            Self::NoRoute { .. } => "no_route",
            Self::Unavailable { .. } => "unavailable",
        }
    }
}

impl LlmError {
    /// The error for a non-2xx answer other than 401, from its status and the API's error body:
    /// OpenAI's `{"error":{"message","type","param","code"}}`, or llama.cpp's
    /// `{"error":{"code":400,"message","type"}}`. `message` is the body's message, already
    /// scrubbed and cut.
    pub(crate) fn from_status(
        status: u16,
        retry_after: Option<Duration>,
        body: &[u8],
        message: String,
        url: String,
        model: &str,
    ) -> Self {
        match status {
            // Larger than the whole per-minute budget: no wait makes it fit.
            429 if message.starts_with("Request too large") => Self::Rejected { status, message, url },
            429 => Self::RateLimited { retry_after, url },
            // llama.cpp started without --jinja refuses `tools` with a 500: no retry changes that.
            500 if refuses_tools(&message) => Self::refused(status, body, message, url, model),
            408 | 409 | 500..=599 => Self::Server { status, message, retry_after, url },
            _ => Self::refused(status, body, message, url, model),
        }
    }

    /// A refused request (4xx), by what the body says.
    fn refused(status: u16, body: &[u8], message: String, url: String, model: &str) -> Self {
        let detail = serde_json::from_slice::<Value>(body).ok();
        let field = |name: &str| {
            detail
                .as_ref()
                .and_then(|d| d.pointer(&format!("/error/{name}")))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let (code, kind, param) = (field("code"), field("type"), field("param"));
        let model = model.to_owned();
        if code.as_deref() == Some("context_length_exceeded") || kind.as_deref() == Some("exceed_context_size_error") {
            return Self::ContextTooLong { model, message, url };
        }
        if param.as_deref() == Some("tools") || refuses_tools(&message) {
            return Self::ToolsUnsupported { model, status, message, url };
        }
        match status {
            404 => Self::UnknownModel { model, message, url },
            _ => Self::Rejected { status, message, url },
        }
    }

    /// Logs [`Self::hint`] as a warning (`hint: …`), once per process for each hint.
    pub(crate) fn tell_hint(&self) {
        crate::tell_hint_once(self.kind(), self.hint());
    }

    /// What to do about this failure, in one line, when agentry can tell: Docker Model Runner not
    /// running, a model not pulled, a model without tool calling, a conversation too long, no
    /// key and no fallback.
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::Connect { url, .. } => Some(if is_model_runner(url) {
                MODEL_RUNNER_HINT.to_owned()
            } else {
                format!(
                    "is the model server at {} running? Set model.local.base_url (MODEL_RUNNER_URL) or \
                         model.cloud.base_url (OPENAI_BASE_URL) to where it listens; `agentry doctor` checks each route",
                    host_of(url)
                )
            }),
            Self::UnknownModel { model, url, .. } if is_model_runner(url) => Some(format!(
                "pull it with `docker model pull {model}`, or set MODEL_RUNNER_MODEL to one `docker model ls` lists"
            )),
            Self::UnknownModel { url, .. } => Some(format!(
                "set model.cloud.model (OPENAI_MODEL_NAME) or model.local.model (MODEL_RUNNER_MODEL) to a model {} \
                 serves; `agentry doctor` lists them",
                host_of(url)
            )),
            Self::ToolsUnsupported { .. } => Some(
                "agentry researches through tool calls: choose a model that supports them (MODEL_RUNNER_MODEL, \
                 e.g. ai/qwen3 or ai/llama3.2; OPENAI_MODEL_NAME), or start llama.cpp's server with --jinja"
                    .to_owned(),
            ),
            Self::ContextTooLong { url, .. } if is_model_runner(url) => Some(
                "give the model a longer context (`docker model configure --context-size 8192 <model>`), or lower \
                 model.max_tokens or agent.max_turns"
                    .to_owned(),
            ),
            Self::ContextTooLong { .. } => Some(
                "lower model.max_tokens or agent.max_turns, or use a model with a longer context (llama.cpp's \
                 server: a larger --ctx-size)"
                    .to_owned(),
            ),
            Self::NoRoute { .. } => Some(
                "put the key in <secrets.dir>/openai_api_key (or set OPENAI_API_KEY_FILE or OPENAI_API_KEY), or \
                 set model.fallback = \"local\" to answer with Docker Model Runner"
                    .to_owned(),
            ),
            Self::OutOfTime { last, .. } => last.hint(),
            _ => None,
        }
    }
}

/// Docker Model Runner's address inside containers (Docker Desktop), the local route's default.
pub const MODEL_RUNNER_HOST: &str = "model-runner.docker.internal";

/// The port Docker Model Runner listens on when its host-side TCP is enabled.
const MODEL_RUNNER_PORT: u16 = 12434;

/// What to do when Docker Model Runner does not answer.
const MODEL_RUNNER_HINT: &str = "enable Docker Model Runner (Docker Desktop: Settings > AI > Enable Docker Model \
     Runner, or `docker desktop enable model-runner --tcp 12434`), or set MODEL_RUNNER_URL to your model server's \
     OpenAI base URL (e.g. http://localhost:12434/engines/v1)";

/// Whether a URL is Docker Model Runner's: its in-container name, its TCP port, or its
/// `/engines/` paths.
pub fn is_model_runner(url: &str) -> bool {
    Url::parse(url).is_ok_and(|url| {
        url.host_str() == Some(MODEL_RUNNER_HOST)
            || url.port() == Some(MODEL_RUNNER_PORT)
            || url.path().starts_with("/engines/")
    })
}

/// Says that the default address is Docker Model Runner's, for a connect error.
fn model_runner_note(url: &str) -> &'static str {
    match Url::parse(url) {
        Ok(url) if url.host_str() == Some(MODEL_RUNNER_HOST) => "Docker Model Runner (its address inside Docker) at ",
        _ => "",
    }
}

/// `host:port` of a URL, for messages.
fn host_of(url: &str) -> String {
    Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(|h| format!("{h}{}", u.port().map(|p| format!(":{p}")).unwrap_or_default())))
        .unwrap_or_else(|| url.to_owned())
}

/// Servers without a `param` field say it in words: Ollama's "… does not support tools",
/// llama.cpp's "tools param requires --jinja flag".
fn refuses_tools(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    message.contains("does not support tools") || message.contains("tools param requires")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(status: u16, body: &str, url: &str) -> LlmError {
        let message = serde_json::from_str::<Value>(body)
            .ok()
            .and_then(|v| v.pointer("/error/message").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_default();
        LlmError::from_status(status, None, body.as_bytes(), message, url.to_owned(), "ai/gemma3")
    }

    #[test]
    fn openai_and_llama_cpp_bodies_name_the_first_hour_failures() {
        let cloud = "https://api.openai.com/v1/chat/completions";
        let runner = "http://model-runner.docker.internal/engines/llama.cpp/v1/chat/completions";
        let openai_404 = r#"{"error":{"message":"The model `x` does not exist or you do not have access to it.","type":"invalid_request_error","param":null,"code":"model_not_found"}}"#;
        let context = r#"{"error":{"message":"This model's maximum context length is 8192 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#;
        let llama_context = r#"{"error":{"code":400,"message":"request (5000 tokens) exceeds the available context size (4096 tokens), try increasing it","type":"exceed_context_size_error","n_prompt_tokens":5000,"n_ctx":4096}}"#;
        let tools = r#"{"error":{"message":"tools is not supported in this model.","type":"invalid_request_error","param":"tools","code":null}}"#;
        let jinja = r#"{"error":{"code":500,"message":"tools param requires --jinja flag","type":"server_error"}}"#;
        let other = r#"{"error":{"message":"Invalid value for 'temperature'","type":"invalid_request_error","param":"temperature","code":null}}"#;

        assert!(matches!(classify(404, openai_404, cloud), LlmError::UnknownModel { .. }));
        assert!(classify(404, openai_404, runner).hint().is_some_and(|h| h.contains("docker model pull ai/gemma3")));
        assert!(matches!(classify(400, context, cloud), LlmError::ContextTooLong { .. }));
        assert!(matches!(classify(400, llama_context, runner), LlmError::ContextTooLong { .. }));
        assert!(matches!(classify(400, tools, cloud), LlmError::ToolsUnsupported { .. }));
        let jinja = classify(500, jinja, runner);
        assert!(matches!(jinja, LlmError::ToolsUnsupported { .. }) && !jinja.is_retryable(), "{jinja:?}");
        let other = classify(400, other, cloud);
        assert!(matches!(other, LlmError::Rejected { status: 400, .. }) && other.hint().is_none(), "{other:?}");
        assert!(matches!(classify(500, "{}", cloud), LlmError::Server { .. }));
    }
}
