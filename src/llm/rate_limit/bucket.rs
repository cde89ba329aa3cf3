//! One continuous-refill token bucket: the shape of OpenAI's per-minute limits.
//!
//! A bucket holds up to `capacity` units (the limit per window) and refills at
//! `capacity / window` per second, continuously; a request takes its cost out of it. Its level
//! may go below zero: a request larger than the whole bucket is let through once the bucket is
//! full (the provider then decides), and the debt delays the next ones.

use std::time::Duration;

use tokio::time::Instant;

/// Units of slack for floating-point rounding: a level within this of the need is enough.
const SLACK: f64 = 1e-6;

/// The shortest reset from which a refill rate is read off the headers: below it, the
/// millisecond rounding of the reset would make the rate noisy.
const SHORTEST_RESET_FOR_RATE: Duration = Duration::from_millis(100);

/// What one response said about one bucket (`x-ratelimit-{limit,remaining,reset}-*`).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Reading {
    pub(super) limit: Option<u64>,
    pub(super) remaining: Option<u64>,
    pub(super) reset: Option<Duration>,
}

/// When a request was sent, as a bucket saw it: for reading the provider's `remaining`, which
/// was true when the request arrived, not when its answer came back.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sent {
    pub(super) at: Instant,
    /// The bucket's running total of charges just after this request was charged.
    pub(super) charged: f64,
}

#[derive(Debug, Clone)]
pub(super) struct Bucket {
    capacity: f64,
    /// Units per second.
    rate: f64,
    level: f64,
    /// When `level` was last brought up to date.
    at: Instant,
    /// Every charge ever made (less refunds), so that a late `remaining` can be aged.
    charged: f64,
    /// The capacity came from the provider's headers (it is the whole account's: never sharded).
    from_headers: bool,
    /// The rate was read off the headers' reset (the provider's window need not be a minute).
    rate_from_headers: bool,
    /// The level follows the provider's `remaining`: local corrections (usage, refusals) give way.
    synced: bool,
}

impl Bucket {
    /// A full bucket of `per_window` units refilled over `window`; `None` for 0 (unknown).
    pub(super) fn configured(per_window: u64, window: Duration, now: Instant) -> Option<Self> {
        (per_window > 0 && !window.is_zero()).then(|| {
            let capacity = per_window as f64;
            Self {
                capacity,
                rate: capacity / window.as_secs_f64(),
                level: capacity,
                at: now,
                charged: 0.0,
                from_headers: false,
                rate_from_headers: false,
                synced: false,
            }
        })
    }

    pub(super) fn capacity(&self) -> u64 {
        self.capacity as u64
    }

    pub(super) fn is_from_headers(&self) -> bool {
        self.from_headers
    }

    /// A new window for a configured bucket (its capacity stays).
    pub(super) fn set_window(&mut self, window: Duration, now: Instant) {
        if !self.rate_from_headers && !window.is_zero() {
            self.refill(now);
            self.rate = self.capacity / window.as_secs_f64();
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.level = (self.level + elapsed * self.rate).min(self.capacity);
        self.at = self.at.max(now);
    }

    /// When the bucket will hold `cost` (or, for a cost beyond the capacity, be full): `now`
    /// if it already does.
    pub(super) fn ready_at(&mut self, cost: f64, now: Instant) -> Instant {
        self.refill(now);
        let need = cost.min(self.capacity);
        if self.level + SLACK >= need {
            return now;
        }
        let seconds = (need - self.level) / self.rate;
        // A rate too small to say when (a 1-per-century limit) is as good as never.
        super::limiter::later(now, Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX))
    }

    /// Takes `cost` out; returns the running total for [`Sent::charged`].
    pub(super) fn charge(&mut self, cost: f64, now: Instant) -> f64 {
        self.refill(now);
        self.level -= cost;
        self.charged += cost;
        self.charged
    }

    /// Gives `amount` back (or, negative, takes more), unless the provider's `remaining` is
    /// followed: what it reports next already says whether it refunded.
    pub(super) fn correct(&mut self, amount: f64, now: Instant) {
        if self.synced {
            return;
        }
        self.refill(now);
        self.level = (self.level + amount).min(self.capacity);
        self.charged -= amount;
    }

    /// Applies what a response said. The limit replaces the capacity; the rate is read off
    /// the reset when it can be (`(limit - remaining) / reset`, the bucket's own refill),
    /// else it is the limit per `window`; `remaining` sets the level, aged from when the
    /// request was sent: refilled since then, less what was charged since.
    pub(super) fn observe(slot: &mut Option<Bucket>, reading: Reading, sent: Sent, window: Duration, now: Instant) {
        if reading.limit == Some(0) {
            return;
        }
        if slot.is_none() {
            // A bucket first heard of in headers starts full; `remaining` below sets its level.
            *slot = reading.limit.and_then(|limit| Bucket::configured(limit, window, now));
        }
        let Some(bucket) = slot.as_mut() else {
            return;
        };
        bucket.refill(now);
        if let Some(limit) = reading.limit {
            bucket.capacity = limit as f64;
            bucket.from_headers = true;
            if !bucket.rate_from_headers {
                bucket.rate = bucket.capacity / window.as_secs_f64();
            }
        }
        if let (Some(limit), Some(remaining), Some(reset)) = (reading.limit, reading.remaining, reading.reset)
            && remaining < limit
            && reset >= SHORTEST_RESET_FOR_RATE
        {
            bucket.rate = (limit - remaining) as f64 / reset.as_secs_f64();
            bucket.rate_from_headers = true;
        }
        if let Some(remaining) = reading.remaining {
            let refilled = now.saturating_duration_since(sent.at).as_secs_f64() * bucket.rate;
            let charged_since = (bucket.charged - sent.charged).max(0.0);
            bucket.level = (remaining as f64 + refilled - charged_since).min(bucket.capacity);
            bucket.synced = true;
        }
        bucket.level = bucket.level.min(bucket.capacity);
    }
}
