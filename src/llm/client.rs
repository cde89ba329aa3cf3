//! One chat request over HTTP: timeouts, retries with capped exponential backoff and jitter
//! on connect errors, 408, 409, 429 and 5xx (honouring `Retry-After`), never on 400, 401,
//! 403 or 404. The request body is serialised once and reused for every attempt.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use url::Url;

use super::LlmError;
use super::wire::{ChatRequest, ChatResponse, ErrorBody};
use crate::secrets::Credential;

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

/// Timeouts and retry policy.
#[derive(Debug, Clone)]
pub struct ClientPolicy {
    /// One attempt, including reading the response.
    pub request_timeout: Duration,
    /// Retries after a retryable failure.
    pub max_retries: u32,
    /// Smallest backoff.
    pub min_delay: Duration,
    /// Largest backoff (and largest `Retry-After` honoured).
    pub max_delay: Duration,
}

/// A successful call.
#[derive(Debug, Clone)]
pub struct Completion {
    /// The response.
    pub response: ChatResponse,
    /// How many attempts it took (1 = no retry).
    pub attempts: u32,
}

/// Sends chat requests; cheap to clone (one connection pool).
#[derive(Debug, Clone)]
pub struct ChatClient {
    http: reqwest::Client,
    policy: ClientPolicy,
}

/// Responses larger than this are refused rather than buffered.
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

impl ChatClient {
    /// A client with its own connection pool.
    pub fn new(policy: ClientPolicy) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("agentry/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(policy.request_timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()?;
        Ok(Self { http, policy })
    }

    /// Sends `request` to `endpoint`, retrying transient failures.
    pub async fn complete(&self, endpoint: &Endpoint, request: &ChatRequest<'_>) -> Result<Completion, LlmError> {
        let url = super::chat_completions_url(&endpoint.base_url);
        let body = Bytes::from(serde_json::to_vec(request).map_err(|e| LlmError::Protocol {
            url: url.to_string(),
            message: format!("cannot encode the request: {e}"),
        })?);
        let mut headers = headers(endpoint)?;
        if let Some(traceparent) = crate::telemetry::traceparent().and_then(|t| HeaderValue::from_str(&t).ok()) {
            headers.insert("traceparent", traceparent);
        }
        let mut attempts = 0u32;
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.policy.min_delay)
            .with_max_delay(self.policy.max_delay)
            .with_max_times(self.policy.max_retries as usize)
            .with_jitter();
        let max_delay = self.policy.max_delay;
        let response = (|| {
            attempts += 1;
            self.attempt(&url, &headers, body.clone())
        })
        .retry(backoff)
        .when(LlmError::is_retryable)
        .adjust(|error, delay| delay.map(|delay| error.retry_after().map_or(delay, |asked| asked.min(max_delay))))
        .notify(|error, delay| {
            tracing::warn!(error.type = error.kind(), %error, retry_in = ?delay, "model call failed; retrying");
        })
        .await?;
        Ok(Completion { response, attempts })
    }

    async fn attempt(&self, url: &Url, headers: &HeaderMap, body: Bytes) -> Result<ChatResponse, LlmError> {
        let shown = url.to_string();
        let send = self.http.post(url.clone()).headers(headers.clone()).body(body).send();
        let timeout = self.policy.request_timeout;
        let read = async {
            let response = send.await.map_err(|source| classify_transport(&shown, timeout, source))?;
            let status = response.status();
            let retry_after = retry_after(response.headers());
            let bytes = response.bytes().await.map_err(|source| classify_transport(&shown, timeout, source))?;
            Ok::<_, LlmError>((status, retry_after, bytes))
        };
        let (status, retry_after, bytes) = tokio::time::timeout(timeout, read)
            .await
            .map_err(|_| LlmError::Timeout { url: shown.clone(), timeout })??;
        if bytes.len() > MAX_RESPONSE_BYTES {
            return Err(LlmError::Protocol {
                url: shown,
                message: format!("response of {} bytes is too large", bytes.len()),
            });
        }
        if !status.is_success() {
            return Err(status_error(status, retry_after, &bytes, shown));
        }
        let response: ChatResponse = serde_json::from_slice(&bytes)
            .map_err(|e| LlmError::Protocol { url: shown.clone(), message: format!("not a chat completion: {e}") })?;
        if response.choices.is_empty() {
            return Err(LlmError::Protocol { url: shown, message: "the response has no choices".into() });
        }
        Ok(response)
    }
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

/// `Retry-After` (seconds or an HTTP date) or OpenAI's `retry-after-ms`.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    if let Some(ms) =
        headers.get("retry-after-ms").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<f64>().ok())
    {
        return (ms.is_finite() && ms >= 0.0).then(|| Duration::from_secs_f64(ms / 1000.0));
    }
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(std::time::SystemTime::now()).unwrap_or_default())
}

fn status_error(status: StatusCode, retry_after: Option<Duration>, body: &[u8], url: String) -> LlmError {
    let code = status.as_u16();
    if code == 401 {
        // The API's 401 message quotes part of the key: it is deliberately dropped.
        return LlmError::Auth { url };
    }
    let message = serde_json::from_slice::<ErrorBody>(body)
        .map(|b| b.error.message)
        .unwrap_or_else(|_| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned());
    let message: String = message.chars().take(300).collect();
    match code {
        429 => LlmError::RateLimited { retry_after, url },
        408 | 409 | 500..=599 => LlmError::Server { status: code, message, retry_after, url },
        _ => LlmError::Rejected { status: code, message, url },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_dates_and_milliseconds() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        headers.insert("retry-after-ms", HeaderValue::from_static("250"));
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(250)));
        let mut headers = HeaderMap::new();
        let later = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(30));
        headers.insert(RETRY_AFTER, HeaderValue::from_str(&later).expect("date"));
        let delay = retry_after(&headers).expect("date parsed");
        assert!(delay <= Duration::from_secs(30) && delay >= Duration::from_secs(28), "{delay:?}");
        headers.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn statuses_map_to_what_the_caller_does_next() {
        let body = br#"{"error":{"message":"Incorrect API key provided: sk-ab***yz","type":"invalid_request_error","code":"invalid_api_key"}}"#;
        let auth = status_error(StatusCode::UNAUTHORIZED, None, body, "u".into());
        assert!(matches!(auth, LlmError::Auth { .. }));
        assert!(!auth.is_retryable());
        assert!(!auth.to_string().contains("sk-ab"), "the API's echo of the key is dropped");
        for (status, retryable) in
            [(400, false), (403, false), (404, false), (408, true), (429, true), (500, true), (503, true)]
        {
            let error = status_error(StatusCode::from_u16(status).expect("status"), None, b"{}", "u".into());
            assert_eq!(error.is_retryable(), retryable, "{status}");
        }
    }
}
