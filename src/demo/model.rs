//! The demo's model endpoint: [`ScriptedResearcher`] behind an OpenAI-compatible
//! `POST /v1/chat/completions` on loopback.
//!
//! Only what the demo needs: the completion shape the real API sends (message, tool calls,
//! `finish_reason`, `usage`), streamed as `chat.completion.chunk`s when the request asks for a
//! stream, and OpenAI's error body for a request it cannot read. The completion shape
//! ([`completion_body`], [`stream_chunks`]) and the token estimate are public because the test
//! kit's model server answers with the same shape.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use super::loopback::Loopback;
use super::scripted::{ScriptedReply, ScriptedResearcher};
use crate::llm::BaseUrl;

/// The demo model server. Stops on [`shutdown`](Self::shutdown) or when dropped.
#[derive(Debug)]
pub struct DemoModelServer {
    server: Loopback,
}

struct Shared {
    next_call: AtomicU64,
    next_response: AtomicU64,
}

impl DemoModelServer {
    /// Serves the scripted researcher on `127.0.0.1`, any free port.
    pub async fn start() -> std::io::Result<Self> {
        let shared = Arc::new(Shared { next_call: AtomicU64::new(1), next_response: AtomicU64::new(0) });
        let server = Loopback::start_local("demo model server", |_| {
            axum::Router::new().route("/v1/chat/completions", post(chat_completions)).with_state(shared)
        })
        .await?;
        Ok(Self { server })
    }

    /// The OpenAI base URL, `http://127.0.0.1:PORT/v1/`.
    pub fn base_url(&self) -> BaseUrl {
        let text = format!("http://{}/v1", self.server.addr());
        BaseUrl::parse(&text).expect("an IP address and port make a base URL")
    }

    /// Stops the server.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}

async fn chat_completions(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        let error = json!({"error": {
            "message": "We could not parse the JSON body of your request.",
            "type": "invalid_request_error", "param": null, "code": null,
        }});
        return (StatusCode::BAD_REQUEST, axum::Json(error)).into_response();
    };
    let (content, calls) = match ScriptedResearcher.respond(&request) {
        ScriptedReply::Answer(text) => (Some(text), Vec::new()),
        ScriptedReply::Call { name, arguments } => {
            let id = format!("call_{}", shared.next_call.fetch_add(1, Ordering::Relaxed));
            (None, vec![CallOut { id, name, arguments: arguments.to_string() }])
        }
    };
    let number = shared.next_response.fetch_add(1, Ordering::Relaxed);
    let body = completion_body(&Completion {
        id: format!("chatcmpl-demo{number:06}"),
        model: request.get("model").cloned().unwrap_or(Value::Null),
        content,
        tool_calls: calls,
        finish_reason: None,
        prompt_tokens: prompt_tokens(&request),
        cached_tokens: 0,
    });
    if request.get("stream") != Some(&Value::Bool(true)) {
        return axum::Json(body).into_response();
    }
    // Streamed as a model writes: one event at a time, a few milliseconds apart.
    let include_usage = request.pointer("/stream_options/include_usage") == Some(&Value::Bool(true));
    let events = stream_chunks(&body, include_usage)
        .into_iter()
        .map(|chunk| format!("data: {chunk}\n\n"))
        .chain(std::iter::once("data: [DONE]\n\n".to_owned()));
    let paced = futures::StreamExt::then(futures::stream::iter(events), |event| async move {
        tokio::time::sleep(DEMO_CHUNK_GAP).await;
        Ok::<_, std::convert::Infallible>(Bytes::from(event))
    });
    ([(header::CONTENT_TYPE, "text/event-stream")], Body::from_stream(paced)).into_response()
}

/// The demo model's pace when streaming: 16 characters every 5 ms, a fast cloud model's speed.
const DEMO_CHUNK_GAP: Duration = Duration::from_millis(5);

/// One tool call in a completion.
#[derive(Debug, Clone)]
pub struct CallOut {
    /// `call_…`, unique per server.
    pub id: String,
    /// Function name.
    pub name: String,
    /// The raw `arguments` string (sent verbatim, valid JSON or not).
    pub arguments: String,
}

/// What a completion says.
#[derive(Debug, Clone)]
pub struct Completion {
    /// `chatcmpl-…`.
    pub id: String,
    /// The model the request named.
    pub model: Value,
    /// Assistant text (`null` when absent).
    pub content: Option<String>,
    /// Tool calls (omitted when empty).
    pub tool_calls: Vec<CallOut>,
    /// `None`: `tool_calls` when there are calls, else `stop`.
    pub finish_reason: Option<String>,
    /// `usage.prompt_tokens`.
    pub prompt_tokens: u64,
    /// `usage.prompt_tokens_details.cached_tokens` (at most `prompt_tokens`): the part of the
    /// prompt a provider read from its prompt cache.
    pub cached_tokens: u64,
}

/// The `chat.completion` body as the OpenAI API sends it, `usage` included (completion tokens
/// estimated from the text and calls).
pub fn completion_body(completion: &Completion) -> Value {
    let mut completion_tokens = completion.content.as_deref().map_or(0, estimate_tokens);
    let mut message = serde_json::Map::new();
    message.insert("role".into(), json!("assistant"));
    message.insert("content".into(), json!(completion.content));
    if !completion.tool_calls.is_empty() {
        let calls = completion.tool_calls.iter().map(|call| {
            completion_tokens += estimate_tokens(&call.name) + estimate_tokens(&call.arguments);
            json!({"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}})
        });
        message.insert("tool_calls".into(), Value::Array(calls.collect()));
    }
    message.insert("refusal".into(), Value::Null);
    message.insert("annotations".into(), json!([]));
    let finish_reason = completion
        .finish_reason
        .clone()
        .unwrap_or_else(|| if completion.tool_calls.is_empty() { "stop" } else { "tool_calls" }.to_owned());
    let completion_tokens = completion_tokens.max(1);
    let created = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    json!({
        "id": completion.id,
        "object": "chat.completion",
        "created": created,
        "model": completion.model,
        "choices": [{"index": 0, "message": Value::Object(message), "logprobs": null, "finish_reason": finish_reason}],
        "usage": {
            "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": completion.prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": completion.cached_tokens.min(completion.prompt_tokens), "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0, "audio_tokens": 0,
                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0,
            },
        },
        "service_tier": "default",
        "system_fingerprint": "fp_demo",
    })
}

/// The `chat.completion.chunk`s OpenAI streams for the completion `whole` (`"stream": true`):
/// the role, the text and each tool call's arguments in pieces (a call's id and name in its
/// first piece only), the finish reason, and, with `stream_options.include_usage`, a last chunk
/// with the usage and no choices.
pub fn stream_chunks(whole: &Value, include_usage: bool) -> Vec<Value> {
    const PIECE: usize = 16;
    let pieces = |text: &str| -> Vec<String> {
        let chars: Vec<char> = text.chars().collect();
        chars.chunks(PIECE).map(|piece| piece.iter().collect()).collect()
    };
    let chunk = |delta: Value, finish_reason: Value| {
        serde_json::json!({
            "id": whole["id"], "object": "chat.completion.chunk", "created": whole["created"], "model": whole["model"],
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
            "usage": null,
        })
    };
    let message = &whole["choices"][0]["message"];
    // The text begins with "", an answer of calls alone with null (as its message has).
    let begins = if message["content"].is_null() { Value::Null } else { Value::from("") };
    let mut chunks =
        vec![chunk(serde_json::json!({"role": "assistant", "content": begins, "refusal": null}), Value::Null)];
    for piece in pieces(message["content"].as_str().unwrap_or_default()) {
        chunks.push(chunk(serde_json::json!({"content": piece}), Value::Null));
    }
    for (index, call) in message["tool_calls"].as_array().into_iter().flatten().enumerate() {
        let first = serde_json::json!({"tool_calls": [{"index": index, "id": call["id"], "type": "function",
            "function": {"name": call["function"]["name"], "arguments": ""}}]});
        chunks.push(chunk(first, Value::Null));
        for piece in pieces(call["function"]["arguments"].as_str().unwrap_or_default()) {
            let delta = serde_json::json!({"tool_calls": [{"index": index, "function": {"arguments": piece}}]});
            chunks.push(chunk(delta, Value::Null));
        }
    }
    chunks.push(chunk(serde_json::json!({}), whole["choices"][0]["finish_reason"].clone()));
    if include_usage {
        chunks.push(serde_json::json!({
            "id": whole["id"], "object": "chat.completion.chunk", "created": whole["created"], "model": whole["model"],
            "choices": [], "usage": whole["usage"],
        }));
    }
    chunks
}

/// A deterministic token estimate: one token per four characters, rounded up.
pub fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

/// The prompt-token estimate of a request: per message 3 tokens of framing plus its text, tool
/// calls and tool-call ids; plus the tool schemas and 3 tokens of reply priming.
pub fn prompt_tokens(request: &Value) -> u64 {
    let mut total = 3;
    for message in messages(request) {
        total += 3 + estimate_tokens(&message_text(message));
        if let Some(id) = message.get("tool_call_id").and_then(Value::as_str) {
            total += estimate_tokens(id);
        }
        for call in message.get("tool_calls").and_then(Value::as_array).map_or(&[][..], Vec::as_slice) {
            let part = |pointer: &str| call.pointer(pointer).and_then(Value::as_str).unwrap_or("");
            total += estimate_tokens(part("/function/name")) + estimate_tokens(part("/function/arguments"));
        }
    }
    if let Some(tools) = request.get("tools").filter(|t| !t.is_null()) {
        total += estimate_tokens(&tools.to_string());
    }
    total
}

/// A request's `messages` (empty when absent or not an array).
pub fn messages(request: &Value) -> &[Value] {
    request.get("messages").and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

/// The names of the function tools a request offers.
pub fn tool_names(request: &Value) -> Vec<&str> {
    let tools = request.get("tools").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
    tools.iter().filter_map(|tool| tool.pointer("/function/name").and_then(Value::as_str)).collect()
}

/// The text of a message's `content`: the string itself, or the `text` parts of a content-part
/// array joined with newlines; empty for `null` or absent.
pub fn message_text(message: &Value) -> String {
    match message.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|part| match part {
                Value::String(s) => Some(s.as_str()),
                _ => part.get("text").and_then(Value::as_str),
            })
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// The text of the last `user` message.
pub fn last_user_text(request: &Value) -> Option<String> {
    messages(request).iter().rev().find(|m| m.get("role").and_then(Value::as_str) == Some("user")).map(message_text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates_tokens_deterministically() {
        assert_eq!(estimate_tokens(""), 0);
        assert_eq!(estimate_tokens("abcd"), 1);
        assert_eq!(estimate_tokens("abcde"), 2);
    }

    #[test]
    fn a_completion_has_the_api_shape() {
        let body = completion_body(&Completion {
            id: "chatcmpl-1".into(),
            model: json!("m"),
            content: None,
            tool_calls: vec![CallOut { id: "call_1".into(), name: "search".into(), arguments: "{}".into() }],
            finish_reason: None,
            prompt_tokens: 10,
            cached_tokens: 4,
        });
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(body["choices"][0]["message"]["content"], Value::Null);
        assert_eq!(body["choices"][0]["message"]["tool_calls"][0]["function"]["name"], "search");
        assert_eq!(body["usage"]["total_tokens"], body["usage"]["prompt_tokens"].as_u64().unwrap_or(0) + 3);
        assert_eq!(body["usage"]["prompt_tokens_details"]["cached_tokens"], 4);
    }

    #[test]
    fn a_stream_begins_as_openai_begins_one() {
        let answer = |content: Option<&str>, calls: Vec<CallOut>| Completion {
            id: "chatcmpl-1".into(),
            model: json!("m"),
            content: content.map(str::to_owned),
            tool_calls: calls,
            finish_reason: None,
            prompt_tokens: 1,
            cached_tokens: 0,
        };
        // Text: the first chunk's content is "" (the text begins); calls alone: null, as in the
        // unstreamed message (OpenAI's SDK reads "" as text).
        let text = stream_chunks(&completion_body(&answer(Some("Hi"), Vec::new())), true);
        assert_eq!(text[0]["choices"][0]["delta"]["content"], "");
        let call = CallOut { id: "call_1".into(), name: "search".into(), arguments: "{}".into() };
        let calls = stream_chunks(&completion_body(&answer(None, vec![call])), true);
        assert_eq!(calls[0]["choices"][0]["delta"]["content"], Value::Null);
        assert_eq!(calls[0]["choices"][0]["delta"]["role"], "assistant");
    }
}
