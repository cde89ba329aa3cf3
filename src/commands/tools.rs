//! `agentry tools`: what each configured MCP server offers, after the allowlist, and under which
//! name the model sees each tool.
//!
//! Everything printed that a server chose (tool names, descriptions, error texts) goes through
//! [`printable`]: a server cannot move the cursor, clear the screen or forge lines.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::process::ExitCode;

use super::{CliError, EXIT_FAILED, process_env, settings};
use crate::actors::mcp_session::ServerTools;
use crate::actors::tool_executor::exposed_names;
use crate::app::Runtime;
use crate::cli::CommonArgs;
use crate::config::Overrides;

pub(super) async fn tools(common: CommonArgs) -> Result<ExitCode, CliError> {
    let settings = settings(&common, Overrides::default())?;
    if settings.mcp.servers.is_empty() {
        outln!("no MCP servers configured (mcp.servers)");
        return Ok(ExitCode::SUCCESS);
    }
    let connect_timeout = settings.mcp.connect_timeout;
    let runtime = Runtime::start(settings, process_env()).await?;
    let states = runtime.tools_settled(connect_timeout).await;
    // The names the model gets, worked out as ToolExecutor does from the same lists.
    let lists: Vec<(&str, &[rmcp::model::Tool])> = runtime
        .servers
        .iter()
        .zip(&states)
        .map(|(handle, (_, state))| {
            let tools = match state {
                ServerTools::Ready(tools) => tools,
                _ => &[][..],
            };
            (handle.server().name.as_str(), tools)
        })
        .collect();
    let exposed = exposed_names(&lists);
    let mut code = ExitCode::SUCCESS;
    for ((handle, (name, state)), exposed) in runtime.servers.iter().zip(&states).zip(exposed) {
        let server = handle.server();
        outln!("{} ({}, {})", printable(name), server.transport_name(), printable(&server.location()));
        match state {
            ServerTools::Ready(tools) if tools.is_empty() => outln!("  no tools (allowlist: {:?})", server.allow),
            ServerTools::Ready(tools) => {
                for (tool, exposed) in tools.iter().zip(exposed) {
                    let description =
                        tool.description.as_deref().unwrap_or_default().lines().next().unwrap_or_default();
                    let hint = if crate::mcp::is_retry_safe(tool) { " [read-only/idempotent]" } else { "" };
                    let mut shown = printable(&tool.name).into_owned();
                    if exposed != tool.name {
                        let _ = write!(shown, " (the model sees {exposed})");
                    }
                    outln!("  {shown}{hint}  {}", printable(description));
                }
            }
            ServerTools::Failed { cause, .. } => {
                outln!("  unavailable: {}", printable(cause));
                code = ExitCode::from(EXIT_FAILED);
            }
            ServerTools::Connecting => {
                outln!("  unavailable: no answer within {connect_timeout:?}");
                code = ExitCode::from(EXIT_FAILED);
            }
        }
    }
    runtime.shutdown().await;
    Ok(code)
}

/// `text` with control characters (and the invisible ones that reorder text) escaped the way
/// Rust writes them (`\n`, `\u{1b}`), so they are seen, not obeyed.
fn printable(text: &str) -> Cow<'_, str> {
    let hidden = |c: char| {
        c.is_control() || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(hidden) {
        return Cow::Borrowed(text);
    }
    let mut shown = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if hidden(c) {
            shown.extend(c.escape_debug());
        } else {
            shown.push(c);
        }
    }
    Cow::Owned(shown)
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn control_and_reordering_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(printable("plain name – ünïcødé"), "plain name – ünïcødé");
        assert_eq!(printable("a\nb\0c\u{1b}[2J\u{7}"), r"a\nb\0c\u{1b}[2J\u{7}");
        assert_eq!(printable("evil\u{202e}txt.exe"), r"evil\u{202e}txt.exe");
    }
}
