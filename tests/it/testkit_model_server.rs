//! Drives the test kit's model server over real HTTP with reqwest: it must answer like the real API.

use std::sync::Arc;
use std::time::Duration;

use agentry_testkit::model_server::{FnBehaviour, ModelServer, Queue, Reply, ScriptedToolCall};
use serde_json::{Value, json};

fn request_body() -> Value {
    json!({
        "model": "gpt-test",
        "messages": [
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": "Hello there"}
        ],
        "tools": [{"type": "function", "function": {
            "name": "search", "description": "Search",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}
        }}],
        "temperature": 0.2,
        "max_tokens": 256
    })
}

async fn post(client: &reqwest::Client, server: &ModelServer, key: Option<&str>, body: &Value) -> reqwest::Response {
    let mut request = client.post(format!("{}/chat/completions", server.base_url())).json(body);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    request.send().await.expect("request is sent")
}

async fn json_of(response: reqwest::Response) -> Value {
    response.json().await.expect("JSON body")
}

#[tokio::test]
async fn rate_limit_then_success_with_openai_shapes() {
    let server = ModelServer::start(Arc::new(Queue::new([
        Reply::rate_limited(Duration::from_millis(1500)),
        Reply::text("Hi!"),
    ])))
    .await
    .expect("server starts");
    assert!(server.base_url().starts_with("http://127.0.0.1:") && server.base_url().ends_with("/v1"));
    let client = reqwest::Client::new();

    let limited = post(&client, &server, Some("sk-anything"), &request_body()).await;
    assert_eq!(limited.status(), 429);
    assert_eq!(limited.headers()["retry-after"], "2");
    assert_eq!(limited.headers()["retry-after-ms"], "1500");
    let error = json_of(limited).await;
    assert_eq!(error["error"]["type"], "requests");
    assert_eq!(error["error"]["code"], "rate_limit_exceeded");
    assert_eq!(error["error"]["param"], Value::Null);
    assert!(error["error"]["message"].as_str().is_some_and(|m| m.starts_with("Rate limit reached")));

    let ok = post(&client, &server, Some("sk-anything"), &request_body()).await;
    assert_eq!(ok.status(), 200);
    assert!(ok.headers()["content-type"].to_str().unwrap_or("").starts_with("application/json"));
    let body = json_of(ok).await;
    assert!(body["id"].as_str().is_some_and(|id| id.starts_with("chatcmpl-")));
    assert_eq!(body["object"], "chat.completion");
    assert!(body["created"].as_u64().is_some_and(|t| t > 1_600_000_000));
    assert_eq!(body["model"], "gpt-test");
    assert_eq!(body["system_fingerprint"], "fp_demo");
    let choice = &body["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(choice["logprobs"], Value::Null);
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], "Hi!");
    assert_eq!(choice["message"]["refusal"], Value::Null);
    assert!(choice["message"].get("tool_calls").is_none());
    let usage = &body["usage"];
    let (p, c, t) = (
        usage["prompt_tokens"].as_u64().unwrap_or(0),
        usage["completion_tokens"].as_u64().unwrap_or(0),
        usage["total_tokens"].as_u64().unwrap_or(0),
    );
    assert!(p > 0 && c == 1 && t == p + c, "{usage}");

    // The queue is exhausted: a loud 500.
    let exhausted = post(&client, &server, None, &request_body()).await;
    assert_eq!(exhausted.status(), 500);
    let error = json_of(exhausted).await;
    assert_eq!(error["error"]["type"], "server_error");
    assert!(error["error"]["message"].as_str().unwrap_or("").contains("ran out"));

    let recorded = server.requests();
    assert_eq!(recorded.len(), 3);
    assert_eq!(server.request_count(), 3);
    assert_eq!(recorded.iter().map(|r| r.status).collect::<Vec<_>>(), vec![Some(429), Some(200), Some(500)]);
    assert_eq!(recorded[0].bearer.as_deref(), Some("sk-anything"));
    assert_eq!(recorded[2].bearer, None);
    assert_eq!(recorded[1].body, request_body());
    assert!(!format!("{:?}", recorded[0]).contains("sk-anything"), "Debug must redact the key");
    server.shutdown().await;
}

#[tokio::test]
async fn tool_calls_have_string_arguments_and_fresh_ids() {
    let server = ModelServer::start(Arc::new(Queue::new([
        Reply::tool_calls(vec![
            ScriptedToolCall::new("search", &json!({"query": "rust"})),
            ScriptedToolCall::raw("search", "{not json"),
        ]),
        Reply::tool_call("search", &json!({"query": "again"})),
        Reply::truncated("cut sh"),
    ])))
    .await
    .expect("server starts");
    let client = reqwest::Client::new();
    let body = json_of(post(&client, &server, None, &request_body()).await).await;
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null);
    let calls = choice["message"]["tool_calls"].as_array().cloned().unwrap_or_default();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(calls[0]["function"]["name"], "search");
    assert_eq!(calls[0]["function"]["arguments"], r#"{"query":"rust"}"#);
    assert_eq!(calls[1]["function"]["arguments"], "{not json");
    let id0 = calls[0]["id"].as_str().unwrap_or("").to_owned();
    let id1 = calls[1]["id"].as_str().unwrap_or("").to_owned();
    assert!(id0.starts_with("call_") && id1.starts_with("call_") && id0 != id1);

    let body = json_of(post(&client, &server, None, &request_body()).await).await;
    let id2 = body["choices"][0]["message"]["tool_calls"][0]["id"].as_str().unwrap_or("").to_owned();
    assert!(id2 != id0 && id2 != id1);

    let body = json_of(post(&client, &server, None, &request_body()).await).await;
    assert_eq!(body["choices"][0]["finish_reason"], "length");
}

#[tokio::test]
async fn api_key_is_enforced_like_openai() {
    let server = ModelServer::start(Arc::new(FnBehaviour::new(|_| Reply::text("ok"))))
        .await
        .expect("server starts")
        .require_key(Some("sk-right-key-0123456789".to_owned()));
    let client = reqwest::Client::new();

    let wrong_key = "sk-wrong-key-abcdefghijxyz";
    let wrong = post(&client, &server, Some(wrong_key), &request_body()).await;
    assert_eq!(wrong.status(), 401);
    let error = json_of(wrong).await;
    assert_eq!(error["error"]["type"], "invalid_request_error");
    assert_eq!(error["error"]["code"], "invalid_api_key");
    assert_eq!(error["error"]["param"], Value::Null);
    let message = error["error"]["message"].as_str().unwrap_or("");
    assert!(message.starts_with("Incorrect API key provided: sk-wr"), "{message}");
    assert!(message.contains("*jxyz.") && !message.contains(wrong_key), "{message}");
    assert!(message.ends_with("https://platform.openai.com/account/api-keys."));

    let missing = post(&client, &server, None, &request_body()).await;
    assert_eq!(missing.status(), 401);
    let error = json_of(missing).await;
    assert_eq!(error["error"]["code"], Value::Null);
    assert!(error["error"]["message"].as_str().unwrap_or("").starts_with("You didn't provide an API key"));

    let models = client.get(format!("{}/models", server.base_url())).send().await.expect("sent");
    assert_eq!(models.status(), 401);

    let right = post(&client, &server, Some("sk-right-key-0123456789"), &request_body()).await;
    assert_eq!(right.status(), 200);

    server.set_accepted_key(None);
    assert_eq!(post(&client, &server, Some("placeholder"), &request_body()).await.status(), 200);
    assert_eq!(server.request_count(), 4);
}

#[tokio::test]
async fn invalid_requests_get_openai_400s() {
    let server = ModelServer::start(Arc::new(FnBehaviour::new(|_| Reply::text("ok")))).await.expect("server starts");
    let client = reqwest::Client::new();
    let url = format!("{}/chat/completions", server.base_url());

    let not_json =
        client.post(&url).header("content-type", "application/json").body("{\"model\": ").send().await.expect("sent");
    assert_eq!(not_json.status(), 400);
    let error = json_of(not_json).await;
    assert_eq!(error["error"]["type"], "invalid_request_error");
    assert!(error["error"]["message"].as_str().unwrap_or("").starts_with("We could not parse the JSON body"));

    let call = json!({"id": "call_a", "type": "function", "function": {"name": "search", "arguments": "{}"}});
    let user = json!({"role": "user", "content": "u"});
    let cases: Vec<(Value, &str)> = vec![
        (json!({"messages": [user]}), "model"),
        (json!({"model": "m"}), "messages"),
        (json!({"model": "m", "messages": []}), "messages"),
        (json!({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}), "messages[0].role"),
        (
            json!({"model": "m", "messages": [user, {"role": "tool", "tool_call_id": "x", "content": "r"}]}),
            "messages.[1].role",
        ),
        (
            json!({"model": "m", "messages": [user, {"role": "assistant", "tool_calls": [call]}, {"role": "tool", "tool_call_id": "call_b", "content": "r"}]}),
            "messages.[2].tool_call_id",
        ),
        (json!({"model": "m", "messages": [user, {"role": "assistant", "tool_calls": [call]}]}), "messages.[1].role"),
        (
            json!({"model": "m", "messages": [user, {"role": "assistant", "tool_calls": [call]}, user]}),
            "messages.[1].role",
        ),
        (json!({"model": "m", "messages": [user], "tools": [{"type": "web_search"}]}), "tools[0].type"),
        (
            json!({"model": "m", "messages": [user], "tools": [{"type": "function", "function": {"name": "has space"}}]}),
            "tools[0].function.name",
        ),
        (
            json!({"model": "m", "messages": [user], "tools": [{"type": "function", "function": {"name": "x".repeat(65)}}]}),
            "tools[0].function.name",
        ),
        (
            json!({"model": "m", "messages": [user], "tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]}),
            "tools[0].function.parameters",
        ),
    ];
    for (body, param) in cases {
        let response = post(&client, &server, None, &body).await;
        assert_eq!(response.status(), 400, "{body}");
        let error = json_of(response).await;
        assert_eq!(error["error"]["type"], "invalid_request_error", "{body}");
        assert_eq!(error["error"]["param"], param, "{body}: {error}");
        assert!(error["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }

    // A complete tool round trip is accepted.
    let valid = json!({"model": "m", "messages": [
        user,
        {"role": "assistant", "content": null, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_a", "content": "result"}
    ]});
    assert_eq!(post(&client, &server, None, &valid).await.status(), 200);

    // Unknown routes and methods.
    let missing = client.post(format!("{}/completions", server.base_url())).send().await.expect("sent");
    assert_eq!(missing.status(), 404);
    let error = json_of(missing).await;
    assert_eq!(error["error"]["message"], "Invalid URL (POST /v1/completions)");
    let wrong_method = client.get(&url).send().await.expect("sent");
    assert_eq!(wrong_method.status(), 405);

    let models = json_of(client.get(format!("{}/models", server.base_url())).send().await.expect("sent")).await;
    assert_eq!(models["object"], "list");
    let ids: Vec<&str> = models["data"].as_array().into_iter().flatten().filter_map(|m| m["id"].as_str()).collect();
    assert!(ids.contains(&"agentry-demo") && ids.contains(&"m"), "{ids:?}");
}

#[tokio::test]
async fn peak_in_flight_counts_concurrent_requests() {
    let server = ModelServer::start(Arc::new(FnBehaviour::new(|r| Reply::text(format!("#{}", r.number())))))
        .await
        .expect("server starts")
        .with_latency(Duration::from_millis(400));
    let client = reqwest::Client::new();
    let body = request_body();
    let started = std::time::Instant::now();
    let responses = futures::future::join_all((0..5).map(|_| post(&client, &server, None, &body))).await;
    let elapsed = started.elapsed();
    assert!(responses.iter().all(|r| r.status() == 200));
    assert_eq!(server.peak_in_flight(), 5);
    assert_eq!(server.in_flight(), 0);
    assert!(elapsed >= Duration::from_millis(400) && elapsed < Duration::from_millis(1900), "{elapsed:?}");
    let mut numbers: Vec<u64> = server.requests().iter().map(|r| r.number).collect();
    numbers.sort_unstable();
    assert_eq!(numbers, vec![0, 1, 2, 3, 4]);
}

#[tokio::test]
async fn records_trace_context_and_scripts_failures() {
    let server = ModelServer::start(Arc::new(Queue::new([
        Reply::overloaded(),
        Reply::server_error(),
        Reply::malformed("{\"id\": \"chatcmpl-broken\", \"choices\": ["),
        Reply::Disconnect,
        Reply::text("slow").delayed(Duration::from_millis(300)),
        Reply::error(
            400,
            "invalid_request_error",
            Some("context_length_exceeded"),
            "This model's maximum context length is 8 tokens.",
        ),
    ])))
    .await
    .expect("server starts");
    let client = reqwest::Client::new();
    let url = format!("{}/chat/completions", server.base_url());
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let first = client.post(&url).header("traceparent", traceparent).json(&request_body()).send().await.expect("sent");
    assert_eq!(first.status(), 503);
    assert_eq!(json_of(first).await["error"]["type"], "server_error");
    assert_eq!(server.requests()[0].traceparent.as_deref(), Some(traceparent));

    assert_eq!(post(&client, &server, None, &request_body()).await.status(), 500);

    let malformed = post(&client, &server, None, &request_body()).await;
    assert_eq!(malformed.status(), 200);
    assert!(malformed.json::<Value>().await.is_err());

    // The connection closes before any response: reqwest reports a request
    // error (hyper's IncompleteMessage), not an HTTP status.
    let dropped = client.post(&url).json(&request_body()).send().await;
    let error = dropped.expect_err("a dropped connection yields no response");
    assert!(error.is_request() && !error.is_status(), "{error:?}");
    assert_eq!(server.requests()[3].status, None);

    let started = std::time::Instant::now();
    let slow = post(&client, &server, None, &request_body()).await;
    assert_eq!(slow.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(300));

    let context = json_of(post(&client, &server, None, &request_body()).await).await;
    assert_eq!(context["error"]["code"], "context_length_exceeded");
}

#[tokio::test]
async fn shutdown_stops_listening() {
    let server = ModelServer::start(Arc::new(Queue::default())).await.expect("server starts");
    let url = format!("{}/models", server.base_url());
    let client = reqwest::Client::new();
    assert_eq!(client.get(&url).send().await.expect("sent").status(), 200);
    server.shutdown().await;
    assert!(reqwest::Client::new().get(&url).send().await.is_err());

    let dropped = ModelServer::start(Arc::new(Queue::default())).await.expect("server starts");
    let url = format!("{}/models", dropped.base_url());
    drop(dropped);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(reqwest::Client::new().get(&url).send().await.is_err());
}

#[tokio::test]
async fn hostile_bodies_come_as_scripted() {
    let whole = Reply::text("a whole answer that the server cuts");
    let server = ModelServer::start(Arc::new(Queue::new([
        Reply::echo_key(403),
        Reply::html("<html><body>Bad gateway</body></html>"),
        whole.clone().cut_short(30),
        Reply::Stall("{\"choices\":[".into()),
        Reply::EndlessBody,
    ])))
    .await
    .expect("server starts");
    let client = reqwest::Client::new();

    let echoed = post(&client, &server, Some("sk-echo-me-0123456789"), &request_body()).await;
    assert_eq!(echoed.status(), 403);
    let message = json_of(echoed).await["error"]["message"].as_str().unwrap_or_default().to_owned();
    assert!(message.contains("sk-echo-me-0123456789"), "the bearer is quoted: {message}");

    let page = post(&client, &server, None, &request_body()).await;
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"].to_str().unwrap_or("").starts_with("text/html"));
    assert_eq!(page.text().await.expect("body"), "<html><body>Bad gateway</body></html>");

    // The Content-Length of the whole body, 30 bytes of it, then the connection drops.
    let mut cut = post(&client, &server, None, &request_body()).await;
    assert_eq!(cut.status(), 200);
    assert!(cut.content_length().is_some_and(|length| length > 30), "{:?}", cut.content_length());
    let mut received = Vec::new();
    let error = loop {
        match cut.chunk().await {
            Ok(Some(chunk)) => received.extend_from_slice(&chunk),
            Ok(None) => panic!("the body ended cleanly after {} bytes", received.len()),
            Err(error) => break error,
        }
    };
    assert_eq!(received.len(), 30, "{error}");
    assert!(received.starts_with(b"{"), "the start of the real body");

    // A stalled body: the head, then nothing; the next read never completes.
    let mut stalled = post(&client, &server, None, &request_body()).await;
    assert_eq!(stalled.chunk().await.expect("head").as_deref(), Some(&b"{\"choices\":["[..]));
    let next = tokio::time::timeout(Duration::from_millis(100), stalled.chunk()).await;
    assert!(next.is_err(), "nothing more came");

    // An endless body: no length, and more keeps coming.
    let mut endless = post(&client, &server, None, &request_body()).await;
    assert_eq!(endless.content_length(), None);
    let mut read = 0;
    while read < 4 * 1024 * 1024 {
        read += endless.chunk().await.expect("more").expect("never ends").len();
    }
    drop((stalled, endless));
    server.shutdown().await;
}

/// `"stream": true` is answered as OpenAI streams: chunks that agentry's assembler builds back
/// into the very answer the same reply gives unstreamed (text, tool calls, usage).
#[tokio::test(flavor = "multi_thread")]
async fn a_streamed_answer_assembles_into_the_unstreamed_one() {
    use agentry::llm::stream::{Assembler, ChatChunk};

    let reply = || Reply::Message {
        content: Some("Machine learning is learning from data, not rules.".into()),
        tool_calls: vec![ScriptedToolCall::new("search", &json!({"query": "machine learning definition"}))],
        finish_reason: None,
    };
    let server = ModelServer::start(Arc::new(Queue::new([reply(), reply()]))).await.expect("server");
    let client = reqwest::Client::new();
    let plain = json_of(post(&client, &server, None, &request_body()).await).await;

    let mut streamed = request_body();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let response = post(&client, &server, None, &streamed).await;
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = response.text().await.expect("body");
    let mut events: Vec<&str> =
        text.split("\n\n").filter(|e| !e.is_empty()).map(|e| e.trim_start_matches("data: ")).collect();
    assert_eq!(events.pop(), Some("[DONE]"));
    let mut assembler = Assembler::default();
    let mut shown = String::new();
    for event in &events {
        let chunk: ChatChunk = serde_json::from_str(event).expect("a chunk");
        shown.extend(assembler.push(chunk));
    }
    assert!(events.len() > 4, "in pieces: {events:?}");
    let assembled = assembler.finish().expect("whole");
    let message = &plain["choices"][0]["message"];
    assert_eq!(shown, message["content"].as_str().expect("text"), "the text as written, no arguments");
    let calls = assembled.choices[0].message.tool_calls.clone().expect("calls");
    assert_eq!(calls[0].function.name, "search");
    assert_eq!(calls[0].function.arguments, message["tool_calls"][0]["function"]["arguments"].as_str().expect("args"));
    assert_eq!(assembled.choices[0].finish_reason.as_deref(), plain["choices"][0]["finish_reason"].as_str());
    let usage = assembled.usage.expect("the usage chunk");
    assert_eq!(usage.prompt_tokens, plain["usage"]["prompt_tokens"].as_u64().expect("usage"));

    // stream_options without a stream is the real API's 400.
    let mut wrong = request_body();
    wrong["stream_options"] = json!({"include_usage": true});
    assert_eq!(post(&client, &server, None, &wrong).await.status(), 400);
}
