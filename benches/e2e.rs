//! The end-to-end benchmark: agentry (its own process) against the test kit's model server and
//! the demo's search server, each with a fixed latency and each its own process (this harness
//! started again with `--peer`), so only agentry's own cost is measured (its CPU is the waited
//! child's).
//!
//! ```text
//! cargo bench --bench e2e                       # S1–S5, 3 runs each
//! cargo bench --bench e2e -- --runs 5 --scenarios S1,S3 --out target/bench
//! cargo bench --bench e2e -- --scenarios S2,S3,S4 --stream false   # one JSON answer per call
//! cargo bench --bench e2e -- --scenarios S6          # scale: N = 10,000 and 100,000, once each
//! cargo bench --bench e2e -- --scenarios S6 --huge   # and N = 1,000,000 (minutes, ~4 GB of files)
//! ```
//!
//! Per scenario and run: wall time; the ideal time `ceil(N/C) × (model calls per question ×
//! model latency + tool latency)` and efficiency = ideal / wall; agentry's user+sys CPU per
//! question (getrusage of the waited child); its peak RSS (`VmHWM`, sampled every 5 ms);
//! questions per second; time from process start to the first model request; the model peer's
//! own CPU per question (what streaming costs the other side). Every run is verified: N
//! research files and N `ok` rows, so a fast wrong run cannot pass. Medians with min–max are printed as a markdown table and written,
//! with every run, to `<out>/bench.json` and `<out>/bench.md`.
//!
//! S5 runs against the model server's OpenAI-style rate limits, the token limit binding: its
//! efficiency is against the limit, ideal = (tokens charged − bucket capacity) / refill rate,
//! and it reports the share of requests refused with 429.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agentry::demo::scripted::ScriptedResearcher;
use agentry_testkit::model_server::ModelServer;
use agentry_testkit::model_server::rate_limit::RateLimits;
use agentry_testkit::search::SlowSearchServer;

use nix::sys::resource::{UsageWho, getrusage};
use serde_json::{Value, json};

/// The scripted model makes three calls per question: search, save_research, answer.
const MODEL_CALLS_PER_QUESTION: f64 = 3.0;

struct Scenario {
    name: &'static str,
    what: &'static str,
    questions: usize,
    concurrency: usize,
    model_latency: Duration,
    tool_latency: Duration,
    /// The model server's limits, if it enforces any.
    limits: Option<Limits>,
}

/// OpenAI-style limits per `window`, with headers; and the `max_tokens` agentry asks for.
#[derive(Clone, Copy)]
struct Limits {
    requests: u64,
    tokens: u64,
    window: Duration,
    max_tokens: u32,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "S1",
        what: "one question",
        questions: 1,
        concurrency: 1,
        model_latency: Duration::ZERO,
        tool_latency: Duration::ZERO,
        limits: None,
    },
    Scenario {
        name: "S2",
        what: "throughput",
        questions: 2000,
        concurrency: 64,
        model_latency: Duration::ZERO,
        tool_latency: Duration::ZERO,
        limits: None,
    },
    Scenario {
        name: "S3",
        what: "latency-bound",
        questions: 400,
        concurrency: 100,
        model_latency: Duration::from_millis(200),
        tool_latency: Duration::from_millis(100),
        limits: None,
    },
    Scenario {
        name: "S4",
        what: "wide",
        questions: 5000,
        concurrency: 1000,
        model_latency: Duration::from_millis(500),
        tool_latency: Duration::from_millis(100),
        limits: None,
    },
    Scenario {
        name: "S5",
        what: "rate-limited",
        questions: 200,
        concurrency: 64,
        model_latency: Duration::ZERO,
        tool_latency: Duration::ZERO,
        limits: Some(Limits { requests: 10_000, tokens: 40_000, window: Duration::from_secs(2), max_tokens: 200 }),
    },
    // S6 "scale" (opt-in: --scenarios S6, once each; S6-1M only with --huge): memory and CPU
    // per question as N grows, and a rerun's start over the N answered.
    Scenario {
        name: "S6-10k",
        what: "scale",
        questions: 10_000,
        concurrency: 500,
        model_latency: Duration::ZERO,
        tool_latency: Duration::ZERO,
        limits: None,
    },
    Scenario {
        name: "S6-100k",
        what: "scale",
        questions: 100_000,
        concurrency: 500,
        model_latency: Duration::ZERO,
        tool_latency: Duration::ZERO,
        limits: None,
    },
    Scenario {
        name: "S6-1M",
        what: "scale",
        questions: 1_000_000,
        concurrency: 500,
        model_latency: Duration::ZERO,
        tool_latency: Duration::ZERO,
        limits: None,
    },
];

/// Whether `scenario` runs: the S6 ones only when asked for (S6-1M only with `--huge`), the
/// others by default or when named.
fn chosen(scenario: &Scenario, wanted: &[String], huge: bool) -> bool {
    let named = wanted.iter().any(|w| scenario.name == w || scenario.name.starts_with(&format!("{w}-")));
    match scenario.name {
        "S6-1M" => huge && named,
        name if name.starts_with("S6") => named,
        _ => wanted.is_empty() || named,
    }
}

/// `agentry run -c <dir>/<config> --output-dir <out>` in `dir`, with only `PATH` and a quiet
/// log in its environment and its output discarded.
fn agentry_run(dir: &Path, config: &str, out: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_agentry"));
    command
        .args(["run", "-c", dir.join(config).to_str().expect("utf-8"), "--output-dir", out.to_str().expect("utf-8")])
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

/// A rerun over the answered output of `run`: one more question in the list; returns the
/// time from start to the model server's first request, and the wall time, in ms.
fn rerun_start(scenario: &Scenario, dir: &Path, run: usize, model: &mut Peer) -> (f64, f64) {
    let mut questions = std::fs::read_to_string(dir.join("q.txt")).expect("questions");
    questions.push_str("A question the first run did not have\n");
    std::fs::write(dir.join("q-rerun.txt"), questions).expect("questions");
    let config =
        std::fs::read_to_string(dir.join("bench.toml")).expect("config").replace("\"q.txt\"", "\"q-rerun.txt\"");
    std::fs::write(dir.join("rerun.toml"), config).expect("config");
    model.ask("reset");
    let started_unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_millis() as f64;
    let started = Instant::now();
    let status = agentry_run(dir, "rerun.toml", &dir.join(format!("out-{run}"))).status().expect("agentry runs");
    let wall_ms = started.elapsed().as_secs_f64() * 1000.0;
    assert!(status.success(), "{}: the rerun exited with {status}", scenario.name);
    let first: f64 = model.ask("first").parse().unwrap_or(0.0);
    (if first > 0.0 { first - started_unix_ms } else { f64::NAN }, wall_ms)
}

#[derive(Debug, Clone, serde::Serialize)]
struct Measured {
    wall_s: f64,
    efficiency: f64,
    cpu_ms_per_question: f64,
    peak_rss_mb: f64,
    questions_per_s: f64,
    first_request_ms: f64,
    /// Share of model requests refused with 429 (rate-limited scenarios).
    refused: f64,
    /// The model server's CPU per question: what streaming costs the other side.
    model_peer_cpu_ms_per_question: f64,
}

/// One peer (the test kit's model server, or the demo's search server with a latency) in its
/// own process: this harness started again with `--peer`, so the peers' CPU is neither counted
/// as agentry's nor taken from the harness. It prints `READY <url>`, then answers `reset` and
/// `first` (the first request's Unix time in ms since the last reset, 0 for none) on stdin.
struct Peer {
    child: Child,
    url: String,
    input: std::process::ChildStdin,
    output: BufReader<std::process::ChildStdout>,
}

impl Peer {
    fn start(kind: &str, latency: Duration, limits: Option<Limits>) -> Peer {
        let mut args =
            vec!["--peer".to_owned(), kind.to_owned(), "--latency-ms".into(), latency.as_millis().to_string()];
        if let Some(limits) = limits {
            let window = limits.window.as_millis().to_string();
            args.extend(["--rpm".into(), limits.requests.to_string(), "--tpm".into(), limits.tokens.to_string()]);
            args.extend(["--window-ms".into(), window]);
        }
        let mut child = Command::new(std::env::current_exe().expect("the harness's own path"))
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the peer starts");
        let input = child.stdin.take().expect("stdin");
        let mut output = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        output.read_line(&mut line).expect("READY line");
        let url =
            line.trim().strip_prefix("READY ").unwrap_or_else(|| panic!("{kind}: unexpected {line:?}")).to_owned();
        Peer { child, url, input, output }
    }

    /// The peer's user+sys CPU so far, in seconds (`/proc/<pid>/stat`).
    fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // The fields after the command (which may hold spaces) start after its ')'.
        let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
        let ticks: f64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<f64>().ok()).sum();
        // USER_HZ is 100 on Linux.
        ticks / 100.0
    }

    fn ask(&mut self, command: &str) -> String {
        writeln!(self.input, "{command}").expect("the peer reads");
        let mut line = String::new();
        self.output.read_line(&mut line).expect("the peer answers");
        line.trim().to_owned()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `--peer model|search --latency-ms N [--rpm R --tpm T --window-ms W]`: serve one peer until
/// stdin closes.
fn serve_peer(kind: &str, latency: Duration, limits: Option<RateLimits>) {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("peer runtime");
    let local = SocketAddr::from(([127, 0, 0, 1], 0));
    runtime.block_on(async {
        let model = match kind {
            "model" => Some({
                let model = ModelServer::start_on(local, Arc::new(ScriptedResearcher))
                    .await
                    .expect("model")
                    .with_latency(latency)
                    // Only the first request's time is read; a million bodies would not fit.
                    .recording_only_the_first();
                model.set_rate_limits(limits);
                model
            }),
            _ => None,
        };
        let search = match kind {
            "search" => Some(SlowSearchServer::start_on(local, latency).await.expect("search")),
            _ => None,
        };
        let url = model.as_ref().map(ModelServer::base_url).or_else(|| search.as_ref().map(SlowSearchServer::url));
        println!("READY {}", url.expect("a known peer kind"));
        let started = Instant::now();
        let started_unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_millis();
        let mut lines = BufReader::new(std::io::stdin()).lines();
        while let Some(Ok(command)) = tokio::task::block_in_place(|| lines.next()) {
            let answer = match (command.as_str(), &model) {
                ("reset", Some(model)) => {
                    model.reset();
                    "ok".to_owned()
                }
                ("first", Some(model)) => {
                    model.first_request_at().map_or(0, |at| started_unix_ms + (at - started).as_millis()).to_string()
                }
                ("counts", Some(model)) => {
                    let counts = model.rate_limit_counts();
                    format!("{} {} {}", counts.accepted, counts.refused(), counts.tokens_charged)
                }
                _ => "ok".to_owned(),
            };
            println!("{answer}");
        }
    });
}

fn cpu_seconds() -> f64 {
    let usage = getrusage(UsageWho::RUSAGE_CHILDREN).expect("getrusage");
    let seconds = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    seconds(usage.user_time()) + seconds(usage.system_time())
}

fn vm_hwm_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn run_once(scenario: &Scenario, dir: &Path, run: usize, model: &mut Peer) -> Measured {
    // A fresh directory each run: deleting thousands of files just before would make the file
    // system's inode allocator (and so agentry's measured CPU) pay for the harness's clean-up.
    let out = dir.join(format!("out-{run}"));
    model.ask("reset");
    let cpu_before = cpu_seconds();
    let model_cpu_before = model.cpu_seconds();
    let started_unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_millis() as f64;
    let started = Instant::now();
    let mut child = agentry_run(dir, "bench.toml", &out).spawn().expect("agentry runs");
    let pid = child.id();
    let mut peak_kb = 0;
    let status = loop {
        if let Some(kb) = vm_hwm_kb(pid) {
            peak_kb = peak_kb.max(kb);
        }
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    let model_cpu = model.cpu_seconds() - model_cpu_before;
    assert!(status.success(), "{}: agentry exited with {status}", scenario.name);

    // Verify the run: N research files and N ok rows.
    let files = std::fs::read_dir(&out)
        .expect("output dir")
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "md"))
        .count();
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).expect("report")).expect("report JSON");
    assert_eq!(files, scenario.questions, "{}: research files", scenario.name);
    assert_eq!(report["totals"]["ok"], scenario.questions, "{}: ok rows", scenario.name);

    let first: f64 = model.ask("first").parse().unwrap_or(0.0);
    let first_request = if first > 0.0 { first - started_unix_ms } else { f64::NAN };
    let counts: Vec<f64> = model.ask("counts").split_whitespace().filter_map(|n| n.parse().ok()).collect();
    let (accepted, refused, charged) = (counts[0], counts[1], counts[2]);
    let ideal = match scenario.limits {
        // The token bucket starts full, then refills at tokens / window.
        Some(limits) => {
            let rate = limits.tokens as f64 / limits.window.as_secs_f64();
            (charged - limits.tokens as f64).max(0.0) / rate
        }
        None => {
            let waves = scenario.questions.div_ceil(scenario.concurrency) as f64;
            waves
                * (MODEL_CALLS_PER_QUESTION * scenario.model_latency.as_secs_f64()
                    + scenario.tool_latency.as_secs_f64())
        }
    };
    Measured {
        wall_s: wall,
        efficiency: if ideal > 0.0 { ideal / wall } else { f64::NAN },
        cpu_ms_per_question: cpu * 1000.0 / scenario.questions as f64,
        peak_rss_mb: peak_kb as f64 / 1024.0,
        questions_per_s: scenario.questions as f64 / wall,
        first_request_ms: first_request,
        refused: if scenario.limits.is_some() { refused / (accepted + refused).max(1.0) } else { f64::NAN },
        model_peer_cpu_ms_per_question: model_cpu * 1000.0 / scenario.questions as f64,
    }
}

fn median_range(values: impl Iterator<Item = f64>) -> (f64, f64, f64) {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn cell(values: impl Iterator<Item = f64>, digits: usize) -> String {
    let (median, min, max) = median_range(values);
    if median.is_nan() {
        return "–".into();
    }
    format!("{median:.digits$} ({min:.digits$}–{max:.digits$})")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    if let Some(kind) = flag("--peer") {
        let number = |name: &str| flag(name).and_then(|n| n.parse::<u64>().ok());
        let latency = Duration::from_millis(number("--latency-ms").unwrap_or(0));
        let limits = number("--tpm").map(|tokens| {
            RateLimits::per_minute(number("--rpm").unwrap_or(0), tokens)
                .per(Duration::from_millis(number("--window-ms").unwrap_or(60_000)))
        });
        return serve_peer(&kind, latency, limits);
    }
    let runs: usize = flag("--runs").and_then(|r| r.parse().ok()).unwrap_or(3);
    let wanted: Vec<String> =
        flag("--scenarios").map(|s| s.split(',').map(str::to_owned).collect()).unwrap_or_default();
    let out = PathBuf::from(flag("--out").unwrap_or_else(|| "target/bench".into()));
    // model.stream: streamed answers (the default) or one JSON answer per call.
    let stream = flag("--stream").is_none_or(|s| s != "false");
    std::fs::create_dir_all(&out).expect("out dir");
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);

    let mut table = "| scenario | N | C | model / tool latency | wall s | efficiency | CPU ms/question | peak RSS MB | questions/s | first request ms | refused | model peer CPU ms/question |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n".to_string();
    let mut all = Vec::new();
    let huge = args.iter().any(|a| a == "--huge");
    let mut reruns = String::new();
    for scenario in SCENARIOS.iter().filter(|s| chosen(s, &wanted, huge)) {
        let runs = if scenario.name.starts_with("S6") { 1 } else { runs };
        let mut model = Peer::start("model", scenario.model_latency, scenario.limits);
        let search = Peer::start("search", scenario.tool_latency, None);
        let dir = tempfile::tempdir().expect("tempdir");
        let questions: String =
            (0..scenario.questions).map(|n| format!("Define benchmark topic number {n}\n")).collect();
        std::fs::write(dir.path().join("q.txt"), questions).expect("questions");
        std::fs::write(
            dir.path().join("bench.toml"),
            format!(
                "[batch]\nquestions_file = \"q.txt\"\nconcurrency = {c}\n\
                 [secrets]\ndir = \"{secrets}\"\n\
                 [model]\nfallback = \"local\"\nstream = {stream}\nrequest_timeout = \"60s\"\nmax_tokens = {max_tokens}\n[model.local]\nbase_url = \"{model}\"\nmodel = \"bench\"\n\
                 [[mcp.servers]]\nname = \"search\"\nurl = \"{search}\"\ntools = [\"search\"]\n",
                c = scenario.concurrency,
                max_tokens = scenario.limits.map_or(1500, |l| l.max_tokens),
                secrets = dir.path().join("no-secrets").display(),
                model = model.url,
                search = search.url,
            ),
        )
        .expect("config");
        let mut measured = Vec::new();
        for run in 1..=runs {
            let m = run_once(scenario, dir.path(), run, &mut model);
            eprintln!("{} run {run}/{runs}: {m:?}", scenario.name);
            measured.push(m);
        }
        if scenario.name.starts_with("S6") {
            let (first_ms, wall_ms) = rerun_start(scenario, dir.path(), runs, &mut model);
            eprintln!("{} rerun: first request {first_ms:.0} ms, wall {wall_ms:.0} ms", scenario.name);
            reruns.push_str(&format!(
                "| {} rerun over {} answered (+1 new) | {first_ms:.0} | {wall_ms:.0} |\n",
                scenario.name, scenario.questions
            ));
        }
        table.push_str(&format!(
            "| {} {} | {} | {} | {} / {} ms | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            scenario.name,
            scenario.what,
            scenario.questions,
            scenario.concurrency,
            scenario.model_latency.as_millis(),
            scenario.tool_latency.as_millis(),
            cell(measured.iter().map(|m| m.wall_s), 3),
            cell(measured.iter().map(|m| m.efficiency), 3),
            cell(measured.iter().map(|m| m.cpu_ms_per_question), 2),
            cell(measured.iter().map(|m| m.peak_rss_mb), 1),
            cell(measured.iter().map(|m| m.questions_per_s), 0),
            cell(measured.iter().map(|m| m.first_request_ms), 0),
            cell(measured.iter().map(|m| m.refused * 100.0), 1).replace(')', "%)"),
            cell(measured.iter().map(|m| m.model_peer_cpu_ms_per_question), 2),
        ));
        all.push(json!({
            "scenario": scenario.name,
            "questions": scenario.questions,
            "concurrency": scenario.concurrency,
            "model_latency_ms": scenario.model_latency.as_millis() as u64,
            "tool_latency_ms": scenario.tool_latency.as_millis() as u64,
            "runs": measured,
        }));
    }
    let header = format!(
        "agentry {} end-to-end benchmark, {cores} cores, model.stream = {stream}, median (min–max) of {runs} runs\n\n",
        env!("CARGO_PKG_VERSION")
    );
    if !reruns.is_empty() {
        table.push_str(&format!("\n| rerun | first request ms | wall ms |\n|---|---|---|\n{reruns}"));
    }
    println!("\n{header}{table}");
    std::fs::write(out.join("bench.md"), format!("{header}{table}")).expect("bench.md");
    let json = json!({"cores": cores, "runs": runs, "stream": stream, "scenarios": all});
    std::fs::write(out.join("bench.json"), serde_json::to_string_pretty(&json).expect("json")).expect("bench.json");
}
