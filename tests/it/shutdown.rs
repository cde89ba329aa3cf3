//! SIGTERM in the middle of a batch: no new questions, in-flight ones finish, report written.

use std::sync::Arc;
use std::time::Duration;

use agentry_testkit::model_server::{FnBehaviour, ModelServer, Reply};

use crate::harness::{Agentry, config};

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_in_flight_questions_and_marks_the_rest_interrupted() {
    // Every answer takes a while, so the signal lands while two questions are in flight.
    let model = ModelServer::start(Arc::new(FnBehaviour::new(|_| {
        Reply::text("An answer.").delayed(Duration::from_millis(1500))
    })))
    .await
    .expect("model");
    let agentry = Agentry::new();
    let extra = "[batch]\nconcurrency = 2\nshutdown_grace = \"30s\"\nquestions = [\"Q1\", \"Q2\", \"Q3\", \"Q4\", \"Q5\", \"Q6\"]\n";
    let path = agentry.file("c.toml", &config(&model.base_url(), None, extra));
    let child = agentry.spawn(&["run", "-c", path.to_str().expect("utf-8")]);
    let pid = child.id().expect("pid");
    tokio::time::timeout(Duration::from_secs(60), async {
        while model.in_flight() < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("two questions in flight");
    let status = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill");
    assert!(status.success());
    let run = Agentry::finish(child).await;
    run.expect_code(1);
    assert!(run.stderr.contains("shutting down"), "{}", run.stderr);

    let report = agentry.report("definitions/report.json");
    let statuses: Vec<&str> =
        report["questions"].as_array().expect("rows").iter().map(|r| r["status"].as_str().expect("status")).collect();
    assert_eq!(statuses.len(), 6);
    assert_eq!(statuses.iter().filter(|s| **s == "ok").count(), 2, "the two in flight finished: {statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == "interrupted").count(), 4, "the rest never started: {statuses:?}");
    assert_eq!(model.request_count(), 2, "no question started after the signal");
    assert_eq!(agentry.research_files("definitions").len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn ask_answers_one_question_and_prints_it() {
    let model = ModelServer::start(Arc::new(FnBehaviour::new(|request| {
        Reply::text(format!("You asked: {}", request.last_user_text().unwrap_or_default()))
    })))
    .await
    .expect("model");
    let agentry = Agentry::new();
    let path = agentry.file("c.toml", &config(&model.base_url(), None, ""));
    let run = agentry.run(&["ask", "What is an actor?", "-c", path.to_str().expect("utf-8")]).await;
    run.expect_code(0);
    assert!(run.stdout.starts_with("You asked: What is an actor?"), "{}", run.stdout);
    assert_eq!(agentry.research_files("definitions").len(), 1);
}

/// Issue 12, case 4: a stdio server started through a wrapper that leaves a process of its own
/// running (here `sh -c 'sleep … & exec server'`) leaves nothing behind when agentry exits: the
/// server leads a process group of its own, and the group is ended.
#[tokio::test(flavor = "multi_thread")]
async fn a_stdio_server_started_through_a_wrapper_leaves_no_process_behind() {
    const LEFTOVER: &str = "sleep 27183";
    let model = ModelServer::start(Arc::new(FnBehaviour::new(|_| Reply::text("Answered.")))).await.expect("model");
    let server: Vec<String> =
        crate::peers::search_server_stdio_command().iter().map(|arg| format!("'{arg}'")).collect();
    let command = ["sh".to_owned(), "-c".to_owned(), format!("{LEFTOVER} & exec {}", server.join(" "))];
    let agentry = Agentry::new();
    let extra = format!(
        "[batch]\nquestions = [\"Define process groups\"]\n[[mcp.servers]]\nname = \"wrapped\"\ntransport = \"stdio\"\n\
         command = {}\ntools = []\n[model.local]\nbase_url = \"{}\"\nmodel = \"m\"\n",
        serde_json::to_string(&command).expect("json"),
        model.base_url()
    );
    let path = agentry.file("c.toml", &extra);
    let run = agentry.run(&["run", "-c", path.to_str().expect("utf-8")]).await;
    // A process sent SIGKILL as agentry exits may take a moment to be gone.
    let mut left = crate::harness::live_pids(LEFTOVER, None);
    for _ in 0..100 {
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        left = crate::harness::live_pids(LEFTOVER, None);
    }
    for pid in &left {
        let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
    }
    run.expect_code(0);
    assert!(left.is_empty(), "processes the wrapper started outlived agentry: {left:?}");
}
