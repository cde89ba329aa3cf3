//! What agentry does when things go wrong around a batch (issue 11): the report and the exit
//! code tell the truth, one file per question whatever the model does, one writer per
//! directory, limits from the machine, bounded settings.

use std::sync::Arc;
use std::time::Duration;

use agentry::demo::scripted::ScriptedResearcher;
use agentry_testkit::model_server::{FnBehaviour, ModelServer, Reply, ScriptedToolCall};
use agentry_testkit::search::SlowSearchServer;
use serde_json::json;

use crate::harness::{Agentry, config};

fn save(topic: &str, content: &str) -> ScriptedToolCall {
    ScriptedToolCall::new("save_research", &json!({"topic": topic, "research_content": content}))
}

/// Case 6: a report that cannot be written is exit 1, with the path and the cause, and no
/// `Report:` line for a file that does not exist.
#[tokio::test(flavor = "multi_thread")]
async fn a_report_that_cannot_be_written_exits_1_and_is_not_announced() {
    let model = ModelServer::start(Arc::new(ScriptedResearcher::new())).await.expect("model");
    let agentry = Agentry::new();
    // The report's own path is a directory: the directory is writable, the rename onto it fails.
    std::fs::create_dir_all(agentry.dir().join("out/report.json")).expect("a directory where the report goes");
    let extra = "[batch]\nquestions = [\"Define Rust\", \"Define Go\"]\noutput_dir = \"out\"\n";
    let path = agentry.file("c.toml", &config(&model.base_url(), None, extra));
    let run = agentry.run(&["run", "-c", path.to_str().expect("utf-8")]).await;
    run.expect_code(1);
    assert!(run.stderr.contains("report.json"), "{}", run.stderr);
    assert!(!run.stdout.contains("Report:"), "no Report: line for a report that was not written:\n{}", run.stdout);
    assert_eq!(agentry.research_files("out").len(), 2, "the answers are still there");
}

/// Case 1: a model that saves again (in the same turn, and in a later turn) leaves one file per
/// question, holding the last save, and the report points at it.
#[tokio::test(flavor = "multi_thread")]
async fn saving_again_and_again_leaves_one_file_with_the_last_save() {
    let model = ModelServer::start(Arc::new(FnBehaviour::new(|request| {
        let turns = request.messages().iter().filter(|m| m["role"] == "assistant").count();
        let question = request.last_user_text().unwrap_or_default();
        match turns {
            // Three saves in one turn, the last one wins.
            0 => Reply::tool_calls(vec![
                save(&question, "save 1"),
                save(&question, "save 2"),
                save(&format!("{question} again"), "save 3"),
            ]),
            // And two more in later turns.
            1 => Reply::tool_calls(vec![save(&question, "save 4")]),
            2 => Reply::tool_calls(vec![save(&question, "save 5 (final)")]),
            _ => Reply::text("Saved."),
        }
    })))
    .await
    .expect("model");
    let agentry = Agentry::new();
    let questions: Vec<String> = (1..=8).map(|n| format!("Question {n}")).collect();
    let extra = format!("[batch]\nconcurrency = 8\nquestions = {questions:?}\noutput_dir = \"out\"\n");
    let path = agentry.file("c.toml", &config(&model.base_url(), None, &extra));
    agentry.run(&["run", "-c", path.to_str().expect("utf-8")]).await.expect_code(0);

    let files = agentry.research_files("out");
    assert_eq!(files.len(), 8, "one file per question: {files:?}");
    for file in &files {
        let text = std::fs::read_to_string(file).expect("research file");
        assert!(text.trim_end().ends_with("save 5 (final)"), "{}: {text}", file.display());
    }
    let report = agentry.report("out/report.json");
    for row in report["questions"].as_array().expect("rows") {
        let file = agentry.dir().join(row["file"].as_str().expect("a file"));
        assert!(files.contains(&file), "the report points at the file that exists: {row}");
    }
}

/// Case 8: a question that saved its research and then failed (an empty final answer cut off
/// by max_tokens) is answered: the file is the answer. The report says ok with a warning, and a
/// rerun agrees.
#[tokio::test(flavor = "multi_thread")]
async fn a_question_that_saved_and_then_failed_is_answered_with_a_warning() {
    let model = ModelServer::start(Arc::new(FnBehaviour::new(|request| {
        if request.messages().iter().any(|m| m["role"] == "tool") {
            Reply::truncated("")
        } else {
            Reply::tool_calls(vec![save("Rust", "Rust is a language.")])
        }
    })))
    .await
    .expect("model");
    let agentry = Agentry::new();
    let path = agentry.file(
        "c.toml",
        &config(&model.base_url(), None, "[batch]\nquestions = [\"Define Rust\"]\noutput_dir = \"out\"\n"),
    );
    let path = path.to_str().expect("utf-8");
    agentry.run(&["run", "-c", path]).await.expect_code(0);
    let report = agentry.report("out/report.json");
    let row = &report["questions"][0];
    assert_eq!(row["status"], "ok", "{row}");
    assert!(row["warning"].as_str().is_some_and(|w| w.contains("empty answer")), "{row}");
    assert_eq!(agentry.research_files("out").len(), 1);

    agentry.run(&["run", "-c", path]).await.expect_code(0);
    assert_eq!(agentry.report("out/report.json")["totals"]["skipped"], 1, "a rerun agrees: answered");
}

/// Case 3: a question longer than 4 KiB is recognised as answered on a rerun.
#[tokio::test(flavor = "multi_thread")]
async fn a_long_question_is_recognised_as_answered() {
    let model = ModelServer::start(Arc::new(ScriptedResearcher::new())).await.expect("model");
    let agentry = Agentry::new();
    let long = format!("Define {}", "very ".repeat(2000));
    let extra = format!("[batch]\nquestions = [{long:?}]\noutput_dir = \"out\"\n");
    let path = agentry.file("c.toml", &config(&model.base_url(), None, &extra));
    let path = path.to_str().expect("utf-8");
    agentry.run(&["run", "-c", path]).await.expect_code(0);
    let asked = model.request_count();
    agentry.run(&["run", "-c", path]).await.expect_code(0);
    assert_eq!(model.request_count(), asked, "nothing asked again");
    assert_eq!(agentry.report("out/report.json")["totals"]["skipped"], 1);
    assert_eq!(agentry.research_files("out").len(), 1, "no -2 file");
}

/// Case 4: a second process on the same output directory is refused with the holder's pid,
/// exit 2, and asks the model nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_process_on_one_output_directory_is_refused_naming_the_holder() {
    let model = ModelServer::start(Arc::new(ScriptedResearcher::new()))
        .await
        .expect("model")
        .with_latency(std::time::Duration::from_millis(300));
    let agentry = Agentry::new();
    let questions: Vec<String> = (1..=6).map(|n| format!("Question {n}")).collect();
    let extra = format!("[batch]\nconcurrency = 1\nquestions = {questions:?}\noutput_dir = \"out\"\n");
    let path = agentry.file("c.toml", &config(&model.base_url(), None, &extra));
    let path = path.to_str().expect("utf-8");
    let first = agentry.spawn(&["run", "-c", path]);
    let holder = first.id().expect("pid");
    // Wait until the first process is answering (it holds the lock before its first question).
    while model.request_count() == 0 {
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let asked = model.request_count();
    let second = agentry.run(&["run", "-c", path]).await;
    second.expect_code(2);
    assert!(second.stderr.contains(&holder.to_string()), "names the holder's pid: {}", second.stderr);
    assert!(second.stderr.contains("out"), "names the directory: {}", second.stderr);
    Agentry::finish(first).await.expect_code(0);
    assert_eq!(agentry.research_files("out").len(), 6);
    assert!(model.request_count() >= asked);
    assert_eq!(agentry.report("out/report.json")["totals"]["ok"], 6, "the first run's report is intact");

    // The lock dies with its holder: the next run starts (and finds everything answered).
    agentry.run(&["run", "-c", path]).await.expect_code(0);
}

/// Case 9: absurd durations are refused at parse time, naming the key.
#[tokio::test(flavor = "multi_thread")]
async fn absurd_durations_are_refused_naming_the_key() {
    let agentry = Agentry::new();
    for (toml, key) in [
        ("[model]\nrequest_timeout = \"5000000000000000000s\"\n", "model.request_timeout"),
        ("[agent]\nquestion_timeout = \"300000000years\"\n", "agent.question_timeout"),
        ("[mcp.restart]\ncool_down = \"100000000000days\"\n", "mcp.restart.cool_down"),
    ] {
        let path = agentry.file("c.toml", toml);
        let run = agentry.run(&["config", "check", "-c", path.to_str().expect("utf-8")]).await;
        run.expect_code(2);
        assert!(run.stderr.contains(key), "{toml}: {}", run.stderr);
    }
}

/// Case 14: `config check` refuses a credential that can never be sent, with its fingerprint.
#[tokio::test(flavor = "multi_thread")]
async fn config_check_refuses_a_key_that_cannot_go_in_a_header() {
    let agentry = Agentry::new();
    agentry.file("secrets/openai_api_key", "sk-first-line\nsk-second-line\n");
    let path = agentry.file("c.toml", &format!("[secrets]\ndir = \"{}\"\n", agentry.dir().join("secrets").display()));
    let run = agentry.run(&["config", "check", "-c", path.to_str().expect("utf-8")]).await;
    run.expect_code(2);
    assert!(run.stderr.contains("header"), "{}", run.stderr);
    assert!(run.stderr.contains("sha256:"), "names the fingerprint: {}", run.stderr);
    assert!(!run.output().contains("sk-first-line"), "never the value: {}", run.output());
}

/// Case 13: temporary files a killed run left behind are removed at the next start (only
/// agentry's own, by name, and only those of processes that are gone).
#[tokio::test(flavor = "multi_thread")]
async fn temporary_files_of_a_killed_run_are_removed_at_the_next_start() {
    let model = ModelServer::start(Arc::new(ScriptedResearcher::new())).await.expect("model");
    let agentry = Agentry::new();
    // A pid that cannot be running: above the kernel's pid_max.
    let dead = agentry.file("out/.agentry-4194305-AbC123.tmp", "half a file");
    let foreign = agentry.file("out/.keep-me.tmp", "not ours");
    let live = agentry.file(&format!("out/.agentry-{}-XyZ789.tmp", std::process::id()), "a live writer's");
    let path = agentry.file(
        "c.toml",
        &config(&model.base_url(), None, "[batch]\nquestions = [\"Define Rust\"]\noutput_dir = \"out\"\n"),
    );
    agentry.run(&["run", "-c", path.to_str().expect("utf-8")]).await.expect_code(0);
    assert!(!dead.exists(), "a dead run's temporary file is removed");
    assert!(foreign.exists(), "a file that is not agentry's stays");
    assert!(live.exists(), "a live process's temporary file stays");
}

/// Case 7: a concurrency the open-file limit cannot carry is clamped (with a warning saying
/// why), not a batch of "Too many open files".
#[tokio::test(flavor = "multi_thread")]
async fn concurrency_beyond_the_open_file_limit_is_clamped() {
    // Slow enough that every question started at once is in flight at once.
    let model = ModelServer::start(Arc::new(ScriptedResearcher::new()))
        .await
        .expect("model")
        .with_latency(std::time::Duration::from_millis(100));
    let agentry = Agentry::new();
    let questions: Vec<String> = (1..=150).map(|n| format!("Question {n}")).collect();
    let extra = format!("[batch]\nconcurrency = 1000000\nquestions = {questions:?}\noutput_dir = \"out\"\n");
    let path = agentry.file("c.toml", &config(&model.base_url(), None, &extra));
    let command =
        format!("ulimit -Sn 128 && ulimit -Hn 128 && exec {} run -c {}", env!("CARGO_BIN_EXE_agentry"), path.display());
    let run = agentry.run_shell(&command).await;
    run.expect_code(0);
    assert!(run.stderr.contains("concurrency"), "warns that it clamped, and why: {}", run.stderr);
    assert!(run.stderr.contains("open-file limit"), "names the open-file limit: {}", run.stderr);
    assert_eq!(agentry.report("out/report.json")["totals"]["ok"], 150);
    assert!(model.peak_in_flight() < 128, "in flight at most what the limit carries: {}", model.peak_in_flight());
}

/// The fault mix: a model that misbehaves on many requests (5xx, dropped connections, cut-off
/// and non-JSON bodies on a first attempt; bad tool arguments, unknown tools, hostile topics,
/// repeated saves, no save at all) still ends with every question answered exactly once, one file
/// each, and a report that matches the directory.
#[tokio::test(flavor = "multi_thread")]
async fn a_misbehaving_model_still_gives_one_file_per_question_and_a_true_report() {
    use std::collections::HashMap;
    use std::hash::{Hash, Hasher};
    use std::sync::Mutex;

    let attempts: Arc<Mutex<HashMap<u64, u32>>> = Arc::default();
    let model = ModelServer::start(Arc::new(FnBehaviour::new(move |request| {
        // A retry sends the same body again: fault on first attempts only, as a real flaky
        // server does (the next request most likely succeeds).
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        request.body()["messages"].to_string().hash(&mut hasher);
        let key = hasher.finish();
        let attempt = {
            let mut seen = attempts.lock().unwrap_or_else(|p| p.into_inner());
            let n = seen.entry(key).or_insert(0);
            *n += 1;
            *n
        };
        if attempt == 1 {
            match key % 6 {
                0 => return Reply::server_error(),
                1 => return Reply::Disconnect,
                2 => return Reply::malformed("{\"id\": \"chatcmpl-cut"),
                _ => {}
            }
        }
        let question = request.last_user_text().unwrap_or_default();
        let k: usize = question.trim_start_matches("Question ").parse().unwrap_or(0);
        let turn = request.messages().iter().filter(|m| m["role"] == "assistant").count();
        match (k % 5, turn) {
            // No save at all: a bad call, then a plain answer (the runtime saves it).
            (0, 0) => Reply::tool_calls(vec![ScriptedToolCall::raw("save_research", "{oops")]),
            (0, _) => Reply::text(format!("Final answer {k}")),
            // An unknown tool, then a save.
            (1, 0) => Reply::tool_calls(vec![ScriptedToolCall::new("no_such_tool", &json!({}))]),
            (1, 1) => Reply::tool_calls(vec![save(&format!("Topic {k}"), &format!("research {k}"))]),
            // Repeated saves with a hostile topic, in one turn and the next.
            (2, 0) => Reply::tool_calls(vec![
                save(&format!("../../etc/passwd {k}"), "first"),
                save(&format!("../../etc/passwd {k}"), "second"),
            ]),
            (2, 1) => Reply::tool_calls(vec![save(&format!(".hidden/.. {k}"), &format!("last {k}"))]),
            // A topic with a NUL and 300 characters.
            (3, 0) => Reply::tool_calls(vec![save(&format!("{k}\0{}", "z".repeat(300)), &format!("research {k}"))]),
            // A plain save.
            (4, 0) => Reply::tool_calls(vec![save(&format!("Topic {k}"), &format!("research {k}"))]),
            _ => Reply::text("Done."),
        }
    })))
    .await
    .expect("model");
    let agentry = Agentry::new();
    let questions: Vec<String> = (0..30).map(|n| format!("Question {n}")).collect();
    let extra = format!("[batch]\nconcurrency = 6\nquestions = {questions:?}\noutput_dir = \"out\"\n");
    let path = agentry.file("c.toml", &config(&model.base_url(), None, &extra));
    let run = agentry.run(&["run", "-c", path.to_str().expect("utf-8")]).await;
    run.expect_code(0);

    let files = agentry.research_files("out");
    assert_eq!(files.len(), 30, "one file per question: {files:?}");
    let report = agentry.report("out/report.json");
    assert_eq!(report["totals"]["ok"], 30, "{report}");
    let mut referenced = Vec::new();
    for row in report["questions"].as_array().expect("rows") {
        let file = agentry.dir().join(row["file"].as_str().expect("every row has its file"));
        let text = std::fs::read_to_string(&file).expect("the row's file exists");
        let id = agentry::research::read_question_id(&text);
        assert_eq!(id.as_deref(), row["question_id"].as_str(), "the file answers its row's question: {row}");
        referenced.push(file);
    }
    referenced.sort();
    assert_eq!(referenced, files, "every file belongs to exactly one row");
}

/// One cancellation per question: when a question ends (here, its deadline), its model request
/// is dropped at once (the connection closed), not left running to its own timeout while the
/// batch goes on.
#[tokio::test(flavor = "multi_thread")]
async fn a_question_that_times_out_closes_its_model_request() {
    let model = ModelServer::start(Arc::new(FnBehaviour::new(|request| {
        if request.last_user_text().is_some_and(|q| q.contains("slow")) {
            Reply::text("too late").delayed(std::time::Duration::from_secs(60))
        } else {
            Reply::text("in time").delayed(std::time::Duration::from_millis(1500))
        }
    })))
    .await
    .expect("model");
    let agentry = Agentry::new();
    let extra = "[agent]\nquestion_timeout = \"2s\"\n[batch]\nconcurrency = 1\n\
                 questions = [\"The slow one\", \"The next one\"]\noutput_dir = \"out\"\n";
    let path = agentry.file("c.toml", &config(&model.base_url(), None, extra));
    let child = agentry.spawn(&["run", "-c", path.to_str().expect("utf-8")]);
    // The next question starts only after the slow one timed out (concurrency 1). While its
    // request is in flight, the slow one's must not be.
    let closed = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            let requests = model.requests();
            if requests.len() == 2 && requests[1].status.is_none() && model.in_flight() == 1 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    let run = Agentry::finish(child).await;
    assert!(closed.is_ok(), "the timed-out question's request stayed in flight beside the next one");
    run.expect_code(1);
    assert_eq!(agentry.report("out/report.json")["totals"]["ok"], 1);
}

/// Case 16: rows count what happened. A question whose model calls failed after every retry
/// says how many retries it made; 429s are counted apart; a question that ran out of time while
/// rate limited says so.
#[tokio::test(flavor = "multi_thread")]
async fn rows_count_retries_and_rate_limits_even_when_the_question_fails() {
    let throttled = std::sync::atomic::AtomicU32::new(0);
    let model = ModelServer::start(Arc::new(FnBehaviour::new(move |request| {
        let question = request.last_user_text().unwrap_or_default();
        if question.contains("broken") {
            Reply::server_error()
        } else if question.contains("throttled") {
            // Two 429s, then an answer.
            match throttled.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
                0 | 1 => Reply::rate_limited(std::time::Duration::from_millis(50)),
                _ => Reply::text("ok"),
            }
        } else {
            Reply::rate_limited(std::time::Duration::from_secs(60))
        }
    })))
    .await
    .expect("model");
    let agentry = Agentry::new();
    for (question, expect_ok) in [("The broken one", false), ("The throttled one", true), ("The starved one", false)] {
        let extra =
            format!("[agent]\nquestion_timeout = \"3s\"\n[batch]\nquestions = [{question:?}]\noutput_dir = \"out\"\n");
        let path = agentry.file("c.toml", &config(&model.base_url(), None, &extra));
        let run = agentry.run(&["run", "-c", path.to_str().expect("utf-8"), "--force"]).await;
        let row = agentry.report("out/report.json")["questions"][0].clone();
        assert_eq!(row["status"] == "ok", expect_ok, "{question}: {row}\n{}", run.output());
        match question {
            "The broken one" => {
                // max_retries = 4 (the default): five attempts, four retries, no 429.
                assert_eq!(row["retries"], 4, "{row}");
                assert_eq!(row["rate_limited"], 0, "{row}");
            }
            "The throttled one" => {
                assert_eq!(row["rate_limited"], 2, "{row}");
                assert_eq!(row["retries"], 0, "429s are not retries: {row}");
            }
            _ => {
                let error = row["error"].as_str().unwrap_or_default();
                assert!(error.contains("rate limit"), "a question starved by 429s says so: {row}");
                assert!(row["rate_limited"].as_u64().unwrap_or(0) >= 1, "{row}");
            }
        }
    }
}

/// Case 15, for every command: a reader that goes away (`agentry run | head -c 1`) ends the
/// output quietly; the run's own outcome decides the exit code, not a panic on a closed pipe.
#[tokio::test(flavor = "multi_thread")]
async fn a_closed_pipe_ends_the_output_quietly() {
    let model = ModelServer::start(Arc::new(FnBehaviour::new(|_| Reply::text("An answer.")))).await.expect("model");
    let agentry = Agentry::new();
    // A summary far longer than a pipe's buffer.
    let questions: Vec<String> =
        (0..1500).map(|n| format!("A question long enough to fill the table, number {n}")).collect();
    let extra = format!("[batch]\nconcurrency = 32\nquestions = {questions:?}\noutput_dir = \"out\"\n");
    let path = agentry.file("c.toml", &config(&model.base_url(), None, &extra));
    let command = format!(
        "set -o pipefail; {} run -c {} | head -c 1 > /dev/null; echo \"exit ${{PIPESTATUS[0]}}\" >&2",
        env!("CARGO_BIN_EXE_agentry"),
        path.display()
    );
    let run = agentry.run_bash(&command).await;
    assert!(run.stderr.contains("exit 0"), "the run's own exit code: {}", run.stderr);
    assert!(!run.stderr.contains("panicked") && !run.stderr.contains("Broken pipe"), "{}", run.stderr);
    assert_eq!(agentry.report("out/report.json")["totals"]["ok"], 1500);
}

/// One deadline per question, for tool calls: a tool call slower than what is left of the
/// question fails alone when the question's time is nearly up (not at `mcp.call_timeout`), and
/// the model still gets to answer with that error.
#[tokio::test(flavor = "multi_thread")]
async fn a_tool_call_takes_only_what_is_left_of_the_question() {
    let search =
        SlowSearchServer::start_on(([127, 0, 0, 1], 0).into(), Duration::from_secs(600)).await.expect("search");
    let model = ModelServer::start(Arc::new(FnBehaviour::new(|request| {
        if request.messages().iter().any(|m| m["role"] == "tool") {
            Reply::text("The search did not answer in time; this is what I know.")
        } else {
            Reply::tool_call("search", &json!({"query": "deadlines"}))
        }
    })))
    .await
    .expect("model");
    let agentry = Agentry::new();
    // mcp.call_timeout stays at its default (60s): the question's 4s is what bounds the call.
    let extra =
        "[agent]\nquestion_timeout = \"4s\"\n[batch]\nquestions = [\"Define deadlines\"]\noutput_dir = \"out\"\n";
    let path = agentry.file("c.toml", &config(&model.base_url(), Some(&search.url()), extra));
    let run = agentry.run(&["run", "-c", path.to_str().expect("utf-8")]).await;
    let row = agentry.report("out/report.json")["questions"][0].clone();
    assert_eq!(row["status"], "ok", "the model answered after the slow call failed: {row}\n{}", run.output());
    assert_eq!((row["tool_calls"].as_u64(), row["tool_errors"].as_u64()), (Some(1), Some(1)), "{row}");
    let second = &model.requests()[1];
    let results = crate::harness::tool_results(&second.body);
    assert!(results[0].contains("did not finish"), "the model was told why: {results:?}");
    run.expect_code(0);
}

/// One deadline per question, for model calls: a retry the provider asks to come later than
/// the question's deadline is not waited for; the question ends at once, naming the rate limit
/// and the deadline, instead of sleeping into "no answer within agent.question_timeout".
#[tokio::test(flavor = "multi_thread")]
async fn a_backoff_past_the_question_deadline_is_not_waited_for() {
    let model = ModelServer::start(Arc::new(FnBehaviour::new(|_| Reply::rate_limited(Duration::from_secs(30)))))
        .await
        .expect("model");
    let agentry = Agentry::new().env("AGENTRY__MODEL__RETRY_MAX_DELAY", "60s");
    let extra =
        "[agent]\nquestion_timeout = \"3s\"\n[batch]\nquestions = [\"Define patience\"]\noutput_dir = \"out\"\n";
    let path = agentry.file("c.toml", &config(&model.base_url(), None, extra));
    let run = agentry.run(&["run", "-c", path.to_str().expect("utf-8")]).await;
    run.expect_code(1);
    let row = agentry.report("out/report.json")["questions"][0].clone();
    assert_eq!(row["error_type"], "rate_limited", "{row}");
    let error = row["error"].as_str().unwrap_or_default();
    assert!(error.contains("HTTP 429") && error.contains("deadline"), "{row}");
    assert_eq!((model.request_count(), row["rate_limited"].as_u64()), (1, Some(1)), "{row}");
}
