//! The report written as the batch goes (`report.jsonl`): what a killed run keeps, what a rerun
//! does with it, and the commands that read it.

use std::sync::Arc;
use std::time::Duration;

use agentry_testkit::model_server::{FnBehaviour, ModelServer, Reply};

use crate::harness::{Agentry, config};

/// Questions `Question 0` … `Question {n - 1}`.
fn questions(n: usize) -> String {
    let list: Vec<String> = (0..n).map(|i| format!("\"Question {i}\"")).collect();
    format!("[batch]\nconcurrency = 2\nquestions = [{}]\n", list.join(", "))
}

fn index_of(request: &agentry_testkit::model_server::ChatRequestView<'_>) -> usize {
    request.last_user_text().unwrap_or_default().trim_start_matches("Question ").parse().unwrap_or(0)
}

/// The journal's lines (whole ones).
fn journal_rows(agentry: &Agentry) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(agentry.dir().join("definitions/report.jsonl")).unwrap_or_default();
    text.lines().filter_map(|line| serde_json::from_str(line).ok()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_batch_keeps_its_finished_rows_and_a_rerun_answers_exactly_the_rest() {
    // The first five questions are answered at once; the rest never are (in this run).
    let slow = ModelServer::start(Arc::new(FnBehaviour::new(|request| match index_of(request) {
        0..5 => Reply::text(format!("Answer {}.", index_of(request))),
        _ => Reply::text("Too late.").delayed(Duration::from_secs(600)),
    })))
    .await
    .expect("model");
    let agentry = Agentry::new();
    let path = agentry.file("c.toml", &config(&slow.base_url(), None, &questions(12)));
    let mut child = agentry.spawn(&["run", "-c", path.to_str().expect("utf-8")]);
    let rows = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let rows = journal_rows(&agentry);
            if rows.len() == 5 && slow.request_count() >= 7 {
                return rows;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("five rows in the journal, two questions in flight");
    crate::harness::signal(child.id().expect("pid"), "KILL");
    let _ = child.wait().await;

    // Exactly the finished questions: their rows, their files.
    assert!(!agentry.dir().join("definitions/report.json").exists(), "killed before the end");
    let mut answered: Vec<String> = rows.iter().map(|row| row["question"].as_str().expect("q").to_owned()).collect();
    answered.sort();
    assert_eq!(answered, (0..5).map(|i| format!("Question {i}")).collect::<Vec<_>>());
    assert!(rows.iter().all(|row| row["status"] == "ok"), "{rows:?}");
    let files = agentry.research_files("definitions");
    assert_eq!(files.len(), 5, "{files:?}");
    for row in &rows {
        let file = row["file"].as_str().expect("file");
        assert!(std::path::Path::new(file).is_absolute() || agentry.dir().join(file).exists(), "{file}");
    }

    // The journal is a report to `report show` and `report merge`.
    let show = agentry.run(&["report", "show", "definitions/report.jsonl"]).await;
    show.expect_code(0);
    assert!(show.stdout.contains("5 questions: 5 ok"), "{}", show.stdout);
    let merge = agentry.run(&["report", "merge", "definitions/report.jsonl", "-o", "merged.json"]).await;
    merge.expect_code(0);
    assert_eq!(agentry.report("merged.json")["totals"]["ok"], 5);

    // A rerun asks only the seven questions without a file.
    let fast = ModelServer::start(Arc::new(FnBehaviour::new(|request| {
        Reply::text(format!("Answer {} at last.", index_of(request)))
    })))
    .await
    .expect("model");
    let path = agentry.file("c.toml", &config(&fast.base_url(), None, &questions(12)));
    agentry.run(&["run", "-c", path.to_str().expect("utf-8")]).await.expect_code(0);
    assert_eq!(fast.request_count(), 7, "one call for each question not answered");
    let report = agentry.report("definitions/report.json");
    assert_eq!(report["totals"]["skipped"], 5, "{report}");
    assert_eq!(report["totals"]["ok"], 7);
    let indexes: Vec<u64> =
        report["questions"].as_array().expect("rows").iter().map(|r| r["index"].as_u64().expect("i")).collect();
    assert_eq!(indexes, (0..12).collect::<Vec<u64>>(), "report.json rows in question order");
    assert_eq!(journal_rows(&agentry).len(), 12, "the journal has every row of the rerun");
    assert_eq!(agentry.research_files("definitions").len(), 12);
}

#[tokio::test(flavor = "multi_thread")]
async fn report_show_prints_the_summary_of_a_report_and_its_exit_code() {
    let model = ModelServer::start(Arc::new(FnBehaviour::new(|request| match index_of(request) {
        1 => Reply::Error {
            status: 400,
            retry_after: None,
            kind: "invalid_request_error".into(),
            code: None,
            message: "This model's maximum context length is 4096 tokens.".into(),
        },
        _ => Reply::text("An answer."),
    })))
    .await
    .expect("model");
    let agentry = Agentry::new();
    let path = agentry.file("c.toml", &config(&model.base_url(), None, &questions(3)));
    agentry.run(&["run", "-c", path.to_str().expect("utf-8")]).await.expect_code(1);
    let show = agentry.run(&["report", "show"]).await;
    show.expect_code(1);
    assert!(show.stdout.contains("3 questions: 2 ok, 1 failed"), "{}", show.stdout);
    assert!(show.stdout.contains("maximum context length"), "the failed row's error: {}", show.stdout);
    let missing = agentry.run(&["report", "show", "nowhere.json"]).await;
    missing.expect_code(2);
    assert!(missing.stderr.contains("nowhere.json"), "{}", missing.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicate_questions_are_asked_once_and_counted() {
    let model = ModelServer::start(Arc::new(FnBehaviour::new(|_| Reply::text("An answer.")))).await.expect("model");
    let agentry = Agentry::new();
    agentry.file("more.txt", "Define Rust\n  define   rust \nDefine Go\n# a comment\n");
    let extra = "[batch]\nquestions = [\"Define Go\", \"Define Zig\"]\nquestions_file = \"more.txt\"\n";
    let path = agentry.file("c.toml", &config(&model.base_url(), None, extra));
    let run = agentry.run(&["run", "-c", path.to_str().expect("utf-8")]).await;
    run.expect_code(0);
    assert_eq!(model.request_count(), 3, "Go, Zig and Rust, once each");
    let report = agentry.report("definitions/report.json");
    assert_eq!(report["totals"]["questions"], 3, "{report}");
    assert_eq!(report["totals"]["duplicates"], 2, "{report}");
    assert!(run.stdout.contains("2 duplicates dropped"), "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rerun_over_a_thousand_answered_questions_reads_the_journal_and_asks_only_the_missing() {
    let model = ModelServer::start(Arc::new(FnBehaviour::new(|request| {
        Reply::text(format!("Answer to question {}.", index_of(request)))
    })))
    .await
    .expect("model");
    let agentry = Agentry::new();
    let batch = |n: usize| {
        let list: String = (0..n).map(|i| format!("Question {i}\n")).collect();
        agentry.file("questions.txt", &list);
        config(&model.base_url(), None, "[batch]\nconcurrency = 16\nquestions_file = \"questions.txt\"\n")
    };
    let path = agentry.file("c.toml", &batch(1000));
    agentry.run(&["run", "-c", path.to_str().expect("utf-8")]).await.expect_code(0);
    assert_eq!(model.request_count(), 1000);
    let dir = agentry.dir().join("definitions");
    let file_of = |i: usize| {
        let report = agentry.report("definitions/report.json");
        let row = &report["questions"][i];
        assert_eq!(row["question"], format!("Question {i}"));
        agentry.dir().join(row["file"].as_str().expect("file"))
    };
    // The directory is the truth: a file deleted by hand is asked again.
    std::fs::remove_file(file_of(3)).expect("delete");
    // The journal is what the rerun reads: a file it names is not opened (this one no longer
    // has a front matter, and still answers its question).
    std::fs::write(file_of(5), "edited by hand\n").expect("edit");
    // A file no row names (its row lost) is opened for its question_id.
    let journal = std::fs::read_to_string(dir.join("report.jsonl")).expect("journal");
    let kept: String =
        journal.lines().filter(|line| !line.contains("\"Question 7\"")).map(|l| format!("{l}\n")).collect();
    std::fs::write(dir.join("report.jsonl"), kept).expect("journal");

    let path = agentry.file("c.toml", &batch(1001));
    agentry.run(&["run", "-c", path.to_str().expect("utf-8")]).await.expect_code(0);
    let asked: Vec<usize> = model.requests()[1000..]
        .iter()
        .map(|r| {
            let question = r.body["messages"][1]["content"].as_str().unwrap_or_default().to_owned();
            question.trim_start_matches("Question ").parse().unwrap_or(usize::MAX)
        })
        .collect();
    assert_eq!(asked.len(), 2, "only the deleted one and the new one: {asked:?}");
    assert!(asked.contains(&3) && asked.contains(&1000), "{asked:?}");
    let report = agentry.report("definitions/report.json");
    assert_eq!((report["totals"]["ok"].as_u64(), report["totals"]["skipped"].as_u64()), (Some(2), Some(999)));
}
