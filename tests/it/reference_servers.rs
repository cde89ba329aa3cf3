//! `agentry tools` against the official MCP reference servers over stdio, as a user would run
//! them: `mcp-server-time` and `mcp-server-fetch` (PyPI, in `.peers/reference-venv`),
//! `@modelcontextprotocol/server-memory` and `server-filesystem` (npm, in
//! `tests/peers/node_modules`), all pinned and installed by `tests/peers/install.sh`.
//!
//! What is asserted is what those servers really send: their annotations, each hint by its own
//! word (absent hints at the MCP defaults), which calls agentry would send again after a cut
//! connection, their stderr lines under their names, and no model route for a command that
//! asks no model.

use std::path::Path;

use serde_json::Value;

use crate::harness::Agentry;
use crate::peers::{ensure_installed, repo_root};

/// The four reference servers as `[[mcp.servers]]` entries; the filesystem server may use `fs`.
fn reference_servers(fs: &Path) -> String {
    ensure_installed();
    let venv = repo_root().join(".peers/reference-venv/bin");
    let node = |package: &str| {
        let entry = repo_root().join(format!("tests/peers/node_modules/@modelcontextprotocol/{package}/dist/index.js"));
        assert!(entry.exists(), "{} missing: run tests/peers/install.sh", entry.display());
        entry.display().to_string()
    };
    let servers = [
        ("time", vec![venv.join("mcp-server-time").display().to_string(), "--local-timezone".into(), "UTC".into()]),
        ("fetch", vec![venv.join("mcp-server-fetch").display().to_string()]),
        ("memory", vec!["node".into(), node("server-memory")]),
        ("filesystem", vec!["node".into(), node("server-filesystem"), fs.display().to_string()]),
    ];
    servers
        .iter()
        .map(|(name, command)| {
            format!(
                "[[mcp.servers]]\nname = {name:?}\ntransport = \"stdio\"\ncommand = {command:?}\nenv = [\"PATH\"]\ntools = []\n\n"
            )
        })
        .collect()
}

/// A scratch directory with the reference servers configured in `ref.toml`.
fn agentry_with_reference_servers() -> (Agentry, String) {
    let agentry = Agentry::new();
    let fs = agentry.dir().join("fs");
    std::fs::create_dir_all(&fs).expect("fs dir");
    let config = agentry.file("ref.toml", &reference_servers(&fs));
    (agentry, config.display().to_string())
}

fn tool<'a>(document: &'a Value, server: &str, name: &str) -> &'a Value {
    let servers = document["servers"].as_array().expect("servers");
    let server =
        servers.iter().find(|s| s["name"] == server).unwrap_or_else(|| panic!("no server {server}: {document:#}"));
    assert_eq!(server["status"], "ready", "{server:#}");
    let tools = server["tools"].as_array().expect("tools");
    tools.iter().find(|t| t["name"] == name).unwrap_or_else(|| panic!("no tool {name} on {server:#}"))
}

fn hints(tool: &Value) -> Vec<&str> {
    tool["hints"].as_array().expect("hints").iter().map(|h| h.as_str().expect("a word")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn tools_shows_the_reference_servers_annotations_as_they_give_them() {
    let (agentry, config) = agentry_with_reference_servers();
    let run = agentry.run(&["tools", "--json", "-c", &config]).await;
    run.expect_code(0);
    let document: Value = serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.stdout));

    // server-filesystem: writes are not read-only; the destructive ones say so.
    let write_file = tool(&document, "filesystem", "write_file");
    assert_eq!(hints(write_file), ["destructive", "idempotent"], "{write_file:#}");
    assert_eq!(write_file["annotations"]["readOnlyHint"], false, "the server's own annotations are kept");
    assert_eq!(write_file["annotations"]["destructiveHint"], true);
    assert_eq!(write_file["retried_after_cut"], true, "idempotent: sent again");
    assert_eq!(write_file["retried_because"], "idempotentHint");
    let create_directory = tool(&document, "filesystem", "create_directory");
    assert!(!hints(create_directory).contains(&"read-only"), "{create_directory:#}");
    assert!(hints(create_directory).contains(&"idempotent"), "{create_directory:#}");
    for destructive in ["edit_file", "move_file"] {
        let found = tool(&document, "filesystem", destructive);
        assert_eq!(hints(found), ["destructive"], "{found:#}");
        assert_eq!(found["retried_after_cut"], false, "neither read-only nor idempotent: {found:#}");
    }
    let read = tool(&document, "filesystem", "read_text_file");
    assert_eq!(hints(read), ["read-only"], "{read:#}");
    assert_eq!(read["retried_because"], "readOnlyHint");

    // server-memory: deleting is destructive (and idempotent), creating is neither read-only nor retried.
    let delete = tool(&document, "memory", "delete_entities");
    assert!(hints(delete).contains(&"destructive") && !hints(delete).contains(&"read-only"), "{delete:#}");
    let create = tool(&document, "memory", "create_entities");
    assert!(!hints(create).contains(&"read-only"), "{create:#}");
    assert_eq!(create["retried_after_cut"], false, "{create:#}");
    assert_eq!(hints(tool(&document, "memory", "read_graph")), ["read-only"]);

    // The Python servers: time is read-only and closed-world, fetch reaches the open world.
    assert_eq!(hints(tool(&document, "time", "get_current_time")), ["read-only"]);
    assert_eq!(hints(tool(&document, "fetch", "fetch")), ["read-only", "open-world"]);

    // A command that asks no model does not start (or log) a model route.
    assert!(!run.stderr.contains("model router") && !run.stderr.contains("route="), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_tool_list_names_each_hint_and_a_stdio_servers_stderr_carries_its_name() {
    let (agentry, config) = agentry_with_reference_servers();
    let run = agentry.run(&["tools", "-c", &config]).await;
    run.expect_code(0);
    let line = |name: &str| {
        let needle = format!("  {name} ");
        run.stdout.lines().find(|l| l.starts_with(&needle)).unwrap_or_else(|| panic!("no {name}:\n{}", run.stdout))
    };
    let columns = |name: &str| line(name).split("  ").map(str::trim).filter(|c| !c.is_empty()).collect::<Vec<_>>();
    assert_eq!(columns("write_file")[1..3], ["destructive, idempotent", "retry"], "{}", line("write_file"));
    assert_eq!(columns("edit_file")[1], "destructive", "{}", line("edit_file"));
    assert!(!columns("edit_file").contains(&"retry"), "{}", line("edit_file"));
    assert_eq!(columns("delete_entities")[1..3], ["destructive, idempotent", "retry"]);
    assert_eq!(columns("read_graph")[1..3], ["read-only", "retry"]);
    assert!(!run.stdout.contains("read-only/idempotent"), "{}", run.stdout);

    // Each server's own stderr lines, under its name.
    let logged = |text: &str| run.stderr.lines().any(|l| l.ends_with(text));
    assert!(logged("memory: Knowledge Graph MCP Server running on stdio"), "{}", run.stderr);
    assert!(logged("filesystem: Secure MCP Filesystem Server running on stdio"), "{}", run.stderr);
    assert!(!run.stderr.lines().any(|l| l.starts_with("Knowledge Graph")), "unprefixed:\n{}", run.stderr);
}
