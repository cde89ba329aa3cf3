//! Test peers: the MCP servers that integration tests talk to.
//!
//! Two peers, installed on first use by `tests/peers/install.sh` (also run by `.ci/run`):
//!
//! * `tests/peers/mcp_search_server.py`, an offline search server on the
//!   official MCP Python SDK, run from the venv at `.peers/venv`. It serves
//!   `search`, `echo`, `fail` and test tools (`slow`, `chatty`, `barrier`, `add_tool`) over SSE, streamable HTTP or stdio; see
//!   [`PythonMcpServer`] for the HTTP transports and
//!   [`search_server_stdio_command`] for stdio.
//! * `@modelcontextprotocol/server-everything`, the reference server of the
//!   MCP project, installed by npm into `tests/peers/node_modules`; see
//!   [`server_everything_command`].
//!
//! Included by the integration tests (`tests/it/main.rs`) with `#[path]`. Each test
//! binary uses only part of it, hence the allowances below.
#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

/// How long a starting server may take to print `READY <port>`. Generous:
/// a cold Python start on a loaded 2-core CI machine can take seconds.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long [`PythonMcpServer::restart_same_port`] keeps retrying while the
/// old port is still held by the kernel.
const REBIND_TIMEOUT: Duration = Duration::from_secs(10);

/// The repository root (the agentry crate's manifest directory).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Python interpreter of the peers' venv, `.peers/venv/bin/python`.
///
/// # Panics
/// If the venv is missing, with a hint to run `.ci/run`.
pub fn python() -> PathBuf {
    ensure_installed();
    let path = repo_root().join(".peers/venv/bin/python");
    assert!(
        path.exists(),
        "test peer Python venv not found at {}: run `.ci/run` from the repository root \
         once to install the test peers (it creates .peers/venv from tests/peers/requirements.txt)",
        path.display()
    );
    path
}

/// Installs the peers on first use in this test process (`tests/peers/install.sh`: a venv
/// and `npm ci`, skipped when already up to date), so `cargo test` works on a fresh clone.
pub fn ensure_installed() {
    static INSTALLED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    INSTALLED.get_or_init(|| {
        let output = std::process::Command::new("bash")
            .arg(repo_root().join("tests/peers/install.sh"))
            .output()
            .expect("bash runs tests/peers/install.sh");
        assert!(
            output.status.success(),
            "installing the test peers failed (needs python3 with venv/pip, node and npm):\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    });
}

/// Path of the Python MCP search server script.
pub fn search_server_script() -> PathBuf {
    repo_root().join("tests/peers/mcp_search_server.py")
}

/// Command line that runs the Python search server over stdio:
/// `[<venv python>, <script>, "--transport", "stdio"]`.
///
/// Over stdio the server prints no `READY` line; it is ready once spawned.
pub fn search_server_stdio_command() -> Vec<String> {
    vec![
        python().display().to_string(),
        search_server_script().display().to_string(),
        "--transport".to_owned(),
        "stdio".to_owned(),
    ]
}

/// Command line that runs `@modelcontextprotocol/server-everything` over stdio:
/// `["node", "<repo>/tests/peers/node_modules/@modelcontextprotocol/server-everything/dist/index.js", "stdio"]`.
///
/// # Panics
/// If the npm package is not installed, with a hint to run `.ci/run`.
pub fn server_everything_command() -> Vec<String> {
    ensure_installed();
    let entry = repo_root().join("tests/peers/node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    assert!(
        entry.exists(),
        "server-everything not found at {}: run `.ci/run` from the repository root once \
         to install the test peers (it runs `npm ci --prefix tests/peers`)",
        entry.display()
    );
    vec!["node".to_owned(), entry.display().to_string(), "stdio".to_owned()]
}

/// A running `mcp_search_server.py` on an HTTP transport, bound to
/// 127.0.0.1.
///
/// The server binds its listening socket itself (port 0 lets the kernel pick
/// a free one) and prints `READY <port>` once it accepts connections, so
/// [`start`](Self::start) returns only when the server is usable, without
/// sleeping or racing for a port. The child is killed when this value is
/// dropped.
///
/// Everything the server writes to stderr (one line per tool call, errors)
/// is echoed to the test's stderr and kept; see [`stderr`](Self::stderr).
pub struct PythonMcpServer {
    child: Child,
    port: u16,
    transport: String,
    extra_args: Vec<String>,
    log: Arc<Mutex<String>>,
}

impl PythonMcpServer {
    /// Starts the server on `transport` (`"sse"` or `"streamable-http"`) on a
    /// free port and waits until it is ready.
    ///
    /// # Panics
    /// If the transport is not an HTTP one, or the server exits or is not
    /// ready within a minute (the message carries its stderr).
    pub async fn start(transport: &str) -> Self {
        Self::start_with_args(transport, &[]).await
    }

    /// Like [`start`](Self::start), with extra command-line arguments for the
    /// script, such as `["--require-bearer", "/path/to/token"]`. They are
    /// passed again by [`restart_same_port`](Self::restart_same_port).
    pub async fn start_with_args(transport: &str, extra_args: &[&str]) -> Self {
        assert!(
            matches!(transport, "sse" | "streamable-http"),
            "PythonMcpServer serves HTTP transports (\"sse\" or \"streamable-http\"), \
             not {transport:?}; for stdio use search_server_stdio_command()"
        );
        let log = Arc::new(Mutex::new(String::new()));
        let extra_args: Vec<String> = extra_args.iter().map(|a| (*a).to_owned()).collect();
        let (child, port) =
            spawn_until_ready(transport, 0, &extra_args, &log).await.unwrap_or_else(|failure| panic!("{failure}"));
        Self { child, port, transport: transport.to_owned(), extra_args, log }
    }

    /// The port the server listens on (the same across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The transport the server was started with.
    pub fn transport(&self) -> &str {
        &self.transport
    }

    /// The MCP endpoint: `http://127.0.0.1:PORT/sse` for SSE (messages go to
    /// `/messages/`), `http://127.0.0.1:PORT/mcp` for streamable HTTP.
    pub fn url(&self) -> String {
        let path = if self.transport == "sse" { "sse" } else { "mcp" };
        format!("http://127.0.0.1:{}/{path}", self.port)
    }

    /// Everything the server (and its predecessors before a restart) wrote
    /// to stderr so far.
    pub fn stderr(&self) -> String {
        self.log.lock().map(|log| log.clone()).unwrap_or_default()
    }

    /// Kills the server (SIGKILL) and waits for it to exit. Does nothing if
    /// it has already exited.
    pub async fn kill(&mut self) {
        // An error here only means the child has already exited.
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// Kills the server and starts a new one with the same arguments on the
    /// same port, returning once it is ready. Clients pointed at
    /// [`url`](Self::url) see the peer go away and come back.
    ///
    /// # Panics
    /// As [`start`](Self::start); also if the port stays taken for 10 s.
    pub async fn restart_same_port(&mut self) {
        self.kill().await;
        append_log(&self.log, "--- restarted on the same port ---");
        let deadline = tokio::time::Instant::now() + REBIND_TIMEOUT;
        loop {
            match spawn_until_ready(&self.transport, self.port, &self.extra_args, &self.log).await {
                Ok((child, _)) => {
                    self.child = child;
                    return;
                }
                Err(failure)
                    if failure.contains("Address already in use") && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(failure) => panic!("{failure}"),
            }
        }
    }
}

impl Drop for PythonMcpServer {
    fn drop(&mut self) {
        // Also covered by kill_on_drop; explicit so the intent is visible.
        let _ = self.child.start_kill();
    }
}

/// Spawns the script on `port` (0: any) and waits for its `READY <port>`
/// line. Returns the child and its port, or a description of the failure
/// including the server's stderr.
async fn spawn_until_ready(
    transport: &str,
    port: u16,
    extra_args: &[String],
    log: &Arc<Mutex<String>>,
) -> Result<(Child, u16), String> {
    let script = search_server_script();
    let mut child = Command::new(python())
        .arg(&script)
        .args(["--transport", transport, "--host", "127.0.0.1", "--port"])
        .arg(port.to_string())
        .args(extra_args)
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|err| format!("cannot spawn {}: {err}", script.display()))?;

    let stderr = child.stderr.take().expect("stderr is piped");
    let stderr_drain = tokio::spawn(drain(stderr, Arc::clone(log), true));
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));

    let mut line = String::new();
    let waited = tokio::time::timeout(READY_TIMEOUT, async {
        loop {
            line.clear();
            match stdout.read_line(&mut line).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {
                    if let Some(port) = line.trim().strip_prefix("READY ") {
                        return port.parse::<u16>().ok();
                    }
                    append_log(log, &format!("stdout: {}", line.trim_end()));
                }
            }
        }
    })
    .await;

    let failure = match waited {
        Ok(Some(ready_port)) => {
            // Keep draining stdout so the server can never block on it.
            tokio::spawn(drain(stdout, Arc::clone(log), false));
            return Ok((child, ready_port));
        }
        Ok(None) => match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
            Ok(status) => format!("exited before it was ready ({status:?})"),
            Err(_) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                "closed its stdout without a valid READY line; killed it".to_owned()
            }
        },
        Err(_) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            format!("was not ready within {READY_TIMEOUT:?}; killed it")
        }
    };
    // Let the drain catch the last words of the dead process.
    let _ = tokio::time::timeout(Duration::from_secs(5), stderr_drain).await;
    let stderr = log.lock().map(|log| log.clone()).unwrap_or_default();
    Err(format!(
        "Python MCP test server ({transport}, port {port}, args {extra_args:?}) {failure}.\n\
         --- its stderr ---\n{stderr}"
    ))
}

/// Copies lines from a child's pipe into `log` until EOF, echoing them to
/// the test's stderr when `echo` is set (libtest shows it for failed tests).
async fn drain(pipe: impl AsyncRead + Unpin, log: Arc<Mutex<String>>, echo: bool) {
    let mut pipe = BufReader::new(pipe);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match pipe.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf);
                let line = line.trim_end();
                if echo {
                    eprintln!("{line}");
                }
                append_log(&log, line);
            }
        }
    }
}

fn append_log(log: &Mutex<String>, line: &str) {
    if let Ok(mut log) = log.lock() {
        log.push_str(line);
        log.push('\n');
    }
}
