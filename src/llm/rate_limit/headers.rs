//! What a provider says about its limits: OpenAI's `x-ratelimit-*` headers, `Retry-After`,
//! `retry-after-ms`, and the "Please try again in 1.234s" hint of a 429's message.
//!
//! Everything here is lenient: a header that is missing, negative, not a number or too large
//! to be a duration is ignored (`None`), never an error. A provider that sends odd headers is
//! paced as one that sends none.

use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, RETRY_AFTER};

/// The six `x-ratelimit-*` headers OpenAI sends on every response (successes and errors alike),
/// each `None` when absent or unreadable.
///
/// Requests and tokens each have a limit (the bucket's capacity), what remains of it, and how
/// long until the bucket is full again (`reset`, sent as a Go duration: `120ms`, `1.5s`, `6m0s`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimitHeaders {
    /// `x-ratelimit-limit-requests`: requests allowed per window.
    pub limit_requests: Option<u64>,
    /// `x-ratelimit-limit-tokens`: tokens allowed per window.
    pub limit_tokens: Option<u64>,
    /// `x-ratelimit-remaining-requests`: requests left now.
    pub remaining_requests: Option<u64>,
    /// `x-ratelimit-remaining-tokens`: tokens left now.
    pub remaining_tokens: Option<u64>,
    /// `x-ratelimit-reset-requests`: time until the request budget is whole again.
    pub reset_requests: Option<Duration>,
    /// `x-ratelimit-reset-tokens`: time until the token budget is whole again.
    pub reset_tokens: Option<Duration>,
}

impl RateLimitHeaders {
    /// Reads the headers of one response.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let text = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
        let count = |name: &str| text(name).and_then(parse_count);
        let duration = |name: &str| text(name).and_then(parse_go_duration);
        Self {
            limit_requests: count("x-ratelimit-limit-requests"),
            limit_tokens: count("x-ratelimit-limit-tokens"),
            remaining_requests: count("x-ratelimit-remaining-requests"),
            remaining_tokens: count("x-ratelimit-remaining-tokens"),
            reset_requests: duration("x-ratelimit-reset-requests"),
            reset_tokens: duration("x-ratelimit-reset-tokens"),
        }
    }

    /// Whether the response carried none of them (a server that does not say its limits).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// How long the server asked the client to wait: `retry-after-ms` (OpenAI's, in milliseconds),
/// else `Retry-After` (seconds or an HTTP date). `None` when neither is readable.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = |name| headers.get(name).and_then(|value| value.to_str().ok()).map(str::trim);
    let seconds = |seconds: f64| Duration::try_from_secs_f64(seconds).ok();
    if let Some(delay) = text("retry-after-ms").and_then(parse_non_negative).and_then(|ms| seconds(ms / 1000.0)) {
        return Some(delay);
    }
    let value = text(RETRY_AFTER.as_str())?;
    if let Some(number) = parse_non_negative(value) {
        return seconds(number);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
}

/// The wait a rate-limit message suggests: "… Please try again in 1.234s. …" (OpenAI words its
/// 429s so, with a Go duration: `644ms`, `20s`, `1m30s`). `None` when there is no such hint.
pub fn retry_hint(message: &str) -> Option<Duration> {
    const PHRASE: &str = "try again in ";
    let lower = message.to_ascii_lowercase();
    let start = lower.find(PHRASE)? + PHRASE.len();
    let word = message[start..].split_whitespace().next()?;
    // The hint ends a sentence: "in 1.234s."
    parse_go_duration(word.trim_end_matches(['.', ',', ';', ')']))
}

/// How long to wait after a 429: the headers' `retry-after-ms` or `Retry-After`, else the hint
/// in the body's message (the OpenAI error JSON's `error.message`, or the body as text).
pub fn retry_delay(headers: &HeaderMap, body: &[u8]) -> Option<Duration> {
    retry_after(headers).or_else(|| {
        let text = String::from_utf8_lossy(body);
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|json| json.pointer("/error/message").and_then(|m| m.as_str()).map(str::to_owned));
        retry_hint(message.as_deref().unwrap_or(&text))
    })
}

/// A count such as `30000`; a fraction is rounded down, a negative or non-number is `None`.
fn parse_count(text: &str) -> Option<u64> {
    let text = text.trim();
    if let Ok(count) = text.parse::<u64>() {
        return Some(count);
    }
    let value = text.parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0)?;
    // Rounded down and saturated at u64::MAX (what `as` does for a float beyond it).
    Some(value.floor() as u64)
}

/// A plain number (`2`, `1.5`) that is not negative; `None` otherwise (NaN included).
fn parse_non_negative(text: &str) -> Option<f64> {
    text.trim().parse::<f64>().ok().filter(|v| *v >= 0.0)
}

/// A Go duration as `time.Duration.String` writes it and OpenAI sends it: `0s`, `120ms`,
/// `1.5s`, `6m0s`, `1h2m3.5s` (units `h`, `m`, `s`, `ms`, `us`/`µs`, `ns`). A bare `0` is zero,
/// as in Go. `None` for a negative, malformed or unrepresentable duration.
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    if rest.is_empty() {
        return None;
    }
    let mut seconds = 0.0_f64;
    while !rest.is_empty() {
        let number_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (number, tail) = rest.split_at(number_end);
        // "1." and ".5" are Go durations too; "." alone is not.
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return None;
        }
        let value = number.parse::<f64>().ok()?;
        let unit_end = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let scale = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" | "μs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        seconds += value * scale;
        rest = tail;
    }
    Duration::try_from_secs_f64(seconds).ok()
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    fn ms(ms: u64) -> Option<Duration> {
        Some(Duration::from_millis(ms))
    }

    #[test]
    fn go_durations_as_openai_sends_them() {
        assert_eq!(parse_go_duration("6m0s"), ms(360_000));
        assert_eq!(parse_go_duration("1.5s"), ms(1500));
        assert_eq!(parse_go_duration("120ms"), ms(120));
        assert_eq!(parse_go_duration("1h2m3.5s"), ms(3_723_500));
        assert_eq!(parse_go_duration("0s"), ms(0));
        assert_eq!(parse_go_duration("0"), ms(0));
        assert_eq!(parse_go_duration("2m59.56s"), ms(179_560));
        assert_eq!(parse_go_duration("1.234s"), ms(1234));
        assert_eq!(parse_go_duration("250us"), Some(Duration::from_micros(250)));
        assert_eq!(parse_go_duration(" 9ms "), ms(9), "surrounding blanks are tolerated");
    }

    #[test]
    fn malformed_negative_and_huge_durations_are_ignored() {
        for garbage in ["", "soon", "1.5", "10 s", "1.2.3s", "5x", "s", ".s", "1h-2m", "ms120", "1.5s!", "∞s"] {
            assert_eq!(parse_go_duration(garbage), None, "{garbage:?}");
        }
        assert_eq!(parse_go_duration("-1s"), None, "negative");
        assert_eq!(parse_go_duration("-0.5s"), None, "negative");
        assert_eq!(parse_go_duration("99999999999999999999h"), None, "beyond a Duration");
        assert_eq!(parse_go_duration("1000000h"), Some(Duration::from_secs(3_600_000_000)), "large but representable");
    }

    #[test]
    fn every_x_ratelimit_header_is_read_and_bad_ones_are_skipped() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("x-ratelimit-limit-requests", "500"),
            ("x-ratelimit-limit-tokens", "30000"),
            ("x-ratelimit-remaining-requests", "499"),
            ("x-ratelimit-remaining-tokens", "28500"),
            ("x-ratelimit-reset-requests", "120ms"),
            ("x-ratelimit-reset-tokens", "3s"),
        ] {
            headers.insert(name, HeaderValue::from_static(value));
        }
        let read = RateLimitHeaders::from_headers(&headers);
        assert_eq!(
            read,
            RateLimitHeaders {
                limit_requests: Some(500),
                limit_tokens: Some(30000),
                remaining_requests: Some(499),
                remaining_tokens: Some(28500),
                reset_requests: ms(120),
                reset_tokens: ms(3000),
            }
        );
        assert!(!read.is_empty());

        headers.insert("x-ratelimit-limit-tokens", HeaderValue::from_static("lots"));
        headers.insert("x-ratelimit-remaining-tokens", HeaderValue::from_static("-5"));
        headers.insert("x-ratelimit-reset-tokens", HeaderValue::from_static("6 minutes"));
        headers.insert("x-ratelimit-remaining-requests", HeaderValue::from_static("99999999999999999999999"));
        let read = RateLimitHeaders::from_headers(&headers);
        assert_eq!((read.limit_tokens, read.remaining_tokens, read.reset_tokens), (None, None, None));
        assert_eq!(read.remaining_requests, Some(u64::MAX), "a huge count saturates");
        assert_eq!(read.limit_requests, Some(500), "the good ones stay");
        assert!(RateLimitHeaders::from_headers(&HeaderMap::new()).is_empty());
    }

    #[test]
    fn retry_after_reads_milliseconds_seconds_and_dates() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(retry_after(&headers), ms(2000));
        headers.insert("retry-after-ms", HeaderValue::from_static("250"));
        assert_eq!(retry_after(&headers), ms(250), "the milliseconds win");
        headers.insert("retry-after-ms", HeaderValue::from_static("-3"));
        assert_eq!(retry_after(&headers), ms(2000), "a bad retry-after-ms falls back to Retry-After");

        let mut headers = HeaderMap::new();
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        headers.insert(RETRY_AFTER, HeaderValue::from_str(&later).expect("date"));
        let delay = retry_after(&headers).expect("a date is read");
        assert!(delay <= Duration::from_secs(30) && delay > Duration::from_secs(25), "{delay:?}");
        let past = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(30));
        headers.insert(RETRY_AFTER, HeaderValue::from_str(&past).expect("date"));
        assert_eq!(retry_after(&headers), ms(0), "a date in the past means now");

        for garbage in ["soon", "-1", "1e400", "NaN"] {
            headers.insert(RETRY_AFTER, HeaderValue::from_static(garbage));
            assert_eq!(retry_after(&headers), None, "{garbage}");
        }
    }

    #[test]
    fn the_hint_of_a_429_message_is_read_when_no_header_says_how_long() {
        let tokens = "Rate limit reached for gpt-4o in organization org-x on tokens per min (TPM): Limit 30000, \
                      Used 29000, Requested 1500. Please try again in 1.234s. Visit \
                      https://platform.openai.com/account/rate-limits to learn more.";
        assert_eq!(retry_hint(tokens), ms(1234));
        assert_eq!(
            retry_hint("… on requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in 20ms."),
            ms(20)
        );
        assert_eq!(retry_hint("Please try again in 6m0s"), ms(360_000));
        assert_eq!(retry_hint("Rate limit reached. Please try again later."), None);
        assert_eq!(
            retry_hint("Request too large for gpt-4o on tokens per min (TPM): Limit 30000, Requested 30601."),
            None
        );

        let body = serde_json::json!({"error": {"message": tokens, "type": "tokens", "param": null, "code": "rate_limit_exceeded"}});
        let body = body.to_string();
        assert_eq!(retry_delay(&HeaderMap::new(), body.as_bytes()), ms(1234));
        assert_eq!(retry_delay(&HeaderMap::new(), b"plain text: please try again in 2s"), ms(2000));
        let mut headers = HeaderMap::new();
        headers.insert("retry-after-ms", HeaderValue::from_static("500"));
        assert_eq!(retry_delay(&headers, body.as_bytes()), ms(500), "a header wins over the hint");
        assert_eq!(retry_delay(&HeaderMap::new(), b"{}"), None);
    }
}
