//! `agentry tools`: what each configured MCP server offers, after the allowlist.

use std::process::ExitCode;

use super::{CliError, EXIT_FAILED, process_env, settings};
use crate::actors::mcp_session::ServerTools;
use crate::app::Runtime;
use crate::cli::CommonArgs;
use crate::config::Overrides;

pub(super) async fn tools(common: CommonArgs) -> Result<ExitCode, CliError> {
    let settings = settings(&common, Overrides::default())?;
    if settings.mcp.servers.is_empty() {
        println!("no MCP servers configured (mcp.servers)");
        return Ok(ExitCode::SUCCESS);
    }
    let connect_timeout = settings.mcp.connect_timeout;
    let runtime = Runtime::start(settings, process_env()).await?;
    let states = runtime.tools_settled(connect_timeout).await;
    let mut code = ExitCode::SUCCESS;
    for (handle, (name, state)) in runtime.servers.iter().zip(states) {
        let server = handle.server();
        println!("{name} ({}, {})", server.transport_name(), server.location());
        match state {
            ServerTools::Ready(tools) if tools.is_empty() => println!("  no tools (allowlist: {:?})", server.allow),
            ServerTools::Ready(tools) => {
                for tool in tools.iter() {
                    let description =
                        tool.description.as_deref().unwrap_or_default().lines().next().unwrap_or_default();
                    let hint = if crate::mcp::is_retry_safe(tool) { " [read-only/idempotent]" } else { "" };
                    println!("  {}{hint}  {description}", tool.name);
                }
            }
            ServerTools::Failed { cause, .. } => {
                println!("  unavailable: {cause}");
                code = ExitCode::from(EXIT_FAILED);
            }
            ServerTools::Connecting => {
                println!("  unavailable: no answer within {connect_timeout:?}");
                code = ExitCode::from(EXIT_FAILED);
            }
        }
    }
    runtime.shutdown().await;
    Ok(code)
}
