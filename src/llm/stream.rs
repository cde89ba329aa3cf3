//! Streamed chat completions (`"stream": true`): the chunk wire types and the assembly of a
//! stream's chunks into the one [`ChatResponse`] a non-streamed request would have returned.
//!
//! A stream is a sequence of `chat.completion.chunk` objects (one per SSE `data:` line), then
//! `data: [DONE]`:
//!
//! ```text
//! {"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}
//! {"choices":[{"index":0,"delta":{"content":"Mach"}}]}                        text, in pieces
//! {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function",
//!     "function":{"name":"search","arguments":""}}]}}]}                      a call: id and name once
//! {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"q"}}]}}]}
//! {"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}
//! {"choices":[],"usage":{"prompt_tokens":10,"completion_tokens":5}}        with include_usage
//! [DONE]
//! ```
//!
//! Content, refusal and each tool call's arguments are concatenated; tool calls are keyed by
//! their `index` (their id and name come only in their first delta). A stream that ends without
//! a `finish_reason`, or after it without its usage or `[DONE]`, was cut short:
//! [`Assembler::finish`] says so, and the caller retries it like a 5xx, never passing a half
//! answer on as complete.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::wire::{ChatRequest, ChatResponse, Choice, ErrorDetail, FunctionCall, ResponseMessage, ToolCall, Usage};

/// A request asking for a stream: the request's fields, then `"stream": true` and
/// `"stream_options": {"include_usage": true}` (the usage comes in a last chunk).
#[derive(Debug, Serialize)]
pub struct Streamed<'a> {
    #[serde(flatten)]
    request: &'a ChatRequest<'a>,
    stream: bool,
    stream_options: StreamOptions,
}

#[derive(Debug, Serialize)]
struct StreamOptions {
    include_usage: bool,
}

impl<'a> Streamed<'a> {
    /// `request`, streamed.
    pub fn new(request: &'a ChatRequest<'a>) -> Self {
        Self { request, stream: true, stream_options: StreamOptions { include_usage: true } }
    }
}

/// What a question shows of its answers as the model writes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shown {
    /// A piece of an answer's text, in order.
    Text(String),
    /// The attempt that wrote the text shown since the model call began failed (it may be
    /// asked again): that text is not the answer.
    Abandoned,
    /// A model call ended with its answer whole.
    Answered {
        /// The answer asks for tool calls (so it is not the last).
        calls_tools: bool,
    },
}

/// Where a question's answers are shown as they are written (`agentry ask` prints them):
/// called in order, on the task that reads the stream, so it must be quick.
#[derive(Clone)]
pub struct Echo(Arc<dyn Fn(Shown) + Send + Sync>);

impl Echo {
    /// Shows answers with `show`.
    pub fn new(show: impl Fn(Shown) + Send + Sync + 'static) -> Self {
        Self(Arc::new(show))
    }

    /// Shows `what`.
    pub fn show(&self, what: Shown) {
        (self.0)(what);
    }
}

impl std::fmt::Debug for Echo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Echo")
    }
}

/// One `chat.completion.chunk`.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatChunk {
    /// Completion id (the same in every chunk).
    #[serde(default)]
    pub id: String,
    /// The model that answers.
    #[serde(default)]
    pub model: String,
    /// Deltas (agentry asks for one choice; the usage chunk has none).
    #[serde(default)]
    pub choices: Vec<ChunkChoice>,
    /// Token usage, in the last chunk when `stream_options.include_usage` is set.
    #[serde(default)]
    pub usage: Option<Usage>,
    /// An error the server reports in the middle of a stream (`data: {"error": {…}}`).
    #[serde(default)]
    pub error: Option<ErrorDetail>,
}

/// One choice's delta.
#[derive(Debug, Clone, Deserialize)]
pub struct ChunkChoice {
    /// Which choice (agentry reads choice 0).
    #[serde(default)]
    pub index: u32,
    /// What this chunk adds.
    #[serde(default)]
    pub delta: Delta,
    /// Set in the choice's last chunk.
    #[serde(default)]
    pub finish_reason: Option<String>,
}

/// What one chunk adds to the message.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Delta {
    /// A piece of the text.
    #[serde(default)]
    pub content: Option<String>,
    /// A piece of a refusal.
    #[serde(default)]
    pub refusal: Option<String>,
    /// Pieces of tool calls.
    #[serde(default)]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
}

/// A piece of one tool call.
#[derive(Debug, Clone, Deserialize)]
pub struct ToolCallDelta {
    /// Which call of the message.
    pub index: u32,
    /// The call's id (first piece only).
    #[serde(default)]
    pub id: Option<String>,
    /// Name and a piece of the arguments.
    #[serde(default)]
    pub function: Option<FunctionDelta>,
}

/// A piece of a function call.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct FunctionDelta {
    /// The name (first piece only).
    #[serde(default)]
    pub name: Option<String>,
    /// A piece of the arguments' JSON text.
    #[serde(default)]
    pub arguments: Option<String>,
}

/// Why a stream's chunks do not make a whole answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Incomplete {
    /// The stream ended before the choice's `finish_reason`.
    #[error("the stream ended before the answer did (no finish_reason after {chunks} chunks)")]
    Cut {
        /// Chunks received.
        chunks: usize,
    },
    /// The stream ended after the `finish_reason` but before its usage and `[DONE]`: the answer
    /// may be whole, what it cost is not known.
    #[error("the stream ended after the finish_reason without its usage or [DONE]")]
    Unended,
    /// A tool call never got its id or name.
    #[error("tool call {index} of the stream has no {missing}")]
    ToolCall {
        /// The call's index.
        index: u32,
        /// `id` or `name`.
        missing: &'static str,
    },
}

impl Incomplete {
    /// The stream was cut short (asking again may give the whole answer), rather than wrong in
    /// a way every stream of this server will be.
    pub fn is_cut(&self) -> bool {
        match self {
            Self::Cut { .. } | Self::Unended => true,
            Self::ToolCall { .. } => false,
        }
    }
}

/// Builds the answer from a stream's chunks, as they come.
#[derive(Debug, Default)]
pub struct Assembler {
    id: String,
    model: String,
    content: Option<String>,
    refusal: Option<String>,
    calls: BTreeMap<u32, PartialCall>,
    finish_reason: Option<String>,
    usage: Option<Usage>,
    chunks: usize,
    /// `[DONE]` came, or the usage with or after the finish reason.
    ended: bool,
}

#[derive(Debug, Default)]
struct PartialCall {
    id: Option<String>,
    name: Option<String>,
    arguments: String,
}

impl Assembler {
    /// Adds a chunk; returns the text it adds to the answer (for showing it as it is written).
    pub fn push(&mut self, chunk: ChatChunk) -> Option<String> {
        self.chunks += 1;
        if self.id.is_empty() {
            self.id = chunk.id;
        }
        if self.model.is_empty() {
            self.model = chunk.model;
        }
        if chunk.usage.is_some() {
            self.usage = chunk.usage;
            // The usage of the whole answer comes with or after its finish reason (a server may
            // send the usage so far on every chunk before).
            let finishes = chunk.choices.iter().any(|c| c.index == 0 && c.finish_reason.is_some());
            self.ended |= finishes || self.finish_reason.is_some();
        }
        let choice = chunk.choices.into_iter().find(|choice| choice.index == 0)?;
        if choice.finish_reason.is_some() {
            self.finish_reason = choice.finish_reason;
        }
        let delta = choice.delta;
        if let Some(refusal) = delta.refusal {
            self.refusal.get_or_insert_with(String::new).push_str(&refusal);
        }
        for piece in delta.tool_calls.unwrap_or_default() {
            let call = self.calls.entry(piece.index).or_default();
            if let Some(id) = piece.id.filter(|id| !id.is_empty()) {
                call.id = Some(id);
            }
            let function = piece.function.unwrap_or_default();
            if let Some(name) = function.name.filter(|name| !name.is_empty()) {
                call.name = Some(name);
            }
            call.arguments.push_str(&function.arguments.unwrap_or_default());
        }
        let text = delta.content.filter(|text| !text.is_empty())?;
        self.content.get_or_insert_with(String::new).push_str(&text);
        Some(text)
    }

    /// The stream said `[DONE]`.
    pub fn done(&mut self) {
        self.ended = true;
    }

    /// Whether a chunk came yet.
    pub fn started(&self) -> bool {
        self.chunks > 0
    }

    /// The whole answer, or why the chunks so far are not one. An answer is whole when its
    /// `finish_reason` came and, with it or after it, its usage or `[DONE]` (some servers send
    /// no usage chunk; one that sends neither may have been cut before it).
    pub fn finish(self) -> Result<ChatResponse, Incomplete> {
        let Some(finish_reason) = self.finish_reason else {
            return Err(Incomplete::Cut { chunks: self.chunks });
        };
        if !self.ended {
            return Err(Incomplete::Unended);
        }
        let mut tool_calls = Vec::with_capacity(self.calls.len());
        for (index, call) in self.calls {
            let id = call.id.ok_or(Incomplete::ToolCall { index, missing: "id" })?;
            let name = call.name.ok_or(Incomplete::ToolCall { index, missing: "name" })?;
            tool_calls.push(ToolCall {
                id,
                kind: "function".to_owned(),
                function: FunctionCall { name, arguments: call.arguments },
            });
        }
        let message = ResponseMessage {
            content: self.content,
            tool_calls: (!tool_calls.is_empty()).then_some(tool_calls),
            refusal: self.refusal,
        };
        Ok(ChatResponse {
            id: self.id,
            model: self.model,
            choices: vec![Choice { message, finish_reason: Some(finish_reason) }],
            usage: self.usage,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chunks of a stream, as OpenAI sends them (one JSON object per `data:` line).
    fn assemble(lines: &[&str]) -> (Assembler, Vec<String>) {
        let mut assembler = Assembler::default();
        let mut shown = Vec::new();
        for line in lines {
            let chunk: ChatChunk = serde_json::from_str(line).expect("a chunk");
            shown.extend(assembler.push(chunk));
        }
        (assembler, shown)
    }

    const HEAD: &str = r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}],"usage":null}"#;

    #[test]
    fn text_in_pieces_is_one_answer_with_its_usage() {
        let (assembler, shown) = assemble(&[
            HEAD,
            r#"{"id":"chatcmpl-1","model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":"Machine "},"finish_reason":null}],"usage":null}"#,
            r#"{"id":"chatcmpl-1","model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":"learning."},"finish_reason":null}],"usage":null}"#,
            r#"{"id":"chatcmpl-1","model":"gpt-4o-mini","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}"#,
            r#"{"id":"chatcmpl-1","model":"gpt-4o-mini","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}"#,
        ]);
        assert_eq!(shown, ["Machine ", "learning."], "the text as it is written");
        let response = assembler.finish().expect("whole");
        assert_eq!((response.id.as_str(), response.model.as_str()), ("chatcmpl-1", "gpt-4o-mini"));
        let choice = &response.choices[0];
        assert_eq!(choice.message.content.as_deref(), Some("Machine learning."));
        assert_eq!(choice.finish_reason.as_deref(), Some("stop"));
        assert!(choice.message.tool_calls.is_none());
        assert_eq!(response.usage.map(|u| (u.prompt_tokens, u.completion_tokens)), Some((12, 3)));
    }

    #[test]
    fn tool_calls_are_assembled_by_index_with_their_id_and_name_from_the_first_piece() {
        let (assembler, shown) = assemble(&[
            HEAD,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"search","arguments":""}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_b","type":"function","function":{"name":"save_research","arguments":""}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"query\":"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"function":{"arguments":"{}"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"ml\"}"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
        ]);
        assert!(shown.is_empty(), "tool-call arguments are never shown as the answer");
        let mut assembler = assembler;
        assembler.done();
        let response = assembler.finish().expect("whole");
        let calls = response.choices[0].message.tool_calls.clone().expect("calls");
        let calls: Vec<(&str, &str, &str)> =
            calls.iter().map(|c| (c.id.as_str(), c.function.name.as_str(), c.function.arguments.as_str())).collect();
        assert_eq!(calls, [("call_a", "search", r#"{"query":"ml"}"#), ("call_b", "save_research", "{}")]);
    }

    #[test]
    fn a_stream_cut_before_its_finish_reason_is_incomplete_never_a_half_answer() {
        let (assembler, _) = assemble(&[
            HEAD,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"search","arguments":"{\"qu"}}]}}]}"#,
        ]);
        assert_eq!(assembler.finish().expect_err("cut"), Incomplete::Cut { chunks: 2 });
    }

    #[test]
    fn a_tool_call_without_a_name_is_incomplete() {
        let (assembler, _) = assemble(&[
            HEAD,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_a","function":{"arguments":"{}"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
        ]);
        let mut assembler = assembler;
        assembler.done();
        assert_eq!(assembler.finish().expect_err("no name"), Incomplete::ToolCall { index: 0, missing: "name" });
    }

    #[test]
    fn a_stream_that_stops_after_its_finish_reason_is_whole_only_with_its_usage_or_done() {
        let stop = r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#;
        let usage = r#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}"#;
        let (assembler, _) = assemble(&[HEAD, stop]);
        assert_eq!(assembler.finish().expect_err("unended"), Incomplete::Unended);
        let (assembler, _) = assemble(&[HEAD, stop, usage]);
        assert!(assembler.finish().is_ok(), "the usage chunk ends it");
        let (mut assembler, _) = assemble(&[HEAD, stop]);
        assembler.done();
        assert!(assembler.finish().is_ok(), "[DONE] ends it, usage or not");
    }

    #[test]
    fn a_usage_on_every_chunk_does_not_end_a_stream_cut_after_its_finish_reason() {
        // vLLM's continuous usage stats: every chunk carries the usage so far.
        let (assembler, _) = assemble(&[
            r#"{"choices":[{"index":0,"delta":{"content":"Hi"}}],"usage":{"prompt_tokens":1,"completion_tokens":1}}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
        ]);
        assert_eq!(assembler.finish().expect_err("cut after the finish"), Incomplete::Unended);
        let (assembler, _) = assemble(&[
            r#"{"choices":[{"index":0,"delta":{"content":"Hi"}}],"usage":{"prompt_tokens":1,"completion_tokens":1}}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":2}}"#,
        ]);
        let response = assembler.finish().expect("the finish chunk carries the final usage");
        assert_eq!(response.usage.map(|u| u.completion_tokens), Some(2));
    }

    #[test]
    fn a_call_without_a_name_is_a_wrong_stream_not_a_cut_one() {
        assert!(!Incomplete::ToolCall { index: 0, missing: "name" }.is_cut());
        assert!(Incomplete::Cut { chunks: 3 }.is_cut() && Incomplete::Unended.is_cut());
    }

    /// A stream as llama.cpp's server (the engine behind Docker Model Runner) sent it for a
    /// tool call, recorded by hand (Gemma 3 270M; `model` is the file's path, ids have no
    /// `call_` prefix, the role chunk says content null, no `usage: null` keys, `timings` beside
    /// the usage), the id and `created` fields trimmed.
    #[test]
    fn llama_cpp_s_tool_call_stream_assembles() {
        let chunk = |choices: &str| {
            format!(
                r#"{{"choices":{choices},"created":1,"id":"chatcmpl-R","model":"/models/gemma-3-270m-q4_k_m.gguf","system_fingerprint":"b0-unknown","object":"chat.completion.chunk"}}"#
            )
        };
        let piece = |arguments: &str| {
            chunk(&format!(
                r#"[{{"finish_reason":null,"index":0,"delta":{{"tool_calls":[{{"index":0,"function":{{"arguments":{}}}}}]}}}}]"#,
                serde_json::json!(arguments)
            ))
        };
        let mut lines = vec![
            chunk(r#"[{"finish_reason":null,"index":0,"delta":{"role":"assistant","content":null}}]"#),
            chunk(
                r#"[{"finish_reason":null,"index":0,"delta":{"tool_calls":[{"index":0,"id":"92CuZPzId5FfoWX3ozeKnWJpJHhvwD7q","type":"function","function":{"name":"search","arguments":"{"}}]}}]"#,
            ),
        ];
        lines.extend(["\"", "query", "\":", " \"", "latest", " news", "\"}"].map(piece));
        lines.push(chunk(r#"[{"finish_reason":"tool_calls","index":0,"delta":{}}]"#));
        let usage = chunk("[]").replace(
            r#""object":"chat.completion.chunk""#,
            r#""object":"chat.completion.chunk","usage":{"completion_tokens":36,"prompt_tokens":294,"total_tokens":330,"prompt_tokens_details":{"cached_tokens":224}},"timings":{"cache_n":224,"prompt_n":70,"predicted_per_second":5.2}"#,
        );
        lines.push(usage);
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        let (assembler, shown) = assemble(&lines);
        assert!(shown.is_empty());
        let response = assembler.finish().expect("whole: its usage came after the finish reason");
        let call = &response.choices[0].message.tool_calls.as_ref().expect("a call")[0];
        assert_eq!((call.id.as_str(), call.function.name.as_str()), ("92CuZPzId5FfoWX3ozeKnWJpJHhvwD7q", "search"));
        assert_eq!(call.function.arguments, r#"{"query": "latest news"}"#);
        assert_eq!(response.choices[0].message.content, None);
        assert_eq!(response.usage.map(|u| (u.prompt_tokens, u.cached_tokens())), Some((294, 224)));
    }

    #[test]
    fn a_refusal_is_kept_whole() {
        let (assembler, shown) = assemble(&[
            HEAD,
            r#"{"choices":[{"index":0,"delta":{"refusal":"I can't "}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"refusal":"help with that."}}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
        ]);
        assert!(shown.is_empty());
        let mut assembler = assembler;
        assembler.done();
        let response = assembler.finish().expect("whole");
        assert_eq!(response.choices[0].message.refusal.as_deref(), Some("I can't help with that."));
        assert_eq!(response.choices[0].message.content, None);
    }
}
