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

/// What happened since a request was sent, for reading the provider's `remaining`, which was
/// true when the request arrived, not when its answer came back.
#[derive(Debug, Clone, Copy)]
pub(super) struct Since {
    /// When it was sent.
    pub(super) sent: Instant,
    /// What was charged for the requests admitted after it (whether or not this bucket was
    /// known then: the provider counted them all the same).
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

    /// Takes `cost` out.
    pub(super) fn charge(&mut self, cost: f64, now: Instant) {
        self.refill(now);
        self.level -= cost;
    }

    /// Gives `amount` back (or, negative, takes more), unless the provider's `remaining` is
    /// followed: what it reports next already says whether it refunded.
    pub(super) fn correct(&mut self, amount: f64, now: Instant) {
        if self.synced {
            return;
        }
        self.refill(now);
        self.level = (self.level + amount).min(self.capacity);
    }

    /// Applies what a response said. The limit replaces the capacity; the rate is read off
    /// the reset when it can be (`(limit - remaining) / reset`, the bucket's own refill),
    /// else it is the limit per `window`. `remaining` was true when the request arrived, some
    /// time between its sending and now; what the provider has now is about that, refilled
    /// since, less what was admitted after it. For a limit just learned (or changed) that
    /// reading, without the refill, becomes the level: a cautious start. Otherwise it can only
    /// lower the level: the local count is exact about our own requests and their timing, and
    /// the reading, counted from the sending, is a little optimistic; what it adds is what
    /// others (another process on the account) took.
    pub(super) fn observe(slot: &mut Option<Bucket>, reading: Reading, since: Since, window: Duration, now: Instant) {
        if reading.limit == Some(0) {
            return;
        }
        let known = slot.is_some();
        if slot.is_none() {
            *slot = reading.limit.and_then(|limit| Bucket::configured(limit, window, now));
        }
        let Some(bucket) = slot.as_mut() else {
            return;
        };
        bucket.refill(now);
        let changed = !known || reading.limit.is_some_and(|limit| limit as f64 != bucket.capacity);
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
            let left = remaining as f64 - since.charged;
            bucket.level = if changed {
                left
            } else {
                let refilled = now.saturating_duration_since(since.sent).as_secs_f64() * bucket.rate;
                bucket.level.min(left + refilled)
            };
            bucket.synced = true;
        }
        bucket.level = bucket.level.min(bucket.capacity);
    }
}
