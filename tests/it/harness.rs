//! Runs the `agentry` binary in a scratch directory with a clean environment.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// A finished run.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Everything the process printed.
    pub fn output(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    /// Panics with the output unless the exit code is `code`.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, code, "exit code; stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }
}

/// One invocation of the binary, in its own temporary working directory.
pub struct Agentry {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Agentry {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let secrets = dir.path().join("secrets");
        std::fs::create_dir(&secrets).expect("secrets dir");
        let env = vec![
            ("PATH".into(), std::env::var("PATH").unwrap_or_default()),
            ("HOME".into(), dir.path().display().to_string()),
            // Never the machine's /run/secrets.
            ("AGENTRY__SECRETS__DIR".into(), secrets.display().to_string()),
            ("RUST_LOG".into(), "info".into()),
        ];
        Self { dir, env }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn env(mut self, name: &str, value: impl Into<String>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    /// Writes a file under the working directory and returns its path.
    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("parent dir");
        }
        std::fs::write(&path, text).expect("write file");
        path
    }

    /// Runs `agentry <args>` (bounded: a hang fails the test).
    pub async fn run(&self, args: &[&str]) -> Run {
        Self::finish(self.spawn(args)).await
    }

    /// Runs a shell command line in the working directory (e.g. to lower `ulimit` first).
    pub async fn run_shell(&self, command: &str) -> Run {
        self.run_in("sh", command).await
    }

    /// Runs a bash command line (for `pipefail` and `PIPESTATUS`) in the working directory.
    pub async fn run_bash(&self, command: &str) -> Run {
        self.run_in("bash", command).await
    }

    async fn run_in(&self, shell: &str, command: &str) -> Run {
        Self::finish(self.start(shell, &["-c", command])).await
    }

    /// Starts `agentry <args>` without waiting.
    pub fn spawn(&self, args: &[&str]) -> tokio::process::Child {
        self.start(env!("CARGO_BIN_EXE_agentry"), args)
    }

    /// Starts `program` in the working directory with only this harness's environment.
    fn start(&self, program: &str, args: &[&str]) -> tokio::process::Child {
        tokio::process::Command::new(program)
            .args(args)
            .current_dir(self.dir.path())
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|error| panic!("{program} starts: {error}"))
    }

    /// Waits for a spawned run (bounded: a hang fails the test).
    pub async fn finish(child: tokio::process::Child) -> Run {
        let output = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
            .await
            .expect("agentry finished within 120 s")
            .expect("agentry output");
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// The research files (not the report) in `dir` under the working directory.
    pub fn research_files(&self, dir: &str) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.path().join(dir))
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|e| e == "md"))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
    }

    /// The report as JSON.
    pub fn report(&self, path: &str) -> serde_json::Value {
        let text = std::fs::read_to_string(self.dir.path().join(path)).expect("report exists");
        serde_json::from_str(&text).expect("report is JSON")
    }
}

/// A config file that points agentry at a model server and (optionally) an MCP server.
pub fn config(model_url: &str, mcp_url: Option<&str>, extra: &str) -> String {
    // `extra` holds other tables ([batch], [agent]); [model] and [mcp] are written here.
    let mcp = match mcp_url {
        Some(url) => format!("[[mcp.servers]]\nname = \"peer\"\nurl = \"{url}\"\ntools = []\n"),
        None => "[mcp]\nservers = []\n".to_owned(),
    };
    format!(
        "{extra}\n[model]\nretry_min_delay = \"10ms\"\nretry_max_delay = \"200ms\"\n[model.local]\nbase_url = \"{model_url}\"\nmodel = \"test-model\"\n{mcp}"
    )
}

/// The tool results (messages with role `tool`) of a chat request body, in order.
pub fn tool_results(body: &serde_json::Value) -> Vec<String> {
    body["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| m["content"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Live (not zombie) children of `parent` whose command line contains `needle`.
pub fn child_pids(parent: u32, needle: &str) -> Vec<u32> {
    live_pids(needle, Some(parent))
}

/// Live (not zombie) processes whose command line contains `needle` (children of `parent`
/// only, if given).
pub fn live_pids(needle: &str, parent: Option<u32>) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // After the command name (in parentheses, may hold spaces): state, then parent pid.
            let mut fields = stat.rsplit_once(") ").map(|(_, rest)| rest).unwrap_or_default().split(' ');
            let live = fields.next().is_some_and(|state| state != "Z");
            let ppid = fields.next().and_then(|ppid| ppid.parse::<u32>().ok());
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            live && parent.is_none_or(|parent| ppid == Some(parent)) && cmdline.contains(needle)
        })
        .collect()
}

/// A running process's standard error (or output), read as it comes, so a test can wait for a
/// line before its next step (a signal sent before the previous one was answered would be
/// merged with it).
pub struct OutputWatch {
    text: std::sync::Arc<std::sync::Mutex<String>>,
    changed: std::sync::Arc<tokio::sync::Notify>,
}

impl OutputWatch {
    /// Takes `child`'s standard error (the `Run` that `Agentry::finish` returns then has none).
    pub fn stderr(child: &mut tokio::process::Child) -> Self {
        Self::watch(child.stderr.take().expect("stderr is piped"))
    }

    /// Takes `child`'s standard output.
    pub fn stdout(child: &mut tokio::process::Child) -> Self {
        Self::watch(child.stdout.take().expect("stdout is piped"))
    }

    fn watch(mut output: impl tokio::io::AsyncRead + Unpin + Send + 'static) -> Self {
        use tokio::io::AsyncReadExt;
        let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let changed = std::sync::Arc::new(tokio::sync::Notify::new());
        let (sink, notify) = (text.clone(), changed.clone());
        tokio::spawn(async move {
            let mut buffer = [0u8; 4096];
            while let Ok(read) = output.read(&mut buffer).await {
                if read == 0 {
                    break;
                }
                sink.lock().expect("output text").push_str(&String::from_utf8_lossy(&buffer[..read]));
                notify.notify_waiters();
            }
        });
        Self { text, changed }
    }

    /// Everything read so far.
    pub fn text(&self) -> String {
        self.text.lock().expect("output text").clone()
    }

    /// Waits (at most 60 s) until the output contains `needle`; panics with what it holds
    /// otherwise.
    pub async fn wait_for(&self, needle: &str) {
        let found = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                let changed = self.changed.notified();
                if self.text().contains(needle) {
                    return;
                }
                let _ = tokio::time::timeout(Duration::from_millis(100), changed).await;
            }
        })
        .await;
        assert!(found.is_ok(), "no {needle:?} within 60 s:\n{}", self.text());
    }
}

/// Sends `signal` (`TERM`, `INT`, …) to `pid`.
pub fn signal(pid: u32, signal: &str) {
    let sent = std::process::Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]).status();
    assert!(sent.is_ok_and(|status| status.success()), "kill -{signal} {pid}");
}

/// Waits (at most 10 s) until no live process's command line contains `needle`; returns those
/// still there, after killing them so a failing test leaves nothing behind.
pub async fn gone(needle: &str) -> Vec<u32> {
    let mut left = live_pids(needle, None);
    for _ in 0..200 {
        if left.is_empty() {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        left = live_pids(needle, None);
    }
    for pid in &left {
        let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
    }
    left
}
