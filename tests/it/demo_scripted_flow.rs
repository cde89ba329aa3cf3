//! The scripted researcher behind the model server, fed real search results
//! from the MCP search server and a fake `save_research`.

use std::sync::Arc;

use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, ClientConfig};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};

use agentry::demo::scripted::ScriptedResearcher;
use agentry::demo::search_server::SearchServer;
use agentry_testkit::model_server::ModelServer;

fn tool(name: &str, properties: Value) -> Value {
    json!({"type": "function", "function": {
        "name": name,
        "description": format!("The {name} tool"),
        "parameters": {"type": "object", "properties": properties}
    }})
}

#[tokio::test]
async fn search_then_save_then_answer() -> anyhow::Result<()> {
    let model = ModelServer::start(Arc::new(ScriptedResearcher::new())).await?;
    let search = SearchServer::start().await?;
    let mcp = ClientConfig::default()
        .serve(StreamableHttpClientTransport::from_config(StreamableHttpClientTransportConfig::with_uri(search.url())))
        .await?;
    let http = reqwest::Client::new();
    let tools = json!([
        tool("search", json!({"query": {"type": "string"}})),
        tool("save_research", json!({"topic": {"type": "string"}, "research_content": {"type": "string"}})),
    ]);
    let mut messages = vec![
        json!({"role": "system", "content": "You are a research assistant. Use the tools."}),
        json!({"role": "user", "content": "Research the topic of the actor model in Rust"}),
    ];
    let mut called = Vec::new();
    let mut saved = String::new();
    let mut final_answer = None;
    for _ in 0..5 {
        let response: Value = http
            .post(format!("{}/chat/completions", model.base_url()))
            .bearer_auth("demo")
            .json(&json!({"model": "agentry-demo", "messages": messages, "tools": tools, "temperature": 0.0, "max_tokens": 2048}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let choice = &response["choices"][0];
        let message = choice["message"].clone();
        let Some(calls) = message["tool_calls"].as_array().cloned() else {
            assert_eq!(choice["finish_reason"], "stop");
            final_answer = message["content"].as_str().map(str::to_owned);
            break;
        };
        assert_eq!(choice["finish_reason"], "tool_calls");
        messages.push(message);
        for call in calls {
            let name = call["function"]["name"].as_str().unwrap_or("").to_owned();
            let arguments: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap_or(""))?;
            let content = match name.as_str() {
                "search" => {
                    let Value::Object(args) = arguments else { anyhow::bail!("object arguments") };
                    let result = mcp.call_tool(CallToolRequestParams::new("search").with_arguments(args)).await?;
                    agentry::mcp::result_text(&result)
                }
                "save_research" => {
                    assert_eq!(arguments["topic"], "actor model in Rust");
                    saved = arguments["research_content"].as_str().unwrap_or("").to_owned();
                    "Research saved to research/actor_model_in_rust.md".to_owned()
                }
                other => anyhow::bail!("unexpected tool {other}"),
            };
            called.push(name);
            messages.push(json!({"role": "tool", "tool_call_id": call["id"], "content": content}));
        }
    }
    assert_eq!(called, vec!["search", "save_research"]);
    assert!(saved.starts_with("# Actor model in Rust"), "{saved}");
    assert!(saved.contains("(demo model)"));
    assert!(saved.contains("## Key points") && saved.contains("## Sources"), "{saved}");
    assert!(saved.contains("](https://example.org/demo/"), "{saved}");
    let answer = final_answer.expect("a final answer");
    assert!(answer.contains("`research/actor_model_in_rust.md`"), "{answer}");
    assert_eq!(answer.matches("(demo model)").count(), 1);
    assert_eq!(model.request_count(), 3);
    println!("--- saved ---\n{saved}\n--- answer ---\n{answer}");

    mcp.cancel().await?;
    search.shutdown().await;
    model.shutdown().await;
    Ok(())
}
