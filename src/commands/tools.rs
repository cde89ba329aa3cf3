//! `agentry tools`: what each configured MCP server offers, after the allowlist, under which
//! name the model sees each tool, the tool's annotations as the server gives them, and whether
//! agentry sends a call again when the connection is cut while it is in flight.
//!
//! Annotations are hints (MCP `ToolAnnotations`), each shown by its own word; a hint the
//! server leaves out takes the specification's default (`readOnlyHint` false,
//! `destructiveHint` true, `idempotentHint` false, `openWorldHint` true), and `destructive` and
//! `idempotent` mean something only for a tool that is not read-only. So an unannotated tool
//! reads `destructive, open-world`: what a client must assume.
//!
//! Everything printed that a server chose (tool names, descriptions, error texts) goes through
//! [`printable`]: a server cannot move the cursor, clear the screen or forge lines.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::process::ExitCode;

use rmcp::model::Tool;
use serde::Serialize;

use super::{CliError, EXIT_FAILED, process_env, settings};
use crate::actors::mcp_session::ServerTools;
use crate::actors::tool_executor::exposed_names;
use crate::app::Runtime;
use crate::cli::CommonArgs;
use crate::config::Overrides;
use crate::mcp::ServerSpec;

/// A tool's annotations as agentry reads them (the MCP defaults for absent hints).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Hints {
    read_only: bool,
    /// `None` for a read-only tool (the hint means nothing there).
    destructive: Option<bool>,
    /// `None` for a read-only tool.
    idempotent: Option<bool>,
    open_world: bool,
}

impl Hints {
    fn of(tool: &Tool) -> Self {
        let given = tool.annotations.as_ref();
        let read_only = given.and_then(|a| a.read_only_hint).unwrap_or(false);
        Self {
            read_only,
            destructive: (!read_only).then(|| given.and_then(|a| a.destructive_hint).unwrap_or(true)),
            idempotent: (!read_only).then(|| given.and_then(|a| a.idempotent_hint).unwrap_or(false)),
            open_world: given.and_then(|a| a.open_world_hint).unwrap_or(true),
        }
    }

    /// The words that hold: `read-only`; else `destructive` (or `additive`: updates that
    /// destroy nothing) and `idempotent`; and `open-world`.
    fn words(self) -> Vec<&'static str> {
        let mut words = Vec::new();
        if self.read_only {
            words.push("read-only");
        }
        match self.destructive {
            Some(true) => words.push("destructive"),
            // The specification's words for `destructiveHint: false`.
            Some(false) => words.push("additive"),
            None => {}
        }
        if self.idempotent == Some(true) {
            words.push("idempotent");
        }
        if self.open_world {
            words.push("open-world");
        }
        words
    }
}

/// Why a call cut off in flight is sent again (as `McpSession` decides), or `None`: it is not.
fn retried_because(server: &ServerSpec, tool: &Tool) -> Option<&'static str> {
    if server.retry_tools.iter().any(|t| *t == tool.name) {
        return Some("mcp.servers.retry_tools");
    }
    let given = tool.annotations.as_ref()?;
    if given.read_only_hint == Some(true) {
        Some("readOnlyHint")
    } else if given.idempotent_hint == Some(true) {
        Some("idempotentHint")
    } else {
        None
    }
}

/// `agentry tools --json`: one document.
#[derive(Debug, Serialize)]
struct ToolsJson<'a> {
    servers: Vec<ServerJson<'a>>,
}

#[derive(Debug, Serialize)]
struct ServerJson<'a> {
    name: &'a str,
    transport: &'static str,
    location: String,
    /// `ready` or `unavailable`.
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    tools: Vec<ToolJson<'a>>,
}

#[derive(Debug, Serialize)]
struct ToolJson<'a> {
    name: &'a str,
    /// The name the model sees.
    exposed_as: &'a str,
    description: &'a str,
    /// The hints that hold, by their words (MCP defaults for absent ones).
    hints: Vec<&'static str>,
    /// The annotations exactly as the server sent them (`null`: none).
    annotations: Option<&'a rmcp::model::ToolAnnotations>,
    /// Whether a call cut off in flight is sent again.
    retried_after_cut: bool,
    /// Why (`readOnlyHint`, `idempotentHint`, `mcp.servers.retry_tools`).
    #[serde(skip_serializing_if = "Option::is_none")]
    retried_because: Option<&'static str>,
}

pub(super) async fn tools(common: CommonArgs, json: bool) -> Result<ExitCode, CliError> {
    let settings = settings(&common, Overrides::default())?;
    if settings.mcp.servers.is_empty() {
        if json {
            outln!("{}", serde_json::json!({ "servers": [] }));
        } else {
            outln!("no MCP servers configured (mcp.servers)");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let connect_timeout = settings.mcp.connect_timeout;
    // No model is asked here: the model router is not started (and no route is logged).
    let runtime = Runtime::start_without_model(settings, process_env()).await?;
    let states = runtime.tools_settled(connect_timeout).await;
    // The names the model gets, worked out as ToolExecutor does from the same lists.
    let lists: Vec<(&str, &[Tool])> = runtime
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
    let mut document = ToolsJson { servers: Vec::new() };
    let mut any_tools = false;
    for ((handle, (name, state)), exposed) in runtime.servers.iter().zip(&states).zip(&exposed) {
        let server = handle.server();
        let mut entry = ServerJson {
            name,
            transport: server.transport_name(),
            location: server.location(),
            status: "ready",
            error: None,
            tools: Vec::new(),
        };
        match state {
            ServerTools::Ready(tools) => {
                for (tool, exposed) in tools.iter().zip(exposed) {
                    let because = retried_because(server, tool);
                    entry.tools.push(ToolJson {
                        name: &tool.name,
                        exposed_as: exposed,
                        description: tool.description.as_deref().unwrap_or_default(),
                        hints: Hints::of(tool).words(),
                        annotations: tool.annotations.as_ref(),
                        retried_after_cut: because.is_some(),
                        retried_because: because,
                    });
                }
            }
            ServerTools::Failed { cause, .. } => {
                entry.status = "unavailable";
                entry.error = Some(cause.to_string());
                code = ExitCode::from(EXIT_FAILED);
            }
            ServerTools::Connecting => {
                entry.status = "unavailable";
                entry.error = Some(format!("no answer within {connect_timeout:?}"));
                code = ExitCode::from(EXIT_FAILED);
            }
        }
        any_tools |= !entry.tools.is_empty();
        if !json {
            print_server(&entry, &server.allow);
        }
        document.servers.push(entry);
    }
    if json {
        match serde_json::to_string_pretty(&document) {
            Ok(text) => outln!("{text}"),
            Err(error) => tracing::error!(%error, "cannot write the tools as JSON"),
        }
    } else if any_tools {
        outln!("");
        outln!("Hints: the server's annotations (read-only; destructive or additive; idempotent; open-world).");
        outln!("Absent ones are at MCP's defaults: not read-only, destructive, not idempotent, open-world.");
        outln!("retry: a call cut off by a lost connection is sent again (the server says the tool is");
        outln!("read-only or idempotent, or mcp.servers.retry_tools names it); other calls fail back to the model.");
    }
    runtime.shutdown().await;
    Ok(code)
}

/// One server and its tools, in columns.
fn print_server(entry: &ServerJson<'_>, allow: &[String]) {
    outln!("{} ({}, {})", printable(entry.name), entry.transport, printable(&entry.location));
    if let Some(error) = &entry.error {
        outln!("  unavailable: {}", printable(error));
        return;
    }
    if entry.tools.is_empty() {
        outln!("  no tools (allowlist: {allow:?})");
        return;
    }
    let rows: Vec<(String, String, &str, &str)> = entry
        .tools
        .iter()
        .map(|tool| {
            let mut shown = printable(tool.name).into_owned();
            if tool.exposed_as != tool.name {
                let _ = write!(shown, " (the model sees {})", tool.exposed_as);
            }
            let retry = if tool.retried_after_cut { "retry" } else { "" };
            let description = tool.description.lines().next().unwrap_or_default();
            (shown, tool.hints.join(", "), retry, description)
        })
        .collect();
    let width = |column: fn(&(String, String, &str, &str)) -> usize| rows.iter().map(column).max().unwrap_or(0);
    let (names, hints) = (width(|r| r.0.chars().count()), width(|r| r.1.len()));
    for (name, hint, retry, description) in &rows {
        let line = format!("  {name:<names$}  {hint:<hints$}  {retry:<5}  {}", printable(description));
        outln!("{}", line.trim_end());
    }
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
    use super::{Hints, printable};
    use rmcp::model::{Tool, ToolAnnotations};

    fn tool(annotations: Option<ToolAnnotations>) -> Tool {
        let mut tool = Tool::new("t", "a tool", std::sync::Arc::new(serde_json::Map::new()));
        tool.annotations = annotations;
        tool
    }

    #[test]
    fn each_hint_is_shown_by_its_own_word_with_the_spec_defaults() {
        assert_eq!(Hints::of(&tool(None)).words(), ["destructive", "open-world"], "unannotated: assume the worst");
        let read_only = ToolAnnotations::new().read_only(true).open_world(false);
        assert_eq!(Hints::of(&tool(Some(read_only))).words(), ["read-only"]);
        // server-filesystem's write_file: not read-only, destructive, idempotent, closed world.
        let write = ToolAnnotations::new().read_only(false).destructive(true).idempotent(true).open_world(false);
        assert_eq!(Hints::of(&tool(Some(write))).words(), ["destructive", "idempotent"]);
        let additive = ToolAnnotations::new().destructive(false);
        assert_eq!(Hints::of(&tool(Some(additive))).words(), ["additive", "open-world"]);
        // Meaningless for a read-only tool, so not shown.
        let odd = ToolAnnotations::new().read_only(true).destructive(true).idempotent(true);
        assert_eq!(Hints::of(&tool(Some(odd))).words(), ["read-only", "open-world"]);
    }

    #[test]
    fn control_and_reordering_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(printable("plain name – ünïcødé"), "plain name – ünïcødé");
        assert_eq!(printable("a\nb\0c\u{1b}[2J\u{7}"), r"a\nb\0c\u{1b}[2J\u{7}");
        assert_eq!(printable("evil\u{202e}txt.exe"), r"evil\u{202e}txt.exe");
    }
}
