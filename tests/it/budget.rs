//! A budget for the batch (issue 13 item 5): spend counted once per response, cached input
//! tokens priced at their rate, questions past the budget skipped, prices and budget in
//! `config check`, and a request prefix that stays the same from question to question.

use std::sync::Arc;

use agentry_testkit::model_server::{ChatRequestView, FnBehaviour, ModelServer, Reply, ScriptedToolCall};
use serde_json::{Value, json};

use crate::harness::{Agentry, config};
use crate::peers::PythonMcpServer;

/// Two model calls per question: `save_research` first, then the answer.
fn saves_then_answers(request: &ChatRequestView<'_>) -> Reply {
    if request.messages().iter().any(|m| m["role"] == "tool") {
        Reply::text("Answered; the research is saved.")
    } else {
        let topic = request.last_user_text().unwrap_or_default();
        Reply::tool_calls(vec![ScriptedToolCall::new(
            "save_research",
            &json!({"topic": topic, "research_content": "A definition, three key points and two sources."}),
        )])
    }
}

fn rows(report: &Value) -> &Vec<Value> {
    report["questions"].as_array().expect("rows")
}

fn sum(report: &Value, field: &str) -> f64 {
    rows(report).iter().map(|row| row[field].as_f64().unwrap_or(0.0)).sum()
}

/// The report's spend is the sum of its rows, and its totals agree.
#[track_caller]
fn spend_is_the_sum_of_the_rows(report: &Value) {
    let spent = &report["budget"]["spent"];
    for field in ["input_tokens", "cached_input_tokens", "output_tokens"] {
        assert_eq!(spent[field].as_f64(), Some(sum(report, field)), "{field}: {report}");
        assert_eq!(report["totals"][field].as_f64(), Some(sum(report, field)), "{field}: {report}");
    }
    let cost = sum(report, "cost");
    assert!((spent["cost"].as_f64().expect("cost") - cost).abs() < 1e-12, "cost: {report}");
    assert!((report["totals"]["cost"].as_f64().expect("cost") - cost).abs() < 1e-12, "cost: {report}");
    // One route here: all of it is the local route's.
    assert_eq!(&report["budget"]["by_route"]["local"], spent, "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_budget_for_ten_of_thirty_questions_answers_about_ten_and_skips_the_rest() {
    let model = ModelServer::start(Arc::new(FnBehaviour::new(saves_then_answers))).await.expect("model");
    let questions: Vec<String> = (1..=30).map(|n| format!("Define topic number {n:02}")).collect();
    let batch = |dir: &str, questions: &[String], budget: &str| {
        format!(
            "[batch]\nconcurrency = 3\noutput_dir = \"{dir}\"\nquestions = {questions:?}\n{budget}\n\
             [model.local.price]\ninput_per_million = 2.0\noutput_per_million = 8.0\n"
        )
    };
    // A small completion limit keeps each call's estimate (prompt / 4 + max_tokens) close to
    // what it spends.
    let agentry = Agentry::new().env("AGENTRY__MODEL__MAX_TOKENS", "64");
    // What one question spends (every question is the same length, so each spends the same).
    let path = agentry.file("one.toml", &config(&model.base_url(), None, &batch("one", &questions[..1], "")));
    agentry.run(&["run", "--config", path.to_str().expect("utf-8")]).await.expect_code(0);
    let one = agentry.report("one/report.json");
    let per_question = one["totals"]["input_tokens"].as_u64().expect("tokens")
        + one["totals"]["output_tokens"].as_u64().expect("tokens");
    assert_eq!(one["questions"][0]["turns"], 2, "{one}");
    assert!(one["budget"]["spent"]["cost"].as_f64().expect("cost") > 0.0, "priced: {one}");

    // Room for ten questions and half of an eleventh.
    let max_tokens = 10 * per_question + per_question / 2;
    let budget = format!("[batch.budget]\nmax_tokens = {max_tokens}\n");
    let path = agentry.file("thirty.toml", &config(&model.base_url(), None, &batch("out", &questions, &budget)));
    let requests_before = model.request_count();
    let run = agentry.run(&["run", "--config", path.to_str().expect("utf-8")]).await;
    run.expect_code(1);

    let report = agentry.report("out/report.json");
    let totals = &report["totals"];
    let ok = totals["ok"].as_u64().expect("ok");
    let spent = report["budget"]["spent"]["input_tokens"].as_u64().expect("spent")
        + report["budget"]["spent"]["output_tokens"].as_u64().expect("spent");
    assert!(spent <= max_tokens, "never more than the budget: {spent} of {max_tokens}: {report}");
    // A question in flight when the budget ran out is answered when it had saved its research
    // (the file is the answer; the answer call it did not make is a warning).
    let whole = rows(&report).iter().filter(|row| row["status"] == "ok" && row["warning"].is_null()).count();
    assert!(whole <= 10, "the budget pays for ten whole questions at most, {whole}: {report}");
    assert!(ok <= 10 + 3, "at most those in flight (3) beyond ten, {ok} answered: {report}");
    assert!(ok >= 10 - 3, "about ten answered, {ok}: {report}");
    for row in rows(&report).iter().filter(|row| row["warning"].is_string()) {
        assert_eq!(row["turns"], 1, "{row}");
        assert!(row["warning"].as_str().is_some_and(|w| w.contains("batch.budget.max_tokens")), "{row}");
    }
    assert_eq!(totals["failed"], 0, "{report}");
    assert_eq!(totals["skipped"].as_u64(), Some(30 - ok), "{report}");
    assert_eq!(totals["skipped_for_budget"].as_u64(), Some(30 - ok), "{report}");
    for row in rows(&report) {
        match row["status"].as_str() {
            Some("ok") => assert!(row["file"].is_string(), "{row}"),
            Some("skipped") => {
                assert_eq!(row["reason"], "budget", "{row}");
                assert_eq!(row["error_type"], "budget", "{row}");
                assert!(row["error"].as_str().is_some_and(|e| e.contains("batch.budget.max_tokens")), "{row}");
                assert!(row["file"].is_null(), "the research file is the answer: {row}");
            }
            _ => panic!("every question is answered or skipped for the budget: {row}"),
        }
    }
    assert_eq!(agentry.research_files("out").len() as u64, ok, "one file per answered question, none more");
    let not_started = rows(&report).iter().filter(|row| row["turns"] == 0).count();
    assert!(not_started >= 30 - 10 - 3, "questions after the budget ran out never started: {report}");
    assert!(model.request_count() - requests_before <= 2 * 10 + 3, "no model call past the budget");
    spend_is_the_sum_of_the_rows(&report);
    assert_eq!(report["budget"]["max_tokens"].as_u64(), Some(max_tokens));
    assert!(report["budget"]["exhausted"].as_str().is_some_and(|e| e.contains("max_tokens")), "{report}");
    assert!(run.stdout.contains(&format!("{} skipped ({} for the budget)", 30 - ok, 30 - ok)), "{}", run.stdout);
    assert!(run.stdout.contains(&format!("budget max_tokens {max_tokens}, exhausted")), "{}", run.stdout);

    // A rerun with room for the rest answers exactly the skipped ones.
    let budget = "[batch.budget]\nmax_tokens = 0\n";
    let path = agentry.file("rest.toml", &config(&model.base_url(), None, &batch("out", &questions, budget)));
    agentry.run(&["run", "--config", path.to_str().expect("utf-8")]).await.expect_code(0);
    let rerun = agentry.report("out/report.json");
    assert_eq!(rerun["totals"]["ok"].as_u64(), Some(30 - ok), "{rerun}");
    assert_eq!(rerun["totals"]["skipped"].as_u64(), Some(ok), "{rerun}");
    assert_eq!(agentry.research_files("out").len(), 30);
}

#[tokio::test(flavor = "multi_thread")]
async fn cached_input_tokens_are_recorded_and_priced_at_the_cached_rate() {
    let model = ModelServer::start(Arc::new(FnBehaviour::new(saves_then_answers)))
        .await
        .expect("model")
        .with_cached_tokens(100);
    let agentry = Agentry::new();
    let extra = "[batch]\nquestions = [\"Define Rust\", \"Define Go\"]\n\
                 [model.local.price]\ninput_per_million = 4.0\ncached_input_per_million = 1.0\noutput_per_million = 16.0\n";
    let path = agentry.file("batch.toml", &config(&model.base_url(), None, extra));
    let run = agentry.run(&["run", "--config", path.to_str().expect("utf-8")]).await;
    run.expect_code(0);
    let report = agentry.report("definitions/report.json");
    for row in rows(&report) {
        let (input, cached, output) = (
            row["input_tokens"].as_f64().expect("input"),
            row["cached_input_tokens"].as_f64().expect("cached"),
            row["output_tokens"].as_f64().expect("output"),
        );
        assert_eq!(cached, 200.0, "100 cached tokens in each of the two calls: {row}");
        assert!(input > cached, "{row}");
        let cost = ((input - cached) * 4.0 + cached * 1.0 + output * 16.0) / 1e6;
        assert!((row["cost"].as_f64().expect("cost") - cost).abs() < 1e-12, "expected {cost}: {row}");
    }
    assert_eq!(report["totals"]["cached_input_tokens"], 400, "{report}");
    spend_is_the_sum_of_the_rows(&report);
    assert!(run.stdout.contains("(400 cached input)"), "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn config_check_shows_the_budget_and_the_prices_and_names_a_bad_value() {
    let agentry = Agentry::new();
    let path = agentry.file(
        "priced.toml",
        "[batch.budget]\nmax_tokens = 250000\nmax_cost = 1.5\n\
         [model.cloud.price]\ninput_per_million = 0.15\ncached_input_per_million = 0.075\noutput_per_million = 0.6\n",
    );
    let run = agentry.run(&["config", "check", "--config", path.to_str().expect("utf-8")]).await;
    run.expect_code(0);
    assert!(run.stdout.contains("batch.budget: max_tokens 250000, max_cost 1.5"), "{}", run.stdout);
    assert!(run.stdout.contains("model.cloud.price: input 0.15, cached input 0.075, output 0.6"), "{}", run.stdout);
    assert!(run.stdout.contains("model.local.price: free"), "{}", run.stdout);

    let path = agentry.file("negative.toml", "[model.local.price]\noutput_per_million = -2.0\n");
    let run = agentry.run(&["config", "check", "--config", path.to_str().expect("utf-8")]).await;
    run.expect_code(2);
    assert!(run.stderr.contains("model.local.price.output_per_million"), "{}", run.stderr);

    let path = agentry.file("unpriced.toml", "[batch.budget]\nmax_cost = 2.0\n");
    let run = agentry.run(&["config", "check", "--config", path.to_str().expect("utf-8")]).await;
    run.expect_code(2);
    assert!(run.stderr.contains("batch.budget.max_cost") && run.stderr.contains("free"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_questions_requests_are_byte_identical_up_to_the_question() {
    let mcp = PythonMcpServer::start("streamable-http").await;
    let model = ModelServer::start(Arc::new(FnBehaviour::new(|_: &ChatRequestView<'_>| Reply::text("An answer."))))
        .await
        .expect("model");
    let agentry = Agentry::new();
    let (first, second) = ("What is Rust?", "Explain the actor model");
    let extra = format!("[batch]\nconcurrency = 1\nquestions = [{first:?}, {second:?}]\n");
    let path = agentry.file("batch.toml", &config(&model.base_url(), Some(&mcp.url()), &extra));
    agentry.run(&["run", "--config", path.to_str().expect("utf-8")]).await.expect_code(0);

    let requests = model.requests();
    assert_eq!(requests.len(), 2, "one call per question");
    let (a, b) = (&requests[0].raw, &requests[1].raw);
    let a_text = std::str::from_utf8(a).expect("utf-8");
    let question_at = a_text.find(first).expect("the question is in the request");
    let same = a.iter().zip(b.iter()).take_while(|(x, y)| x == y).count();
    assert_eq!(
        same,
        question_at,
        "the bodies part exactly where the question starts:\n{a_text}\n{}",
        String::from_utf8_lossy(&b[same.saturating_sub(80)..])
    );
    let prefix = &a_text[..same];
    // Everything that is the same for every question comes before it: the model, the sampling,
    // every tool definition (the MCP server's and save_research, in the registry's order) and
    // the system prompt up to the question.
    let tools = requests[0].body["tools"].as_array().expect("tools");
    assert!(tools.len() > 1, "the MCP server's tools are offered: {tools:?}");
    let (tools_at, messages_at) =
        (prefix.find("\"tools\":[").expect("tools"), prefix.find("\"messages\":[").expect("messages"));
    assert!(tools_at < messages_at, "{prefix}");
    for tool in tools {
        let name = tool["function"]["name"].as_str().expect("name");
        assert!(prefix[tools_at..messages_at].contains(&format!("\"name\":\"{name}\"")), "{name}: {prefix}");
    }
    assert!(prefix[messages_at..].contains("You are a helpful research assistant."), "{prefix}");
    assert_eq!(requests[0].body["tools"], requests[1].body["tools"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn cached_input_tokens_are_on_the_chat_span() {
    let receiver = crate::otlp::OtlpReceiver::start().await;
    let model = ModelServer::start(Arc::new(FnBehaviour::new(saves_then_answers)))
        .await
        .expect("model")
        .with_cached_tokens(100);
    let agentry = Agentry::new()
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.http_endpoint())
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf");
    let extra = "[batch]\nquestions = [\"Define Rust\"]\n";
    let path = agentry.file("batch.toml", &config(&model.base_url(), None, extra));
    agentry.run(&["run", "--config", path.to_str().expect("utf-8")]).await.expect_code(0);
    let spans = receiver.spans();
    let chats: Vec<_> = spans.iter().filter(|s| s.name == "chat test-model").collect();
    assert_eq!(chats.len(), 2, "{}", receiver.span_tree());
    for chat in &chats {
        assert_eq!(chat.attr_i64(agentry::telemetry::names::attr::CACHE_READ_INPUT_TOKENS), Some(100), "{chat:?}");
    }
    let report = agentry.report("definitions/report.json");
    assert_eq!(report["questions"][0]["cached_input_tokens"], 200);
}
