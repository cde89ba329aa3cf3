//! Pacing a route to its provider's rate limits: read what the provider says, wait before
//! sending rather than after a 429.
//!
//! # The model
//! OpenAI (and servers that copy it) limits an account by requests per minute and tokens per
//! minute. Each limit behaves as a continuous-refill token bucket: it holds up to the limit,
//! refills at limit / 60 per second, and a request takes its cost out on arrival (one request;
//! its prompt characters / 4 plus `max_tokens` in tokens, see [`estimate_tokens`]). A request
//! the bucket cannot cover gets a 429. Every response says where the buckets stand
//! ([`RateLimitHeaders`]); a 429 also says how long to wait ([`retry_after`], [`retry_hint`]).
//!
//! A [`Limiter`] per route mirrors those buckets on the client side, charging a request when
//! it admits it (a little before the provider does, so it never counts on more than the
//! provider has). Its limits come from the configuration ([`LimitConfig`], divided between
//! shards by [`LimitConfig::shard`]) until headers say otherwise. Headers win: their limits
//! replace the configured ones (never divided: they are the whole account's), the refill rate
//! is read off their reset (`(limit - remaining) / reset`, so a window other than a minute is
//! learned too), and their `remaining` counts, aged from when the request was sent, lower the
//! levels when another client took some. While a bucket follows the headers, the response's
//! `usage` corrects nothing: the provider's next `remaining` says what it counted. Without
//! headers, [`Permit::settle`] refunds or charges the difference between estimate and usage.
//!
//! While no limit is known at all, it paces by concurrency instead: the cap on requests in
//! flight halves on a 429 and grows by one after as many successes as the cap (AIMD), between
//! 1 and the batch's concurrency. Once a limit is known, the cap is that maximum.
//!
//! # One request's way through
//! ```text
//! client                                   Limiter                                provider
//!   │ admit(estimate, deadline) ───────────► wait in line (FIFO); at the head:
//!   │                                        back-off over? requests ≥ 1? tokens ≥ estimate?
//!   │                                        a slot in flight free? ── then charge both
//!   │ ◄──────────────────────── Permit ────┘  (or WaitError: past the deadline, cancelled)
//!   │ POST /chat/completions ─────────────────────────────────────────────────────────►│
//!   │ ◄──────────────────────────────────────────── 200 + x-ratelimit-* + usage ───────│
//!   │ permit.observe(headers); permit.settle(usage.prompt + usage.completion)
//!   │   or, on a 429: permit.observe(headers); permit.rate_limited(retry_after)
//! ```
//!
//! # A timeline
//! Tokens per minute 6000 (100 per second), three requests of 3000 tokens at 0 s:
//! ```text
//! t=0s   A admitted (6000 → 3000), B admitted (3000 → 0)
//! t=0s   C at the head of the line: needs 3000, has 0: sleeps until 30 s (the one timer)
//! t=1s   D (100 tokens) arrives: waits behind C without a timer, though 100 are there
//! t=30s  C admitted (3000 → 0); D at the head: sleeps until 31 s
//! t=31s  D admitted. Each reports its wait and the bucket: `tokens`, 30 s and 30 s.
//! ```
//!
//! # Waiting is cheap, fair and bounded
//! The line is tokio's mutex, which hands itself out first come, first served: only its holder
//! (the head) looks at the clock, with one timer; everyone behind it waits in the mutex's queue
//! with none, so a large request at the head is never overtaken by small ones. The head gives
//! up at once, charging nothing, when the budgets would let it through only after the
//! question's [`Deadline`](crate::deadline::Deadline); it gives up when the deadline is
//! cancelled, and when the deadline comes while it waits for a slot in flight (a wait with no
//! known end). A request behind the head leaves when its question cancels it or drops the
//! call (the question's own timeout), and checks its deadline when it reaches the head.

mod bucket;
mod headers;
mod limiter;

pub use headers::{RateLimitHeaders, parse_go_duration, retry_after, retry_delay, retry_hint};
pub use limiter::{Bucket, Limiter, Permit, Snapshot, Wait, WaitError};

use super::wire::ChatRequest;

/// Configured limits of a route (`[model.cloud.rate_limit]`), for servers that send no
/// `x-ratelimit-*` headers. 0 means unknown; limits from headers win over these.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitConfig {
    /// Requests per minute (0: unknown).
    pub requests_per_minute: u64,
    /// Tokens per minute, input and output (0: unknown).
    pub tokens_per_minute: u64,
}

impl LimitConfig {
    /// This run's share when the batch is split in `shards` (`--shard i/n`): each limit divided
    /// by `shards`, rounded down, never below 1 (0 stays unknown). Limits learned from headers
    /// are not divided: the provider reports what the whole account has left.
    pub fn shard(self, shards: u32) -> Self {
        let share = |limit: u64| match limit {
            0 => 0,
            limit => (limit / u64::from(shards.max(1))).max(1),
        };
        Self { requests_per_minute: share(self.requests_per_minute), tokens_per_minute: share(self.tokens_per_minute) }
    }

    /// Whether neither limit is set.
    pub fn is_unknown(&self) -> bool {
        self.requests_per_minute == 0 && self.tokens_per_minute == 0
    }
}

/// What a request counts against the token limit, the way OpenAI counts it on arrival: its
/// prompt characters / 4 (over the JSON of its messages and tools, as sent) plus `max_tokens`.
pub fn estimate_tokens(request: &ChatRequest<'_>) -> u64 {
    let chars = |json: serde_json::Result<String>| json.map_or(0, |json| json.chars().count());
    let mut prompt_chars = chars(serde_json::to_string(request.messages));
    if !request.tools.is_empty() {
        prompt_chars += chars(serde_json::to_string(request.tools));
    }
    tokens_for(prompt_chars, u64::from(request.max_tokens))
}

/// `prompt_chars` / 4, rounded up, plus `max_tokens`.
pub fn tokens_for(prompt_chars: usize, max_tokens: u64) -> u64 {
    (prompt_chars as u64).div_ceil(4).saturating_add(max_tokens)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::wire::{Message, ToolDefinition};

    #[test]
    fn a_request_counts_its_prompt_characters_over_four_plus_max_tokens() {
        let messages = [
            Message::System { content: "Be brief.".into() },
            Message::User { content: "Define entropy, «briefly»".into() },
        ];
        let tools = [ToolDefinition::function("search", "", serde_json::json!({"type": "object"}))];
        let request = ChatRequest { model: "m", messages: &messages, tools: &tools, temperature: 0.1, max_tokens: 100 };
        let messages_json =
            r#"[{"role":"system","content":"Be brief."},{"role":"user","content":"Define entropy, «briefly»"}]"#;
        let tools_json = r#"[{"type":"function","function":{"name":"search","parameters":{"type":"object"}}}]"#;
        let chars = messages_json.chars().count() + tools_json.chars().count();
        assert_eq!(estimate_tokens(&request), chars.div_ceil(4) as u64 + 100);

        let no_tools = ChatRequest { tools: &[], ..request };
        assert_eq!(estimate_tokens(&no_tools), messages_json.chars().count().div_ceil(4) as u64 + 100);
        assert_eq!(tokens_for(0, 0), 0);
        assert_eq!(tokens_for(5, 10), 12, "characters round up to whole tokens");
    }

    #[test]
    fn a_shard_gets_its_share_of_configured_limits() {
        let config = LimitConfig { requests_per_minute: 500, tokens_per_minute: 30_000 };
        assert_eq!(config.shard(3), LimitConfig { requests_per_minute: 166, tokens_per_minute: 10_000 });
        assert_eq!(config.shard(1), config);
        assert_eq!(config.shard(0), config, "no shards means one");
        let tiny = LimitConfig { requests_per_minute: 2, tokens_per_minute: 0 };
        assert_eq!(
            tiny.shard(3),
            LimitConfig { requests_per_minute: 1, tokens_per_minute: 0 },
            "never 0 for a set limit"
        );
        assert!(LimitConfig::default().is_unknown() && LimitConfig::default().shard(4).is_unknown());
    }
}
