//! The model side misbehaving: rate limits, server errors, a rejected key, broken bodies.

use std::sync::Arc;
use std::time::Duration;

use agentry_testkit::model_server::{ModelServer, Queue, Reply};

use crate::harness::{Agentry, config};

const CANARY: &str = "sk-canary-0f9e8d7c6b5a4f3e2d1c";

fn one_question() -> &'static str {
    "[batch]\nquestions = [\"Define retries\"]\n"
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limits_and_server_errors_are_retried_until_an_answer() {
    let script = Queue::new([
        Reply::rate_limited(Duration::from_millis(50)),
        Reply::server_error(),
        Reply::overloaded(),
        Reply::text("Retries are repeated attempts."),
    ]);
    let model = ModelServer::start(Arc::new(script)).await.expect("model");
    let agentry = Agentry::new();
    let path = agentry.file("c.toml", &config(&model.base_url(), None, one_question()));
    let run = agentry.run(&["run", "-c", path.to_str().expect("utf-8")]).await;
    run.expect_code(0);
    assert_eq!(model.request_count(), 4, "429, 500 and 503 were each retried once");
    let statuses: Vec<Option<u16>> = model.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [Some(429), Some(500), Some(503), Some(200)]);
    let report = agentry.report("definitions/report.json");
    // The 500 and the 503 are retries; the 429 is counted apart.
    assert_eq!(report["questions"][0]["retries"], 2);
    assert_eq!(report["questions"][0]["rate_limited"], 1);
    // No save_research call: the runtime saved the final answer itself.
    let files = agentry.research_files("definitions");
    assert_eq!(files.len(), 1);
    assert!(std::fs::read_to_string(&files[0]).expect("file").contains("Retries are repeated attempts."));
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_stop_after_max_retries_with_a_clear_error() {
    let model = ModelServer::start(Arc::new(Queue::new((0..10).map(|_| Reply::server_error())))).await.expect("model");
    let agentry = Agentry::new().env("AGENTRY__MODEL__MAX_RETRIES", "2");
    let path = agentry.file("c.toml", &config(&model.base_url(), None, one_question()));
    let run = agentry.run(&["run", "-c", path.to_str().expect("utf-8")]).await;
    run.expect_code(1);
    assert_eq!(model.request_count(), 3, "one attempt and two retries");
    let report = agentry.report("definitions/report.json");
    assert_eq!(report["questions"][0]["status"], "failed");
    assert_eq!(report["questions"][0]["error_type"], "server_error");
    assert!(report["questions"][0]["error"].as_str().expect("error").contains("HTTP 500"), "{report}");
    assert!(agentry.research_files("definitions").is_empty(), "a failed question writes no research file");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_401_is_not_retried_and_the_key_never_shows() {
    let model = ModelServer::start(Arc::new(Queue::new([Reply::text("never")])))
        .await
        .expect("model")
        .require_key(Some("sk-the-right-one".into()));
    let agentry = Agentry::new()
        .env("OPENAI_API_KEY", CANARY)
        .env("OPENAI_BASE_URL", model.base_url())
        .env("AGENTRY__MODEL__FALLBACK", "none");
    let path = agentry.file("c.toml", &config("http://127.0.0.1:9/v1", None, one_question()));
    let run = agentry.run(&["run", "-c", path.to_str().expect("utf-8")]).await;
    run.expect_code(1);
    assert_eq!(model.request_count(), 1, "401 is never retried");
    assert_eq!(model.requests()[0].bearer.as_deref(), Some(CANARY), "the cloud route sent the key");
    let report_text = std::fs::read_to_string(agentry.dir().join("definitions/report.json")).expect("report");
    assert!(report_text.contains("HTTP 401"), "{report_text}");
    for (what, text) in [("output", run.output()), ("report", report_text)] {
        assert!(!text.contains(CANARY), "the key leaked into the {what}");
        assert!(!text.contains(&CANARY[10..20]), "part of the key leaked into the {what}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_model_output_fails_the_question_clearly_and_the_batch_goes_on() {
    let script = Queue::new([
        Reply::malformed("{\"choices\": [ this is not json"),
        Reply::text("The second question is answered."),
    ]);
    let model = ModelServer::start(Arc::new(script)).await.expect("model");
    let agentry = Agentry::new().env("AGENTRY__MODEL__MAX_RETRIES", "0");
    let extra = "[batch]\nconcurrency = 1\nquestions = [\"First\", \"Second\"]\n";
    let path = agentry.file("c.toml", &config(&model.base_url(), None, extra));
    let run = agentry.run(&["run", "-c", path.to_str().expect("utf-8")]).await;
    run.expect_code(1);
    let report = agentry.report("definitions/report.json");
    assert_eq!(report["questions"][0]["status"], "failed");
    assert_eq!(report["questions"][0]["error_type"], "malformed_response");
    assert!(report["questions"][0]["error"].as_str().expect("error").contains("cannot read"), "{report}");
    assert_eq!(report["questions"][1]["status"], "ok");
    assert_eq!(agentry.research_files("definitions").len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_model_is_a_clear_failure_not_a_hang() {
    let agentry = Agentry::new().env("AGENTRY__MODEL__MAX_RETRIES", "1");
    // Port 9 (discard) on loopback: nothing listens there.
    let path = agentry.file("c.toml", &config("http://127.0.0.1:9/v1", None, one_question()));
    let run = agentry.run(&["run", "-c", path.to_str().expect("utf-8")]).await;
    run.expect_code(1);
    let report = agentry.report("definitions/report.json");
    assert_eq!(report["questions"][0]["error_type"], "connect_error");
    assert!(report["questions"][0]["error"].as_str().expect("error").contains("127.0.0.1:9"), "{report}");
}

/// A whole completion body, for replies that only make sense as raw bytes.
const NO_CHOICES: &str =
    r#"{"id":"chatcmpl-x","object":"chat.completion","created":0,"model":"test-model","choices":[]}"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_2xx_that_cannot_be_read_is_retried_within_max_retries() {
    let script = Queue::new([
        Reply::html("<html><body><h1>502 Bad Gateway</h1></body></html>"),
        Reply::text("a whole answer, cut in the middle").cut_short(40),
        Reply::malformed("{\"choices\": [ this is not json"),
        Reply::malformed(NO_CHOICES),
        Reply::text("Retries are repeated attempts."),
    ]);
    let model = ModelServer::start(Arc::new(script)).await.expect("model");
    let agentry = Agentry::new().env("AGENTRY__MODEL__MAX_RETRIES", "4");
    let path = agentry.file("c.toml", &config(&model.base_url(), None, one_question()));
    let run = agentry.run(&["run", "-c", path.to_str().expect("utf-8")]).await;
    run.expect_code(0);
    assert_eq!(model.request_count(), 5, "each unreadable 2xx was sent again");
    let report = agentry.report("definitions/report.json");
    assert_eq!(report["questions"][0]["status"], "ok", "{report}");
    assert_eq!(report["questions"][0]["retries"], 4, "{report}");
    assert!(run.stderr.contains("text/html"), "the retries are logged with what came back: {}", run.stderr);
    assert_eq!(agentry.research_files("definitions").len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_2xx_that_persists_fails_naming_the_content_type_and_the_first_bytes() {
    let page = format!(
        "<html><head><title>Sign in</title></head><body>Session for {CANARY} expired. Please sign in again.</body></html>"
    );
    let model =
        ModelServer::start(Arc::new(Queue::new([Reply::html(page.clone()), Reply::html(page)]))).await.expect("model");
    let agentry = Agentry::new()
        .env("AGENTRY__MODEL__MAX_RETRIES", "1")
        .env("OPENAI_API_KEY", CANARY)
        .env("OPENAI_BASE_URL", model.base_url())
        .env("AGENTRY__MODEL__FALLBACK", "none");
    let path = agentry.file("c.toml", &config("http://127.0.0.1:9/v1", None, one_question()));
    let run = agentry.run(&["run", "-c", path.to_str().expect("utf-8")]).await;
    run.expect_code(1);
    assert_eq!(model.request_count(), 2, "retried once, as max_retries says");
    let report = agentry.report("definitions/report.json");
    let row = &report["questions"][0];
    assert_eq!(row["error_type"], "malformed_response", "{report}");
    let error = row["error"].as_str().expect("error");
    assert!(error.contains("text/html"), "the content type is named: {error}");
    assert!(error.contains("<html><head><title>Sign in"), "the first bytes are shown: {error}");
    assert!(error.contains("[redacted"), "the key in the page is replaced: {error}");
    let report_text = std::fs::read_to_string(agentry.dir().join("definitions/report.json")).expect("report");
    for (what, text) in [("output", run.output()), ("report", report_text)] {
        assert!(!text.contains(&CANARY[10..20]), "part of the key leaked into the {what}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endless_body_is_cut_at_the_cap_not_read_until_the_timeout() {
    let model = ModelServer::start(Arc::new(Queue::new([Reply::EndlessBody]))).await.expect("model");
    // The request timeout is what stopped the read before the cap was enforced while reading.
    let agentry = Agentry::new().env("AGENTRY__MODEL__MAX_RETRIES", "0").env("AGENTRY__MODEL__REQUEST_TIMEOUT", "20s");
    let path = agentry.file("c.toml", &config(&model.base_url(), None, one_question()));
    let run = agentry.run(&["run", "-c", path.to_str().expect("utf-8")]).await;
    run.expect_code(1);
    let report = agentry.report("definitions/report.json");
    let row = &report["questions"][0];
    assert_eq!(row["error_type"], "protocol_error", "{report}");
    assert!(row["error"].as_str().expect("error").contains("16 MiB"), "the cap is named: {report}");
    assert_eq!(model.request_count(), 1, "an oversized answer is not asked for again");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_that_stops_sending_fails_at_the_idle_timeout_and_is_retried() {
    use agentry::llm::LlmError;
    use agentry::llm::client::{ChatClient, ClientPolicy, Endpoint};
    use agentry::llm::wire::{ChatRequest, Message};

    let model = ModelServer::start(Arc::new(Queue::new([
        Reply::Stall("{\"id\":\"chatcmpl-stalled\",\"choices\":[".into()),
        Reply::Stall(String::new()),
    ])))
    .await
    .expect("model");
    let policy = ClientPolicy {
        // Long enough never to be the guard that fires here.
        request_timeout: Duration::from_secs(3600),
        idle_timeout: Duration::from_millis(200),
        max_retries: 1,
        min_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(1),
        ..ClientPolicy::default()
    };
    let client = ChatClient::new(policy).expect("client");
    let endpoint = Endpoint {
        base_url: url::Url::parse(&format!("{}/", model.base_url())).expect("url"),
        model: "test-model".into(),
        credential: None,
    };
    let messages = [Message::User { content: "Hello".into() }];
    let request =
        ChatRequest { model: "test-model", messages: &messages, tools: &[], temperature: 0.1, max_tokens: 10 };
    let error = client
        .complete(
            &endpoint,
            &request,
            &Default::default(),
            &agentry::deadline::Deadline::none(),
            &agentry::llm::rate_limit::Limiter::new(Default::default(), 1),
        )
        .await
        .expect_err("a stalled body is no answer");
    assert!(matches!(error, LlmError::Stalled { .. }), "{error:?}");
    assert!(error.is_retryable());
    assert_eq!(model.request_count(), 2, "a stall is transient: retried");
    assert!(error.to_string().contains("stopped sending"), "{error}");
}
