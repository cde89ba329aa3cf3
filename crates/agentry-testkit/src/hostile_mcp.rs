//! MCP servers that misbehave on purpose.
//!
//! - [`HostileNamesServer`] (Streamable HTTP, rmcp): tools whose names no model accepts
//!   (spaces, NUL, a newline, an escape sequence, 300 characters) and descriptions with control
//!   characters; every call answers with the name the server received.

use std::net::SocketAddr;

use agentry::demo::loopback::Loopback;
use agentry::demo::search_server::{mcp_url, serve_mcp};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ListToolsResult, PaginatedRequestParams,
    ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler};

/// The tool names [`HostileNamesServer`] offers, in order.
pub fn hostile_tool_names() -> Vec<String> {
    vec![
        "web search".to_owned(),
        "nul\0byte".to_owned(),
        "line\nbreak".to_owned(),
        "\u{1b}[31mred\u{1b}[0m".to_owned(),
        "x".repeat(300),
        "search".to_owned(),
    ]
}

#[derive(Debug, Clone, Copy)]
struct HostileNames;

impl ServerHandler for HostileNames {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        _: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let schema = serde_json::json!({"type": "object", "properties": {}});
        let schema = schema.as_object().cloned().unwrap_or_default();
        let tools = hostile_tool_names()
            .into_iter()
            .map(|name| Tool::new(name, "Rings the bell\u{7}\r\nand clears the screen\u{1b}[2J", schema.clone()))
            .collect();
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        Ok(CallToolResult::success(vec![ContentBlock::text(format!("ran {:?}", request.name.as_ref()))]).into())
    }
}

/// A Streamable HTTP MCP server offering [`hostile_tool_names`]. Stops on
/// [`shutdown`](Self::shutdown) or drop.
#[derive(Debug)]
pub struct HostileNamesServer {
    server: Loopback,
}

impl HostileNamesServer {
    /// Serves on `127.0.0.1`, any free port.
    pub async fn start() -> std::io::Result<Self> {
        Ok(Self { server: serve_mcp(SocketAddr::from(([127, 0, 0, 1], 0)), HostileNames).await? })
    }

    /// The MCP endpoint, `http://127.0.0.1:PORT/mcp`.
    pub fn url(&self) -> String {
        mcp_url(self.server.addr())
    }

    /// Stops the server.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}
