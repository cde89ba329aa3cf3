//! The rotel collector (the `rotel` PyPI package in the peers' venv, which ships the
//! `rotel-agent` binary) on free loopback ports, forwarding to a receiver.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

/// How long rotel may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The `rotel-agent` binary of the peers' venv (`lib/python3.X/site-packages/rotel/rotel-agent`;
/// the package installs no script in `bin/`).
///
/// # Panics
/// If it is not installed, with a hint.
fn executable() -> PathBuf {
    crate::peers::ensure_installed();
    let venv = crate::peers::repo_root().join(".peers/venv");
    let found = std::fs::read_dir(venv.join("lib"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("site-packages/rotel/rotel-agent"))
        .find(|candidate| candidate.exists());
    found.unwrap_or_else(|| {
        panic!(
            "rotel not found in {}: the `rotel` package is pinned in tests/peers/requirements.txt; \
             run `bash tests/peers/install.sh` (or `.ci/run`) to install the test peers",
            venv.display()
        )
    })
}

/// A running rotel collector receiving OTLP/gRPC on a free loopback port and forwarding over
/// OTLP/gRPC (gzip-compressed, rotel's default) to another endpoint. It forwards in batches,
/// after a 50 ms batch timeout here (rotel's default is 200 ms). Killed when dropped.
pub struct Rotel {
    child: Child,
    grpc_port: u16,
    _dir: tempfile::TempDir,
}

impl Rotel {
    /// Starts rotel forwarding to `forward_to_grpc_endpoint` (`http://127.0.0.1:PORT`) and
    /// returns once its receivers accept connections.
    ///
    /// # Panics
    /// If rotel is not installed, exits, or is not ready within 30 s (with its output).
    pub async fn start(forward_to_grpc_endpoint: &str) -> Self {
        let executable = executable();
        let mut failures = Vec::new();
        // A port picked as free may be taken before rotel binds it; rotel then exits with
        // "Address already in use", and another pick is tried.
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("a temporary directory for rotel");
            let (grpc_port, http_port) = free_port_pair();
            let mut child = Command::new(&executable)
                .arg("start")
                .args(["--otlp-grpc-endpoint", &format!("127.0.0.1:{grpc_port}")])
                .args(["--otlp-http-endpoint", &format!("127.0.0.1:{http_port}")])
                .args(["--exporter", "otlp", "--otlp-exporter-protocol", "grpc"])
                .args(["--otlp-exporter-endpoint", forward_to_grpc_endpoint])
                .args(["--batch-timeout", "50ms"])
                .args(["--otlp-exporter-retry-initial-backoff", "100ms", "--otlp-exporter-retry-max-backoff", "1s"])
                .arg("--pid-file")
                .arg(dir.path().join("rotel.pid"))
                .arg("--log-file")
                .arg(dir.path().join("rotel.log"))
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .unwrap_or_else(|err| panic!("cannot spawn {}: {err}", executable.display()));
            let log = Arc::new(Mutex::new(String::new()));
            let stdout = tokio::spawn(drain(child.stdout.take().expect("stdout is piped"), Arc::clone(&log)));
            let stderr = tokio::spawn(drain(child.stderr.take().expect("stderr is piped"), Arc::clone(&log)));
            let failure = match wait_ready(&mut child, &[grpc_port, http_port]).await {
                Ok(()) => return Self { child, grpc_port, _dir: dir },
                Err(failure) => failure,
            };
            let _ = child.start_kill();
            let _ = child.wait().await;
            // The pipes close with the process: its output is complete.
            let _ = (stdout.await, stderr.await);
            let output = log.lock().map(|log| log.clone()).unwrap_or_default();
            failures
                .push(format!("rotel (gRPC :{grpc_port}, HTTP :{http_port}) {failure}\n--- its output ---\n{output}"));
            if !output.contains("Address already in use") {
                break;
            }
        }
        panic!("rotel did not start:\n{}", failures.join("\n"))
    }

    /// Its OTLP/gRPC receiver, `http://127.0.0.1:PORT`.
    pub fn grpc_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }
}

impl Drop for Rotel {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Two distinct ports that were free a moment ago (both bound at once, then released).
fn free_port_pair() -> (u16, u16) {
    let bind = || std::net::TcpListener::bind("127.0.0.1:0").expect("bind a probe port");
    let (first, second) = (bind(), bind());
    (first.local_addr().expect("probe address").port(), second.local_addr().expect("probe address").port())
}

/// Polls until every port accepts a TCP connection while `child` runs.
async fn wait_ready(child: &mut Child, ports: &[u16]) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    let mut pending: Vec<u16> = ports.to_vec();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited before it was ready ({status})"));
        }
        let mut still = Vec::new();
        for port in pending {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
                still.push(port);
            }
        }
        pending = still;
        if pending.is_empty() {
            // Both open; make sure it is rotel listening and not a process that took the port.
            return match child.try_wait() {
                Ok(Some(status)) => Err(format!("exited right after its ports opened ({status})")),
                _ => Ok(()),
            };
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("did not accept connections on {pending:?} within {READY_TIMEOUT:?}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn drain(pipe: impl AsyncRead + Unpin, log: Arc<Mutex<String>>) {
    let mut lines = BufReader::new(pipe).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Ok(mut log) = log.lock() {
            log.push_str(&line);
            log.push('\n');
        }
    }
}
