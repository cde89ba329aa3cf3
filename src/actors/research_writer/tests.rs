use super::*;
use crate::actors::Slot;
use crate::research::Provenance;

/// Long enough never to be the reason a test passes: `drain` returns as soon as the writes end.
const DRAIN: Duration = Duration::from_secs(60);

fn doc(question: &str, topic: &str, content: &str) -> ResearchDoc {
    ResearchDoc {
        provenance: Provenance {
            question: question.into(),
            question_id: research::question_id(question),
            agent: "research-assistant".into(),
            model: "test-model".into(),
            route: "local".into(),
            tools_used: vec!["search".into()],
            trace_id: None,
        },
        topic: topic.into(),
        content: content.into(),
        truncated: false,
        saved_by: research::SavedBy::Model,
    }
}

/// A writer over `dir`, reached only through its handle; `Outcomes` is returned so a test
/// can hold the write permits and so decide when the writes behind the replies run.
async fn start(dir: &Path) -> (ResearchWriterHandle, Arc<Outcomes>) {
    let slot = Slot::default();
    let outcomes = Outcomes::new();
    let args = ResearchWriterArgs { dir: dir.to_path_buf(), outcomes: outcomes.clone() };
    let (actor, _) = Actor::spawn(None, ResearchWriter, args).await.expect("the writer starts");
    slot.publish(actor);
    (ResearchWriterHandle::new(slot, outcomes.clone()), outcomes)
}

/// Holds every write permit: accepted saves queue behind it until it is dropped.
async fn hold_writes(outcomes: &Outcomes) -> tokio::sync::OwnedSemaphorePermit {
    let all = u32::try_from(WRITES_AT_ONCE).expect("small");
    outcomes.permits.clone().acquire_many_owned(all).await.expect("the semaphore is open")
}

fn md_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("the output directory")
        .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".md"))
        .collect();
    names.sort();
    names
}

fn question_in(path: &Path) -> Option<String> {
    research::read_question_id(&std::fs::read_to_string(path).expect("the research file"))
}

fn name_of(path: &Path) -> &str {
    path.file_name().and_then(|n| n.to_str()).expect("a file name")
}

#[tokio::test]
async fn names_come_from_the_topic_and_a_taken_name_gets_the_next_number_in_order_of_arrival() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (writer, _) = start(dir.path()).await;
    let mut paths = Vec::new();
    for question in ["Define machine learning", "What is machine learning?", "Explain machine learning"] {
        paths.push(writer.save(doc(question, "Machine Learning", "text")).await.expect("accepted"));
    }
    let hostile = writer.save(doc("Where is passwd?", "../../Etc/Passwd", "text")).await.expect("accepted");

    let names: Vec<&str> = paths.iter().map(|p| name_of(p)).collect();
    assert_eq!(names, ["machine-learning.md", "machine-learning-2.md", "machine-learning-3.md"]);
    assert_eq!(hostile, dir.path().join("etc-passwd.md"));
    let ended = writer.drain(DRAIN).await;
    assert!(ended.failed.is_empty() && ended.moved.is_empty(), "{ended:?}");
    // Each name holds the question that arrived for it.
    let questions = ["Define machine learning", "What is machine learning?", "Explain machine learning"];
    for (path, question) in paths.iter().zip(questions) {
        assert_eq!(question_in(path), Some(research::question_id(question)), "{}", path.display());
    }
    assert_eq!(
        md_files(dir.path()),
        ["etc-passwd.md", "machine-learning-2.md", "machine-learning-3.md", "machine-learning.md"]
    );
}

#[tokio::test]
async fn a_second_save_for_the_same_question_replaces_its_file_and_keeps_its_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (writer, _) = start(dir.path()).await;
    let first = writer.save(doc("Define Rust", "Rust", "first draft")).await.expect("accepted");
    writer.drain(DRAIN).await;
    let second = writer.save(doc("Define Rust", "The Rust language", "final text")).await.expect("accepted");
    assert_eq!(second, first, "the question keeps its file even with a new topic");
    // Another question with the first topic does not get the name back.
    let other = writer.save(doc("What is Rust?", "Rust", "other")).await.expect("accepted");
    assert_eq!(name_of(&other), "rust-2.md");

    let ended = writer.drain(DRAIN).await;
    assert!(ended.failed.is_empty() && ended.moved.is_empty(), "{ended:?}");
    assert_eq!(md_files(dir.path()), ["rust-2.md", "rust.md"]);
    let text = std::fs::read_to_string(&first).expect("the file");
    assert!(text.contains("final text") && !text.contains("first draft"), "{text}");
}

#[tokio::test]
async fn names_and_files_already_in_the_directory_are_respected_on_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A file the writer did not make, and one a previous run made for a question.
    let foreign = dir.path().join("machine-learning.md");
    std::fs::write(&foreign, "notes by a human\n").expect("write");
    let earlier = dir.path().join("rust.md");
    let rendered = research::render(&doc("Define Rust", "Rust", "from the last run"), SystemTime::UNIX_EPOCH);
    std::fs::write(&earlier, rendered).expect("write");

    let (writer, _) = start(dir.path()).await;
    // Asked again (--force): the batch hands the writer the question's earlier file.
    writer.replaces(&research::question_id("Define Rust"), earlier.clone()).await;
    let ml = writer.save(doc("Define machine learning", "Machine Learning", "new")).await.expect("accepted");
    let rust = writer.save(doc("Define Rust", "The Rust language", "this run")).await.expect("accepted");
    assert_eq!(name_of(&ml), "machine-learning-2.md", "a name already in the directory is taken");
    assert_eq!(rust, earlier, "the question's file from the last run is replaced, not added to");

    let ended = writer.drain(DRAIN).await;
    assert!(ended.failed.is_empty() && ended.moved.is_empty(), "{ended:?}");
    assert_eq!(std::fs::read_to_string(&foreign).expect("foreign"), "notes by a human\n");
    assert!(std::fs::read_to_string(&earlier).expect("rust").contains("this run"));
    assert_eq!(md_files(dir.path()), ["machine-learning-2.md", "machine-learning.md", "rust.md"]);
}

#[tokio::test]
async fn drain_waits_for_every_accepted_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (writer, outcomes) = start(dir.path()).await;
    let gate = hold_writes(&outcomes).await;
    let mut saved = Vec::new();
    for n in 0..(3 * WRITES_AT_ONCE) {
        let question = format!("Question {n}");
        let path = writer.save(doc(&question, &format!("Topic {n}"), "text")).await.expect("accepted");
        saved.push((question, path));
    }
    // The replies came before the disk: nothing is written while the permits are held.
    assert!(saved.iter().all(|(_, path)| !path.exists()));

    let drain = writer.drain(DRAIN);
    tokio::pin!(drain);
    assert!(futures::poll!(&mut drain).is_pending(), "drain returned with every write still queued");
    drop(gate);
    let ended = drain.await;

    assert!(ended.failed.is_empty() && ended.moved.is_empty(), "{ended:?}");
    for (question, path) in &saved {
        assert_eq!(question_in(path), Some(research::question_id(question)), "{}", path.display());
    }
    assert_eq!(md_files(dir.path()).len(), saved.len());
}

#[tokio::test]
async fn a_write_into_a_directory_that_vanished_fails_in_drain_naming_the_file() {
    let parent = tempfile::tempdir().expect("tempdir");
    let dir = parent.path().join("definitions");
    let (writer, _) = start(&dir).await;
    std::fs::remove_dir_all(&dir).expect("remove the output directory");

    let question = "Define machine learning";
    let path = writer.save(doc(question, "Machine Learning", "text")).await.expect("accepted before the disk");
    let ended = writer.drain(DRAIN).await;

    let failure = ended.failed.get(&research::question_id(question)).expect("the write is reported failed");
    assert!(failure.contains(&path.display().to_string()), "{failure}");
    assert!(failure.starts_with("cannot write"), "{failure}");
    assert!(!path.exists());
}

#[tokio::test]
async fn replacing_a_file_whose_name_became_a_directory_fails_in_drain_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let question = "Define Rust";
    let earlier = dir.path().join("rust.md");
    std::fs::write(&earlier, research::render(&doc(question, "Rust", "old"), SystemTime::UNIX_EPOCH)).expect("write");
    let (writer, _) = start(dir.path()).await;
    writer.replaces(&research::question_id(question), earlier.clone()).await;
    // After the plan: the question's file is now a directory (root ignores permissions, but a
    // file cannot be renamed over a directory).
    std::fs::remove_file(&earlier).expect("remove");
    std::fs::create_dir(&earlier).expect("mkdir");

    let path = writer.save(doc(question, "Rust", "new")).await.expect("accepted before the disk");
    assert_eq!(path, earlier);
    let ended = writer.drain(DRAIN).await;

    let failure = ended.failed.get(&research::question_id(question)).expect("the write is reported failed");
    assert!(failure.contains(&earlier.display().to_string()), "{failure}");
    assert!(earlier.is_dir());
    assert!(md_files(dir.path()).iter().all(|name| name == "rust.md"), "no stray file");
}

#[tokio::test]
async fn a_name_another_process_takes_first_is_not_overwritten_and_drain_says_where_the_file_went() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (writer, outcomes) = start(dir.path()).await;
    let gate = hold_writes(&outcomes).await;
    let question = "Define machine learning";
    let reserved = writer.save(doc(question, "Machine Learning", "ours")).await.expect("accepted");
    // Another shard writing to the same directory creates the name between reservation and write.
    std::fs::write(&reserved, "another process\n").expect("write");
    drop(gate);
    let ended = writer.drain(DRAIN).await;

    let moved = ended.moved.get(&research::question_id(question)).expect("the file went elsewhere");
    assert_eq!(name_of(moved), "machine-learning-2.md");
    assert_eq!(std::fs::read_to_string(&reserved).expect("theirs"), "another process\n");
    assert_eq!(question_in(moved), Some(research::question_id(question)));

    // The question now owns the new name: a second save replaces it.
    let again = writer.save(doc(question, "Machine Learning", "revised")).await.expect("accepted");
    assert_eq!(&again, moved);
    writer.drain(DRAIN).await;
    assert!(std::fs::read_to_string(moved).expect("ours").contains("revised"));
    assert_eq!(md_files(dir.path()), ["machine-learning-2.md", "machine-learning.md"]);
}

/// Two saves for one question in quick succession (a model calling `save_research` twice in
/// one turn: ToolExecutor runs the calls concurrently) land in order: one file, the second text.
/// (Before the writes of one question were chained, the replacing write could land first and
/// push the creating one to `-2`: two files, the question's own holding the older text.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_saves_for_one_question_in_quick_succession_leave_one_file_with_the_second_text() {
    for _ in 0..50 {
        let dir = tempfile::tempdir().expect("tempdir");
        let (writer, outcomes) = start(dir.path()).await;
        let gate = hold_writes(&outcomes).await;
        let path = writer.save(doc("Define Rust", "Rust", "first")).await.expect("accepted");
        writer.save(doc("Define Rust", "Rust", "second")).await.expect("accepted");
        drop(gate);
        let ended = writer.drain(DRAIN).await;
        assert_eq!(md_files(dir.path()), ["rust.md"], "{ended:?}");
        assert!(std::fs::read_to_string(&path).expect("the file").contains("second"));
    }
}

#[tokio::test]
async fn settling_waits_for_the_question_s_file_says_where_it_is_and_forgets_the_question() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (writer, outcomes) = start(dir.path()).await;
    let gate = hold_writes(&outcomes).await;
    let question = "Define Rust";
    let reserved = writer.save(doc(question, "Rust", "text")).await.expect("accepted");
    let id = research::question_id(question);
    let settle = writer.settle(&id);
    tokio::pin!(settle);
    assert!(futures::poll!(&mut settle).is_pending(), "settled before the file was on disk");
    drop(gate);
    let settled = settle.await;
    assert_eq!(settled, Settled { file: Some(reserved.clone()), failed: None });
    assert!(std::fs::read_to_string(&reserved).expect("on disk").contains("text"));
    // Forgotten: the same topic for another question takes the next name (the file holds this
    // one), and a question that saved nothing settles with nothing.
    let other = writer.save(doc("What is Rust?", "Rust", "other")).await.expect("accepted");
    assert_eq!(name_of(&other), "rust-2.md");
    assert_eq!(writer.settle(&research::question_id("Never saved")).await, Settled::default());
}

#[tokio::test]
async fn a_failed_write_settles_with_its_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let (writer, _) = start(&out).await;
    std::fs::remove_dir_all(&out).expect("the directory vanishes");
    let question = "Define Rust";
    writer.save(doc(question, "Rust", "text")).await.expect("accepted before the disk");
    let settled = writer.settle(&research::question_id(question)).await;
    assert_eq!(settled.file, None);
    assert!(settled.failed.is_some_and(|error| error.contains("rust.md")), "the file is named");
}
