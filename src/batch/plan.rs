//! Which questions a batch answers, read as the batch goes instead of held.
//!
//! The questions are the inline ones (`batch.questions`, `QUESTION`), then the lines of
//! `batch.questions_file`, trimmed, without blank lines and `#` comments. Each is asked once:
//! a later copy (case and spacing aside) is a duplicate, counted and dropped.
//!
//! The list is never held. [`plan`] reads it twice: once for the questions' 64-bit
//! fingerprints, sorted to find the few that occur more than once (8 bytes a question, freed
//! before the batch starts), then for the counts. [`Plan::questions`] reads it again each time
//! the batch walks it, telling copies apart by 128-bit fingerprints kept only for the questions
//! that may repeat. So a million questions cost the batch what the questions in flight cost.
//! The file is read through the handle opened first: replacing it during a run (an editor's
//! save) does not change the batch.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::journal;
use super::shard::Shard;
use super::{SkipReason, Status};
use crate::config::BatchSettings;
use crate::research::{self, Fingerprint};

/// One question to answer or skip.
#[derive(Debug, Clone)]
pub struct Planned {
    /// Position in the whole question list (before sharding).
    pub index: usize,
    /// The question.
    pub question: String,
    /// Its id.
    pub id: String,
    /// Already answered in this file (skipped).
    pub done: Option<PathBuf>,
    /// Answered in this file before and asked again (`--force`): the new answer replaces it.
    pub replaces: Option<PathBuf>,
}

/// A problem with the questions themselves.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The questions file cannot be read.
    #[error("batch.questions_file: cannot read {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Nothing to do.
    #[error("no questions: set batch.questions, batch.questions_file or QUESTION")]
    Empty,
}

/// The questions a batch will answer or skip: where to read them, and how many there are.
#[derive(Debug)]
pub struct Plan {
    inline: Vec<String>,
    file: Option<QuestionsFile>,
    /// The short fingerprints met more than once in the list.
    repeated: HashSet<u64>,
    /// The questions answered in the output directory, by id.
    answered: HashMap<String, PathBuf>,
    force: bool,
    shard: Option<Shard>,
    len: usize,
    answered_before: usize,
    duplicates: usize,
}

/// The questions file, open.
#[derive(Debug)]
struct QuestionsFile {
    path: PathBuf,
    file: File,
}

/// Reads the questions, counts this shard's share and the duplicates, and finds those already
/// answered (skipped unless `force`).
pub fn plan(settings: &BatchSettings, force: bool, shard: Option<Shard>) -> Result<Plan, PlanError> {
    let path = &settings.questions_file;
    let file = (!path.as_os_str().is_empty())
        .then(|| File::open(path).map(|file| QuestionsFile { path: path.clone(), file }))
        .transpose()
        .map_err(|source| PlanError::File { path: path.clone(), source })?;
    let mut plan = Plan {
        inline: settings.questions.clone(),
        file,
        repeated: HashSet::new(),
        answered: HashMap::new(),
        force,
        shard,
        len: 0,
        answered_before: 0,
        duplicates: 0,
    };
    let unreadable = |source| PlanError::File { path: path.clone(), source };
    let mut shorts = Vec::new();
    for question in plan.lines() {
        shorts.push(Fingerprint::of(&question.map_err(unreadable)?).short());
    }
    shorts.sort_unstable();
    plan.repeated = shorts.windows(2).filter(|pair| pair[0] == pair[1]).map(|pair| pair[0]).collect();
    drop(shorts);
    plan.answered = answered(&settings.output_dir);

    let (mut distinct, mut len, mut answered_before) = (0, 0, 0);
    let duplicates = {
        let mut questions = plan.distinct();
        for question in questions.by_ref() {
            let id = question.map_err(unreadable)?.1.id();
            distinct += 1;
            if shard.is_none_or(|s| s.owns(&id)) {
                len += 1;
                answered_before += usize::from(!force && plan.answered.contains_key(&id));
            }
        }
        questions.duplicates
    };
    if distinct == 0 {
        return Err(PlanError::Empty);
    }
    (plan.len, plan.answered_before, plan.duplicates) = (len, answered_before, duplicates);
    Ok(plan)
}

impl Plan {
    /// This shard's questions, each once.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none (a shard can own none of the questions).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many of [`Self::len`] were answered in the output directory before and are
    /// skipped (none with `force`).
    pub fn answered_before(&self) -> usize {
        self.answered_before
    }

    /// Questions dropped because an earlier one in the list was the same (case and spacing
    /// aside).
    pub fn duplicates(&self) -> usize {
        self.duplicates
    }

    /// This shard's questions in order, each once, read again from the list.
    pub fn questions(&self) -> impl Iterator<Item = Planned> + Send + '_ {
        self.distinct()
            .map_while(|question| {
                question
                    .inspect_err(|error| {
                        tracing::error!(%error, file = ?self.file.as_ref().map(|f| &f.path), "the questions file cannot be read again: the batch ends here");
                    })
                    .ok()
            })
            .enumerate()
            .filter_map(|(index, (question, fingerprint))| {
                let id = fingerprint.id();
                self.shard.is_none_or(|s| s.owns(&id)).then_some((index, question, id))
            })
            .map(|(index, question, id)| {
                let earlier = self.answered.get(&id).cloned();
                let (done, replaces) = if self.force { (None, earlier) } else { (earlier, None) };
                Planned { index, question, id, done, replaces }
            })
    }

    /// The questions in order, each once, with their fingerprints.
    fn distinct(&self) -> Distinct<'_, impl Iterator<Item = std::io::Result<String>> + Send + '_> {
        Distinct { lines: self.lines(), repeated: &self.repeated, seen: HashSet::new(), duplicates: 0 }
    }

    /// Every question as written: the inline ones, then the file's.
    fn lines(&self) -> impl Iterator<Item = std::io::Result<String>> + Send + '_ {
        let inline = self.inline.iter().map(|q| q.trim()).filter(|q| !q.is_empty()).map(|q| Ok(q.to_owned()));
        let file = self.file.iter().flat_map(|f| BufReader::new(ReadAt { file: &f.file, offset: 0 }).lines());
        let file = file.filter_map(|line| match line {
            Ok(line) => {
                let question = line.trim();
                (!question.is_empty() && !question.starts_with('#')).then(|| Ok(question.to_owned()))
            }
            Err(error) => Some(Err(error)),
        });
        inline.chain(file)
    }
}

/// The first copy of each question, with its fingerprint; later copies are counted.
struct Distinct<'a, I> {
    lines: I,
    repeated: &'a HashSet<u64>,
    /// The long fingerprints seen of the questions that may repeat.
    seen: HashSet<u128>,
    duplicates: usize,
}

impl<I: Iterator<Item = std::io::Result<String>>> Iterator for Distinct<'_, I> {
    type Item = std::io::Result<(String, Fingerprint)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let question = match self.lines.next()? {
                Ok(question) => question,
                Err(error) => return Some(Err(error)),
            };
            let fingerprint = Fingerprint::of(&question);
            if self.repeated.contains(&fingerprint.short()) && !self.seen.insert(fingerprint.long()) {
                self.duplicates += 1;
                continue;
            }
            return Some(Ok((question, fingerprint)));
        }
    }
}

/// Reads a file from `offset` on without moving the handle's own position, so each walk of
/// the questions reads from the start of the same file.
struct ReadAt<'a> {
    file: &'a File,
    offset: u64,
}

impl Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let read = self.file.read_at(buf, self.offset)?;
        self.offset += read as u64;
        Ok(read)
    }
}

/// The questions answered in `dir`, by id, without reading every research file: the rows of
/// the journals there (`*.jsonl`) name the answered questions' files, and a file they name
/// that is still in the directory answers its question; only the research files no row names
/// (a run killed between a file and its row, a journal deleted by hand, files of older
/// versions) are opened, for their `question_id`. A file the rows name that is gone answers
/// nothing: the directory is the truth.
fn answered(dir: &Path) -> HashMap<String, PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return HashMap::new() };
    let (mut files, mut journals) = (HashSet::<OsString>::new(), Vec::new());
    for path in entries.filter_map(Result::ok).map(|entry| entry.path()) {
        match (path.extension().and_then(|e| e.to_str()), path.file_name()) {
            (Some("md"), Some(name)) => {
                files.insert(name.to_owned());
            }
            (Some("jsonl"), _) => journals.push(path),
            _ => {}
        }
    }
    /// What the index reads of a row (the question's text and the rest are skipped unread).
    #[derive(Deserialize)]
    struct Answer {
        question_id: String,
        status: Status,
        #[serde(default)]
        reason: Option<SkipReason>,
        #[serde(default)]
        file: Option<PathBuf>,
    }
    let mut answered = HashMap::new();
    for journal in &journals {
        let Ok(rows) = journal::lines::<Answer>(journal) else { continue };
        // A line that is not a row ends this journal's part: its files are then opened.
        for row in rows.map_while(Result::ok) {
            let answers = row.status == Status::Ok || row.reason == Some(SkipReason::Answered);
            let name = row.file.as_deref().and_then(Path::file_name);
            if let (true, Some(name)) = (answers, name)
                && files.contains(name)
            {
                answered.insert(row.question_id, dir.join(name));
            }
        }
    }
    let named: HashSet<OsString> =
        answered.values().filter_map(|path: &PathBuf| path.file_name()).map(ToOwned::to_owned).collect();
    for name in files.difference(&named) {
        let path = dir.join(name);
        if let Some(id) = research::front_matter_id(&path) {
            answered.entry(id).or_insert(path);
        }
    }
    answered
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &Path, inline: &[&str], file: &str) -> BatchSettings {
        std::fs::write(dir.join("q.txt"), file).expect("questions");
        BatchSettings {
            questions: inline.iter().map(|q| (*q).to_owned()).collect(),
            questions_file: dir.join("q.txt"),
            output_dir: dir.join("out"),
            concurrency: 1,
            report: PathBuf::new(),
            shutdown_grace: std::time::Duration::ZERO,
            budget: Default::default(),
        }
    }

    fn questions(plan: &Plan) -> Vec<(usize, String)> {
        plan.questions().map(|p| (p.index, p.question)).collect()
    }

    #[test]
    fn each_question_is_asked_once_in_list_order_and_the_copies_are_counted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = "# a comment\nWhat is Rust?\n\n  what is  RUST? \nWhat is Go?\nwhat is go?\nWhat is Zig?\n";
        let plan = plan(&settings(dir.path(), &["What is Go?", " "], file), false, None).expect("plan");
        let expected = [(0, "What is Go?"), (1, "What is Rust?"), (2, "What is Zig?")];
        assert_eq!(questions(&plan), expected.map(|(i, q)| (i, q.to_owned())));
        assert_eq!((plan.len(), plan.duplicates(), plan.answered_before()), (3, 3, 0));
        // Read again, the same questions.
        assert_eq!(questions(&plan).len(), 3);
    }

    #[test]
    fn questions_that_share_a_short_fingerprint_are_told_apart_by_the_long_one() {
        let lines = ["alpha", "beta", "Alpha", "gamma", "beta"].map(|q| Ok(q.to_owned()));
        // As if every short fingerprint had been met twice: only true copies are dropped.
        let repeated: HashSet<u64> =
            lines.iter().map(|q| Fingerprint::of(q.as_ref().expect("a line")).short()).collect();
        let mut distinct =
            Distinct { lines: lines.into_iter(), repeated: &repeated, seen: HashSet::new(), duplicates: 0 };
        let kept: Vec<String> = distinct.by_ref().map(|q| q.expect("read").0).collect();
        assert_eq!(kept, ["alpha", "beta", "gamma"]);
        assert_eq!(distinct.duplicates, 2);
    }

    #[test]
    fn a_questions_file_replaced_during_the_run_does_not_change_the_batch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plan = plan(&settings(dir.path(), &[], "One\nTwo\n"), false, None).expect("plan");
        // An editor's save: a new file renamed over the old one.
        std::fs::write(dir.path().join("new.txt"), "Three\n").expect("write");
        std::fs::rename(dir.path().join("new.txt"), dir.path().join("q.txt")).expect("rename");
        assert_eq!(questions(&plan), [(0, "One".to_owned()), (1, "Two".to_owned())]);
    }

    #[test]
    fn a_questions_file_that_is_not_text_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let settings = settings(dir.path(), &[], "");
        std::fs::write(&settings.questions_file, b"Fine\n\xff\xfe broken\n").expect("write");
        let error = plan(&settings, false, None).expect_err("not UTF-8");
        assert!(error.to_string().starts_with("batch.questions_file: cannot read "), "{error}");
        assert!(error.to_string().contains("q.txt"), "{error}");
    }

    #[test]
    fn a_shard_counts_and_walks_only_its_share_with_the_whole_lists_positions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file: String = (0..40).map(|n| format!("Question {n}\n")).collect();
        let settings = settings(dir.path(), &[], &file);
        let shards: Vec<Plan> =
            (0..3).map(|index| plan(&settings, false, Some(Shard { index, count: 3 })).expect("plan")).collect();
        let mut indexes: Vec<usize> = shards.iter().flat_map(|s| s.questions().map(|p| p.index)).collect();
        assert_eq!(shards.iter().map(Plan::len).sum::<usize>(), 40);
        assert!(shards.iter().all(|s| s.questions().count() == s.len()));
        indexes.sort_unstable();
        assert_eq!(indexes, (0..40).collect::<Vec<_>>());
    }
}
