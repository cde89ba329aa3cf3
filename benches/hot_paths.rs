//! Micro-benchmarks of the pure functions on every question's path, so regressions show:
//! encoding a chat request, decoding a response with tool calls (whole, and streamed),
//! naming and rendering a research file. `cargo bench --bench hot_paths`.

use std::hint::black_box;
use std::time::SystemTime;

use agentry::llm::stream::{Assembler, ChatChunk};
use agentry::llm::wire::{ChatRequest, ChatResponse, FunctionCall, Message, ToolCall, ToolDefinition};
use agentry::research::{self, Provenance, ResearchDoc};
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;

fn conversation() -> (Vec<Message>, Vec<ToolDefinition>) {
    let search =
        "1. Machine learning\n   URL: https://example.org/ml\n   Summary: Algorithms that learn from data.\n".repeat(5);
    let messages = vec![
        Message::System { content: "You are a helpful research assistant. ".repeat(10) },
        Message::User { content: "Define Machine Learning".into() },
        Message::Assistant {
            content: None,
            tool_calls: vec![ToolCall {
                id: "call_1".into(),
                kind: "function".into(),
                function: FunctionCall { name: "search".into(), arguments: "{\"query\":\"machine learning\"}".into() },
            }],
        },
        Message::Tool { tool_call_id: "call_1".into(), content: search },
    ];
    let tools = vec![
        ToolDefinition::function(
            "search",
            "Search the web",
            json!({"type":"object","properties":{"query":{"type":"string"},"max_results":{"type":"integer"}},"required":["query"]}),
        ),
        ToolDefinition::function(
            "save_research",
            "Save the research",
            json!({"type":"object","properties":{"topic":{"type":"string"},"research_content":{"type":"string"}},"required":["topic","research_content"]}),
        ),
    ];
    (messages, tools)
}

fn response_with_tool_calls() -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": null,
            "tool_calls": [{"id": "call_2", "type": "function", "function": {"name": "save_research",
                "arguments": serde_json::to_string(&json!({"topic": "Machine Learning", "research_content": "# ML\n".repeat(200)})).unwrap_or_default()}}]}}],
        "usage": {"prompt_tokens": 812, "completion_tokens": 344, "total_tokens": 1156}
    }))
    .unwrap_or_default()
}

fn benches(c: &mut Criterion) {
    let (messages, tools) = conversation();
    c.bench_function("encode chat request", |b| {
        b.iter(|| {
            let request = ChatRequest {
                model: "gpt-4o-mini",
                messages: &messages,
                tools: &tools,
                temperature: 0.1,
                max_tokens: 1500,
            };
            black_box(serde_json::to_vec(black_box(&request)).unwrap_or_default())
        })
    });
    let body = response_with_tool_calls();
    c.bench_function("decode response with tool calls", |b| {
        b.iter(|| black_box(serde_json::from_slice::<ChatResponse>(black_box(&body)).ok()))
    });
    // The same response streamed: its chunks' JSON (16 characters of arguments each), parsed
    // and assembled.
    let whole: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let chunks: Vec<String> =
        agentry::demo::model::stream_chunks(&whole, true).iter().map(serde_json::Value::to_string).collect();
    c.bench_function("assemble streamed response with tool calls", |b| {
        b.iter(|| {
            let mut assembler = Assembler::default();
            for chunk in black_box(&chunks) {
                if let Ok(chunk) = serde_json::from_str::<ChatChunk>(chunk) {
                    black_box(assembler.push(chunk));
                }
            }
            black_box(assembler.finish().ok())
        })
    });
    c.bench_function("safe file stem", |b| {
        b.iter(|| black_box(research::safe_stem(black_box("../../What is the Model Context Protocol?"))))
    });
    let doc = ResearchDoc {
        provenance: Provenance {
            question: "Define Machine Learning".into(),
            question_id: research::question_id("Define Machine Learning"),
            agent: "research-assistant".into(),
            model: "gpt-4o-mini".into(),
            route: "cloud".into(),
            tools_used: vec!["search".into(), "save_research".into()],
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
        },
        topic: "Machine Learning".into(),
        content: "Machine learning is ...\n".repeat(100),
        truncated: false,
        saved_by: research::SavedBy::Model,
    };
    c.bench_function("render research file", |b| {
        b.iter(|| black_box(research::render(black_box(&doc), SystemTime::UNIX_EPOCH)))
    });
}

criterion_group!(hot_paths, benches);
criterion_main!(hot_paths);
