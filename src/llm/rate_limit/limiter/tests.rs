//! Admission on paused time: every instant below is virtual, so the assertions are exact
//! (rounded to a tenth of a second for the timer's millisecond ticks).

use std::sync::{Arc, Mutex};

use super::*;
use crate::llm::rate_limit::LimitConfig;

fn limiter(requests_per_minute: u64, tokens_per_minute: u64, max_in_flight: usize) -> Limiter {
    Limiter::new(LimitConfig { requests_per_minute, tokens_per_minute }, max_in_flight)
}

/// Seconds since `start`, to a tenth.
fn secs_since(start: Instant) -> f64 {
    (start.elapsed().as_secs_f64() * 10.0).round() / 10.0
}

/// Lets spawned callers run until `n` are waiting in `admit` (no virtual time passes).
async fn until_waiting(limiter: &Limiter, n: usize) {
    while limiter.snapshot().waiting != n {
        tokio::task::yield_now().await;
    }
}

type Log = Arc<Mutex<Vec<(&'static str, f64)>>>;

/// Spawns a caller that admits `tokens`, logs its name and admission time, and drops the permit.
fn spawn_caller(
    limiter: &Limiter,
    name: &'static str,
    tokens: u64,
    deadline: Deadline,
    log: &Log,
    start: Instant,
) -> tokio::task::JoinHandle<Result<Option<Wait>, WaitError>> {
    let (limiter, log) = (limiter.clone(), log.clone());
    tokio::spawn(async move {
        let permit = limiter.admit(tokens, &deadline).await?;
        log.lock().expect("log").push((name, secs_since(start)));
        Ok(permit.waited())
    })
}

#[tokio::test(start_paused = true)]
async fn a_burst_beyond_capacity_is_spread_at_the_refill_rate() {
    // 6 requests per minute: a bucket of 6, one more every 10 s.
    let limiter = limiter(6, 0, 100);
    let start = Instant::now();
    let mut admitted = Vec::new();
    let mut waits = Vec::new();
    for _ in 0..10 {
        let permit = limiter.admit(1, &Deadline::none()).await.expect("admitted");
        admitted.push(secs_since(start));
        waits.push(permit.waited());
    }
    assert_eq!(admitted, [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 10.0, 20.0, 30.0, 40.0]);
    assert!(waits[..6].iter().all(Option::is_none), "the bucket's capacity goes at once: {waits:?}");
    let seventh = waits[6].expect("the seventh waited");
    assert_eq!(seventh.bucket, Bucket::Requests);
    assert_eq!((seventh.waited.as_secs_f64() * 10.0).round(), 100.0);
}

#[tokio::test(start_paused = true)]
async fn first_come_first_served_a_large_request_at_the_head_is_not_overtaken() {
    // 6000 tokens per minute: 100 per second.
    let limiter = limiter(0, 6000, 100);
    let start = Instant::now();
    drop(limiter.admit(5000, &Deadline::none()).await.expect("fits"));
    let log = Log::default();
    // 1000 tokens are left: the large one needs 3000 (20 s more); the small ones would fit now.
    let large = spawn_caller(&limiter, "large", 3000, Deadline::none(), &log, start);
    until_waiting(&limiter, 1).await;
    let small = spawn_caller(&limiter, "small", 100, Deadline::none(), &log, start);
    until_waiting(&limiter, 2).await;
    let smaller = spawn_caller(&limiter, "smaller", 50, Deadline::none(), &log, start);
    until_waiting(&limiter, 3).await;
    let snapshot = limiter.snapshot();
    assert_eq!((snapshot.paced_by, snapshot.paced_for), (Some(Bucket::Tokens), Some(Duration::from_secs(20))));

    let large = large.await.expect("task").expect("admitted");
    let small = small.await.expect("task").expect("admitted");
    smaller.await.expect("task").expect("admitted");
    assert_eq!(*log.lock().expect("log"), [("large", 20.0), ("small", 21.0), ("smaller", 21.5)]);
    assert_eq!(large.map(|wait| wait.bucket), Some(Bucket::Tokens));
    assert_eq!(small.map(|wait| wait.bucket), Some(Bucket::Tokens), "it waited behind a token wait");
    assert_eq!(limiter.snapshot().paced_by, None);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_whose_deadline_comes_first_gives_up_without_consuming() {
    let limiter = limiter(0, 6000, 100);
    let start = Instant::now();
    drop(limiter.admit(6000, &Deadline::none()).await.expect("fits"));
    let log = Log::default();
    let head = spawn_caller(&limiter, "head", 1000, Deadline::none(), &log, start);
    until_waiting(&limiter, 1).await;
    // At the head at 10 s, it would need 20 s more: past its deadline at 15 s.
    let hurried = spawn_caller(&limiter, "hurried", 2000, Deadline::after(Duration::from_secs(15)), &log, start);
    until_waiting(&limiter, 2).await;
    let patient = spawn_caller(&limiter, "patient", 2000, Deadline::none(), &log, start);
    until_waiting(&limiter, 3).await;

    head.await.expect("task").expect("admitted");
    let refused = hurried.await.expect("task").expect_err("past its deadline");
    let refused_at = secs_since(start);
    patient.await.expect("task").expect("admitted");

    match refused {
        WaitError::PastDeadline { bucket, needed, left } => {
            assert_eq!(bucket, Bucket::Tokens);
            assert_eq!(needed.as_secs_f64().round(), 20.0);
            assert_eq!(left.as_secs_f64().round(), 5.0);
        }
        other => panic!("expected PastDeadline, got {other:?}"),
    }
    assert_eq!(refused_at, 10.0, "it gave up on reaching the head, not at its deadline");
    // The patient one got the 2000 tokens 20 s after the head: the hurried one took none.
    assert_eq!(*log.lock().expect("log"), [("head", 10.0), ("patient", 30.0)]);
    let message = WaitError::PastDeadline {
        bucket: Bucket::Tokens,
        needed: Duration::from_secs(20),
        left: Duration::from_secs(5),
    }
    .to_string();
    assert_eq!(
        message,
        "the tokens-per-minute limit would let this request through in 20.0s, but the question's deadline is 5.0s away"
    );
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_or_dropped_waiter_leaves_the_line_and_the_next_moves_up() {
    let limiter = limiter(0, 6000, 100);
    let start = Instant::now();
    drop(limiter.admit(6000, &Deadline::none()).await.expect("fits"));
    let log = Log::default();
    let head = spawn_caller(&limiter, "head", 1000, Deadline::none(), &log, start);
    until_waiting(&limiter, 1).await;
    let question = Deadline::none();
    let cancelled = spawn_caller(&limiter, "cancelled", 1000, question.clone(), &log, start);
    until_waiting(&limiter, 2).await;
    let dropped = {
        let limiter = limiter.clone();
        tokio::spawn(async move {
            tokio::time::timeout(Duration::from_secs(4), limiter.admit(1000, &Deadline::none())).await
        })
    };
    until_waiting(&limiter, 3).await;
    let last = spawn_caller(&limiter, "last", 1000, Deadline::none(), &log, start);
    until_waiting(&limiter, 4).await;

    tokio::time::sleep(Duration::from_secs(3)).await;
    question.cancel();
    let error = cancelled.await.expect("task").expect_err("cancelled");
    assert!(matches!(error, WaitError::Cancelled { bucket: Bucket::Tokens, .. }), "{error:?}");
    assert_eq!(secs_since(start), 3.0, "it left when cancelled, not when it reached the head");
    assert!(dropped.await.expect("task").is_err(), "the caller's own timeout dropped it");
    assert_eq!(limiter.snapshot().waiting, 2);

    head.await.expect("task").expect("admitted");
    last.await.expect("task").expect("admitted");
    assert_eq!(*log.lock().expect("log"), [("head", 10.0), ("last", 20.0)]);
    assert_eq!(limiter.snapshot().waiting, 0);
}

#[tokio::test(start_paused = true)]
async fn settle_refunds_an_overestimate_and_charges_an_underestimate() {
    let limiter = limiter(0, 6000, 100);
    let start = Instant::now();
    let permit = limiter.admit(6000, &Deadline::none()).await.expect("fits");
    permit.settle(1000);
    let permit = limiter.admit(5000, &Deadline::none()).await.expect("refunded");
    assert_eq!(secs_since(start), 0.0, "5000 of the estimate came back");
    // 5000 were charged, 6000 used: 1000 more are taken, and the next request waits for them.
    permit.settle(6000);
    let permit = limiter.admit(100, &Deadline::none()).await.expect("admitted");
    assert_eq!(secs_since(start), 11.0);
    assert_eq!(permit.waited().map(|wait| wait.bucket), Some(Bucket::Tokens));
}

fn headers(limit_tokens: u64, remaining_tokens: u64, reset_tokens: Option<Duration>) -> RateLimitHeaders {
    RateLimitHeaders {
        limit_tokens: Some(limit_tokens),
        remaining_tokens: Some(remaining_tokens),
        reset_tokens,
        ..RateLimitHeaders::default()
    }
}

#[tokio::test(start_paused = true)]
async fn headers_win_over_the_configuration() {
    // Configured: 6 requests per minute. The provider says 600, 599 left.
    let limiter = limiter(6, 0, 1000);
    let start = Instant::now();
    let permit = limiter.admit(1, &Deadline::none()).await.expect("fits");
    permit.observe(&RateLimitHeaders {
        limit_requests: Some(600),
        remaining_requests: Some(599),
        ..RateLimitHeaders::default()
    });
    drop(permit);
    for _ in 0..599 {
        drop(limiter.admit(1, &Deadline::none()).await.expect("admitted"));
    }
    assert_eq!(secs_since(start), 0.0, "599 more went at once, not 5");
    let snapshot = limiter.snapshot();
    assert_eq!((snapshot.requests_per_window, snapshot.limits_from_headers), (Some(600), true));
    drop(limiter.admit(1, &Deadline::none()).await.expect("admitted"));
    assert_eq!(secs_since(start), 0.1, "then one every 60/600 s");
}

#[tokio::test(start_paused = true)]
async fn headers_lower_the_level_and_their_reset_gives_the_refill_rate() {
    // Configured generously; the provider says 1000 tokens, none left, whole again in 1 s:
    // its window is a second, not a minute.
    let limiter = limiter(0, 100_000, 100);
    let start = Instant::now();
    let permit = limiter.admit(1000, &Deadline::none()).await.expect("fits");
    permit.observe(&headers(1000, 0, Some(Duration::from_secs(1))));
    permit.settle(10);
    let permit = limiter.admit(500, &Deadline::none()).await.expect("admitted");
    assert_eq!(secs_since(start), 0.5, "a refill of 1000 per second; no refund: the headers keep the budget");
    assert_eq!(limiter.snapshot().tokens_per_window, Some(1000));
    // A reset too short to read a rate from keeps the rate learned; a reading of the same
    // limit never raises the level (the account had 999 when this request arrived, but the
    // local count knows it took 500 since the bucket was empty).
    permit.observe(&headers(1000, 999, Some(Duration::from_millis(1))));
    drop(permit);
    drop(limiter.admit(1000, &Deadline::none()).await.expect("admitted"));
    assert_eq!(secs_since(start), 1.5, "1000 more at 1000 per second");
}

#[tokio::test(start_paused = true)]
async fn a_late_remaining_is_aged_by_the_refill_and_the_charges_since_it_was_sent_and_lowers_the_level() {
    // 6000 tokens per minute, 100 per second.
    let limiter = limiter(0, 6000, 100);
    let slow = limiter.admit(1000, &Deadline::none()).await.expect("fits");
    tokio::time::advance(Duration::from_secs(5)).await;
    drop(limiter.admit(2000, &Deadline::none()).await.expect("fits"));
    tokio::time::advance(Duration::from_secs(5)).await;
    // The slow request's answer: when it arrived, 10 s ago, the account (shared with another
    // client) had 2000 left. Since then: 1000 refilled, 2000 charged by us; the local count
    // (4000) did not know of the other client.
    slow.observe(&headers(6000, 2000, None));
    let start = Instant::now();
    drop(limiter.admit(1000, &Deadline::none()).await.expect("admitted"));
    assert_eq!(secs_since(start), 0.0, "1000 were there");
    drop(limiter.admit(500, &Deadline::none()).await.expect("admitted"));
    assert_eq!(secs_since(start), 5.0, "and no more");
}

#[tokio::test(start_paused = true)]
async fn with_unknown_limits_the_in_flight_cap_halves_on_a_429_and_grows_back_by_one() {
    let limiter = limiter(0, 0, 8);
    let start = Instant::now();
    let mut permits = Vec::new();
    for _ in 0..8 {
        permits.push(limiter.admit(1000, &Deadline::none()).await.expect("admitted"));
    }
    assert_eq!(secs_since(start), 0.0, "no waiting while the cap allows");
    assert!(permits.iter().all(|permit| permit.waited().is_none()));
    let ninth = {
        let limiter = limiter.clone();
        tokio::spawn(async move { limiter.admit(1000, &Deadline::none()).await })
    };
    until_waiting(&limiter, 1).await;
    let snapshot = limiter.snapshot();
    assert_eq!((snapshot.paced_by, snapshot.paced_for), (Some(Bucket::InFlight), None), "no known end");

    let mut permits = permits.into_iter();
    permits.next().expect("a permit").rate_limited(None);
    assert_eq!(limiter.snapshot().in_flight_limit, 4, "halved");
    permits.next().expect("a permit").rate_limited(None);
    assert_eq!(limiter.snapshot().in_flight_limit, 4, "a 429 for a request sent before the decrease counts once");
    for permit in permits.by_ref().take(2) {
        permit.settle(100);
    }
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!((limiter.snapshot().in_flight, limiter.snapshot().waiting), (4, 1), "4 in flight under a cap of 4");
    for permit in permits.by_ref().take(2) {
        permit.settle(100);
    }
    assert_eq!(limiter.snapshot().in_flight_limit, 5, "one more after as many successes as the cap");
    let ninth = ninth.await.expect("task").expect("admitted");
    assert_eq!(ninth.waited().map(|wait| wait.bucket), Some(Bucket::InFlight));
    assert_eq!(secs_since(start), 0.0);

    drop(permits);
    ninth.rate_limited(None);
    assert_eq!(limiter.snapshot().in_flight_limit, 2, "the ninth was sent after the decrease: it halves again");
    for expected in [1, 1] {
        limiter.admit(1000, &Deadline::none()).await.expect("admitted").rate_limited(None);
        assert_eq!(limiter.snapshot().in_flight_limit, expected, "never below 1");
    }
}

#[tokio::test(start_paused = true)]
async fn known_limits_keep_the_cap_at_the_maximum_and_a_429_backs_everyone_off() {
    let limiter = limiter(600, 0, 8);
    let start = Instant::now();
    let permit = limiter.admit(1, &Deadline::none()).await.expect("admitted");
    permit.rate_limited(Some(Duration::from_secs(5)));
    assert_eq!(limiter.snapshot().in_flight_limit, 8, "the limits are known: no AIMD");
    let permit = limiter.admit(1, &Deadline::none()).await.expect("admitted");
    assert_eq!(secs_since(start), 5.0);
    assert_eq!(permit.waited().map(|wait| wait.bucket), Some(Bucket::BackOff));
    limiter.back_off(Duration::from_secs(3));
    limiter.back_off(Duration::from_secs(1));
    drop(permit);
    drop(limiter.admit(1, &Deadline::none()).await.expect("admitted"));
    assert_eq!(secs_since(start), 8.0, "the longer pause stays");
}

#[tokio::test(start_paused = true)]
async fn a_wait_for_a_slot_ends_at_the_deadline() {
    let limiter = limiter(0, 0, 1);
    let start = Instant::now();
    let _busy = limiter.admit(1, &Deadline::none()).await.expect("admitted");
    let error = limiter.admit(1, &Deadline::after(Duration::from_secs(3))).await.expect_err("no slot in time");
    assert!(matches!(error, WaitError::OutOfTime { bucket: Bucket::InFlight, .. }), "{error:?}");
    assert_eq!(secs_since(start), 3.0);
}

#[tokio::test(start_paused = true)]
async fn a_request_larger_than_the_bucket_goes_when_it_is_full_and_the_debt_delays_the_next() {
    // 600 tokens per minute: 10 per second.
    let limiter = limiter(0, 600, 10);
    let start = Instant::now();
    drop(limiter.admit(300, &Deadline::none()).await.expect("fits"));
    drop(limiter.admit(1000, &Deadline::none()).await.expect("admitted when full"));
    assert_eq!(secs_since(start), 30.0);
    drop(limiter.admit(10, &Deadline::none()).await.expect("admitted"));
    assert_eq!(secs_since(start), 71.0, "400 of debt and 10 more, at 10 per second");
}

#[tokio::test(start_paused = true)]
async fn a_configured_limit_may_count_per_a_shorter_window() {
    // 6 requests per second: one more every 1/6 s after the first 6.
    let limiter = limiter(6, 0, 100).with_window(Duration::from_secs(1));
    let start = Instant::now();
    for _ in 0..9 {
        drop(limiter.admit(1, &Deadline::none()).await.expect("admitted"));
    }
    assert_eq!(secs_since(start), 0.5);
}

#[tokio::test(start_paused = true)]
async fn an_absurd_back_off_is_a_wait_past_any_deadline_not_a_panic() {
    let limiter = limiter(0, 0, 4);
    limiter.back_off(Duration::MAX);
    let error = limiter.admit(1, &Deadline::after(Duration::from_secs(300))).await.expect_err("past the deadline");
    assert!(matches!(error, WaitError::PastDeadline { bucket: Bucket::BackOff, .. }), "{error:?}");
    let cancelled = Deadline::none();
    cancelled.cancel();
    let error = limiter.admit(1, &cancelled).await.expect_err("cancelled before it came");
    assert!(matches!(error, WaitError::Cancelled { .. }), "{error:?}");
}

#[tokio::test(start_paused = true)]
async fn a_limit_first_heard_of_counts_the_requests_sent_before_it_was_known() {
    // No limit known: four requests of 1000 go at once. The first answer says 6000 a minute,
    // 5000 left when it arrived, before the three others did.
    let limiter = limiter(0, 0, 16);
    let mut permits = Vec::new();
    for _ in 0..4 {
        permits.push(limiter.admit(1000, &Deadline::none()).await.expect("admitted"));
    }
    permits[0].observe(&headers(6000, 5000, None));
    drop(permits);
    let start = Instant::now();
    drop(limiter.admit(2000, &Deadline::none()).await.expect("admitted"));
    assert_eq!(secs_since(start), 0.0, "5000 less the three others' 3000");
    drop(limiter.admit(100, &Deadline::none()).await.expect("admitted"));
    assert_eq!(secs_since(start), 1.0, "then 100 a second");
}

#[tokio::test(start_paused = true)]
async fn a_reading_of_a_known_limit_never_raises_the_level() {
    // 6000 a minute; 5000 charged locally. An answer says 6000 remained when its request
    // arrived: the provider counted less than the estimate (or refunded), or the answer was
    // optimistic about its timing. The local count stands.
    let limiter = limiter(0, 6000, 16);
    let permit = limiter.admit(5000, &Deadline::none()).await.expect("fits");
    permit.observe(&headers(6000, 6000, None));
    permit.settle(10);
    let start = Instant::now();
    drop(limiter.admit(1000, &Deadline::none()).await.expect("admitted"));
    drop(limiter.admit(1000, &Deadline::none()).await.expect("admitted"));
    assert_eq!(secs_since(start), 10.0, "no refund either: the headers keep the budget");
}

#[tokio::test(start_paused = true)]
async fn a_probing_limiter_sends_one_request_alone_until_it_comes_back() {
    let limiter = limiter(0, 0, 8).probe_first();
    let first = limiter.admit(100, &Deadline::none()).await.expect("the probe goes at once");
    let second = tokio::spawn({
        let limiter = limiter.clone();
        async move { limiter.admit(100, &Deadline::none()).await.map(|permit| permit.waited()) }
    });
    until_waiting(&limiter, 1).await;
    assert_eq!(limiter.snapshot().in_flight, 1, "the rest wait for the probe");
    first.settle(100);
    let waited = second.await.expect("task").expect("admitted once the probe came back");
    assert_eq!(waited.map(|w| w.bucket), Some(Bucket::InFlight));
    // From then on the cap is the maximum (the limits are still unknown).
    let unbounded = Deadline::none();
    let mut permits = Vec::new();
    for _ in 0..8 {
        permits.push(limiter.admit(100, &unbounded).await.expect("admitted at once"));
    }
    assert_eq!(limiter.snapshot().in_flight, 8);
}
