//! SIGINT and SIGTERM, answered from the first instant of the process to the last.
//!
//! [`Signals::install`] runs in `main` before the async runtime exists: it blocks both signals
//! in the main thread, so every thread started afterwards (the runtime's workers, its blocking
//! pool) inherits the mask and none is ever interrupted by them, and one thread of its own
//! takes them with `sigwait`. Nothing is left to the default action, whatever phase the
//! process is in, and the answer does not depend on the async runtime being responsive (or
//! still running). Child processes start with an empty mask (the standard library resets it
//! before `exec`).
//!
//! ```text
//! first signal   a command that stops gracefully (run, ask, demo) is told (the token
//!                from `Signals::graceful` is cancelled) and says what it does now; it ends
//!                with its own exit code (the report's: 0 all answered, 1 otherwise)
//!                any other command, or before the batch is set up: as a second signal
//! second signal  at once: the last words (the batch's report with what is known), every
//!                stdio server's process group killed, exit 128 + the signal's number
//!                (130 SIGINT, 143 SIGTERM)
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use nix::sys::signal::{SigSet, Signal};
use tokio_util::sync::CancellationToken;

/// What a first signal does in the current phase, as said on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// MCP servers connecting: the batch will not start.
    Starting,
    /// Questions in flight: no new ones; those in flight get the grace.
    Answering,
    /// Writing the report, stopping the actors, flushing telemetry.
    Finishing,
}

/// What a hard exit writes first.
type LastWords = Box<dyn FnOnce() + Send>;

/// The process's answer to SIGINT and SIGTERM (see the module doc).
#[derive(Clone)]
pub struct Signals {
    shared: Arc<Shared>,
}

struct Shared {
    /// Cancelled at the first signal, when a command stops gracefully.
    first: CancellationToken,
    /// Whether a command stops gracefully (else the first signal exits at once).
    graceful: AtomicBool,
    phase: Mutex<Phase>,
    /// Written before a hard exit; taken (and so written once) under its lock.
    last_words: Mutex<Option<LastWords>>,
}

impl Signals {
    /// Blocks SIGINT and SIGTERM in this thread (and so in every thread it starts after) and
    /// starts the thread that answers them. Call first thing in `main`, before any thread.
    pub fn install() -> std::io::Result<Self> {
        let mut set = SigSet::empty();
        set.add(Signal::SIGINT);
        set.add(Signal::SIGTERM);
        set.thread_block().map_err(std::io::Error::from)?;
        let shared = Arc::new(Shared {
            first: CancellationToken::new(),
            graceful: AtomicBool::new(false),
            phase: Mutex::new(Phase::Starting),
            last_words: Mutex::new(None),
        });
        let watcher = shared.clone();
        std::thread::Builder::new().name("agentry-signals".into()).spawn(move || watcher.answer(set))?;
        Ok(Self { shared })
    }

    /// From now on the first signal is this command's to answer: the token is cancelled and
    /// the command stops in order. A second signal still ends the process at once.
    pub(crate) fn graceful(&self) -> CancellationToken {
        self.shared.graceful.store(true, Ordering::SeqCst);
        self.shared.first.clone()
    }

    /// Whether a signal came.
    pub(crate) fn received(&self) -> bool {
        self.shared.first.is_cancelled()
    }

    /// Says what a first signal does from now on.
    pub(crate) fn enter(&self, phase: Phase) {
        *self.shared.phase.lock().unwrap_or_else(PoisonError::into_inner) = phase;
    }

    /// What a hard exit writes before it ends the process (replacing what was set).
    pub(crate) fn set_last_words(&self, words: impl FnOnce() + Send + 'static) {
        *self.shared.last_words.lock().unwrap_or_else(PoisonError::into_inner) = Some(Box::new(words));
    }

    /// Runs `write` in place of the last words, which are then dropped: a hard exit during it
    /// waits for it to finish, and then has nothing left to write.
    pub(crate) fn instead_of_last_words<T>(&self, write: impl FnOnce() -> T) -> T {
        let mut last_words = self.shared.last_words.lock().unwrap_or_else(PoisonError::into_inner);
        let written = write();
        *last_words = None;
        written
    }
}

impl Shared {
    /// The signal thread: the first signal to a graceful command is passed on, anything else
    /// ends the process.
    fn answer(&self, set: SigSet) {
        loop {
            let signal = match set.wait() {
                Ok(signal) => signal,
                Err(error) => {
                    eprintln!("error: cannot wait for signals ({error}); exiting");
                    self.exit_now(Signal::SIGTERM);
                }
            };
            if self.graceful.load(Ordering::SeqCst) && !self.first.is_cancelled() {
                let phase = *self.phase.lock().unwrap_or_else(PoisonError::into_inner);
                eprintln!("{signal}: shutting down: {} (a second signal ends at once)", phase.says());
                self.first.cancel();
                continue;
            }
            eprintln!("{signal}: exiting now");
            self.exit_now(signal);
        }
    }

    /// Writes the last words, kills every stdio server's process group, and exits with
    /// 128 + the signal's number.
    fn exit_now(&self, signal: Signal) -> ! {
        let words = self.last_words.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(words) = words {
            words();
        }
        crate::mcp::stdio::kill_all_groups();
        std::process::exit(128 + signal as i32)
    }
}

impl Phase {
    fn says(self) -> &'static str {
        match self {
            Self::Starting => "the batch will not start; every question is marked interrupted",
            Self::Answering => "no new questions; those in flight get batch.shutdown_grace to finish",
            Self::Finishing => "already finishing (report, servers, telemetry)",
        }
    }
}
