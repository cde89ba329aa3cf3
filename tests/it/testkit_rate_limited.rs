//! The test kit's rate-limited model server, driven with plain reqwest: it must limit like the
//! real API (buckets that refill, `x-ratelimit-*` headers on 200s and 429s, OpenAI's 429 body
//! without `Retry-After`), and it must count the way agentry's limiter estimates.
//!
//! Limits are counted over a day where a test needs levels that hold still while it reads
//! them (a token comes back every few seconds at most), and over seconds where it needs a
//! refill; what the refill did is asserted in counts, never against the wall clock. The last
//! two drive agentry's `Limiter` against the peer by hand, as the client will.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agentry::deadline::Deadline;
use agentry::llm::rate_limit::{
    LimitConfig, Limiter, RateLimitHeaders, estimate_tokens, parse_go_duration, retry_delay,
};
use agentry::llm::wire::{ChatRequest, Message, ToolDefinition};
use agentry_testkit::model_server::{FnBehaviour, ModelServer, Queue, RateLimitCounts, RateLimits, Reply};
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

const DAY: Duration = Duration::from_secs(24 * 3600);

const RATE_LIMIT_HEADERS: [&str; 6] = [
    "x-ratelimit-limit-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
];

async fn server(limits: RateLimits) -> ModelServer {
    ModelServer::start(Arc::new(FnBehaviour::new(|_| Reply::text("ok"))))
        .await
        .expect("server starts")
        .with_rate_limits(limits)
}

fn body(max_tokens: u64) -> Value {
    json!({
        "model": "gpt-test",
        "messages": [
            {"role": "system", "content": "You are a careful researcher."},
            {"role": "user", "content": "Define entropy, «briefly»"}
        ],
        "tools": [{"type": "function", "function": {
            "name": "search", "description": "Search",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}
        }}],
        "max_tokens": max_tokens
    })
}

/// OpenAI's count, worked out here on its own: the JSON characters of the messages and tools
/// / 4, rounded up, plus max_tokens.
fn cost(body: &Value) -> u64 {
    let chars = body["messages"].to_string().chars().count() + body["tools"].to_string().chars().count();
    chars.div_ceil(4) as u64 + body["max_tokens"].as_u64().unwrap_or(0)
}

struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Value,
    raw: Vec<u8>,
}

async fn post(client: &reqwest::Client, server: &ModelServer, body: &Value) -> Answer {
    let response = client
        .post(format!("{}/chat/completions", server.base_url()))
        .json(body)
        .send()
        .await
        .expect("request is sent");
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    let raw = response.bytes().await.expect("a body").to_vec();
    let body = serde_json::from_slice(&raw).expect("a JSON body");
    Answer { status, headers, body, raw }
}

fn header<'a>(answer: &'a Answer, name: &str) -> &'a str {
    answer.headers.get(name).and_then(|value| value.to_str().ok()).unwrap_or_else(|| panic!("no {name} header"))
}

fn number(answer: &Answer, name: &str) -> u64 {
    header(answer, name).parse().unwrap_or_else(|_| panic!("{name} is not a count: {}", header(answer, name)))
}

/// The shape of Go's `Duration.String` as OpenAI sends it: `120ms`, `1.5s`, `6m0s`, `1h2m3.5s`.
fn is_go_duration(text: &str) -> bool {
    if let Some(ms) = text.strip_suffix("ms") {
        return !ms.is_empty() && ms.bytes().all(|b| b.is_ascii_digit());
    }
    let Some(mut rest) = text.strip_suffix('s') else { return false };
    for unit in ['h', 'm'] {
        if let Some((whole, tail)) = rest.split_once(unit) {
            if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
                return false;
            }
            rest = tail;
        }
    }
    let (whole, fraction) = rest.split_once('.').unwrap_or((rest, "0"));
    [whole, fraction].iter().all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
}

fn reset(answer: &Answer, name: &str) -> Duration {
    let text = header(answer, name);
    assert!(is_go_duration(text), "{name}: {text:?} is not a Go duration");
    parse_go_duration(text).expect("agentry reads it")
}

#[test]
fn the_go_duration_shape_check_tells_good_from_bad() {
    for good in ["0s", "120ms", "1.5s", "6m0s", "1h2m3.5s", "7h59m59.999s"] {
        assert!(is_go_duration(good), "{good}");
    }
    for bad in ["", "1.5", "s", "ms", "1.s", "6m", "1h2m3.5", "-1s", "1 s", "1.5ms"] {
        assert!(!is_go_duration(bad), "{bad}");
    }
}

#[tokio::test]
async fn every_answer_says_the_limits_and_a_refusal_is_openais_429_without_retry_after() {
    // 3 requests and 10000 tokens a day: nothing refills while the test reads the levels.
    let server = server(RateLimits::per_minute(3, 10_000).per(DAY)).await;
    let client = reqwest::Client::new();
    let cost = cost(&body(300));
    for sent in 1..=3 {
        let answer = post(&client, &server, &body(300)).await;
        assert_eq!(answer.status, 200);
        for name in RATE_LIMIT_HEADERS {
            assert!(answer.headers.contains_key(name), "request {sent}: no {name}");
        }
        assert_eq!(number(&answer, "x-ratelimit-limit-requests"), 3);
        assert_eq!(number(&answer, "x-ratelimit-limit-tokens"), 10_000);
        assert_eq!(number(&answer, "x-ratelimit-remaining-requests"), 3 - sent);
        assert_eq!(number(&answer, "x-ratelimit-remaining-tokens"), 10_000 - sent * cost);
        // The time until the bucket is whole again: `sent` requests at one per 8 hours.
        let requests_reset = reset(&answer, "x-ratelimit-reset-requests");
        let expected = DAY / 3 * sent as u32;
        assert!(
            requests_reset <= expected && requests_reset > expected - Duration::from_secs(60),
            "{requests_reset:?}"
        );
        let tokens_reset = reset(&answer, "x-ratelimit-reset-tokens");
        let expected = DAY.mul_f64((sent * cost) as f64 / 10_000.0);
        assert!(tokens_reset <= expected + Duration::from_millis(1), "{tokens_reset:?} for {expected:?}");
        assert!(tokens_reset > expected.saturating_sub(Duration::from_secs(60)), "{tokens_reset:?} for {expected:?}");
    }

    let refused = post(&client, &server, &body(300)).await;
    assert_eq!(refused.status, 429);
    for name in RATE_LIMIT_HEADERS {
        assert!(refused.headers.contains_key(name), "the 429 has no {name}");
    }
    assert_eq!(number(&refused, "x-ratelimit-remaining-requests"), 0);
    assert_eq!(number(&refused, "x-ratelimit-remaining-tokens"), 10_000 - 3 * cost, "a refusal charges nothing");
    assert!(!refused.headers.contains_key("retry-after") && !refused.headers.contains_key("retry-after-ms"));
    let error = &refused.body["error"];
    assert_eq!(
        (&error["type"], &error["code"], &error["param"]),
        (&json!("requests"), &json!("rate_limit_exceeded"), &Value::Null)
    );
    let message = error["message"].as_str().expect("a message");
    assert!(
        message.starts_with(
            "Rate limit reached for gpt-test in organization org-demo on requests per min (RPM): Limit 3, Used 3, \
             Requested 1. Please try again in "
        ) && message.ends_with(". Visit https://platform.openai.com/account/rate-limits to learn more."),
        "{message}"
    );
    let hint = retry_delay(&refused.headers, &refused.raw).expect("the message says how long");
    assert!(hint <= DAY / 3 && hint > DAY / 3 - Duration::from_secs(60), "{hint:?}");

    let headers = RateLimitHeaders::from_headers(&refused.headers);
    assert_eq!((headers.limit_requests, headers.remaining_requests), (Some(3), Some(0)));
    assert_eq!(
        server.rate_limit_counts(),
        RateLimitCounts { accepted: 3, refused_requests: 1, refused_tokens: 0, tokens_charged: 3 * cost }
    );
    assert_eq!(
        server.requests().iter().map(|r| r.status).collect::<Vec<_>>(),
        [Some(200), Some(200), Some(200), Some(429)]
    );
    server.shutdown().await;
}

#[tokio::test]
async fn the_token_limit_charges_prompt_characters_over_four_plus_max_tokens_as_agentry_estimates() {
    let server = server(RateLimits::per_minute(0, 3000).per(DAY)).await;
    let client = reqwest::Client::new();
    // A request as agentry's client sends it: the peer charges what agentry's limiter estimates.
    let messages = [
        Message::System { content: "You are a careful researcher.".into() },
        Message::User { content: "Define entropy, «briefly»".into() },
    ];
    let tools = [ToolDefinition::function("search", "Search", json!({"type": "object"}))];
    let request =
        ChatRequest { model: "gpt-test", messages: &messages, tools: &tools, temperature: 0.1, max_tokens: 1000 };
    let sent = serde_json::to_value(&request).expect("serializable");
    let estimate = estimate_tokens(&request);
    assert_eq!(estimate, cost(&sent));

    let first = post(&client, &server, &sent).await;
    assert_eq!(first.status, 200);
    assert_eq!(number(&first, "x-ratelimit-remaining-tokens"), 3000 - estimate);
    assert!(!first.headers.contains_key("x-ratelimit-limit-requests"), "no request limit, no request headers");
    let second = post(&client, &server, &sent).await;
    assert_eq!(second.status, 200);

    let refused = post(&client, &server, &sent).await;
    assert_eq!(refused.status, 429);
    let error = &refused.body["error"];
    assert_eq!((&error["type"], &error["code"]), (&json!("tokens"), &json!("rate_limit_exceeded")));
    let message = error["message"].as_str().expect("a message");
    let used = 2 * estimate;
    assert!(
        message.contains(&format!(
            "on tokens per min (TPM): Limit 3000, Used {used}, Requested {estimate}. Please try again in "
        )),
        "{message}"
    );
    assert!(retry_delay(&refused.headers, &refused.raw).is_some(), "{message}");

    let too_large = post(&client, &server, &body(5000)).await;
    assert_eq!(too_large.status, 429);
    let message = too_large.body["error"]["message"].as_str().expect("a message");
    assert!(
        message.starts_with(
            "Request too large for gpt-test in organization org-demo on tokens per min (TPM): Limit 3000, Requested "
        ),
        "{message}"
    );
    assert_eq!(retry_delay(&too_large.headers, &too_large.raw), None, "no wait cures it");
    assert_eq!(
        server.rate_limit_counts(),
        RateLimitCounts { accepted: 2, refused_requests: 0, refused_tokens: 2, tokens_charged: 2 * estimate }
    );
    server.shutdown().await;
}

#[tokio::test]
async fn the_buckets_refill_continuously() {
    // 2 requests per 2 s: one comes back every second.
    let server = server(RateLimits::per_minute(2, 0).per(Duration::from_secs(2))).await;
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut accepted: u32 = 0;
    let mut hint = None;
    for _ in 0..20 {
        let answer = post(&client, &server, &body(10)).await;
        match answer.status {
            200 => accepted += 1,
            429 => hint = retry_delay(&answer.headers, &answer.raw),
            other => panic!("unexpected HTTP {other}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // No more than the bucket plus what refilled while the requests came (the elapsed time
    // measured here encloses the server's).
    assert!(f64::from(accepted) <= 2.0 + elapsed + 1e-9, "{accepted} accepted in {elapsed:.3}s");
    let hint = hint.expect("20 requests at once are more than 2 per 2 s");

    // The wait the 429 named, and one more goes through.
    tokio::time::sleep(hint).await;
    assert_eq!(post(&client, &server, &body(10)).await.status, 200);
    let counts = server.rate_limit_counts();
    assert_eq!((counts.accepted, counts.refused()), (u64::from(accepted) + 1, 20 - u64::from(accepted)));
    server.shutdown().await;
}

#[tokio::test]
async fn hidden_limits_are_enforced_without_headers() {
    let server = server(RateLimits::per_minute(1, 100_000).per(DAY).without_headers()).await;
    let client = reqwest::Client::new();
    let accepted = post(&client, &server, &body(10)).await;
    let refused = post(&client, &server, &body(10)).await;
    assert_eq!((accepted.status, refused.status), (200, 429));
    for answer in [&accepted, &refused] {
        let said: Vec<_> = answer.headers.keys().filter(|name| name.as_str().starts_with("x-ratelimit")).collect();
        assert!(said.is_empty(), "HTTP {}: {said:?}", answer.status);
        assert!(RateLimitHeaders::from_headers(&answer.headers).is_empty());
    }
    assert!(!refused.headers.contains_key("retry-after"));
    assert_eq!(refused.body["error"]["code"], "rate_limit_exceeded");
    assert!(retry_delay(&refused.headers, &refused.raw).is_some(), "the message still hints");
    server.shutdown().await;
}

#[tokio::test]
async fn limits_sit_in_front_of_any_behaviour_and_a_refusal_uses_up_no_scripted_reply() {
    let queue = Arc::new(Queue::new([Reply::text("first"), Reply::text("second")]));
    let server = ModelServer::start(queue.clone())
        .await
        .expect("server starts")
        .with_rate_limits(RateLimits::per_minute(1, 0).per(DAY));
    let client = reqwest::Client::new();
    let first = post(&client, &server, &body(10)).await;
    assert_eq!(first.body["choices"][0]["message"]["content"], "first");
    assert_eq!(post(&client, &server, &body(10)).await.status, 429);
    assert_eq!(queue.remaining(), 1, "the 429 came from the limits, not the script");

    // Reset between benchmark runs: the buckets are full again and the counts start over.
    server.reset();
    assert_eq!(server.rate_limit_counts(), RateLimitCounts::default());
    let second = post(&client, &server, &body(10)).await;
    assert_eq!(second.body["choices"][0]["message"]["content"], "second");
    assert_eq!(number(&second, "x-ratelimit-remaining-requests"), 0);

    server.set_rate_limits(None);
    assert_eq!(post(&client, &server, &body(10)).await.status, 500, "the script is used up; no limits any more");
    server.shutdown().await;
}

/// Drives `requests` requests through `limiter` against `server` from `concurrency` tasks, as
/// agentry's client is to: admit, send, observe the headers, then settle, or on a 429 back off
/// and go again. Returns the answers and the 429s.
async fn paced(server: &ModelServer, limiter: &Limiter, requests: usize, concurrency: usize) -> (usize, usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let url = format!("{}/chat/completions", server.base_url());
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (limiter, next, url) = (limiter.clone(), next.clone(), url.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let (mut answered, mut refused) = (0, 0);
                while next.fetch_add(1, Ordering::SeqCst) < requests {
                    let sent = body(1000);
                    loop {
                        let deadline = Deadline::after(Duration::from_secs(120));
                        let permit = limiter.admit(cost(&sent), &deadline).await.expect("admitted in time");
                        let response = client.post(&url).json(&sent).send().await.expect("sent");
                        let (status, headers) = (response.status().as_u16(), response.headers().clone());
                        let raw = response.bytes().await.expect("a body");
                        permit.observe(&RateLimitHeaders::from_headers(&headers));
                        if status != 429 {
                            assert_eq!(status, 200);
                            let answer: Value = serde_json::from_slice(&raw).expect("JSON");
                            permit.settle(answer["usage"]["total_tokens"].as_u64().expect("usage"));
                            answered += 1;
                            break;
                        }
                        refused += 1;
                        permit.rate_limited(retry_delay(&headers, &raw));
                    }
                }
                (answered, refused)
            })
        })
        .collect();
    let mut totals = (0, 0);
    for task in tasks {
        let (answered, refused) = task.await.expect("task");
        totals = (totals.0 + answered, totals.1 + refused);
    }
    totals
}

#[tokio::test]
async fn agentrys_limiter_paced_by_the_peers_headers_gets_no_429() {
    // 20000 tokens per 2 s; 40 requests of 1065 tokens from 16 tasks: twice the bucket. The
    // first 16 go before any limit is known (17040 tokens: they fit); from the first answer on
    // the limiter knows the limits and never lets more through than the peer has.
    let peer = server(RateLimits::per_minute(1000, 20_000).per(Duration::from_secs(2))).await;
    let limiter = Limiter::new(LimitConfig::default(), 16);
    assert_eq!(paced(&peer, &limiter, 40, 16).await, (40, 0));
    let counts = peer.rate_limit_counts();
    assert_eq!((counts.accepted, counts.refused()), (40, 0));
    let snapshot = limiter.snapshot();
    assert_eq!((snapshot.tokens_per_window, snapshot.limits_from_headers), (Some(20_000), true));
    peer.shutdown().await;
}

#[tokio::test]
async fn agentrys_limiter_without_headers_lowers_its_in_flight_cap_and_every_request_is_answered() {
    // 10000 tokens per 2 s, unsaid: the first 16 requests (17040 tokens, sent together) cannot
    // all fit, so 429s come, and the in-flight cap comes down.
    let peer = server(RateLimits::per_minute(1000, 10_000).per(Duration::from_secs(2)).without_headers()).await;
    let limiter = Limiter::new(LimitConfig::default(), 16);
    let (answered, refused) = paced(&peer, &limiter, 24, 16).await;
    assert_eq!(answered, 24);
    assert!(refused > 0);
    assert!(limiter.snapshot().in_flight_limit < 16, "{:?}", limiter.snapshot());
    assert_eq!(peer.rate_limit_counts().refused() as usize, refused);
    peer.shutdown().await;
}
