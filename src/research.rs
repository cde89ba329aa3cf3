//! Research files: safe names, the markdown format, and finding the questions already answered.
//!
//! A file is `<output_dir>/<stem>.md` with a front matter block (JSON-quoted values, so any
//! question text is safe YAML) and the content:
//!
//! ```text
//! ---
//! question_id: "q-3f1c0a9e2b7d"
//! question: "Define Machine Learning"
//! topic: "Machine Learning"
//! generated_at: "2026-11-28T22:40:11Z"
//! agent: "research-assistant"
//! model: "gpt-4o-mini"
//! route: "cloud"
//! tools_used: ["search", "save_research"]
//! saved_by: model
//! trace_id: null
//! ---
//!
//! # Machine Learning
//! ...
//! ```
//!
//! An answer that was cut off (the model reached `max_tokens`, or a content filter stopped it)
//! has `truncated: true` after `trace_id`. `saved_by` is `model` for research the model saved
//! with `save_research`, `runtime` for a final answer agentry saved because the model never did
//! (a model that calls no tools: that answer was not researched).
//!
//! `question_id` (a hash of the normalised question) is how a rerun knows what is done: the
//! files themselves are the record, so a crash loses nothing already written. It comes first,
//! so finding it reads one short line whatever the question's length; files written before it
//! moved up (question first) are still read, line by line to the end of the front matter.

use std::path::Path;
use std::time::SystemTime;

use serde_json::json;
use sha2::{Digest, Sha256};

/// Longest file stem in bytes (well under every file system's 255-byte name limit).
pub const MAX_STEM_BYTES: usize = 80;

/// A stable id for a question: whitespace and case do not matter.
pub fn question_id(question: &str) -> String {
    Fingerprint::of(question).id()
}

/// The SHA-256 of a question, whitespace and case aside: two questions are the same question
/// when their fingerprints are. The id is its first six bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of `question`.
    pub fn of(question: &str) -> Self {
        let normalised = question.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase();
        Self(Sha256::digest(normalised.as_bytes()).into())
    }

    /// `q-` and twelve hex digits.
    pub fn id(&self) -> String {
        let hex: String = self.0.iter().take(6).map(|b| format!("{b:02x}")).collect();
        format!("q-{hex}")
    }

    /// The first 64 bits: equal for every copy of a question, and rarely for two others.
    pub fn short(&self) -> u64 {
        u64::from_be_bytes(self.0[..8].try_into().expect("8 of 32 bytes"))
    }

    /// The first 128 bits: equal only for copies of one question, in practice.
    pub fn long(&self) -> u128 {
        u128::from_be_bytes(self.0[..16].try_into().expect("16 of 32 bytes"))
    }
}

/// A file stem from a topic: lowercase letters and digits joined by '-', no separators, no
/// dots, no control characters, at most [`MAX_STEM_BYTES`] bytes, never empty.
pub fn safe_stem(topic: &str) -> String {
    let mut stem = String::new();
    let mut dash = false;
    for c in topic.chars().flat_map(char::to_lowercase) {
        if c.is_alphanumeric() {
            if dash && !stem.is_empty() {
                stem.push('-');
            }
            dash = false;
            if stem.len() + c.len_utf8() + 1 > MAX_STEM_BYTES {
                break;
            }
            stem.push(c);
        } else {
            dash = true;
        }
    }
    if stem.is_empty() { "research".to_owned() } else { stem }
}

/// Who asked what, and how it was answered: what a research file records besides its topic
/// and content. The agent hands it to `save_research` with every turn's tool calls.
#[derive(Debug, Clone)]
pub struct Provenance {
    /// The question as asked.
    pub question: String,
    /// Its id.
    pub question_id: String,
    /// Agent name.
    pub agent: String,
    /// Model that answered.
    pub model: String,
    /// Route (`cloud`, `local`, `local (demo)`).
    pub route: String,
    /// Tools used, in first-use order.
    pub tools_used: Vec<String>,
    /// Trace id, when traces are exported.
    pub trace_id: Option<String>,
}

/// Who wrote a research file: the model, with `save_research` (its research), or agentry,
/// saving the model's final answer because it never called `save_research`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SavedBy {
    /// `save_research`.
    #[default]
    Model,
    /// The runtime, from the final answer.
    Runtime,
}

impl SavedBy {
    /// `model` or `runtime`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Model => "model",
            Self::Runtime => "runtime",
        }
    }
}

/// Everything a research file records.
#[derive(Debug, Clone)]
pub struct ResearchDoc {
    /// The question and how it was answered.
    pub provenance: Provenance,
    /// The topic (the model's, or the question).
    pub topic: String,
    /// Markdown content.
    pub content: String,
    /// The content was cut off (the model reached `max_tokens`, or a content filter stopped it).
    pub truncated: bool,
    /// Who saved it.
    pub saved_by: SavedBy,
}

/// The file's text, stamped with the current UTC time.
pub fn render(doc: &ResearchDoc, now: SystemTime) -> String {
    let generated_at = humantime::format_rfc3339_seconds(now).to_string();
    let (about, content) = (&doc.provenance, doc.content.trim());
    // A write-up that opens with its own heading keeps it; otherwise the topic is the title.
    let title = if content.starts_with("# ") {
        String::new()
    } else {
        format!("# {}\n\n", doc.topic.lines().next().unwrap_or_default().trim())
    };
    format!(
        "---\nquestion_id: {}\nquestion: {}\ntopic: {}\ngenerated_at: {}\nagent: {}\nmodel: {}\nroute: {}\ntools_used: {}\nsaved_by: {}\ntrace_id: {}\n{}---\n\n{}{}\n",
        json!(about.question_id),
        json!(about.question),
        json!(doc.topic),
        json!(generated_at),
        json!(about.agent),
        json!(about.model),
        json!(about.route),
        json!(about.tools_used),
        doc.saved_by.as_str(),
        json!(about.trace_id),
        if doc.truncated { "truncated: true\n" } else { "" },
        title,
        content,
    )
}

/// The `question_id` in a research file's front matter.
pub fn read_question_id(text: &str) -> Option<String> {
    question_id_in(text.lines().map(str::to_owned))
}

/// The `question_id` of a research file, read line by line (it is the first line of the front
/// matter in files written now; older files have it after the question).
pub fn front_matter_id(path: &Path) -> Option<String> {
    use std::io::BufRead;
    question_id_in(std::io::BufReader::new(std::fs::File::open(path).ok()?).lines().map_while(Result::ok))
}

/// The `question_id` of a front matter, looking no further than its closing `---`.
fn question_id_in(mut lines: impl Iterator<Item = String>) -> Option<String> {
    if lines.next()? != "---" {
        return None;
    }
    lines
        .take_while(|line| line != "---")
        .find_map(|line| line.strip_prefix("question_id: ").and_then(|value| serde_json::from_str(value).ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_topics_give_safe_bounded_names() {
        for topic in [
            "../../etc/passwd",
            "/etc/passwd",
            ".hidden",
            "a\0b",
            "..",
            "",
            "   ",
            "C:\\Windows\\system32",
            "\u{202e}txt.exe",
        ] {
            let stem = safe_stem(topic);
            assert!(!stem.is_empty(), "{topic:?}");
            assert!(!stem.contains(['/', '\\', '\0', '.']), "{topic:?} -> {stem:?}");
            assert!(!stem.starts_with('-'), "{topic:?} -> {stem:?}");
            assert!(stem.chars().all(|c| !c.is_control()), "{topic:?} -> {stem:?}");
        }
        assert_eq!(safe_stem("../../etc/passwd"), "etc-passwd");
        assert_eq!(safe_stem("Machine Learning"), "machine-learning");
        let long = safe_stem(&"é".repeat(500));
        assert!(long.len() <= MAX_STEM_BYTES, "{}", long.len());
        assert!(safe_stem(&format!("{}\0{}", "x".repeat(300), "y")).len() <= MAX_STEM_BYTES);
    }

    #[test]
    fn question_ids_ignore_case_and_spacing() {
        assert_eq!(question_id("Define  Machine learning"), question_id(" define machine Learning "));
        assert_ne!(question_id("Define Rust"), question_id("Define Go"));
    }

    #[test]
    fn the_front_matter_round_trips_any_question() {
        let doc = ResearchDoc {
            provenance: Provenance {
                question: "What is \"---\"\nand: yaml?".into(),
                question_id: question_id("x"),
                agent: "a".into(),
                model: "m".into(),
                route: "local".into(),
                tools_used: vec!["search".into()],
                trace_id: None,
            },
            topic: "Topic".into(),
            content: "Body".into(),
            truncated: false,
            saved_by: SavedBy::Runtime,
        };
        let text = render(&doc, SystemTime::UNIX_EPOCH);
        assert_eq!(read_question_id(&text), Some(doc.provenance.question_id.clone()));
        assert!(text.contains("generated_at: \"1970-01-01T00:00:00Z\""), "{text}");
        assert!(text.ends_with("# Topic\n\nBody\n"), "{text}");
        assert!(text.contains("\ntools_used: [\"search\"]\nsaved_by: runtime\n"), "{text}");
        assert!(!text.contains("truncated"), "{text}");
        let cut = render(&ResearchDoc { truncated: true, ..doc }, SystemTime::UNIX_EPOCH);
        assert!(cut.contains("trace_id: null\ntruncated: true\n---\n"), "{cut}");
    }

    #[test]
    fn ids_are_found_for_long_questions_in_new_and_old_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let long = format!("Define {}", "very ".repeat(5000));
        let provenance = Provenance {
            question: long.clone(),
            question_id: question_id(&long),
            agent: "a".into(),
            model: "m".into(),
            route: "local".into(),
            tools_used: Vec::new(),
            trace_id: None,
        };
        let doc = ResearchDoc {
            provenance,
            topic: "t".into(),
            content: "c".into(),
            truncated: false,
            saved_by: SavedBy::Model,
        };
        std::fs::write(dir.path().join("new.md"), render(&doc, SystemTime::UNIX_EPOCH)).expect("write");
        // A file from before question_id came first: the question, 25 KB, comes before it.
        let old = format!("---\nquestion: {}\nquestion_id: \"q-0123456789ab\"\n---\n\nbody\n", json!(long));
        std::fs::write(dir.path().join("old.md"), old).expect("write");
        std::fs::write(dir.path().join("foreign.md"), "# notes\nquestion_id: \"q-feedfeedfeed\"\n").expect("write");
        let id = |name: &str| front_matter_id(&dir.path().join(name));
        assert_eq!(id("new.md"), Some(question_id(&long)));
        assert_eq!(id("old.md").as_deref(), Some("q-0123456789ab"));
        assert_eq!(id("foreign.md"), None, "a file without front matter is not ours");
    }
}
