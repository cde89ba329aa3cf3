//! The demo's MCP search server, answering each call after a fixed latency (benchmarks).

use std::net::SocketAddr;
use std::time::Duration;

use agentry::demo::loopback::Loopback;
use agentry::demo::search_server::{DemoSearchHandler, mcp_url, serve_mcp};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, ListToolsResult, PaginatedRequestParams, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler};

/// [`DemoSearchHandler`] with a delay before every answer.
#[derive(Debug, Clone, Copy)]
struct Slow {
    latency: Duration,
}

impl ServerHandler for Slow {
    fn get_info(&self) -> ServerConfig {
        DemoSearchHandler.get_info()
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        DemoSearchHandler.list_tools(request, context).await
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        tokio::time::sleep(self.latency).await;
        DemoSearchHandler.call_tool(request, context).await
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        DemoSearchHandler.get_tool(name)
    }
}

/// A running search server with latency. Stops on [`shutdown`](Self::shutdown) or drop.
#[derive(Debug)]
pub struct SlowSearchServer {
    server: Loopback,
}

impl SlowSearchServer {
    /// Serves on `addr` (port 0: any free port); every `search` answers after `latency`.
    pub async fn start_on(addr: SocketAddr, latency: Duration) -> std::io::Result<Self> {
        Ok(Self { server: serve_mcp(addr, Slow { latency }).await? })
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
