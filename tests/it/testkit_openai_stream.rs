//! OpenAI's Python SDK reads the test kit's streams: so the server agentry's streaming is tested
//! against does not only agree with agentry's own reader.
//!
//! `tests/peers/openai_stream_client.py` asks each server for a stream twice, through
//! `chat.completions.create(stream=True)` and through the SDK's accumulating helper
//! `chat.completions.stream(...)`, validating every chunk against the SDK's types, and prints
//! what the SDK read. That must be what the same reply says unstreamed, and what agentry's
//! Assembler builds of the stream.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use agentry_testkit::model_server::{FnBehaviour, ModelServer, Reply, ScriptedToolCall, StreamStyle};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::peers;
use crate::testkit_model_server::{Said, assemble, multilingual_reply, receive, stream_request, text, usage_of};

/// The request every exchange makes: a question, and the tools the replies call.
fn request() -> Value {
    let tool = |name: &str| {
        json!({"type": "function", "function": {
            "name": name, "description": name,
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}
        }})
    };
    json!({
        "model": "gpt-test",
        "messages": [
            {"role": "system", "content": "You are a researcher."},
            {"role": "user", "content": "Qu'est-ce que l'apprentissage automatique ? 日本語で 🚀"}
        ],
        "tools": [tool("search"), tool("save_research")]
    })
}

/// What the SDK read, as the script prints it.
fn said_by_sdk(answer: &Value) -> Said {
    let calls = answer["tool_calls"].as_array().into_iter().flatten();
    Said {
        content: answer["content"].as_str().map(str::to_owned),
        calls: calls.map(|call| (text(&call["name"]), text(&call["arguments"]))).collect(),
        finish_reason: answer["finish_reason"].as_str().map(str::to_owned),
        usage: usage_of(&answer["usage"]),
    }
}

/// Runs the script against `base_urls` with the request on its standard input.
async fn read_with_the_sdk(base_urls: &[String], request: &Value) -> Vec<Value> {
    let script = peers::repo_root().join("tests/peers/openai_stream_client.py");
    let mut child = tokio::process::Command::new(peers::python())
        .arg(&script)
        .args(base_urls)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the SDK script starts");
    let mut stdin = child.stdin.take().expect("stdin is piped");
    stdin.write_all(request.to_string().as_bytes()).await.expect("the request is written");
    drop(stdin);
    let output = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("the SDK script finished within 120 s")
        .expect("its output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the SDK read the streams without an error:\n{stderr}");
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| panic!("the script's JSON ({error}):\n{stderr}"))
}

/// Three servers: the demo's stream of text and three calls, the same cut ragged (pieces of 1 to
/// 7 characters, calls interleaved, 3-byte writes), and calls without text, ragged. For each,
/// the SDK's two readings, agentry's Assembler and the unstreamed body say the same.
#[tokio::test(flavor = "multi_thread")]
async fn openais_sdk_reads_our_streams_as_the_unstreamed_answer() {
    let calls_only = Reply::tool_calls(vec![
        ScriptedToolCall::new("search", &json!({"query": "café \"noir\" 日本"})),
        ScriptedToolCall::new("save_research", &json!({"title": "🚀", "body": "a\\b\nc"})),
    ]);
    let cases = [
        ("demo", multilingual_reply(), StreamStyle::default()),
        ("ragged", multilingual_reply(), StreamStyle::ragged()),
        ("ragged, calls only", calls_only, StreamStyle::ragged()),
    ];
    let mut servers = Vec::new();
    for (_, reply, style) in &cases {
        let reply = reply.clone();
        let server = ModelServer::start(Arc::new(FnBehaviour::new(move |_| reply.clone()))).await.expect("server");
        servers.push(server.with_stream_style(style.clone()));
    }
    let urls: Vec<String> = servers.iter().map(ModelServer::base_url).collect();
    let request = request();
    let read = read_with_the_sdk(&urls, &request).await;
    assert_eq!(read.len(), cases.len());

    let client = reqwest::Client::new();
    let url = |server: &ModelServer| format!("{}/chat/completions", server.base_url());
    let mut unstreamed_calls = Vec::new();
    for (((case, _, _), server), sdk) in cases.iter().zip(&servers).zip(&read) {
        let unstreamed = client.post(url(server)).json(&request).send().await.expect("sent");
        assert!(unstreamed.content_length().is_some(), "{case}: a stream style leaves unstreamed bodies whole");
        let plain: Value = unstreamed.json().await.expect("JSON");
        let said = Said::of_body(&plain);
        assert!(!said.calls.is_empty(), "{case}");

        let streamed = client.post(url(server)).json(&stream_request(&request)).send().await.expect("sent");
        let (assembled, _) = assemble(&receive(streamed).await);
        assert_eq!(Said::of_response(&assembled.expect("whole")), said, "{case}: agentry's Assembler");

        for reading in ["create", "stream"] {
            let answer = &sdk[reading];
            assert_eq!(said_by_sdk(answer), said, "{case}: the SDK's {reading}: {answer}");
            assert_eq!(answer["usage"]["total_tokens"], plain["usage"]["total_tokens"], "{case}: {reading}");
            assert_eq!(answer["refusal"], Value::Null, "{case}: {reading}");
            let ids: Vec<&str> =
                answer["tool_calls"].as_array().into_iter().flatten().filter_map(|c| c["id"].as_str()).collect();
            assert_eq!(ids.len(), said.calls.len(), "{case}: every call has its id: {answer}");
            assert!(ids.iter().all(|id| id.starts_with("call_")), "{case}: {ids:?}");
            assert_eq!(ids.iter().collect::<std::collections::BTreeSet<_>>().len(), ids.len(), "{case}: {ids:?}");
            let kinds = answer["tool_calls"].as_array().into_iter().flatten().map(|call| &call["type"]);
            assert!(kinds.into_iter().all(|kind| kind == "function"), "{case}: {answer}");
        }
        let create = &sdk["create"];
        let last = create["chunks"].as_u64().expect("a chunk count") - 1;
        assert_eq!(create["usage_chunks"], json!([last]), "{case}: the usage comes last, alone");
        unstreamed_calls.push(said.calls);
    }

    // Calls one after another, as OpenAI sends them: the SDK's helper says each call done, whole.
    let done = read[0]["stream"]["arguments_done"].as_array().cloned().unwrap_or_default();
    let done: Vec<(String, String)> = done.iter().map(|event| (text(&event[1]), text(&event[2]))).collect();
    assert_eq!(done, unstreamed_calls[0]);
}
