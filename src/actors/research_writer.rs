//! ResearchWriter: owns the output directory and the names in it.
//!
//! - **Owns**: the directory, which file belongs to which question, the names taken.
//! - **Accepts**: `Save(doc)` → the path written.
//! - **Concurrency**: the handler decides the name (serially: that is what makes names unique
//!   and deterministic), reserves it and answers at once; the write itself (temporary file in
//!   the same directory, fsync, rename, fsync of the directory) runs behind, on the blocking
//!   pool, a few at a time (creating files in one directory serialises in the kernel anyway;
//!   more at once only spin). A question never waits for the disk.
//! - **Durability before the report**: [`ResearchWriterHandle::settle`] waits for a question's
//!   writes when it ends and says where its file is (or why there is none), so its report row
//!   is final when written; [`ResearchWriterHandle::drain`] waits for every write.
//! - **Exactly one file per question**: a second save for the same question replaces the
//!   first file (same name), it never adds one; a question asked again (`--force`) replaces the
//!   file an earlier run wrote ([`ResearchWriterHandle::replaces`]).
//! - **Names**: [`research::safe_stem`] of the topic; a name held by a file in the directory or
//!   reserved by a question in flight gets `-2`, `-3`, … in order of arrival.
//! - **Memory**: only the questions in flight: what a question reserved is forgotten when it
//!   settles (the directory then holds its name).
//! - **Supervisor**: the root, restart at once.
//! - **Shutdown**: writes in flight finish in their blocking tasks (a rename is atomic, so a
//!   file is either absent or complete).

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::oneshot;

use super::{RESTART_WAIT, Slot, Unreachable};
use crate::research::{self, ResearchDoc};

/// A save the writer did not accept. (A write that fails after the reply is reported by
/// [`ResearchWriterHandle::drain`], in [`Ended::failed`].)
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum WriterError {
    /// The writer is not running.
    #[error("the research writer is unavailable: {0}")]
    Unavailable(#[source] Unreachable),
}

/// Start-up arguments.
#[derive(Clone)]
pub(crate) struct ResearchWriterArgs {
    /// The output directory.
    pub dir: PathBuf,
    /// Writes in progress and how they ended (shared with the handles; survives restarts).
    pub outcomes: Arc<Outcomes>,
}

/// What happened to the writes behind the replies.
pub(crate) struct Outcomes {
    pending: tokio::sync::watch::Sender<usize>,
    /// Limits writes on the blocking pool at once.
    permits: Arc<tokio::sync::Semaphore>,
    ended: std::sync::Mutex<Ended>,
}

/// Writes that did not end where the reply said.
#[derive(Debug, Clone, Default)]
pub struct Ended {
    /// Question id → the error of its failed write.
    pub failed: std::collections::HashMap<String, String>,
    /// Question id → where its file went instead of the reserved name (another process took it).
    pub moved: std::collections::HashMap<String, PathBuf>,
}

/// Where a settled question's file is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settled {
    /// The file its last write that landed put on disk.
    pub file: Option<PathBuf>,
    /// Why its write failed (when none landed).
    pub failed: Option<String>,
}

/// Writes on the blocking pool at once.
const WRITES_AT_ONCE: usize = 4;

impl Outcomes {
    /// Fresh bookkeeping.
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            pending: tokio::sync::watch::Sender::new(0),
            permits: Arc::new(tokio::sync::Semaphore::new(WRITES_AT_ONCE)),
            ended: Default::default(),
        })
    }

    fn finished(&self, question_id: &str, reserved: &Path, result: &std::io::Result<PathBuf>) {
        {
            let mut ended = self.ended.lock().unwrap_or_else(|p| p.into_inner());
            match result {
                Ok(actual) if actual != reserved => {
                    ended.moved.insert(question_id.to_owned(), actual.clone());
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::error!(file = %reserved.display(), %error, "research file not written");
                    ended
                        .failed
                        .insert(question_id.to_owned(), format!("cannot write {}: {error}", reserved.display()));
                }
            }
        }
        self.pending.send_modify(|n| *n = n.saturating_sub(1));
    }
}

pub(crate) enum ResearchWriterMsg {
    /// Write a research file.
    Save(Box<ResearchDoc>, RpcReplyPort<Result<PathBuf, WriterError>>),
    /// The question ended: its last write, to wait for.
    Settle(String, RpcReplyPort<Option<oneshot::Receiver<Option<PathBuf>>>>),
    /// A question asked again keeps the file an earlier run wrote for it.
    Replaces {
        /// The question.
        question_id: String,
        /// Its file.
        file: PathBuf,
    },
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

/// Per question in flight (until it settles): its file, the names reserved, its last write.
pub(crate) struct ResearchWriterState {
    outcomes: Arc<Outcomes>,
    dir: Arc<Path>,
    by_question: HashMap<String, PathBuf>,
    /// Names given to questions in flight whose files may not be on disk yet.
    reserved: HashSet<PathBuf>,
    /// Per question, where its latest accepted write will have put the file: the next write of
    /// the same question waits for it and goes to the same place, so saves land in order.
    last_write: HashMap<String, oneshot::Receiver<Option<PathBuf>>>,
}

pub(crate) struct ResearchWriter;

impl Actor for ResearchWriter {
    type Msg = ResearchWriterMsg;
    type State = ResearchWriterState;
    type Arguments = ResearchWriterArgs;

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        args: ResearchWriterArgs,
    ) -> Result<ResearchWriterState, ActorProcessingErr> {
        let outcomes = args.outcomes.clone();
        let dir = args.dir.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<_> {
            std::fs::create_dir_all(&dir)?;
            remove_dead_temporaries(&dir);
            Ok(())
        })
        .await?
        .map_err(|e| format!("output directory {}: {e}", args.dir.display()))?;
        Ok(ResearchWriterState {
            dir: args.dir.into(),
            by_question: HashMap::new(),
            reserved: HashSet::new(),
            outcomes,
            last_write: HashMap::new(),
        })
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
                // Only while the question is in flight: a settled one holds nothing.
                if state.by_question.get(&question_id) == Some(&from) {
                    state.reserved.insert(to.clone());
                    state.by_question.insert(question_id, to);
                }
                return Ok(());
            }
            ResearchWriterMsg::Replaces { question_id, file } => {
                state.by_question.insert(question_id, file);
                return Ok(());
            }
            ResearchWriterMsg::Settle(question_id, reply) => {
                if let Some(path) = state.by_question.remove(&question_id) {
                    state.reserved.remove(&path);
                }
                let _ = reply.send(state.last_write.remove(&question_id));
                return Ok(());
            }
        };
        let (path, owned) = state.path_for(&doc);
        let dir = state.dir.clone();
        let outcomes = state.outcomes.clone();
        outcomes.pending.send_modify(|n| *n += 1);
        let (done, landed) = oneshot::channel();
        let previous = state.last_write.insert(doc.provenance.question_id.clone(), landed);
        // The question goes on; the file follows (see the module doc on durability).
        let _ = reply.send(Ok(path.clone()));
        tokio::spawn(async move {
            // After the question's previous save, and where it put the file.
            let earlier = match previous {
                Some(previous) => previous.await.ok().flatten(),
                None => None,
            };
            let permit = outcomes.permits.clone().acquire_owned().await;
            let written = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                let text = research::render(&doc, SystemTime::now());
                let written = match (&earlier, owned) {
                    (Some(file), _) => {
                        write_atomically(&dir, file, text.as_bytes(), Replace::Yes).map(|()| file.clone())
                    }
                    (None, true) => write_atomically(&dir, &path, text.as_bytes(), Replace::Yes).map(|()| path.clone()),
                    (None, false) => write_new(&dir, &path, text.as_bytes()),
                };
                if let Ok(actual) = &written
                    && *actual != path
                {
                    let moved = ResearchWriterMsg::Moved {
                        question_id: doc.provenance.question_id.clone(),
                        from: path.clone(),
                        to: actual.clone(),
                    };
                    let _ = myself.cast(moved);
                }
                // A failed save after one that landed leaves that file as the answer.
                match (&written, &earlier) {
                    (Err(error), Some(file)) => tracing::error!(file = %file.display(), %error,
                        "a later save of this question was not written; the earlier one stands"),
                    _ => outcomes.finished(&doc.provenance.question_id, &path, &written),
                }
                // Last: whoever waits for this write then finds how it ended in the outcomes.
                let _ = done.send(written.as_ref().ok().cloned().or(earlier.clone()));
            })
            .await;
            if let Err(error) = written {
                tracing::error!(%error, "a research file write panicked");
            }
        });
        Ok(())
    }
}

impl ResearchWriterState {
    /// The question's file: the one it already has (`true`: replace it), or a new unique name,
    /// reserved now (`false`: create it, never replacing another process's file).
    fn path_for(&mut self, doc: &ResearchDoc) -> (PathBuf, bool) {
        if let Some(path) = self.by_question.get(&doc.provenance.question_id) {
            return (path.clone(), true);
        }
        let stem = research::safe_stem(&doc.topic);
        // Free: not reserved by a question in flight, and not in the directory.
        let free = |candidate: &PathBuf| !self.reserved.contains(candidate) && candidate.symlink_metadata().is_err();
        let path = (1..)
            .map(|n| if n == 1 { self.dir.join(format!("{stem}.md")) } else { self.dir.join(format!("{stem}-{n}.md")) })
            .find(free)
            .unwrap_or_else(|| self.dir.join(format!("{}.md", doc.provenance.question_id)));
        self.reserved.insert(path.clone());
        self.by_question.insert(doc.provenance.question_id.clone(), path.clone());
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
/// replaced): readers see all or nothing. The temporary name carries our pid
/// (`.agentry-<pid>-XXXXXX.tmp`), so a later run can tell a killed run's leftovers from a live
/// process's write.
fn write_atomically(dir: &Path, path: &Path, bytes: &[u8], replace: Replace) -> std::io::Result<()> {
    write_atomically_with(dir, path, replace, |out| out.write_all(bytes))
}

/// [`write_atomically`] of what `write` writes (through a buffer).
fn write_atomically_with(
    dir: &Path,
    path: &Path,
    replace: Replace,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let prefix = format!(".agentry-{}-", std::process::id());
    let mut file = tempfile::Builder::new().prefix(&prefix).suffix(".tmp").tempfile_in(dir)?;
    {
        let mut out = std::io::BufWriter::new(file.as_file_mut());
        write(&mut out)?;
        out.flush()?;
    }
    file.as_file().sync_data()?;
    match replace {
        Replace::Yes => file.persist(path).map_err(|e| e.error)?,
        Replace::No => file.persist_noclobber(path).map_err(|e| e.error)?,
    };
    // The rename is durable once the directory entry is on disk too.
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Removes the temporary files of agentry processes that are gone (killed mid-write): only
/// `.agentry-<pid>-*.tmp`, and only when no process `<pid>` runs.
fn remove_dead_temporaries(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for path in entries.filter_map(Result::ok).map(|entry| entry.path()) {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        let pid = name.strip_suffix(".tmp").and_then(|n| n.strip_prefix(".agentry-")).and_then(|n| n.split_once('-'));
        let Some(pid) = pid.and_then(|(pid, _)| pid.parse::<u32>().ok()) else { continue };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            match std::fs::remove_file(&path) {
                Ok(()) => tracing::info!(file = %path.display(), "removed a temporary file a killed run left behind"),
                Err(error) => tracing::warn!(file = %path.display(), %error, "cannot remove a stale temporary file"),
            }
        }
    }
}

/// Writes `bytes` to `path` atomically (used for the report too).
pub fn write_file_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_file_atomically_with(path, |out| out.write_all(bytes))
}

/// Writes what `write` writes to `path` atomically (a report streamed from its journal).
pub fn write_file_atomically_with(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    write_atomically_with(dir, path, Replace::Yes, write)
}

/// What callers hold.
#[derive(Clone)]
pub struct ResearchWriterHandle {
    slot: Slot<ResearchWriterMsg>,
    outcomes: Arc<Outcomes>,
}

impl ResearchWriterHandle {
    /// A handle over `slot`, sharing `outcomes` with the actor.
    pub(crate) fn new(slot: Slot<ResearchWriterMsg>, outcomes: Arc<Outcomes>) -> Self {
        Self { slot, outcomes }
    }

    /// Waits until every accepted write is on disk (or failed), at most `wait`; returns the
    /// writes that failed or went elsewhere.
    pub async fn drain(&self, wait: Duration) -> Ended {
        let mut pending = self.outcomes.pending.subscribe();
        if tokio::time::timeout(wait, pending.wait_for(|n| *n == 0)).await.is_err() {
            tracing::error!(pending = *pending.borrow(), ?wait, "research files still being written");
        }
        self.outcomes.ended.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The question ended: waits for its writes and says where its file is (also for a save
    /// whose reply the question never heard, its turn cut short), or why there is none; then
    /// forgets the question.
    pub async fn settle(&self, question_id: &str) -> Settled {
        let id = question_id.to_owned();
        let last = self
            .slot
            .call("research-writer", RESTART_WAIT, Duration::from_secs(60), |reply| {
                ResearchWriterMsg::Settle(id, reply)
            })
            .await;
        let file = match last {
            Ok(Some(landed)) => landed.await.ok().flatten(),
            Ok(None) => None,
            Err(unreachable) => {
                tracing::warn!(%unreachable, "cannot settle a question's research file");
                None
            }
        };
        let mut ended = self.outcomes.ended.lock().unwrap_or_else(|p| p.into_inner());
        ended.moved.remove(question_id);
        Settled { file, failed: ended.failed.remove(question_id) }
    }

    /// `question_id`, asked again, replaces `file` (an earlier run's) instead of adding one.
    pub async fn replaces(&self, question_id: &str, file: PathBuf) {
        let message = ResearchWriterMsg::Replaces { question_id: question_id.to_owned(), file };
        let sent = match self.slot.current("research-writer", RESTART_WAIT).await {
            Ok(writer) => writer.cast(message).map_err(|error| error.to_string()),
            Err(unreachable) => Err(unreachable.to_string()),
        };
        if let Err(error) = sent {
            tracing::warn!(%error, "the research writer did not take a question's earlier file");
        }
    }

    /// Accepts a research file; returns its path. The file is on disk after [`Self::settle`]
    /// of its question (or [`Self::drain`]).
    pub async fn save(&self, doc: ResearchDoc) -> Result<PathBuf, WriterError> {
        self.slot
            .call("research-writer", RESTART_WAIT, Duration::from_secs(60), |reply| {
                ResearchWriterMsg::Save(Box::new(doc), reply)
            })
            .await
            .map_err(WriterError::Unavailable)?
    }
}

#[cfg(test)]
mod tests;
