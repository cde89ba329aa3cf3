//! [`Limiter`]: admits a route's requests in arrival order when its budgets allow them.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::bucket::{Bucket as TokenBucket, Reading, Since};
use super::{LimitConfig, RateLimitHeaders};
use crate::deadline::Deadline;

#[cfg(test)]
mod tests;

/// The default window of a configured limit: providers count per minute.
const MINUTE: Duration = Duration::from_secs(60);

/// What held a request back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Bucket {
    /// The requests-per-minute budget.
    Requests,
    /// The tokens-per-minute budget.
    Tokens,
    /// The cap on requests in flight (adaptive while the limits are unknown).
    InFlight,
    /// The pause after a 429, for as long as the provider asked.
    BackOff,
}

impl Bucket {
    /// The telemetry label: `requests`, `tokens`, `in_flight`, `back_off`.
    pub fn as_str(self) -> &'static str {
        match self {
            Bucket::Requests => "requests",
            Bucket::Tokens => "tokens",
            Bucket::InFlight => "in_flight",
            Bucket::BackOff => "back_off",
        }
    }
}

impl fmt::Display for Bucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Bucket::Requests => "requests-per-minute",
            Bucket::Tokens => "tokens-per-minute",
            Bucket::InFlight => "requests-in-flight",
            Bucket::BackOff => "after-429",
        })
    }
}

/// How long a request waited before it was admitted, and on what (for the `rate_limit.wait`
/// span event and the wait histogram).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait {
    /// What held it last: its own wait at the head of the line, or what the requests ahead of
    /// it were waiting for.
    pub bucket: Bucket,
    /// From the call to [`Limiter::admit`] to the admission.
    pub waited: Duration,
}

/// Why a request was not admitted. Nothing was charged for it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WaitError {
    /// The budget would allow the request only after the question's deadline.
    #[error(
        "the {bucket} limit would let this request through in {}, but the question's deadline is {} away",
        seconds(*needed),
        seconds(*left)
    )]
    PastDeadline {
        /// The budget that was short.
        bucket: Bucket,
        /// How long it would have taken.
        needed: Duration,
        /// What was left of the deadline.
        left: Duration,
    },
    /// The deadline came while the request waited for a slot with no known end (in flight).
    #[error("the question's deadline came after {} waiting for the {bucket} limit", seconds(*waited))]
    OutOfTime {
        /// What it was waiting for.
        bucket: Bucket,
        /// How long it waited.
        waited: Duration,
    },
    /// The question ended (an answer, a shutdown) while the request waited.
    #[error("cancelled after {} waiting for the {bucket} limit", seconds(*waited))]
    Cancelled {
        /// What it was waiting for.
        bucket: Bucket,
        /// How long it waited.
        waited: Duration,
    },
}

/// `now + wait`, or a century on for a wait too long to add (a provider's absurd `Retry-After`).
pub(super) fn later(now: Instant, wait: Duration) -> Instant {
    now.checked_add(wait).unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

fn seconds(duration: Duration) -> String {
    format!("{:.1}s", duration.as_secs_f64())
}

/// The pacing of one route (cloud or local). Cheap to clone; clones share the budgets.
///
/// See the [module documentation](super) for the model and its timeline.
#[derive(Clone)]
pub struct Limiter {
    inner: Arc<Inner>,
    /// The route it paces, for metrics (`agentry.route`).
    route: &'static str,
}

struct Inner {
    /// The line: tokio's mutex hands itself out first come, first served, so whoever holds it
    /// is the head of the line, the only waiter that looks at the clock.
    line: tokio::sync::Mutex<()>,
    state: Mutex<State>,
    /// Wakes the head when something it waits for may have changed (a slot freed, headers,
    /// a refund, a back-off).
    changed: Notify,
}

struct State {
    requests: Option<TokenBucket>,
    tokens: Option<TokenBucket>,
    window: Duration,
    /// No admission before this (a 429's back-off).
    paused_until: Option<Instant>,
    in_flight: usize,
    max_in_flight: usize,
    adaptive: Adaptive,
    /// Requests and tokens admitted so far, `[requests, tokens]`, counted even while a limit is
    /// unknown: a response's `remaining` is aged by what was admitted after its request.
    admitted: [f64; 2],
    /// Requests in [`Limiter::admit`] (waiting in line or at its head).
    waiting: usize,
    /// What the head waited for last (reported by those behind it).
    last_held_by: Bucket,
    /// Whether the head is waiting now.
    /// What the head waits for now, and until when if that is known.
    head_waiting: Option<(Bucket, Option<Instant>)>,
    /// False until the first request has come back, for a limiter that probes first.
    probed: bool,
}

/// Additive increase, multiplicative decrease of the in-flight cap, for a provider whose
/// limits are unknown.
struct Adaptive {
    limit: usize,
    /// Successes since the limit last changed.
    successes: usize,
    /// Bumped at each decrease: a 429 for a request sent before it does not decrease again.
    generation: u64,
}

/// The limiter's state at one instant (for the progress line and the gauges).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Snapshot {
    /// Requests admitted and not yet settled or dropped.
    pub in_flight: usize,
    /// The cap on them now: the maximum when the limits are known, else the adaptive limit.
    pub in_flight_limit: usize,
    /// Requests waiting to be admitted.
    pub waiting: usize,
    /// What the head of the line is waiting for, if it is.
    pub paced_by: Option<Bucket>,
    /// How much longer the head of the line expects to wait, when that is known (not for a
    /// slot in flight): with `paced_by`, the progress line's `paced: tokens, 1.2s`.
    pub paced_for: Option<Duration>,
    /// The requests-per-window limit in force, if known.
    pub requests_per_window: Option<u64>,
    /// The tokens-per-window limit in force, if known.
    pub tokens_per_window: Option<u64>,
    /// Whether those limits came from the provider's headers (else from the configuration).
    pub limits_from_headers: bool,
}

impl fmt::Debug for Limiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Limiter").field(&self.snapshot()).finish()
    }
}

impl Limiter {
    /// A limiter with the configured limits (0: unknown until headers say) and at most
    /// `max_in_flight` requests in flight (the batch's concurrency).
    pub fn new(config: LimitConfig, max_in_flight: usize) -> Self {
        let now = Instant::now();
        let max_in_flight = max_in_flight.max(1);
        let state = State {
            requests: TokenBucket::configured(config.requests_per_minute, MINUTE, now),
            tokens: TokenBucket::configured(config.tokens_per_minute, MINUTE, now),
            window: MINUTE,
            paused_until: None,
            in_flight: 0,
            admitted: [0.0; 2],
            max_in_flight,
            adaptive: Adaptive { limit: max_in_flight, successes: 0, generation: 0 },
            waiting: 0,
            last_held_by: Bucket::InFlight,
            head_waiting: None,
            probed: true,
        };
        Self {
            inner: Arc::new(Inner {
                line: tokio::sync::Mutex::new(()),
                state: Mutex::new(state),
                changed: Notify::new(),
            }),
            route: "",
        }
    }

    /// Names the route it paces (`cloud`, `local`), for metrics.
    pub fn for_route(mut self, route: &'static str) -> Self {
        self.route = route;
        self
    }

    /// The route it paces.
    pub fn route(&self) -> &'static str {
        self.route
    }

    /// Sends one request alone first while the limits are unknown, and the rest once it has
    /// come back: a provider that reports its limits in headers (OpenAI) then paces the batch
    /// from its first burst, instead of refusing the part of it beyond its bucket. For a route
    /// whose first answer is quick (the cloud); a slow local model would hold the batch back.
    pub fn probe_first(self) -> Self {
        self.inner.lock().probed = false;
        self
    }

    /// Counts the configured limits per `window` instead of per minute (a test peer with a
    /// short window). Limits learned from headers take their refill rate from the headers'
    /// reset when they can, whatever the window.
    pub fn with_window(self, window: Duration) -> Self {
        if !window.is_zero() {
            let now = Instant::now();
            let mut state = self.inner.lock();
            let state = &mut *state;
            state.window = window;
            for bucket in [&mut state.requests, &mut state.tokens].into_iter().flatten() {
                bucket.set_window(window, now);
            }
        }
        self
    }

    /// Waits until the request may be sent: first come, first served, until both budgets hold
    /// one request and `estimated_tokens`, no back-off is running and a slot in flight is free;
    /// then charges it. Gives up at once, charging nothing, when the wait would end past
    /// `deadline`; or when the deadline comes while waiting for a slot, or is cancelled.
    ///
    /// Cancel-safe: a dropped call leaves the line and charges nothing.
    pub async fn admit(&self, estimated_tokens: u64, deadline: &Deadline) -> Result<Permit, WaitError> {
        let arrived = Instant::now();
        let mut waiting = Waiting::enter(&self.inner);
        // Whether it had to wait behind others (then it reports a wait, however short).
        let queued;
        // Held until this call returns: the line moves on only then.
        let _head = match self.inner.line.try_lock() {
            Ok(head) => {
                queued = false;
                head
            }
            Err(_) => {
                queued = true;
                tokio::select! {
                    biased;
                    () = deadline.cancelled() => {
                        let bucket = self.inner.lock().last_held_by;
                        return Err(WaitError::Cancelled { bucket, waited: arrived.elapsed() });
                    }
                    head = self.inner.line.lock() => head,
                }
            }
        };
        waiting.at_head = true;
        let mut held_by = None;
        loop {
            let now = Instant::now();
            if deadline.is_cancelled() {
                let bucket = held_by.unwrap_or(self.inner.lock().last_held_by);
                return Err(WaitError::Cancelled { bucket, waited: now - arrived });
            }
            let (bucket, until) = {
                let mut state = self.inner.lock();
                match state.verdict(estimated_tokens as f64, now) {
                    Verdict::Admit => {
                        let bucket = held_by.unwrap_or(state.last_held_by);
                        let waited = now.saturating_duration_since(arrived);
                        let wait = (queued || held_by.is_some()).then_some(Wait { bucket, waited });
                        return Ok(state.admit(&self.inner, estimated_tokens, now, wait));
                    }
                    Verdict::Wait { bucket, until } => {
                        state.last_held_by = bucket;
                        state.head_waiting = Some((bucket, until));
                        held_by = Some(bucket);
                        (bucket, until)
                    }
                }
            };
            let ends = deadline.at();
            if let Some(until) = until
                && until > ends
            {
                return Err(WaitError::PastDeadline { bucket, needed: until - now, left: deadline.left() });
            }
            tokio::select! {
                biased;
                () = deadline.cancelled() => return Err(WaitError::Cancelled { bucket, waited: Instant::now() - arrived }),
                () = self.inner.changed.notified() => {}
                () = tokio::time::sleep_until(until.unwrap_or(ends)) => {
                    if until.is_none() {
                        return Err(WaitError::OutOfTime { bucket, waited: Instant::now() - arrived });
                    }
                }
            }
        }
    }

    /// Admits no request for `pause` from now (after a 429: the provider's `Retry-After`, or
    /// the hint in its message). A longer pause already running stays.
    pub fn back_off(&self, pause: Duration) {
        let until = later(Instant::now(), pause);
        let mut state = self.inner.lock();
        state.paused_until = Some(state.paused_until.map_or(until, |running| running.max(until)));
        drop(state);
        self.inner.changed.notify_one();
    }

    /// The state now.
    pub fn snapshot(&self) -> Snapshot {
        let state = self.inner.lock();
        let limit = |bucket: &Option<TokenBucket>| bucket.as_ref().map(TokenBucket::capacity);
        Snapshot {
            in_flight: state.in_flight,
            in_flight_limit: state.in_flight_limit(),
            waiting: state.waiting,
            paced_by: state.head_waiting.map(|(bucket, _)| bucket),
            paced_for: state
                .head_waiting
                .and_then(|(_, until)| until)
                .map(|until| until.saturating_duration_since(Instant::now())),
            requests_per_window: limit(&state.requests),
            tokens_per_window: limit(&state.tokens),
            limits_from_headers: [&state.requests, &state.tokens]
                .into_iter()
                .flatten()
                .any(TokenBucket::is_from_headers),
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update leaves the state whole between statements: a panic elsewhere cannot
        // leave it half-changed.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What the head of the line does now.
#[derive(Clone, Copy)]
enum Verdict {
    Admit,
    /// Wait on `bucket` until `until` (`None`: until a slot frees, time unknown).
    Wait {
        bucket: Bucket,
        until: Option<Instant>,
    },
}

impl State {
    fn limits_known(&self) -> bool {
        self.requests.is_some() || self.tokens.is_some()
    }

    fn in_flight_limit(&self) -> usize {
        match (self.limits_known(), self.probed) {
            (true, _) => self.max_in_flight,
            (false, false) => 1,
            (false, true) => self.adaptive.limit,
        }
    }

    /// The latest of the known waits wins; a full set of slots is waited for only when no
    /// known wait is longer (it may end any time).
    fn verdict(&mut self, tokens: f64, now: Instant) -> Verdict {
        let mut latest: Option<(Bucket, Instant)> = None;
        let mut consider = |bucket, until: Instant| {
            if until > now && latest.is_none_or(|(_, latest)| until > latest) {
                latest = Some((bucket, until));
            }
        };
        if let Some(until) = self.paused_until {
            consider(Bucket::BackOff, until);
        }
        if let Some(requests) = &mut self.requests {
            consider(Bucket::Requests, requests.ready_at(1.0, now));
        }
        if let Some(budget) = &mut self.tokens {
            consider(Bucket::Tokens, budget.ready_at(tokens, now));
        }
        match latest {
            Some((bucket, until)) => Verdict::Wait { bucket, until: Some(until) },
            None if self.in_flight >= self.in_flight_limit() => Verdict::Wait { bucket: Bucket::InFlight, until: None },
            None => Verdict::Admit,
        }
    }

    fn admit(&mut self, inner: &Arc<Inner>, tokens: u64, now: Instant, wait: Option<Wait>) -> Permit {
        let costs = [1.0, tokens as f64];
        for (bucket, cost) in [&mut self.requests, &mut self.tokens].into_iter().zip(costs) {
            if let Some(bucket) = bucket {
                bucket.charge(cost, now);
            }
        }
        self.admitted = [self.admitted[0] + costs[0], self.admitted[1] + costs[1]];
        self.in_flight += 1;
        Permit {
            inner: Arc::clone(inner),
            tokens,
            sent: now,
            admitted: self.admitted,
            generation: self.adaptive.generation,
            wait,
        }
    }
}

/// Counts a caller of [`Limiter::admit`] as waiting until it returns or is dropped.
struct Waiting<'a> {
    inner: &'a Inner,
    /// It holds the line: what the head waits for is its to clear.
    at_head: bool,
}

impl<'a> Waiting<'a> {
    fn enter(inner: &'a Inner) -> Self {
        inner.lock().waiting += 1;
        Waiting { inner, at_head: false }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut state = self.inner.lock();
        state.waiting -= 1;
        if self.at_head {
            state.head_waiting = None;
        }
    }
}

/// One admitted request: its slot in flight and its charge. Tell it what came back
/// ([`observe`](Self::observe) the headers of every response, then [`settle`](Self::settle)
/// a success or [`rate_limited`](Self::rate_limited) a 429); dropping it otherwise (an error,
/// a timeout) frees the slot and keeps the charge, as the provider may have counted it.
pub struct Permit {
    inner: Arc<Inner>,
    tokens: u64,
    sent: Instant,
    /// The limiter's `admitted` just after it was.
    admitted: [f64; 2],
    generation: u64,
    wait: Option<Wait>,
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit").field("tokens", &self.tokens).field("wait", &self.wait).finish_non_exhaustive()
    }
}

impl Permit {
    /// The tokens charged for it (the estimate it was admitted with).
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// How long it waited and on what; `None` when it was admitted at once.
    pub fn waited(&self) -> Option<Wait> {
        self.wait
    }

    /// Applies the provider's `x-ratelimit-*` headers of this request's response (success or
    /// error; call it before [`settle`](Self::settle) or [`rate_limited`](Self::rate_limited)):
    /// their limits replace the configured ones, their reset gives the refill rate, and their
    /// `remaining` counts, aged from when this request was sent, lower the budgets' levels
    /// (or set them, for a limit just learned). See the [module documentation](super).
    pub fn observe(&self, headers: &RateLimitHeaders) {
        if headers.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut state = self.inner.lock();
        let window = state.window;
        let since = |kind: usize| Since { sent: self.sent, charged: state.admitted[kind] - self.admitted[kind] };
        let (requests, tokens) = (since(0), since(1));
        let reading = Reading {
            limit: headers.limit_requests,
            remaining: headers.remaining_requests,
            reset: headers.reset_requests,
        };
        TokenBucket::observe(&mut state.requests, reading, requests, window, now);
        let reading =
            Reading { limit: headers.limit_tokens, remaining: headers.remaining_tokens, reset: headers.reset_tokens };
        TokenBucket::observe(&mut state.tokens, reading, tokens, window, now);
        drop(state);
        self.inner.changed.notify_one();
    }

    /// A success: corrects the token charge to `actual_tokens` (the response's prompt plus
    /// completion tokens), refunding or charging the difference, unless the provider's
    /// headers keep the budget (they say what it counted). While the limits are unknown, a
    /// success counts towards raising the in-flight cap.
    pub fn settle(self, actual_tokens: u64) {
        let now = Instant::now();
        let mut state = self.inner.lock();
        if let Some(tokens) = &mut state.tokens {
            tokens.correct(self.tokens as f64 - actual_tokens as f64, now);
        }
        if !state.limits_known() {
            let max = state.max_in_flight;
            let adaptive = &mut state.adaptive;
            adaptive.successes += 1;
            if adaptive.successes >= adaptive.limit && adaptive.limit < max {
                adaptive.limit += 1;
                adaptive.successes = 0;
            }
        }
        drop(state);
        self.inner.changed.notify_one();
    }

    /// A 429: the provider did not count the request, so its charge is refunded (unless the
    /// headers keep the budgets); while the limits are unknown the in-flight cap halves (once
    /// for all the requests sent before the decrease); and with `retry_after` (the provider's
    /// `Retry-After` or message hint) nobody is admitted until then.
    pub fn rate_limited(self, retry_after: Option<Duration>) {
        let now = Instant::now();
        let mut state = self.inner.lock();
        if let Some(requests) = &mut state.requests {
            requests.correct(1.0, now);
        }
        if let Some(tokens) = &mut state.tokens {
            tokens.correct(self.tokens as f64, now);
        }
        if !state.limits_known() && self.generation == state.adaptive.generation {
            let adaptive = &mut state.adaptive;
            adaptive.limit = (adaptive.limit / 2).max(1);
            adaptive.successes = 0;
            adaptive.generation += 1;
        }
        drop(state);
        match retry_after {
            Some(pause) => Limiter { inner: Arc::clone(&self.inner), route: "" }.back_off(pause),
            None => self.inner.changed.notify_one(),
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut state = self.inner.lock();
        state.in_flight -= 1;
        state.probed = true;
        drop(state);
        self.inner.changed.notify_one();
    }
}
