//! ResearchWriter: owns the output directory and the names in it.
//!
//! - **Owns**: the directory, which file belongs to which question, the names taken.
//! - **Accepts**: `Save(doc)` → the path written.
//! - **Concurrency**: the handler decides the name (serially: that is what makes names unique
//!   and deterministic) and reserves it; the write itself (temporary file in the same
//!   directory, fsync, rename) runs on the blocking pool, so saves overlap on disk.
//! - **Exactly one file per question**: a second save for the same question replaces the
//!   first file (same name), it never adds one.
//! - **Names**: [`research::safe_stem`] of the topic; a name held by another question gets
//!   `-2`, `-3`, … in order of arrival.
//! - **Supervisor**: the root, restart at once (names are re-read from the directory).
//! - **Shutdown**: writes in flight finish in their blocking tasks (a rename is atomic, so a
//!   file is either absent or complete).

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::{RESTART_WAIT, Slot};
use crate::research::{self, ResearchDoc};

/// A failed save.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum WriterError {
    /// The file could not be written.
    #[error("cannot write {path}: {message}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        message: String,
    },
    /// The writer is not running.
    #[error("the research writer is unavailable: {0}")]
    Unavailable(String),
}

/// Start-up arguments.
#[derive(Clone)]
pub struct ResearchWriterArgs {
    /// The output directory.
    pub dir: PathBuf,
}

/// Messages.
pub enum ResearchWriterMsg {
    /// Write a research file.
    Save(Box<ResearchDoc>, RpcReplyPort<Result<PathBuf, WriterError>>),
    /// Another process took the reserved name first; the file went to `to`.
    Moved {
        /// The question.
        question_id: String,
        /// The reserved name.
        from: PathBuf,
        /// Where it went.
        to: PathBuf,
    },
}

/// State.
pub struct ResearchWriterState {
    dir: Arc<Path>,
    by_question: HashMap<String, PathBuf>,
    taken: HashSet<PathBuf>,
}

/// The actor.
pub struct ResearchWriter;

impl Actor for ResearchWriter {
    type Msg = ResearchWriterMsg;
    type State = ResearchWriterState;
    type Arguments = ResearchWriterArgs;

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        args: ResearchWriterArgs,
    ) -> Result<ResearchWriterState, ActorProcessingErr> {
        let dir = args.dir.clone();
        let (by_question, taken) = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
            std::fs::create_dir_all(&dir)?;
            let by_question = research::scan(&dir);
            let taken = std::fs::read_dir(&dir)?.filter_map(Result::ok).map(|e| e.path()).collect();
            Ok((by_question, taken))
        })
        .await?
        .map_err(|e| format!("output directory {}: {e}", args.dir.display()))?;
        Ok(ResearchWriterState { dir: args.dir.into(), by_question, taken })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: ResearchWriterMsg,
        state: &mut ResearchWriterState,
    ) -> Result<(), ActorProcessingErr> {
        let (doc, reply) = match message {
            ResearchWriterMsg::Save(doc, reply) => (doc, reply),
            ResearchWriterMsg::Moved { question_id, from, to } => {
                state.taken.insert(to.clone());
                if state.by_question.get(&question_id) == Some(&from) {
                    state.by_question.insert(question_id, to);
                }
                return Ok(());
            }
        };
        let (path, owned) = state.path_for(&doc);
        let dir = state.dir.clone();
        tokio::task::spawn_blocking(move || {
            let text = research::render(&doc, SystemTime::now());
            let written = if owned {
                write_atomically(&dir, &path, text.as_bytes(), Replace::Yes).map(|()| path.clone())
            } else {
                write_new(&dir, &path, text.as_bytes())
            };
            if let Ok(actual) = &written {
                if *actual != path {
                    let moved = ResearchWriterMsg::Moved {
                        question_id: doc.question_id.clone(),
                        from: path.clone(),
                        to: actual.clone(),
                    };
                    let _ = myself.cast(moved);
                }
            }
            let _ = reply.send(written.map_err(|e| WriterError::Io { path, message: e.to_string() }));
        });
        Ok(())
    }
}

impl ResearchWriterState {
    /// The question's file: the one it already has (`true`: replace it), or a new unique name,
    /// reserved now (`false`: create it, never replacing another process's file).
    fn path_for(&mut self, doc: &ResearchDoc) -> (PathBuf, bool) {
        if let Some(path) = self.by_question.get(&doc.question_id) {
            return (path.clone(), true);
        }
        let stem = research::safe_stem(&doc.topic);
        let path = (1..)
            .map(|n| if n == 1 { self.dir.join(format!("{stem}.md")) } else { self.dir.join(format!("{stem}-{n}.md")) })
            .find(|candidate| !self.taken.contains(candidate))
            .unwrap_or_else(|| self.dir.join(format!("{}.md", doc.question_id)));
        self.taken.insert(path.clone());
        self.by_question.insert(doc.question_id.clone(), path.clone());
        (path, false)
    }
}

/// Whether a write may replace an existing file.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Replace {
    Yes,
    No,
}

/// Creates a new file at `path`, or, when another process (a shard sharing the directory)
/// created that name meanwhile, at the next free `-N` name. Never replaces a file.
fn write_new(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<PathBuf> {
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("research").to_owned();
    let candidates = std::iter::once(path.to_path_buf()).chain((2..1000).map(|n| dir.join(format!("{stem}-{n}.md"))));
    for candidate in candidates {
        match write_atomically(dir, &candidate, bytes, Replace::No) {
            Ok(()) => return Ok(candidate),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::new(std::io::ErrorKind::AlreadyExists, format!("no free name for {stem}")))
}

/// Temporary file in the same directory, fsync, rename (or link, when nothing may be
/// replaced): readers see all or nothing.
fn write_atomically(dir: &Path, path: &Path, bytes: &[u8], replace: Replace) -> std::io::Result<()> {
    let mut file = tempfile::Builder::new().prefix(".agentry-").suffix(".tmp").tempfile_in(dir)?;
    file.write_all(bytes)?;
    file.as_file().sync_data()?;
    match replace {
        Replace::Yes => file.persist(path).map_err(|e| e.error)?,
        Replace::No => file.persist_noclobber(path).map_err(|e| e.error)?,
    };
    // The rename is durable once the directory entry is on disk too.
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Writes `bytes` to `path` atomically (used for the report too).
pub fn write_file_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    write_atomically(dir, path, bytes, Replace::Yes)
}

/// What callers hold.
#[derive(Clone)]
pub struct ResearchWriterHandle {
    slot: Slot<ResearchWriterMsg>,
}

impl ResearchWriterHandle {
    /// A handle over `slot`.
    pub fn new(slot: Slot<ResearchWriterMsg>) -> Self {
        Self { slot }
    }

    /// Writes a research file; returns its path.
    pub async fn save(&self, doc: ResearchDoc) -> Result<PathBuf, WriterError> {
        self.slot
            .call("research-writer", RESTART_WAIT, Duration::from_secs(60), |reply| {
                ResearchWriterMsg::Save(Box::new(doc), reply)
            })
            .await
            .map_err(|e| WriterError::Unavailable(e.to_string()))?
    }
}
