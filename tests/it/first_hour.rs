//! The first hour's failures, each with the one `hint:` line that says what to do: Docker Model
//! Runner not reachable, the MCP gateway not reachable or refusing the token, no key with
//! `fallback = "none"`, an unknown model (404), a model without tool calling (400), a
//! conversation longer than the model's context (400). Each runs the real binary against the
//! test kit's peers; the model's error bodies are the real API's, as OpenAI's Python SDK reads
//! them (last test).

use std::process::Stdio;
use std::sync::Arc;

use agentry::deadline::Deadline;
use agentry::llm::LlmError;
use agentry::llm::client::{CallLog, ChatClient, ClientPolicy, Endpoint};
use agentry::llm::rate_limit::{LimitConfig, Limiter};
use agentry::llm::wire::{ChatRequest, Message, ToolDefinition};
use agentry_testkit::model_server::{ModelServer, Queue, Reply};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::harness::{Agentry, Run};
use crate::peers::{self, PythonMcpServer};

/// `agentry doctor -c <config>`.
async fn doctor(agentry: &Agentry, config: &str) -> Run {
    let path = agentry.file("c.toml", config);
    agentry.run(&["doctor", "-c", path.to_str().expect("utf-8")]).await
}

/// Check `name`'s line and the `hint:` line under it.
fn check_and_hint<'a>(run: &'a Run, name: &str) -> (&'a str, &'a str) {
    let lines: Vec<&str> = run.stdout.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.split_whitespace().nth(1) == Some(name))
        .unwrap_or_else(|| panic!("no line for {name}:\n{}", run.output()));
    let hint = lines.get(at + 1).map(|l| l.trim()).filter(|l| l.starts_with("hint: "));
    (lines[at], hint.unwrap_or_else(|| panic!("no hint under {name}:\n{}", run.output())))
}

fn local_model(url: &str, model: &str) -> String {
    format!("[model.local]\nbase_url = \"{url}\"\nmodel = \"{model}\"\n[mcp]\nservers = []\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn model_runner_not_reachable_is_named_as_such_with_how_to_enable_it() {
    // Nothing configured: the local route's default address is Docker Model Runner's.
    let agentry = Agentry::new();
    let run = doctor(&agentry, "[mcp]\nservers = []\n").await;
    run.expect_code(1);
    let (line, hint) = check_and_hint(&run, "model.local");
    assert!(line.starts_with('✗'), "{line}");
    assert!(
        line.contains("Docker Model Runner (its address inside Docker) at http://model-runner.docker.internal"),
        "{line}"
    );
    assert!(hint.contains("docker desktop enable model-runner") && hint.contains("MODEL_RUNNER_URL"), "{hint}");

    // A question asked then fails with the same words, in one line.
    let agentry = Agentry::new().env("AGENTRY__MODEL__MAX_RETRIES", "0");
    let path = agentry.file("c.toml", "[mcp]\nservers = []\n");
    let run = agentry.run(&["ask", "-c", path.to_str().expect("utf-8"), "Define DNS"]).await;
    run.expect_code(1);
    assert!(run.output().contains("cannot reach Docker Model Runner (its address inside Docker)"), "{}", run.output());
    assert_eq!(run.stderr.matches("hint: enable Docker Model Runner").count(), 1, "one hint line:\n{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_not_reachable_says_to_start_it_or_set_mcp_server_url() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/sse", listener.local_addr().expect("addr"));
    drop(listener);
    let agentry = Agentry::new();
    let config = format!("[[mcp.servers]]\nname = \"gateway\"\nurl = \"{url}\"\ntools = [\"search\"]\n");
    let run = doctor(&agentry, &config).await;
    run.expect_code(1);
    let (line, hint) = check_and_hint(&run, "mcp.gateway");
    assert!(line.starts_with('✗') && line.contains("cannot connect"), "{line}");
    assert!(hint.contains("docker mcp gateway run --transport sse") && hint.contains("MCP_SERVER_URL"), "{hint}");

    // A run that cannot reach it says it once, however often the session retries.
    let model = ModelServer::start(Arc::new(agentry::demo::scripted::ScriptedResearcher)).await.expect("model");
    let config = format!("[batch]\nquestions = [\"Define gateways\"]\n{}", local_model(&model.base_url(), "m"))
        .replace("[mcp]\nservers = []\n", &config);
    let path = agentry.file("run.toml", &config);
    let run = agentry.run(&["run", "-c", path.to_str().expect("utf-8")]).await;
    assert_eq!(run.stderr.matches("hint: is the MCP gateway running at").count(), 1, "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_refusing_the_token_says_where_the_token_goes() {
    let agentry = Agentry::new().env("MCP_GATEWAY_AUTH_TOKEN", "not-the-gateways-token");
    let token = agentry.file("gateway-token", "the-gateways-token\n");
    let mcp =
        PythonMcpServer::start_with_args("streamable-http", &["--require-bearer", token.to_str().expect("utf-8")])
            .await;
    let config = format!(
        "[[mcp.servers]]\nname = \"gateway\"\nurl = \"{}\"\ntools = [\"search\"]\ntoken_secret = \"mcp_gateway_auth_token\"\n",
        mcp.url()
    );
    let run = doctor(&agentry, &config).await;
    run.expect_code(1);
    let (line, hint) = check_and_hint(&run, "mcp.gateway");
    assert!(line.starts_with('✗') && line.contains("refused the bearer token"), "{line}");
    assert!(hint.contains("MCP_GATEWAY_AUTH_TOKEN"), "{hint}");
    assert!(!run.output().contains("not-the-gateways-token"), "{}", run.output());
}

#[tokio::test(flavor = "multi_thread")]
async fn no_key_with_fallback_none_says_where_the_key_goes() {
    let agentry = Agentry::new();
    let run = doctor(&agentry, "[model]\nfallback = \"none\"\n[mcp]\nservers = []\n").await;
    run.expect_code(1);
    let (line, hint) = check_and_hint(&run, "secret.openai_api_key");
    assert!(line.starts_with('✗') && line.contains("model.fallback = \"none\""), "{line}");
    assert!(hint.contains("OPENAI_API_KEY") && hint.contains("model.fallback = \"local\""), "{hint}");

    // A run says it once, for all its questions.
    let agentry = Agentry::new();
    let config = "[batch]\nquestions = [\"Define keys\", \"Define routes\"]\n[model]\nfallback = \"none\"\n[mcp]\nservers = []\n";
    let path = agentry.file("c.toml", config);
    let run = agentry.run(&["run", "-c", path.to_str().expect("utf-8")]).await;
    run.expect_code(1);
    assert!(run.output().contains("no model route: no API key"), "{}", run.output());
    assert_eq!(run.stderr.matches("hint: put the key in").count(), 1, "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_model_lists_what_is_served_and_how_to_pull_it() {
    let model = ModelServer::start(Arc::new(Queue::new([]))).await.expect("model").with_models(&["ai/smollm2"]);
    let agentry = Agentry::new();
    let run = doctor(&agentry, &local_model(&model.model_runner_url(None), "ai/gemma3")).await;
    run.expect_code(1);
    let (line, hint) = check_and_hint(&run, "model.local.model");
    assert!(line.contains("ai/gemma3 is not listed; the server lists ai/smollm2"), "{line}");
    assert!(hint.contains("docker model pull ai/gemma3"), "{hint}");
    let (line, hint) = check_and_hint(&run, "model.local.tools");
    assert!(line.contains("does not serve model \"ai/gemma3\" (HTTP 404)"), "{line}");
    assert!(hint.contains("docker model pull ai/gemma3"), "{hint}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_model_without_tool_calling_says_to_choose_another() {
    for (reply, status) in [(Reply::tools_unsupported(), 400), (Reply::llama_cpp_tools_without_jinja(), 500)] {
        let model = ModelServer::start(Arc::new(Queue::new([reply]))).await.expect("model");
        let agentry = Agentry::new();
        let run = doctor(&agentry, &local_model(&model.base_url(), "test-model")).await;
        run.expect_code(1);
        let (line, hint) = check_and_hint(&run, "model.local.tools");
        assert!(line.contains(&format!("does not support tools (HTTP {status})")), "{line}");
        assert!(hint.contains("choose a model that supports them") && hint.contains("--jinja"), "{hint}");
        assert_eq!(model.request_count(), 1, "not retried");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn context_length_exceeded_says_what_to_shorten() {
    for reply in [Reply::context_length_exceeded(8192, 9013), Reply::llama_cpp_context_exceeded(4096, 5000)] {
        let model = ModelServer::start(Arc::new(Queue::new([reply]))).await.expect("model");
        let agentry = Agentry::new();
        let run = doctor(&agentry, &local_model(&model.base_url(), "test-model")).await;
        run.expect_code(1);
        let (line, hint) = check_and_hint(&run, "model.local.tools");
        assert!(line.contains("the conversation is longer than model \"test-model\""), "{line}");
        assert!(hint.contains("model.max_tokens") && hint.contains("agent.max_turns"), "{hint}");
    }
    // In a batch: one request, not retried, and the row says which error it was.
    let refusals = [Reply::context_length_exceeded(8192, 9013), Reply::context_length_exceeded(8192, 9020)];
    let model = ModelServer::start(Arc::new(Queue::new(refusals))).await.expect("model");
    let agentry = Agentry::new();
    let config = format!(
        "[batch]\nquestions = [\"Define context\", \"Define window\"]\nconcurrency = 1\n{}",
        local_model(&model.base_url(), "test-model")
    );
    let path = agentry.file("c.toml", &config);
    let run = agentry.run(&["run", "-c", path.to_str().expect("utf-8")]).await;
    run.expect_code(1);
    assert_eq!(model.request_count(), 2, "one request a question");
    let hints = run.stderr.matches("hint: lower model.max_tokens or agent.max_turns").count();
    assert_eq!(hints, 1, "the hint once, however many questions fail the same way:\n{}", run.stderr);
    let row = &agentry.report("definitions/report.json")["questions"][0];
    assert_eq!(row["error_type"], "context_length_exceeded", "{row}");
    assert!(row["hint"].as_str().is_some_and(|h| h.starts_with("lower model.max_tokens")), "the row's hint: {row}");
    let summary_hints = run.stdout.matches("hint: lower model.max_tokens or agent.max_turns").count();
    assert_eq!(summary_hints, 1, "the summary names the hint once, under the table:\n{}", run.stdout);
}

/// What the product's client makes of each first-hour reply, straight from the library.
#[tokio::test(flavor = "multi_thread")]
async fn the_client_turns_each_reply_into_its_error_and_hint() {
    type Case = (Reply, fn(&LlmError) -> bool, &'static str);
    let cases: [Case; 3] = [
        (Reply::tools_unsupported(), |e| matches!(e, LlmError::ToolsUnsupported { .. }), "supports them"),
        (
            Reply::context_length_exceeded(8192, 9013),
            |e| matches!(e, LlmError::ContextTooLong { .. }),
            "model.max_tokens",
        ),
        (Reply::llama_cpp_context_exceeded(4096, 5000), |e| matches!(e, LlmError::ContextTooLong { .. }), "--ctx-size"),
    ];
    for (reply, expected, hint) in cases {
        let model = ModelServer::start(Arc::new(Queue::new([reply]))).await.expect("model");
        let error = complete(&model.base_url(), "test-model").await.expect_err("refused");
        assert!(expected(&error), "{error:?}");
        assert!(error.hint().is_some_and(|h| h.contains(hint)), "{:?}", error.hint());
    }
    let model = ModelServer::start(Arc::new(Queue::new([]))).await.expect("model").with_models(&["ai/smollm2"]);
    let error = complete(&model.model_runner_url(Some("llama.cpp")), "ai/gemma3").await.expect_err("404");
    assert!(matches!(error, LlmError::UnknownModel { .. }), "{error:?}");
    assert!(error.hint().is_some_and(|h| h.contains("docker model pull ai/gemma3")), "{:?}", error.hint());
    let error = complete("http://model-runner.docker.internal/engines/v1", "ai/gemma3").await.expect_err("no DNS");
    assert!(error.to_string().starts_with("cannot reach Docker Model Runner"), "{error}");
    assert!(error.hint().is_some_and(|h| h.contains("MODEL_RUNNER_URL")), "{:?}", error.hint());
}

async fn complete(base_url: &str, model: &str) -> Result<(), LlmError> {
    let policy = ClientPolicy { stream: false, max_retries: 0, ..ClientPolicy::default() };
    let client = ChatClient::new(policy).expect("client");
    let base = agentry::llm::BaseUrl::parse(base_url).expect("base url");
    let endpoint = Endpoint { base_url: base.url().clone(), model: model.to_owned(), credential: None };
    let messages = [Message::User { content: "Define tools".into() }];
    let tools = [ToolDefinition::function("search", "search", json!({"type": "object", "properties": {}}))];
    let request = ChatRequest { model, temperature: 0.0, max_tokens: 16, tools: &tools, messages: &messages };
    let limiter = Limiter::new(LimitConfig::default(), 1);
    let deadline = Deadline::after(std::time::Duration::from_secs(30));
    client.complete(&endpoint, &request, &CallLog::default(), &deadline, &limiter).await.map(drop)
}

/// OpenAI's Python SDK (the pinned reference client) reads the test kit's first-hour errors as it
/// reads the real API's: the exception class for the status, and `code`, `param` and `type`.
#[tokio::test(flavor = "multi_thread")]
async fn openais_sdk_reads_the_test_kits_errors_as_the_apis() {
    let model = ModelServer::start(Arc::new(Queue::new([
        Reply::context_length_exceeded(8192, 9013),
        Reply::tools_unsupported(),
    ])))
    .await
    .expect("model")
    .with_models(&["gpt-test"]);
    let script = r#"
import json, sys, openai
client = openai.OpenAI(base_url=sys.argv[1], api_key="sk-test", max_retries=0, _strict_response_validation=True)
out = []
for model in ["gpt-test", "gpt-test", "gpt-missing"]:
    try:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
            tools=[{"type": "function", "function": {"name": "search", "parameters": {"type": "object", "properties": {}}}}])
        out.append({"ok": True})
    except openai.APIStatusError as e:
        out.append({"class": type(e).__name__, "status": e.status_code, "code": e.code, "param": e.param, "type": e.type})
print(json.dumps(out))
"#;
    let child = tokio::process::Command::new(peers::python())
        .args(["-c", script, &model.base_url()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python starts");
    let mut child = child;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.shutdown().await;
    }
    let output = child.wait_with_output().await.expect("python output");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let seen: Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(
        seen,
        json!([
            {"class": "BadRequestError", "status": 400, "code": "context_length_exceeded", "param": "messages",
             "type": "invalid_request_error"},
            {"class": "BadRequestError", "status": 400, "code": null, "param": "tools", "type": "invalid_request_error"},
            {"class": "NotFoundError", "status": 404, "code": "model_not_found", "param": null,
             "type": "invalid_request_error"}
        ])
    );
}
