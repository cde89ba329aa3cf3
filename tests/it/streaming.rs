//! Streamed answers (`"stream": true`): what agentry asks for, streams that end or break
//! before their answer does, a JSON answer to a streamed request, and answers cut off at
//! `max_tokens`.

use std::sync::Arc;

use agentry_testkit::model_server::{ModelServer, Queue, Reply};
use serde_json::json;

use crate::harness::{Agentry, config};

fn one_question() -> &'static str {
    "[batch]\nquestions = [\"Define streaming\"]\n"
}

/// An SSE body of `chunks` (each a `chat.completion.chunk`'s JSON), then `tail` as is.
fn sse(chunks: &[serde_json::Value], tail: &str) -> Reply {
    let events: String = chunks.iter().map(|chunk| format!("data: {chunk}\n\n")).collect();
    Reply::Raw { status: 200, content_type: "text/event-stream".into(), body: format!("{events}{tail}") }
}

fn chunk(delta: serde_json::Value, finish_reason: Option<&str>) -> serde_json::Value {
    json!({"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1, "model": "test-model",
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}]})
}

async fn run_one(model: &ModelServer, agentry: &Agentry) -> crate::harness::Run {
    let path = agentry.file("c.toml", &config(&model.base_url(), None, one_question()));
    agentry.run(&["run", "-c", path.to_str().expect("utf-8")]).await
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_ask_for_a_stream_with_its_usage_unless_streaming_is_off() {
    let model = ModelServer::start(Arc::new(Queue::new([Reply::text("Streamed."), Reply::text("Whole.")])))
        .await
        .expect("model");
    let streamed = Agentry::new();
    run_one(&model, &streamed).await.expect_code(0);
    let whole = Agentry::new().env("AGENTRY__MODEL__STREAM", "false");
    run_one(&model, &whole).await.expect_code(0);
    let bodies: Vec<serde_json::Value> = model.requests().into_iter().map(|r| r.body).collect();
    assert_eq!(bodies[0]["stream"], true, "{}", bodies[0]);
    assert_eq!(bodies[0]["stream_options"], json!({"include_usage": true}));
    assert!(bodies[1].get("stream").is_none() && bodies[1].get("stream_options").is_none(), "{}", bodies[1]);
    // Either way the answer and its usage reach the file and the report.
    for (agentry, text) in [(&streamed, "Streamed."), (&whole, "Whole.")] {
        let file = std::fs::read_to_string(&agentry.research_files("definitions")[0]).expect("file");
        assert!(file.contains(text), "{file}");
        let report = agentry.report("definitions/report.json");
        assert!(report["questions"][0]["output_tokens"].as_u64().is_some_and(|n| n > 0), "{report}");
        assert_eq!(report["questions"][0]["finish_reason"], "stop");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_that_ends_before_its_finish_reason_is_retried_never_saved() {
    let half = sse(
        &[chunk(json!({"role": "assistant", "content": ""}), None), chunk(json!({"content": "Half an"}), None)],
        "",
    );
    let model =
        ModelServer::start(Arc::new(Queue::new([half, Reply::text("The whole answer.")]))).await.expect("model");
    let agentry = Agentry::new().env("AGENTRY__MODEL__RETRY_MIN_DELAY", "1ms");
    let run = run_one(&model, &agentry).await;
    run.expect_code(0);
    assert_eq!(model.request_count(), 2, "the cut stream was asked again");
    assert!(run.output().contains("streamed an incomplete answer"), "the retry names why:\n{}", run.output());
    // The one question's answer was printed as it came: the broken start is marked as such.
    assert!(run.stdout.starts_with("Half an\nThe whole answer.\n"), "{}", run.stdout);
    assert!(run.stderr.contains("[the answer broke off; asking the model again]"), "{}", run.stderr);
    let report = agentry.report("definitions/report.json");
    assert_eq!(report["questions"][0]["retries"], 1, "{report}");
    let files = agentry.research_files("definitions");
    let file = std::fs::read_to_string(&files[0]).expect("file");
    assert!(file.contains("The whole answer.") && !file.contains("Half an"), "{file}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_error_in_the_middle_of_a_stream_is_retried() {
    let broken = sse(
        &[chunk(json!({"role": "assistant", "content": "Part"}), None)],
        "data: {\"error\":{\"message\":\"The server had an error while processing your request.\",\"type\":\"server_error\"}}\n\n",
    );
    let model = ModelServer::start(Arc::new(Queue::new([broken, Reply::text("Recovered.")]))).await.expect("model");
    let agentry = Agentry::new().env("AGENTRY__MODEL__RETRY_MIN_DELAY", "1ms");
    let run = run_one(&model, &agentry).await;
    run.expect_code(0);
    assert_eq!(model.request_count(), 2);
    assert!(run.output().contains("mid-stream: The server had an error"), "{}", run.output());
    let file = std::fs::read_to_string(&agentry.research_files("definitions")[0]).expect("file");
    assert!(file.contains("Recovered.") && !file.contains("Part"), "{file}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_json_answer_to_a_streamed_request_is_read_as_one() {
    let body = agentry::demo::model::completion_body(&agentry::demo::model::Completion {
        id: "chatcmpl-json".into(),
        model: json!("test-model"),
        content: Some("Answered without a stream.".into()),
        tool_calls: Vec::new(),
        finish_reason: None,
        prompt_tokens: 20,
        cached_tokens: 0,
    });
    let json = Reply::Raw { status: 200, content_type: "application/json".into(), body: body.to_string() };
    let model = ModelServer::start(Arc::new(Queue::new([json]))).await.expect("model");
    let agentry = Agentry::new();
    run_one(&model, &agentry).await.expect_code(0);
    assert_eq!(model.requests()[0].body["stream"], true);
    assert_eq!(model.request_count(), 1);
    let report = agentry.report("definitions/report.json");
    assert_eq!(report["questions"][0]["input_tokens"], 20, "its usage is counted: {report}");
    let file = std::fs::read_to_string(&agentry.research_files("definitions")[0]).expect("file");
    assert!(file.contains("Answered without a stream."), "{file}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_answer_cut_off_at_max_tokens_is_saved_truncated_with_a_warning() {
    let cut = Reply::Message {
        content: Some("Streaming is sending an answer in pie".into()),
        tool_calls: Vec::new(),
        finish_reason: Some("length".into()),
    };
    let model = ModelServer::start(Arc::new(Queue::new([cut]))).await.expect("model");
    let agentry = Agentry::new();
    let run = run_one(&model, &agentry).await;
    run.expect_code(0);
    let report = agentry.report("definitions/report.json");
    let row = &report["questions"][0];
    assert_eq!(row["status"], "ok", "{report}");
    assert_eq!(row["finish_reason"], "length");
    let warning = row["warning"].as_str().unwrap_or_default();
    assert!(warning.contains("cut off") && warning.contains("model.max_tokens"), "{report}");
    let file = std::fs::read_to_string(&agentry.research_files("definitions")[0]).expect("file");
    assert!(file.contains("\ntruncated: true\n---\n"), "{file}");
    assert!(run.stderr.contains("warning: the final answer was cut off"), "the warning is shown:\n{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_that_does_not_begin_within_the_first_token_timeout_is_retried() {
    // Far longer than the first-chunk timeout: the first request is given up long before.
    let slow = Reply::text("Too late.").delayed(std::time::Duration::from_secs(600));
    let model = ModelServer::start(Arc::new(Queue::new([slow, Reply::text("In time.")]))).await.expect("model");
    let agentry = Agentry::new()
        .env("AGENTRY__MODEL__FIRST_TOKEN_TIMEOUT", "300ms")
        .env("AGENTRY__MODEL__RETRY_MIN_DELAY", "1ms");
    let run = run_one(&model, &agentry).await;
    run.expect_code(0);
    assert_eq!(model.request_count(), 2);
    assert!(run.stderr.contains("did not begin its answer within 300ms (model.first_token_timeout)"), "{}", run.stderr);
    let file = std::fs::read_to_string(&agentry.research_files("definitions")[0]).expect("file");
    assert!(file.contains("In time."), "{file}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_that_stalls_past_the_idle_timeout_is_retried() {
    let stalled = Reply::text("Stalled after its first words.").stall_after(3);
    let model = ModelServer::start(Arc::new(Queue::new([stalled, Reply::text("Whole.")]))).await.expect("model");
    let agentry =
        Agentry::new().env("AGENTRY__MODEL__IDLE_TIMEOUT", "300ms").env("AGENTRY__MODEL__RETRY_MIN_DELAY", "1ms");
    let run = run_one(&model, &agentry).await;
    run.expect_code(0);
    assert_eq!(model.request_count(), 2);
    assert!(run.stderr.contains("stopped sending the response: nothing for 300ms"), "{}", run.stderr);
    let report = agentry.report("definitions/report.json");
    assert_eq!(report["questions"][0]["retries"], 1, "{report}");
    let file = std::fs::read_to_string(&agentry.research_files("definitions")[0]).expect("file");
    assert!(file.contains("Whole.") && !file.contains("Stalled"), "{file}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_stream_that_keeps_writing_is_never_cut() {
    // 40 events 100 ms apart: the answer takes over ten idle timeouts, and each gap is a third
    // of one. Nothing may cut it: one request, no retry.
    let text = "A slow model writes its answer a few words at a time, and it is still alive. ".repeat(8);
    let slow = Reply::text(text.trim()).trickle(std::time::Duration::from_millis(100));
    let model = ModelServer::start(Arc::new(Queue::new([slow]))).await.expect("model");
    let agentry = Agentry::new().env("AGENTRY__MODEL__IDLE_TIMEOUT", "300ms");
    let run = run_one(&model, &agentry).await;
    run.expect_code(0);
    assert_eq!(model.request_count(), 1, "{}", run.stderr);
    let report = agentry.report("definitions/report.json");
    assert_eq!(report["questions"][0]["retries"], 0, "{report}");
    assert!(report["questions"][0]["duration_s"].as_f64().is_some_and(|s| s > 1.2), "{report}");
    let file = std::fs::read_to_string(&agentry.research_files("definitions")[0]).expect("file");
    assert!(file.contains(text.trim()), "{file}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ask_prints_the_answer_as_it_is_written_and_ctrl_c_drops_it_at_once() {
    // The stream stops after its first words and never goes on (the connection stays open,
    // and the timeouts are long): what ask printed by then was printed as it came.
    let answer = "First words of the answer, then much more, and the last words.";
    let stalled = Reply::text(answer).stall_after(3);
    let model = ModelServer::start(Arc::new(Queue::new([stalled]))).await.expect("model");
    // A batch's grace would keep the question for 10 minutes: ask drops it at once.
    let agentry = Agentry::new()
        .env("AGENTRY__MODEL__IDLE_TIMEOUT", "10m")
        .env("AGENTRY__MODEL__FIRST_TOKEN_TIMEOUT", "10m")
        .env("AGENTRY__BATCH__SHUTDOWN_GRACE", "10m");
    let path = agentry.file("c.toml", &config(&model.base_url(), None, ""));
    let mut child = agentry.spawn(&["ask", "-c", path.to_str().expect("utf-8"), "Define streaming"]);
    let stdout = crate::harness::OutputWatch::stdout(&mut child);
    stdout.wait_for("First words of the answer").await;
    assert!(!stdout.text().contains("last words"), "{}", stdout.text());
    assert_eq!(model.request_count(), 1);
    // Ctrl-C: the question is dropped with its connection, no grace, no file.
    crate::harness::signal(child.id().expect("pid"), "INT");
    let run = Agentry::finish(child).await;
    assert_eq!(run.code, 1, "interrupted: {}", run.stderr);
    assert!(agentry.research_files("definitions").is_empty());
    assert!(!stdout.text().contains("last words"), "{}", stdout.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_over_ragged_streams_writes_what_a_batch_over_whole_answers_writes() {
    use agentry::demo::scripted::ScriptedResearcher;
    use agentry::demo::search_server::SearchServer;
    use agentry_testkit::model_server::StreamStyle;

    // Pieces of 1–7 characters cut inside JSON escapes, calls interleaved, writes of 3 bytes
    // cutting multi-byte characters: the researcher's search, save and answer come through whole.
    let ragged = ModelServer::start(Arc::new(ScriptedResearcher::new()))
        .await
        .expect("model")
        .with_stream_style(StreamStyle::ragged());
    let search = SearchServer::start().await.expect("search");
    let questions = "[batch]\nquestions = [\"Define Machine Learning\", \"What is the actor model?\", \
                     \"Qu'est-ce que l'été ? 日本語 🦀\"]\n";
    let mut bodies = Vec::new();
    for stream in ["true", "false"] {
        let agentry = Agentry::new().env("AGENTRY__MODEL__STREAM", stream);
        let path = agentry.file("c.toml", &config(&ragged.base_url(), Some(&search.url()), questions));
        agentry.run(&["run", "-c", path.to_str().expect("utf-8")]).await.expect_code(0);
        let mut files: Vec<String> = agentry
            .research_files("definitions")
            .iter()
            .map(|file| std::fs::read_to_string(file).expect("file"))
            // The write-up, not the front matter (its time differs).
            .map(|text| text.split("\n---\n").nth(1).unwrap_or_default().to_owned())
            .collect();
        files.sort();
        assert_eq!(files.len(), 3);
        bodies.push(files);
    }
    assert!(ragged.requests().iter().any(|r| r.body["stream"] == true));
    assert_eq!(bodies[0], bodies[1], "streamed and whole answers give the same research");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_streamed_tool_call_without_a_name_fails_at_once_instead_of_being_retried() {
    let nameless = sse(
        &[
            chunk(json!({"role": "assistant", "content": null}), None),
            chunk(
                json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"arguments": "{}"}}]}),
                None,
            ),
            chunk(json!({}), Some("tool_calls")),
        ],
        "data: [DONE]\n\n",
    );
    let model = ModelServer::start(Arc::new(Queue::new([nameless, Reply::text("never")]))).await.expect("model");
    let agentry = Agentry::new();
    run_one(&model, &agentry).await.expect_code(1);
    assert_eq!(model.request_count(), 1, "every stream of this server would be wrong the same way");
    let report = agentry.report("definitions/report.json");
    assert_eq!(report["questions"][0]["error_type"], "protocol_error", "{report}");
    assert!(
        report["questions"][0]["error"].as_str().is_some_and(|e| e.contains("tool call 0 of the stream has no name"))
    );
}
