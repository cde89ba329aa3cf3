//! The official MCP client conformance suite (`@modelcontextprotocol/conformance`, stable and
//! newest pre-release) against `examples/conformance_client.rs`, which is agentry's own
//! McpSession. `run.sh --strict` fails on any failed check, any warning, or a scenario with
//! no checks (a client that never connected).

use std::path::Path;

use crate::peers::{ensure_installed, repo_root};

#[tokio::test(flavor = "multi_thread")]
async fn agentry_passes_the_mcp_client_conformance_suite() {
    ensure_installed();
    // `cargo test` builds the examples next to the binaries.
    let client = Path::new(env!("CARGO_BIN_EXE_agentry")).with_file_name("examples").join("conformance_client");
    assert!(client.exists(), "{} is built by `cargo test`", client.display());
    let results = tempfile::tempdir().expect("results dir");
    let output = tokio::process::Command::new("bash")
        .arg(repo_root().join("tests/conformance/run.sh"))
        .args(["--strict", "--results"])
        .arg(results.path())
        .arg(&client)
        .output()
        .await
        .expect("run.sh runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "conformance failures:\n{stdout}\n{stderr}");
    assert!(stdout.contains(" 0 failed"), "{stdout}");
    // The required scenarios ran and passed (not merely absent).
    for scenario in ["initialize", "tools_call", "sse-retry"] {
        assert!(
            stdout.lines().any(|l| l.starts_with("stable") && l.contains(scenario) && l.contains("pass")),
            "{scenario}: {stdout}"
        );
    }
}
