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
