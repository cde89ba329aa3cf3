//! OpenAI-style rate limits in front of the test model server.
//!
//! Two continuous-refill token buckets, requests and tokens, each holding up to its limit and
//! refilling at limit / window per second (OpenAI's window is a minute; a test takes a second
//! or two). A request is charged on arrival: one request, and its estimated tokens, which is
//! how OpenAI counts a request against the limit: the characters of its `messages` and `tools`
//! JSON / 4, rounded up, plus `max_tokens`. A request the buckets cannot cover is refused with
//! OpenAI's 429 (`rate_limit_exceeded`, type `requests` or `tokens`, "Please try again in
//! 1.234s" in the message, no `Retry-After`) and charged nothing; one larger than the whole
//! token bucket gets the "Request too large" 429, which no wait cures.
//!
//! Every answer to a valid request carries the six `x-ratelimit-*` headers (limits, what
//! remains, and the time until each bucket is full again as a Go duration: `120ms`, `1.5s`,
//! `6m0s`), unless the limits are [hidden](RateLimits::without_headers), as a server that
//! does not say its limits.
//!
//! ```text
//! limit 3 requests per 1 s window (one back every 333 ms)
//! t=0    #1 200 remaining 2 reset 334ms   #2 200 remaining 1   #3 200 remaining 0 reset 1s
//! t=10ms #4 429 "… Please try again in 324ms."   charged nothing
//! t=400  #5 200 (a request refilled at 333 ms)
//! ```

use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue};
use serde_json::Value;

use super::{DEMO_MODEL, Reply};

/// The limits a rate-limited server enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// Requests per window; 0 for no request limit.
    pub requests: u64,
    /// Tokens per window; 0 for no token limit.
    pub tokens: u64,
    /// The window the limits count over (OpenAI's is a minute).
    pub window: Duration,
    /// Whether answers carry the `x-ratelimit-*` headers.
    pub headers: bool,
}

impl RateLimits {
    /// `requests` and `tokens` per minute (0: no such limit), with headers, as OpenAI.
    pub fn per_minute(requests: u64, tokens: u64) -> Self {
        Self { requests, tokens, window: Duration::from_secs(60), headers: true }
    }

    /// The same limits counted over `window` instead of a minute (a test that runs in seconds).
    pub fn per(self, window: Duration) -> Self {
        Self { window, ..self }
    }

    /// The same limits, enforced without saying them: no `x-ratelimit-*` headers.
    pub fn without_headers(self) -> Self {
        Self { headers: false, ..self }
    }
}

/// What the limits did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimitCounts {
    /// Requests let through to the behaviour.
    pub accepted: u64,
    /// Requests refused with a 429 for the request limit.
    pub refused_requests: u64,
    /// Requests refused with a 429 for the token limit (too large ones included).
    pub refused_tokens: u64,
    /// Tokens charged for the requests let through.
    pub tokens_charged: u64,
}

impl RateLimitCounts {
    /// Requests refused with a 429, for either limit.
    pub fn refused(&self) -> u64 {
        self.refused_requests + self.refused_tokens
    }
}

/// What a request is charged against the token limit: the characters of its `messages` and
/// `tools` JSON / 4, rounded up, plus `max_tokens` (or `max_completion_tokens`).
pub fn estimated_tokens(request: &Value) -> u64 {
    let chars =
        |key: &str| request.get(key).filter(|value| !value.is_null()).map_or(0, |v| v.to_string().chars().count());
    let max_tokens =
        request.get("max_tokens").or_else(|| request.get("max_completion_tokens")).and_then(Value::as_u64).unwrap_or(0);
    ((chars("messages") + chars("tools")) as u64).div_ceil(4) + max_tokens
}

/// A duration as Go's `time.Duration.String` writes it, rounded up to the millisecond, as
/// OpenAI sends its resets and hints: `0s`, `644ms`, `1.234s`, `6m0s`, `1h2m3.5s`.
pub fn go_duration(duration: Duration) -> String {
    let ms = duration.as_nanos().div_ceil(1_000_000);
    if ms == 0 {
        return "0s".to_owned();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (hours, minutes) = (ms / 3_600_000, ms / 60_000 % 60);
    let (seconds, millis) = (ms / 1000 % 60, ms % 1000);
    let mut text = String::new();
    if hours > 0 {
        text.push_str(&format!("{hours}h"));
    }
    if hours > 0 || minutes > 0 {
        text.push_str(&format!("{minutes}m"));
    }
    text.push_str(&seconds.to_string());
    if millis > 0 {
        text.push_str(format!(".{millis:03}").trim_end_matches('0'));
    }
    text.push('s');
    text
}

/// One continuous-refill bucket.
#[derive(Debug)]
struct Bucket {
    limit: u64,
    /// Units per second.
    rate: f64,
    level: f64,
    at: Instant,
}

impl Bucket {
    fn new(limit: u64, window: Duration, now: Instant) -> Option<Self> {
        (limit > 0 && !window.is_zero()).then(|| Bucket {
            limit,
            rate: limit as f64 / window.as_secs_f64(),
            level: limit as f64,
            at: now,
        })
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.level = (self.level + elapsed * self.rate).min(self.limit as f64);
        self.at = self.at.max(now);
    }

    /// How long until it holds `cost`; `None` if it does now.
    fn short_by(&self, cost: f64) -> Option<Duration> {
        (self.level < cost).then(|| Duration::from_secs_f64((cost - self.level) / self.rate))
    }

    fn used(&self) -> u64 {
        (self.limit as f64 - self.level).ceil().max(0.0) as u64
    }

    fn remaining(&self) -> u64 {
        self.level.max(0.0).floor() as u64
    }

    fn until_full(&self) -> Duration {
        Duration::from_secs_f64(((self.limit as f64 - self.level) / self.rate).max(0.0))
    }
}

/// Which limit a 429 names.
#[derive(Debug, Clone, Copy)]
enum Limit {
    Requests,
    Tokens,
}

/// The limits' state: both buckets and the counts.
#[derive(Debug)]
pub(super) struct Limiter {
    config: RateLimits,
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
    counts: RateLimitCounts,
}

/// The limiter's answer to one request: headers to add to the answer, and a 429 in place of
/// the behaviour's reply when it was refused.
pub(super) struct Admission {
    pub(super) headers: HeaderMap,
    pub(super) refused: Option<Reply>,
}

impl Limiter {
    pub(super) fn new(config: RateLimits) -> Self {
        let now = Instant::now();
        Self {
            config,
            requests: Bucket::new(config.requests, config.window, now),
            tokens: Bucket::new(config.tokens, config.window, now),
            counts: RateLimitCounts::default(),
        }
    }

    pub(super) fn counts(&self) -> RateLimitCounts {
        self.counts
    }

    pub(super) fn config(&self) -> RateLimits {
        self.config
    }

    /// Charges `request` if both buckets cover it, else refuses it, charging nothing.
    pub(super) fn admit(&mut self, request: &Value) -> Admission {
        let now = Instant::now();
        for bucket in [&mut self.requests, &mut self.tokens].into_iter().flatten() {
            bucket.refill(now);
        }
        let cost = estimated_tokens(request);
        let model = request.get("model").and_then(Value::as_str).filter(|m| !m.is_empty()).unwrap_or(DEMO_MODEL);
        let refused = self.refusal(model, cost);
        match &refused {
            Some((Limit::Requests, _)) => self.counts.refused_requests += 1,
            Some((Limit::Tokens, _)) => self.counts.refused_tokens += 1,
            None => {
                if let Some(requests) = &mut self.requests {
                    requests.level -= 1.0;
                }
                if let Some(tokens) = &mut self.tokens {
                    tokens.level -= cost as f64;
                }
                self.counts.accepted += 1;
                self.counts.tokens_charged += cost;
            }
        }
        Admission { headers: self.headers(), refused: refused.map(|(_, reply)| reply) }
    }

    /// The 429 for a request that costs `cost` tokens, if the buckets cannot cover it, and the
    /// limit it names.
    fn refusal(&self, model: &str, cost: u64) -> Option<(Limit, Reply)> {
        const LEARN_MORE: &str = "Visit https://platform.openai.com/account/rate-limits to learn more.";
        let rate_limited = |limit: Limit, message: String| {
            let kind = match limit {
                Limit::Requests => "requests",
                Limit::Tokens => "tokens",
            };
            (limit, Reply::error(429, kind, Some("rate_limit_exceeded"), format!("{message} {LEARN_MORE}")))
        };
        if let Some(tokens) = self.tokens.as_ref().filter(|tokens| cost > tokens.limit) {
            return Some(rate_limited(
                Limit::Tokens,
                format!(
                    "Request too large for {model} in organization org-demo on tokens per min (TPM): Limit {}, \
                     Requested {cost}. The input or output tokens must be reduced in order to run successfully.",
                    tokens.limit
                ),
            ));
        }
        if let Some((requests, wait)) = self.requests.as_ref().and_then(|b| Some((b, b.short_by(1.0)?))) {
            return Some(rate_limited(
                Limit::Requests,
                format!(
                    "Rate limit reached for {model} in organization org-demo on requests per min (RPM): Limit {}, \
                     Used {}, Requested 1. Please try again in {}.",
                    requests.limit,
                    requests.used(),
                    go_duration(wait)
                ),
            ));
        }
        if let Some((tokens, wait)) = self.tokens.as_ref().and_then(|b| Some((b, b.short_by(cost as f64)?))) {
            return Some(rate_limited(
                Limit::Tokens,
                format!(
                    "Rate limit reached for {model} in organization org-demo on tokens per min (TPM): Limit {}, \
                     Used {}, Requested {cost}. Please try again in {}.",
                    tokens.limit,
                    tokens.used(),
                    go_duration(wait)
                ),
            ));
        }
        None
    }

    /// `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` as the buckets stand.
    fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if !self.config.headers {
            return headers;
        }
        for (name, bucket) in [("requests", &self.requests), ("tokens", &self.tokens)] {
            let Some(bucket) = bucket else { continue };
            for (field, value) in [
                ("limit", bucket.limit.to_string()),
                ("remaining", bucket.remaining().to_string()),
                ("reset", go_duration(bucket.until_full())),
            ] {
                if let (Ok(header), Ok(value)) = (
                    format!("x-ratelimit-{field}-{name}").parse::<axum::http::HeaderName>(),
                    HeaderValue::from_str(&value),
                ) {
                    headers.insert(header, value);
                }
            }
        }
        headers
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn durations_are_written_as_go_writes_them() {
        let ms = Duration::from_millis;
        assert_eq!(go_duration(Duration::ZERO), "0s");
        assert_eq!(go_duration(Duration::from_nanos(1)), "1ms", "rounded up: never a wait too short");
        assert_eq!(go_duration(ms(120)), "120ms");
        assert_eq!(go_duration(ms(1500)), "1.5s");
        assert_eq!(go_duration(ms(1234)), "1.234s");
        assert_eq!(go_duration(ms(20_000)), "20s");
        assert_eq!(go_duration(ms(360_000)), "6m0s");
        assert_eq!(go_duration(ms(3_723_500)), "1h2m3.5s");
        assert_eq!(go_duration(ms(7_200_000)), "2h0m0s");
    }

    #[test]
    fn a_request_costs_its_json_characters_over_four_plus_max_tokens() {
        let request = json!({
            "model": "m",
            "messages": [{"role": "user", "content": "abcdefgh"}],
            "tools": [{"type": "function", "function": {"name": "search", "parameters": {}}}],
            "max_tokens": 100,
        });
        let chars = request["messages"].to_string().chars().count() + request["tools"].to_string().chars().count();
        assert_eq!(estimated_tokens(&request), chars.div_ceil(4) as u64 + 100);
        assert_eq!(estimated_tokens(&json!({"messages": [], "max_completion_tokens": 7})), 1 + 7);
    }

    fn request(max_tokens: u64) -> Value {
        json!({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens})
    }

    #[test]
    fn a_request_beyond_a_bucket_is_refused_and_charged_nothing() {
        let mut limiter = Limiter::new(RateLimits::per_minute(2, 1000).per(Duration::from_secs(3600)));
        let cost = estimated_tokens(&request(400));
        assert!(limiter.admit(&request(400)).refused.is_none());
        assert!(limiter.admit(&request(400)).refused.is_none());
        let refused = limiter.admit(&request(1)).refused.expect("the request limit is reached");
        assert!(matches!(refused, Reply::Error { status: 429, ref kind, .. } if kind == "requests"), "{refused:?}");
        assert_eq!(
            limiter.counts(),
            RateLimitCounts { accepted: 2, refused_requests: 1, refused_tokens: 0, tokens_charged: 2 * cost }
        );

        let mut limiter = Limiter::new(RateLimits::per_minute(0, 1000).per(Duration::from_secs(3600)));
        assert!(limiter.admit(&request(600)).refused.is_none());
        let Some(Reply::Error { kind, message, .. }) = limiter.admit(&request(600)).refused else {
            panic!("the token limit is reached")
        };
        assert_eq!(kind, "tokens");
        let used = estimated_tokens(&request(600));
        assert!(
            message.contains(&format!("Limit 1000, Used {used}, Requested {used}. Please try again in ")),
            "{message}"
        );
        let Some(Reply::Error { message, .. }) = limiter.admit(&request(5000)).refused else {
            panic!("too large for the bucket")
        };
        assert!(message.starts_with("Request too large for gpt-test"), "{message}");
        assert_eq!(limiter.counts().refused_tokens, 2);
        assert_eq!(limiter.counts().tokens_charged, used, "refusals are not charged");
    }

    #[test]
    fn hidden_limits_send_no_headers() {
        let mut limiter = Limiter::new(RateLimits::per_minute(1, 0).without_headers());
        assert!(limiter.admit(&request(1)).headers.is_empty());
        let refused = limiter.admit(&request(1));
        assert!(refused.refused.is_some() && refused.headers.is_empty());
    }
}
