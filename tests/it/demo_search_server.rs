//! The demo MCP search server, driven by an rmcp client over Streamable HTTP.

use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, ClientConfig};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};

use agentry::demo::search_server::SearchServer;
use agentry::mcp::result_text;

fn args(value: Value) -> serde_json::Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => serde_json::Map::new(),
    }
}

#[tokio::test]
async fn lists_and_calls_the_search_tool() -> anyhow::Result<()> {
    let server = SearchServer::start().await?;
    let url = server.url();
    assert!(url.starts_with("http://127.0.0.1:") && url.ends_with("/mcp"), "{url}");

    let transport = StreamableHttpClientTransport::from_config(StreamableHttpClientTransportConfig::with_uri(url));
    let client = ClientConfig::default().serve(transport).await?;
    let info = client.peer_info().expect("initialized");
    assert_eq!(info.server_info.as_ref().map(|i| i.name.as_str()), Some("agentry-demo-search"));
    assert!(info.capabilities.tools.is_some());

    let tools = client.list_all_tools().await?;
    assert_eq!(tools.len(), 1);
    let tool = serde_json::to_value(&tools[0])?;
    assert_eq!(tool["name"], "search");
    assert_eq!(tool["annotations"]["readOnlyHint"], true);
    assert_eq!(tool["inputSchema"]["type"], "object");
    assert_eq!(tool["inputSchema"]["properties"]["query"]["type"], "string");
    assert_eq!(tool["inputSchema"]["properties"]["max_results"]["type"], "integer");
    assert_eq!(tool["inputSchema"]["required"], json!(["query"]));
    assert!(tool["description"].as_str().is_some_and(|d| d.contains("demo")));

    let result = client
        .call_tool(
            CallToolRequestParams::new("search")
                .with_arguments(args(json!({"query": "actor model supervision", "max_results": 3}))),
        )
        .await?;
    assert_ne!(result.is_error, Some(true));
    let text = result_text(&result);
    assert!(text.starts_with("Search results for \"actor model supervision\" (showing 3 of"), "{text}");
    assert!(text.contains("\n1. ") && text.contains("\n3. ") && !text.contains("\n4. "), "{text}");
    assert!(text.contains("URL: https://example.org/demo/"), "{text}");

    let none = client
        .call_tool(CallToolRequestParams::new("search").with_arguments(args(json!({"query": "xylophone zebra"}))))
        .await?;
    assert_ne!(none.is_error, Some(true));
    assert!(result_text(&none).starts_with("No results found"));

    let bad =
        client.call_tool(CallToolRequestParams::new("search").with_arguments(args(json!({"max_results": 2})))).await?;
    assert_eq!(bad.is_error, Some(true));
    assert!(result_text(&bad).starts_with("Error:"));

    let unknown = client.call_tool(CallToolRequestParams::new("delete_everything")).await;
    assert!(unknown.is_err());

    client.cancel().await?;
    server.shutdown().await;
    Ok(())
}
