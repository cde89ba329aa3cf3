//! Nothing a question leaves behind outlives it: the same batch at two sizes, through an
//! allocator that counts the live bytes, holds no more at its end and peaks no higher in
//! proportion to its size.
//!
//! A test binary of its own (`harness = false`): the counting allocator is global, so nothing
//! else may run in this process. The model and search peers run in child processes (this
//! binary again, with `AGENTRY_MEMORY_PEER`), so their allocations are not counted.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use agentry::app::Runtime;
use agentry::batch::journal::Journal;
use agentry::batch::{self, Rows, RunOptions};
use agentry::config::{self, Overrides, Sources};
use agentry::demo::scripted::ScriptedResearcher;
use agentry_testkit::model_server::ModelServer;
use agentry_testkit::search::SlowSearchServer;
use peak_alloc::PeakAlloc;
use tokio_util::sync::CancellationToken;

/// The system allocator, counting the bytes live and their highest mark.
#[global_allocator]
static ALLOCATOR: PeakAlloc = PeakAlloc;

/// Questions in flight at once.
const CONCURRENCY: usize = 8;
/// The two sizes compared.
const SMALL: usize = 200;
const LARGE: usize = 8_000;
/// What a question may leave behind once the batch has ended, and what the batch's peak may
/// grow by per question. The rows' bit per question is an eighth of a byte; the rest of the
/// margin is noise that does not depend on the size (a connection's read buffer that grew during
/// one batch and not the other: up to ~90 KB: 12 bytes over 7,800 questions). Before the
/// question list was streamed, 107 bytes a question were held and the peak grew by 201.
const HELD_PER_QUESTION: f64 = 32.0;
const PEAK_PER_QUESTION: f64 = 64.0;

fn main() {
    if let Ok(kind) = std::env::var("AGENTRY_MEMORY_PEER") {
        return serve_peer(&kind);
    }
    let model = Peer::start("model");
    let search = Peer::start("search");
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = settings(dir.path(), &model.url, &search.url);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let (small, large) = runtime.block_on(async {
        let app = Runtime::start(settings.clone(), Arc::new(|_: &str| None)).await.expect("agentry starts");
        app.tools_settled(Duration::from_secs(10)).await;
        // The first batch pays for what is made once and kept (tracing's call sites, the
        // metrics, the connection pools, the runtime's task slabs).
        measure(&app, &settings, "warm", 500).await;
        let small = measure(&app, &settings, "small", SMALL).await;
        let large = measure(&app, &settings, "large", LARGE).await;
        app.shutdown().await;
        (small, large)
    });
    runtime.shutdown_timeout(Duration::from_secs(2));
    let extra = (LARGE - SMALL) as f64;
    let held = (large.held as f64 - small.held as f64) / extra;
    let peak = (large.peak as f64 - small.peak as f64) / extra;
    println!("{SMALL} questions: {small:?}\n{LARGE} questions: {large:?}");
    println!("per extra question: held {held:.1} bytes, peak {peak:.1} bytes");
    assert!(held < HELD_PER_QUESTION, "a finished question leaves {held:.1} bytes behind");
    assert!(peak < PEAK_PER_QUESTION, "the batch's peak grows by {peak:.1} bytes a question");
    println!("test memory_is_flat_in_the_number_of_questions ... ok");
}

/// Bytes over what was live before the batch was planned.
#[derive(Debug)]
struct Measured {
    /// Still live when the batch has ended and its journal is written.
    held: usize,
    /// The highest mark during the batch.
    peak: usize,
}

/// Runs a batch of `questions` new questions on `app`, then empties the output directory (so
/// the next batch has nothing answered to index).
async fn measure(app: &Runtime, settings: &config::Settings, name: &str, questions: usize) -> Measured {
    let batch = &settings.batch;
    let text: String = (0..questions).map(|n| format!("Define {name} topic number {n}\n")).collect();
    std::fs::write(&batch.questions_file, text).expect("questions");
    let options = RunOptions {
        concurrency: CONCURRENCY,
        question_timeout: Duration::from_secs(60),
        shutdown_grace: Duration::ZERO,
        progress: false,
        demo: false,
        output_dir: batch.output_dir.clone(),
    };
    let before = ALLOCATOR.current_usage();
    ALLOCATOR.reset_peak_usage();
    let plan = batch::plan(batch, false, None).expect("questions");
    let journal = Journal::create(&batch.output_dir.join("report.jsonl")).expect("journal");
    let rows = Rows::new(plan, "memory", &options).journaled(journal);
    batch::run_recorded(&app.agent_context(""), &rows, &options, &CancellationToken::new()).await;
    let (head, _) = rows.finished();
    let measured =
        Measured { held: ALLOCATOR.current_usage().saturating_sub(before), peak: ALLOCATOR.peak_usage() - before };
    assert_eq!(head.totals.ok, questions, "every question answered: {:?}", head.totals);
    std::fs::remove_dir_all(&batch.output_dir).expect("clean up");
    std::fs::create_dir_all(&batch.output_dir).expect("output dir");
    measured
}

fn settings(dir: &Path, model: &str, search: &str) -> config::Settings {
    let out = dir.join("out");
    std::fs::create_dir_all(&out).expect("output dir");
    let text = format!(
        "[batch]\nquestions_file = \"q.txt\"\nconcurrency = {CONCURRENCY}\noutput_dir = \"{out}\"\n\
         [secrets]\ndir = \"{secrets}\"\n\
         [model]\nfallback = \"local\"\n[model.local]\nbase_url = \"{model}\"\nmodel = \"memory\"\n\
         [[mcp.servers]]\nname = \"search\"\nurl = \"{search}\"\ntools = [\"search\"]\n",
        out = out.display(),
        secrets = dir.join("no-secrets").display(),
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, text).expect("config");
    config::load(&Sources { file: Some(path), env: BTreeMap::new(), overrides: Overrides::default() })
        .expect("valid config")
}

/// A peer in a child process: prints `READY <url>`, serves until its stdin closes.
struct Peer {
    child: Child,
    url: String,
}

impl Peer {
    fn start(kind: &str) -> Peer {
        let mut child = Command::new(std::env::current_exe().expect("this test's path"))
            .env("AGENTRY_MEMORY_PEER", kind)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the peer starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("READY");
        let url = line.trim().strip_prefix("READY ").unwrap_or_else(|| panic!("{kind}: {line:?}")).to_owned();
        Peer { child, url }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve_peer(kind: &str) {
    let runtime = tokio::runtime::Runtime::new().expect("peer runtime");
    let local = SocketAddr::from(([127, 0, 0, 1], 0));
    runtime.block_on(async {
        let (_model, _search, url) = match kind {
            "model" => {
                let model = ModelServer::start_on(local, Arc::new(ScriptedResearcher)).await.expect("model");
                let url = model.base_url();
                (Some(model), None, url)
            }
            _ => {
                let search = SlowSearchServer::start_on(local, Duration::ZERO).await.expect("search");
                let url = search.url();
                (None, Some(search), url)
            }
        };
        println!("READY {url}");
        std::io::stdout().flush().expect("stdout");
        // Until the test closes our stdin.
        tokio::task::spawn_blocking(|| std::io::stdin().lines().count()).await.expect("stdin");
    });
}
