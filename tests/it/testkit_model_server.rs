//! Drives the test kit's model server over real HTTP with reqwest: it must answer like the real API.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentry::llm::stream::{Assembler, ChatChunk, Incomplete};
use agentry::llm::wire::ChatResponse;
use agentry_testkit::model_server::{CallOrder, FnBehaviour, ModelServer, Queue, Reply, ScriptedToolCall};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Value, json};
use sse_stream::SseStream;

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

/// The request, asking for a stream with its usage chunk.
pub fn stream_request(body: &Value) -> Value {
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    streamed
}

/// A streamed body as the client read it.
pub struct Received {
    /// The body's pieces as they came off the connection.
    pub frames: Vec<Bytes>,
    /// Each SSE event's `data` (sse-stream's parse), `[DONE]` included.
    pub events: Vec<String>,
    /// What ended the body, if it did not end cleanly.
    pub error: Option<String>,
}

impl Received {
    /// Whether each event came in body pieces of its own (no piece holds parts of two).
    pub fn events_written_alone(&self) -> bool {
        let mut piece_ends = std::collections::BTreeSet::new();
        let mut at = 0;
        for frame in &self.frames {
            at += frame.len();
            piece_ends.insert(at);
        }
        let body = self.frames.concat();
        let event_ends =
            body.windows(2).enumerate().filter(|(_, pair)| pair.starts_with(b"\n\n")).map(|(at, _)| at + 2);
        event_ends.into_iter().all(|end| piece_ends.contains(&end))
    }

    /// The `chat.completion.chunk`s (every event but `[DONE]`).
    pub fn chunks(&self) -> Vec<Value> {
        let chunks = self.events.iter().filter(|data| *data != "[DONE]");
        chunks.map(|data| serde_json::from_str(data).expect("a chunk is JSON")).collect()
    }
}

/// Reads `response`'s SSE events with sse-stream until the body ends (or fails), keeping the
/// body's pieces.
pub async fn receive(response: reqwest::Response) -> Received {
    let frames = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&frames);
    let body = response.bytes_stream().inspect(move |frame| {
        if let Ok(frame) = frame {
            seen.lock().expect("frames").push(frame.clone());
        }
    });
    let mut sse = std::pin::pin!(SseStream::from_bytes_stream(body));
    let (mut events, mut error) = (Vec::new(), None);
    while let Some(event) = sse.next().await {
        match event {
            Ok(event) => events.push(event.data.unwrap_or_default()),
            Err(failure) => {
                error = Some(failure.to_string());
                break;
            }
        }
    }
    let frames = std::mem::take(&mut *frames.lock().expect("frames"));
    Received { frames, events, error }
}

/// What agentry's Assembler builds of a stream's events, and the text it showed as it went.
pub fn assemble(received: &Received) -> (Result<ChatResponse, Incomplete>, String) {
    let mut assembler = Assembler::default();
    let mut shown = String::new();
    for chunk in received.chunks() {
        let chunk: ChatChunk = serde_json::from_value(chunk).expect("a chat.completion.chunk");
        shown.extend(assembler.push(chunk));
    }
    (assembler.finish(), shown)
}

/// What an answer says, however it came, but its call ids (every answer gets its own).
#[derive(Debug, PartialEq, Eq)]
pub struct Said {
    pub content: Option<String>,
    /// Each call's name and arguments, in order.
    pub calls: Vec<(String, String)>,
    pub finish_reason: Option<String>,
    /// Prompt and completion tokens.
    pub usage: Option<(u64, u64)>,
}

impl Said {
    /// What an unstreamed `chat.completion` body says.
    pub fn of_body(body: &Value) -> Self {
        let choice = &body["choices"][0];
        let calls = choice["message"]["tool_calls"].as_array().into_iter().flatten();
        Said {
            content: choice["message"]["content"].as_str().map(str::to_owned),
            calls: calls.map(|call| (text(&call["function"]["name"]), text(&call["function"]["arguments"]))).collect(),
            finish_reason: choice["finish_reason"].as_str().map(str::to_owned),
            usage: usage_of(&body["usage"]),
        }
    }

    /// What the Assembler's answer says.
    pub fn of_response(response: &ChatResponse) -> Self {
        let choice = &response.choices[0];
        let calls = choice.message.tool_calls.iter().flatten();
        Said {
            content: choice.message.content.clone(),
            calls: calls.map(|call| (call.function.name.clone(), call.function.arguments.clone())).collect(),
            finish_reason: choice.finish_reason.clone(),
            usage: response.usage.map(|usage| (usage.prompt_tokens, usage.completion_tokens)),
        }
    }
}

/// A JSON string's text (empty when it is not one).
pub fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_owned()
}

/// A `usage` object's prompt and completion tokens.
pub fn usage_of(usage: &Value) -> Option<(u64, u64)> {
    Some((usage["prompt_tokens"].as_u64()?, usage["completion_tokens"].as_u64()?))
}

/// Text and three parallel calls whose arguments hold multi-byte characters and JSON escapes.
pub fn multilingual_reply() -> Reply {
    Reply::Message {
        content: Some("Voilà : 日本の機械学習 🚀🤖, « ça marche » — naïve café.".into()),
        tool_calls: vec![
            ScriptedToolCall::new("search", &json!({"query": "機械学習 \"définition\"\n🚀"})),
            ScriptedToolCall::new("search", &json!({"query": "é\\path 日本 🧪", "limit": 3})),
            ScriptedToolCall::new("save_research", &json!({"title": "Ünïcödé", "body": "line\nnext \"q\" \\ end 🤖"})),
        ],
        finish_reason: None,
    }
}

/// `"stream": true` is answered as OpenAI streams, one event per body write: chunks that
/// agentry's assembler builds back into the very answer the same reply gives unstreamed (text,
/// tool calls, usage).
#[tokio::test(flavor = "multi_thread")]
async fn a_streamed_answer_assembles_into_the_unstreamed_one() {
    let reply = || Reply::Message {
        content: Some("Machine learning is learning from data, not rules.".into()),
        tool_calls: vec![ScriptedToolCall::new("search", &json!({"query": "machine learning definition"}))],
        finish_reason: None,
    };
    let server = ModelServer::start(Arc::new(Queue::new([reply(), reply()]))).await.expect("server");
    let client = reqwest::Client::new();
    let plain = json_of(post(&client, &server, None, &request_body()).await).await;

    let response = post(&client, &server, None, &stream_request(&request_body())).await;
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert_eq!(response.content_length(), None, "no length: the events are written as they come");
    let received = receive(response).await;
    assert_eq!(received.error, None);
    assert!(received.events.len() > 4, "in pieces: {:?}", received.events);
    assert_eq!(received.events.last().map(String::as_str), Some("[DONE]"));
    assert!(received.events_written_alone(), "one write per event, not {} writes", received.frames.len());
    let (assembled, shown) = assemble(&received);
    let assembled = assembled.expect("whole");
    assert_eq!(Said::of_response(&assembled), Said::of_body(&plain));
    assert_eq!(shown, text(&plain["choices"][0]["message"]["content"]), "the text as written, no arguments");

    // stream_options without a stream is the real API's 400.
    let mut wrong = request_body();
    wrong["stream_options"] = json!({"include_usage": true});
    assert_eq!(post(&client, &server, None, &wrong).await.status(), 400);
}

/// A stream as ragged as a valid one gets, its body written a few bytes at a time (cut inside
/// SSE lines and inside multi-byte characters), its text and arguments in uneven pieces (cut
/// inside JSON escapes), its three calls interleaved: read with sse-stream and assembled, it is
/// the unstreamed answer.
#[tokio::test(flavor = "multi_thread")]
async fn a_ragged_stream_split_at_every_byte_assembles_into_the_unstreamed_answer() {
    let sizes = [1, 2, 3, 5];
    let ragged = |bytes| multilingual_reply().in_pieces([1, 4, 2, 7, 1, 3], CallOrder::Interleaved).split_writes(bytes);
    let server = ModelServer::start(Arc::new(Queue::new(
        std::iter::once(multilingual_reply()).chain(sizes.map(ragged)).collect::<Vec<_>>(),
    )))
    .await
    .expect("server");
    let client = reqwest::Client::new();
    let plain = json_of(post(&client, &server, None, &request_body()).await).await;
    let said = Said::of_body(&plain);
    assert_eq!(said.calls.len(), 3);

    for bytes in sizes {
        let received = receive(post(&client, &server, None, &stream_request(&request_body())).await).await;
        assert_eq!(received.error, None, "{bytes}-byte writes");
        assert!(received.frames.iter().all(|frame| frame.len() <= bytes), "{bytes}-byte writes");
        assert!(
            received.frames.iter().any(|frame| std::str::from_utf8(frame).is_err()),
            "{bytes}-byte writes cut a multi-byte character"
        );
        let (assembled, shown) = assemble(&received);
        assert_eq!(Said::of_response(&assembled.expect("whole")), said, "{bytes}-byte writes");
        assert_eq!(Some(shown), said.content);

        let deltas: Vec<(u64, String)> = received
            .chunks()
            .iter()
            .flat_map(|chunk| chunk["choices"][0]["delta"]["tool_calls"].as_array().cloned().unwrap_or_default())
            .map(|call| (call["index"].as_u64().expect("an index"), text(&call["function"]["arguments"])))
            .collect();
        let order: Vec<u64> = deltas.iter().map(|(index, _)| *index).take(6).collect();
        assert_eq!(order, [0, 1, 2, 0, 1, 2], "the calls take turns");
        let mid_escape = |piece: &String| piece.chars().rev().take_while(|c| *c == '\\').count() % 2 == 1;
        assert!(deltas.iter().any(|(_, piece)| mid_escape(piece)), "a piece ends inside a JSON escape: {deltas:?}");
    }
}

/// EndAfter: the first events, then a clean end: no finish reason, no `[DONE]`, which agentry's
/// assembler calls cut. Unstreamed, the body ends after as many events: none is an empty body.
#[tokio::test(flavor = "multi_thread")]
async fn a_stream_that_ends_early_is_cut() {
    let long = || Reply::text("A long answer that the stream does not finish, in many pieces.");
    let server =
        ModelServer::start(Arc::new(Queue::new([long().end_after(3), long().end_after(0)]))).await.expect("server");
    let client = reqwest::Client::new();

    let received = receive(post(&client, &server, None, &stream_request(&request_body())).await).await;
    assert_eq!(received.error, None, "a clean end");
    assert_eq!(received.events.len(), 3, "{:?}", received.events);
    assert!(received.chunks().iter().all(|chunk| chunk["choices"][0]["finish_reason"].is_null()));
    let (assembled, shown) = assemble(&received);
    assert_eq!(assembled.expect_err("cut"), Incomplete::Cut { chunks: 3 });
    assert_eq!(shown, "A long answer that the stream do", "the two pieces that came");

    let empty = post(&client, &server, None, &request_body()).await;
    assert_eq!(empty.status(), 200);
    assert_eq!(empty.text().await.expect("a clean end"), "");
}

/// StallAfter: the first events, then nothing with the connection open (unstreamed, the whole
/// body and no end); the stall ends when the server stops, dropping the connection.
#[tokio::test(flavor = "multi_thread")]
async fn a_stream_that_stalls_sends_its_first_events_then_nothing() {
    let answer = "An answer that stalls after its second piece.";
    let server = ModelServer::start(Arc::new(Queue::new([
        Reply::text(answer).stall_after(2),
        Reply::text(answer).stall_after(1),
    ])))
    .await
    .expect("server");
    let client = reqwest::Client::new();
    let response = post(&client, &server, None, &stream_request(&request_body())).await;
    let mut events = std::pin::pin!(SseStream::from_bytes_stream(response.bytes_stream()));
    let mut first = Vec::new();
    for _ in 0..2 {
        let event = tokio::time::timeout(Duration::from_secs(30), events.next()).await.expect("an event comes");
        first.push(event.expect("not the end").expect("an event").data.unwrap_or_default());
    }
    let chunk: Value = serde_json::from_str(&first[1]).expect("a chunk");
    assert_eq!(chunk["choices"][0]["delta"]["content"], "An answer that s");
    let next = tokio::time::timeout(Duration::from_millis(300), events.next()).await;
    assert!(next.is_err(), "nothing after the second event: {next:?}");
    assert_eq!(server.in_flight(), 1, "a stalled stream is still in flight");

    let mut unstreamed = post(&client, &server, None, &request_body()).await;
    let mut body = Vec::new();
    let whole: Value = loop {
        let piece = tokio::time::timeout(Duration::from_secs(30), unstreamed.chunk()).await.expect("the body comes");
        body.extend_from_slice(&piece.expect("read").expect("more body"));
        if let Ok(whole) = serde_json::from_slice(&body) {
            break whole;
        }
    };
    assert_eq!(whole["choices"][0]["message"]["content"], answer);
    assert!(tokio::time::timeout(Duration::from_millis(300), unstreamed.chunk()).await.is_err(), "no end");
    assert_eq!(server.in_flight(), 2);
    drop(unstreamed);
    let gone = tokio::time::timeout(Duration::from_secs(30), async {
        while server.in_flight() > 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(gone.is_ok(), "a client that goes ends its stall");

    server.shutdown().await;
    let dropped = tokio::time::timeout(Duration::from_secs(30), events.next()).await.expect("the stall ends");
    assert!(matches!(dropped, Some(Err(_))), "the connection drops: {dropped:?}");
}

/// Trickle: each body write waits its turn, so a stream's first event is read while the server
/// is still writing the rest (the request is in flight until its last event); the answer is
/// the same. Unstreamed, the headers come first and the body after the wait.
#[tokio::test(flavor = "multi_thread")]
async fn a_trickled_stream_arrives_one_event_at_a_time() {
    let every = Duration::from_millis(100);
    let answer = "A slow model, still writing.";
    let server = ModelServer::start(Arc::new(Queue::new([
        Reply::text(answer),
        Reply::text(answer).in_pieces([4], CallOrder::Sequential).trickle(every),
        Reply::text(answer).trickle(every),
    ])))
    .await
    .expect("server");
    let client = reqwest::Client::new();
    let plain = json_of(post(&client, &server, None, &request_body()).await).await;

    let response = post(&client, &server, None, &stream_request(&request_body())).await;
    let mut sse = std::pin::pin!(SseStream::from_bytes_stream(response.bytes_stream()));
    let mut received = Received { frames: Vec::new(), events: Vec::new(), error: None };
    let mut in_flight = Vec::new();
    while let Some(event) = tokio::time::timeout(Duration::from_secs(30), sse.next()).await.expect("the next event") {
        received.events.push(event.expect("an event").data.unwrap_or_default());
        in_flight.push(server.in_flight());
    }
    // Eleven events a tenth of a second apart: the first is read a second before the last is.
    assert_eq!(received.events.len(), 11, "{:?}", received.events);
    assert_eq!(in_flight[0], 1, "the first event came while the server was still writing: {in_flight:?}");
    let (assembled, _) = assemble(&received);
    assert_eq!(Said::of_response(&assembled.expect("whole")), Said::of_body(&plain));
    settled(&server).await;

    let unstreamed = post(&client, &server, None, &request_body()).await;
    assert_eq!(server.in_flight(), 1, "the headers come before the body is written");
    assert_eq!(Said::of_body(&json_of(unstreamed).await), Said::of_body(&plain));
    settled(&server).await;
}

/// Waits (at most 30 s) until no request is in flight.
async fn settled(server: &ModelServer) {
    let settled = tokio::time::timeout(Duration::from_secs(30), async {
        while server.in_flight() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(settled.is_ok(), "{} requests still in flight", server.in_flight());
}
