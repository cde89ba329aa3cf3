//! The stdio transport: an MCP server as a child process, speaking newline-delimited JSON-RPC on
//! its stdin and stdout. Its stderr is read line by line and logged (INFO) with the server's
//! name in front (`memory: Knowledge Graph MCP Server running on stdio`), control characters
//! escaped: several servers share agentry's stderr, and a line must say whose it is.
//!
//! # Why not rmcp's `TokioChildProcess`
//!
//! * rmcp drops a line it cannot read, and an answer it cannot match, at `debug` level: a call
//!   whose answer was mangled waits for its timeout with no word of why. This transport keeps a
//!   [`Ledger`] of the requests it writes, so a mangled answer that can be tied to its request
//!   fails that request at once, and each kind of defect is warned about once per session.
//! * rmcp kills only the direct child. Servers are often started through a wrapper (`npx`,
//!   `uvx`, `sh -c`) whose child is the real server, which then outlives agentry. Here the child
//!   leads a process group of its own, and the whole group is ended.
//!
//! # Ending the server
//!
//! ```text
//! close()   stdin closed ── up to 2 s for the group to exit ── SIGTERM to the group
//!                         ── up to 2 s ── SIGKILL to the group
//! drop      SIGKILL to the group at once (a session dropped without close(): no time to wait)
//! ```
//!
//! Every live group is also in a process-wide list, so a hard exit (a second Ctrl-C) can kill
//! them all with [`kill_all_groups`] before the process ends.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use rmcp::RoleClient;
use rmcp::model::{ClientJsonRpcMessage, ServerJsonRpcMessage};
use rmcp::transport::Transport;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio_util::codec::{AnyDelimiterCodec, AnyDelimiterCodecError, FramedRead};

use super::ledger::{Ledger, lock};

/// The longest line read from a server; a longer one is skipped (and fails the call it answers,
/// when that is clear).
const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

/// The longest stderr line logged whole.
const MAX_STDERR_LINE_BYTES: usize = 64 * 1024;

/// How long a server has to exit after its stdin closes, and again after SIGTERM.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// The process groups of running stdio servers, for [`kill_all_groups`].
static LIVE_GROUPS: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

fn live_groups() -> std::sync::MutexGuard<'static, BTreeSet<i32>> {
    LIVE_GROUPS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Sends SIGKILL to every running stdio server's process group: for a process about to exit
/// without the time to close its sessions.
pub fn kill_all_groups() {
    for group in std::mem::take(&mut *live_groups()) {
        let _ = killpg(Pid::from_raw(group), Signal::SIGKILL);
    }
}

/// A child leading its own process group; the group is killed when this is dropped unless it
/// was ended with [`ProcessGroup::end`].
#[derive(Debug)]
struct ProcessGroup {
    child: Child,
    id: Pid,
    ended: bool,
}

impl ProcessGroup {
    fn spawn(command: &mut Command) -> std::io::Result<Self> {
        let child = command.process_group(0).kill_on_drop(true).spawn()?;
        let id = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(Pid::from_raw)
            .ok_or_else(|| std::io::Error::other("the server exited before it could be tracked"))?;
        live_groups().insert(id.as_raw());
        Ok(Self { child, id, ended: false })
    }

    /// Whether any process of the group is still alive (the leader reaped or not).
    fn alive(&mut self) -> bool {
        let _ = self.child.try_wait();
        killpg(self.id, None).is_ok()
    }

    /// Waits up to `grace` for the whole group to be gone.
    async fn gone_within(&mut self, grace: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            // The leader is reaped as soon as it exits; other members are polled.
            let _ = tokio::time::timeout(Duration::from_millis(50), self.child.wait()).await;
            if !self.alive() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
        }
    }

    /// Ends the group: time to exit on its own (its stdin is closed by then), then SIGTERM,
    /// then SIGKILL.
    async fn end(&mut self) {
        if !self.gone_within(EXIT_GRACE).await {
            tracing::debug!(group = self.id.as_raw(), "stdio server still running: SIGTERM to its process group");
            let _ = killpg(self.id, Signal::SIGTERM);
            if !self.gone_within(EXIT_GRACE).await {
                tracing::warn!(group = self.id.as_raw(), "stdio server ignored SIGTERM: SIGKILL to its process group");
                let _ = killpg(self.id, Signal::SIGKILL);
                let _ = self.child.wait().await;
            }
        }
        self.ended = true;
        live_groups().remove(&self.id.as_raw());
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if !self.ended {
            let _ = killpg(self.id, Signal::SIGKILL);
            live_groups().remove(&self.id.as_raw());
        }
    }
}

/// An MCP server on a child process's stdin and stdout, as an rmcp client [`Transport`].
#[derive(Debug)]
pub struct StdioTransport {
    /// The program, for logs.
    program: String,
    group: ProcessGroup,
    /// `None` once closed; shared with sends in flight.
    stdin: Arc<tokio::sync::Mutex<Option<ChildStdin>>>,
    lines: FramedRead<ChildStdout, AnyDelimiterCodec>,
    ledger: Arc<Mutex<Ledger>>,
    /// An error answer for a request whose real answer was mangled, delivered next.
    failed: Option<ServerJsonRpcMessage>,
}

impl StdioTransport {
    /// Starts `command` (its stdin, stdout and stderr piped) as the leader of a new process
    /// group; `server` is the configured name its stderr lines are logged under.
    pub fn spawn(mut command: Command, program: &str, server: &str) -> std::io::Result<Self> {
        command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut group = ProcessGroup::spawn(&mut command)?;
        let (Some(stdin), Some(stdout)) = (group.child.stdin.take(), group.child.stdout.take()) else {
            return Err(std::io::Error::other("the server's stdin or stdout is not piped"));
        };
        if let Some(stderr) = group.child.stderr.take() {
            tokio::spawn(log_stderr(stderr, server.to_owned()));
        }
        let codec = AnyDelimiterCodec::new_with_max_length(b"\n".to_vec(), Vec::new(), MAX_LINE_BYTES);
        Ok(Self {
            program: program.to_owned(),
            group,
            stdin: Arc::new(tokio::sync::Mutex::new(Some(stdin))),
            lines: FramedRead::new(stdout, codec),
            ledger: Arc::default(),
            failed: None,
        })
    }

    /// Reads one message, or what stands for it: the error answer for a request whose answer
    /// was mangled. `None` at the end of the server's output.
    async fn next_message(&mut self) -> Option<ServerJsonRpcMessage> {
        loop {
            if let Some(failed) = self.failed.take() {
                return Some(failed);
            }
            let line = match self.lines.next().await? {
                Ok(line) => line,
                Err(AnyDelimiterCodecError::MaxChunkLengthExceeded) => {
                    // The codec skips the rest of the line.
                    self.failed = lock(&self.ledger).oversized(MAX_LINE_BYTES, &self.program);
                    continue;
                }
                Err(AnyDelimiterCodecError::Io(error)) => {
                    tracing::debug!(server = %self.program, %error, "reading the stdio server's output failed");
                    return None;
                }
            };
            let line = line.strip_suffix(b"\r").unwrap_or(&line);
            let line = line.strip_prefix("\u{feff}".as_bytes()).unwrap_or(line);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<ServerJsonRpcMessage>(line) {
                Ok(message) => {
                    self.failed = lock(&self.ledger).received(&message, &self.program);
                    return Some(message);
                }
                Err(error) => {
                    let text = String::from_utf8_lossy(line);
                    self.failed = lock(&self.ledger).malformed(&text, &error, &self.program);
                }
            }
        }
    }
}

impl Transport<RoleClient> for StdioTransport {
    type Error = std::io::Error;

    fn name() -> Cow<'static, str> {
        Cow::Borrowed("StdioTransport")
    }

    fn send(&mut self, item: ClientJsonRpcMessage) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        // Noted before the write: the answer may arrive before the write returns.
        let request = lock(&self.ledger).sending(&item);
        let (stdin, ledger) = (self.stdin.clone(), self.ledger.clone());
        async move {
            let result = write_line(&stdin, &item).await;
            if let (Err(_), Some(id)) = (&result, request) {
                // rmcp fails the request itself; no answer is expected any more.
                lock(&ledger).answered(&id);
            }
            result
        }
    }

    fn receive(&mut self) -> impl Future<Output = Option<ServerJsonRpcMessage>> + Send {
        self.next_message()
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        // End of input is the MCP way to ask a stdio server to exit.
        self.stdin.lock().await.take();
        self.group.end().await;
        tracing::debug!(server = %self.program, "stdio server ended");
        Ok(())
    }
}

/// Logs each line the server writes to its stderr, prefixed with its name, until it closes it.
async fn log_stderr(stderr: tokio::process::ChildStderr, server: String) {
    let codec = AnyDelimiterCodec::new_with_max_length(b"\n".to_vec(), Vec::new(), MAX_STDERR_LINE_BYTES);
    let mut lines = FramedRead::new(stderr, codec);
    while let Some(line) = lines.next().await {
        match line {
            Ok(line) => {
                let line = String::from_utf8_lossy(line.strip_suffix(b"\r").unwrap_or(&line)).into_owned();
                if !line.trim().is_empty() {
                    tracing::info!("{server}: {}", escape_controls(&line));
                }
            }
            // The codec skips the rest of an overlong line.
            Err(AnyDelimiterCodecError::MaxChunkLengthExceeded) => {
                tracing::info!("{server}: (a stderr line over {MAX_STDERR_LINE_BYTES} bytes, skipped)");
            }
            Err(AnyDelimiterCodecError::Io(_)) => break,
        }
    }
}

/// `text` with control characters escaped (`\u{1b}`), so a server's line cannot move the
/// terminal's cursor or forge a log line.
fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(text.chars().map(|c| if c.is_control() { c.escape_debug().collect() } else { c.to_string() }).collect())
}

async fn write_line(
    stdin: &tokio::sync::Mutex<Option<ChildStdin>>,
    item: &ClientJsonRpcMessage,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(item)?;
    line.push(b'\n');
    let mut stdin = stdin.lock().await;
    let Some(stdin) = stdin.as_mut() else {
        return Err(std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the stdio transport is closed"));
    };
    stdin.write_all(&line).await?;
    stdin.flush().await
}
