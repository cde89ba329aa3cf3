//! A batch split over several instances sharing one output directory, then merged.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use agentry::batch::shard::Shard;
use agentry::demo::scripted::ScriptedResearcher;
use agentry_testkit::model_server::ModelServer;

use crate::harness::{Agentry, config};

#[tokio::test(flavor = "multi_thread")]
async fn three_shards_answer_every_question_once_and_merge_into_the_single_run() {
    let model = ModelServer::start(Arc::new(ScriptedResearcher::new())).await.expect("model");
    // Several questions share a topic, so shards race for the same file names.
    let questions: Vec<String> = (0..30).map(|n| format!("Define topic {} (variant {n})", n % 4)).collect();
    let agentry = Agentry::new();
    agentry.file("q.txt", &questions.join("\n"));
    let path = agentry
        .file("c.toml", &config(&model.base_url(), None, "[batch]\nquestions_file = \"q.txt\"\nconcurrency = 2\n"));
    let path = path.to_str().expect("utf-8");

    let shards: Vec<_> = (0..3).map(|i| agentry.spawn(&["run", "-c", path, "--shard", &format!("{i}/3")])).collect();
    for shard in shards {
        Agentry::finish(shard).await.expect_code(0);
    }
    assert_eq!(model.request_count(), 60, "each question answered once (two model calls each)");
    let files = agentry.research_files("definitions");
    assert_eq!(files.len(), 30, "one file per question, no name collisions: {files:?}");
    let ids: BTreeSet<String> = files
        .iter()
        .filter_map(|f| agentry::research::read_question_id(&std::fs::read_to_string(f).expect("file")))
        .collect();
    assert_eq!(ids.len(), 30, "thirty distinct questions in thirty files");

    let merged = agentry
        .run(&[
            "report",
            "merge",
            "definitions/report-shard-0-of-3.json",
            "definitions/report-shard-1-of-3.json",
            "definitions/report-shard-2-of-3.json",
            "-o",
            "merged.json",
        ])
        .await;
    merged.expect_code(0);
    let merged = agentry.report("merged.json");

    // The same batch on one machine.
    let single = Agentry::new();
    single.file("q.txt", &questions.join("\n"));
    let single_path = single.file("c.toml", &config(&model.base_url(), None, "[batch]\nquestions_file = \"q.txt\"\n"));
    single.run(&["run", "-c", single_path.to_str().expect("utf-8")]).await.expect_code(0);
    let single = single.report("definitions/report.json");

    let rows = |report: &serde_json::Value| -> Vec<(String, String, String)> {
        report["questions"]
            .as_array()
            .expect("rows")
            .iter()
            .map(|r| {
                (
                    r["question"].as_str().unwrap_or_default().into(),
                    r["question_id"].as_str().unwrap_or_default().into(),
                    r["status"].as_str().unwrap_or_default().into(),
                )
            })
            .collect()
    };
    assert_eq!(rows(&merged), rows(&single), "merged rows equal a single run's, in the same order");
    assert_eq!(merged["totals"]["ok"], 30);
}

#[test]
fn adding_a_question_moves_no_other() {
    let questions: Vec<String> = (0..200).map(|n| format!("Question {n}")).collect();
    let owner = |count: u32, question: &str| -> u32 {
        let id = agentry::research::question_id(question);
        (0..count).find(|i| Shard::new(*i, count).expect("shard").owns(&id)).expect("an owner")
    };
    let before: BTreeMap<&String, u32> = questions.iter().map(|q| (q, owner(4, q))).collect();
    let mut more = questions.clone();
    more.insert(17, "A question added later".into());
    for question in &questions {
        assert_eq!(owner(4, question), before[question], "{question} moved");
    }
    assert!(more.iter().all(|q| {
        (0..4).filter(|i| Shard::new(*i, 4).expect("shard").owns(&agentry::research::question_id(q))).count() == 1
    }));
}
