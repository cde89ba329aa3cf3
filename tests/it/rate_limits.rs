//! A batch paces itself to the provider's rate limits (issue 13): against a peer that enforces
//! OpenAI-style limits, every question is answered, few requests are refused, and 429s are
//! back-pressure (counted in `rate_limited`, never using up `max_retries`).

use std::sync::Arc;
use std::time::Duration;

use agentry_testkit::model_server::rate_limit::RateLimits;
use agentry_testkit::model_server::{FnBehaviour, ModelServer, Reply};

use crate::harness::{Agentry, config};

const KEY: &str = "sk-rate-limited-0123456789abcdef";

/// A batch of `questions` on the cloud route of `model` (max_tokens 100, so a request costs
/// about 150 tokens), `max_retries = 0`: any 429 that used up a retry would fail its question.
async fn run_batch(model: &ModelServer, questions: usize, concurrency: usize) -> (crate::harness::Run, Agentry) {
    let agentry = Agentry::new();
    agentry.file("secrets/openai_api_key", &format!("{KEY}\n"));
    let agentry = agentry
        .env("OPENAI_BASE_URL", model.base_url())
        .env("AGENTRY__MODEL__FALLBACK", "none")
        .env("AGENTRY__MODEL__MAX_TOKENS", "100")
        .env("AGENTRY__MODEL__MAX_RETRIES", "0");
    let list: Vec<String> = (0..questions).map(|i| format!("\"Define pacing {i}\"")).collect();
    let extra = format!(
        "[agent]\nquestion_timeout = \"60s\"\n[batch]\nconcurrency = {concurrency}\nquestions = [{}]\n",
        list.join(", ")
    );
    let path = agentry.file("c.toml", &config("http://127.0.0.1:9/v1", None, &extra));
    let run = agentry.run(&["run", "-c", path.to_str().expect("utf-8")]).await;
    (run, agentry)
}

fn answering()
-> FnBehaviour<impl Fn(&agentry_testkit::model_server::ChatRequestView<'_>) -> Reply + Send + Sync + 'static> {
    FnBehaviour::new(|_| Reply::text("Paced."))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_wider_than_the_limit_is_paced_by_the_headers() {
    // About 8 requests' worth of tokens per second, 24 questions 12 at a time.
    let model = ModelServer::start(Arc::new(answering()))
        .await
        .expect("model")
        .with_rate_limits(RateLimits::per_minute(1_000, 1_200).per(Duration::from_secs(1)));
    let (run, agentry) = run_batch(&model, 24, 12).await;
    run.expect_code(0);
    // The progress lines say when the batch is held back, and by what.
    assert!(run.stderr.contains("(paced: tokens, "), "{}", run.stderr);
    let counts = model.rate_limit_counts();
    let requests = counts.accepted + counts.refused();
    assert!(counts.refused() * 20 < requests, "under 5% of {requests} requests refused: {counts:?}");
    let report = agentry.report("definitions/report.json");
    let rows = report["questions"].as_array().expect("rows");
    assert!(rows.iter().all(|r| r["status"] == "ok"), "{report}");
    let rate_limited: u64 = rows.iter().filter_map(|r| r["rate_limited"].as_u64()).sum();
    assert_eq!(rate_limited, counts.refused(), "each 429 is in its row");
    let by_route = report["totals"]["rate_limited"]["cloud"].as_u64().unwrap_or(0);
    assert_eq!(by_route, counts.refused(), "and in the totals, by route: {}", report["totals"]);
    assert!(rows.iter().all(|r| r["retries"] == 0), "429s are not retries: {report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_headers_the_requests_in_flight_come_down_and_every_question_finishes() {
    let model =
        ModelServer::start(Arc::new(FnBehaviour::new(|_| Reply::text("Paced.").delayed(Duration::from_millis(50)))))
            .await
            .expect("model")
            .with_rate_limits(RateLimits::per_minute(1_000, 1_200).per(Duration::from_secs(1)).without_headers());
    let (run, agentry) = run_batch(&model, 24, 12).await;
    run.expect_code(0);
    let report = agentry.report("definitions/report.json");
    assert_eq!(report["totals"]["ok"], 24, "{report}");
    let counts = model.rate_limit_counts();
    assert!(counts.refused() > 0, "the limits were hit: {counts:?}");
    assert_eq!(report["totals"]["rate_limited"]["cloud"].as_u64(), Some(counts.refused()), "429s by route");
    assert!(model.peak_in_flight() <= 12);
}

/// Configured limits are the account's: a shard of three paces itself to a third of them.
#[tokio::test(flavor = "multi_thread")]
async fn configured_limits_are_shared_between_shards() {
    let model = ModelServer::start(Arc::new(answering())).await.expect("model");
    let agentry = Agentry::new()
        .env("AGENTRY__MODEL__LOCAL__RATE_LIMIT__REQUESTS_PER_MINUTE", "90")
        .env("AGENTRY__MODEL__LOCAL__RATE_LIMIT__TOKENS_PER_MINUTE", "30000");
    let extra = "[batch]\nquestions = [\"Define sharing\"]\n";
    let path = agentry.file("c.toml", &config(&model.base_url(), None, extra));
    let whole = agentry.run(&["run", "-c", path.to_str().expect("utf-8"), "--force"]).await;
    assert!(whole.stderr.contains("rate limits 90 requests/min, 30000 tokens/min"), "{}", whole.stderr);
    let shard = agentry.run(&["run", "-c", path.to_str().expect("utf-8"), "--shard", "1/3", "--force"]).await;
    assert!(shard.stderr.contains("rate limits 30 requests/min, 10000 tokens/min"), "{}", shard.stderr);
}
