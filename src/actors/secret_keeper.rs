//! SecretKeeper: the one place secret values live.
//!
//! - **Owns**: each secret's current [`Credential`] (in a `watch` channel per secret, created
//!   by the wiring so it outlives restarts), the rotation counters.
//! - **Accepts**: `Reload(name)` (after a 401: read the sources now and say whether the value
//!   changed; the 401s of one burst are one read) and an internal `Poll` tick. Handles also give out a [`Redactor`] over the
//!   channels, which scrubs the current values out of server text without messaging the actor.
//! - **Concurrency**: answers from memory. Reading a secret is a `stat` and a read of a file
//!   of at most 64 KiB on a local (tmpfs) mount, done on the poll timer, never on a caller's
//!   request path: subscribers read the `watch` channel without messaging the actor.
//! - **Rotation**: every `secrets.poll_interval` the sources are re-read and the value's
//!   fingerprint compared. Polling (rather than inotify) sees in-place overwrites, renames
//!   over the file and Kubernetes' `..data` symlink swaps alike. A change is published; the
//!   next request uses it, requests in flight finish with the key they started with.
//! - **Supervisor**: the root, restart at once (state is re-read from the sources).
//! - **Shutdown**: the poll timer is stopped in `post_stop`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{RESTART_WAIT, Slot, Unreachable};
use crate::secrets::{self, Credential, Fingerprint, Redactor, SecretSpec, SecretValues};

/// A secret as subscribers see it.
#[derive(Clone)]
pub enum SecretState {
    /// Not loaded yet.
    Unknown,
    /// No value in any source (or only a placeholder).
    Absent,
    /// A usable value.
    Present(Credential),
    /// The source is broken (the message names the path, never the value).
    Invalid(Arc<str>),
}

impl SecretState {
    /// The credential, if there is one.
    pub fn credential(&self) -> Option<&Credential> {
        match self {
            Self::Present(credential) => Some(credential),
            _ => None,
        }
    }

    fn fingerprint(&self) -> Option<Fingerprint> {
        self.credential().map(Credential::fingerprint)
    }
}

/// Looks up environment variables (the process's, or a map in tests).
pub type EnvLookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// One secret's channel and counter, shared by the actor and its handles.
struct Channel {
    spec: SecretSpec,
    state: watch::Sender<SecretState>,
    rotations: AtomicU64,
}

/// The values a [`Redactor`] scrubs: each secret's current one, read from its channel.
impl SecretValues for HashMap<String, Channel> {
    fn each(&self, visit: &mut dyn FnMut(&Credential)) {
        for channel in self.values() {
            let current = channel.state.borrow().credential().cloned();
            if let Some(credential) = current {
                visit(&credential);
            }
        }
    }
}

/// Start-up arguments (cloned on every restart).
#[derive(Clone)]
pub(crate) struct SecretKeeperArgs {
    dir: PathBuf,
    poll_interval: Duration,
    env: EnvLookup,
    channels: Arc<HashMap<String, Channel>>,
}

/// Result of a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reloaded {
    /// The sources hold a different value now (published).
    Changed,
    /// The same value as before.
    Unchanged,
}

pub(crate) enum SecretKeeperMsg {
    /// Re-read one secret now.
    /// Re-read one secret now; with the fingerprint a server just rejected, a burst of such
    /// reloads is one read.
    Reload(String, Option<Fingerprint>, RpcReplyPort<Reloaded>),
    /// Timer tick: re-read all.
    Poll,
}

pub(crate) struct SecretKeeper;

pub(crate) struct SecretKeeperState {
    args: SecretKeeperArgs,
    timer: Option<JoinHandle<()>>,
    /// Last error per secret, so a broken source is logged once, not every tick.
    last_error: HashMap<String, String>,
    /// The last reload per secret after a rejection: when, and what it found.
    reloaded: HashMap<String, (tokio::time::Instant, Reloaded)>,
}

/// Reloads after a rejection within this of the last one are answered without a new read: every
/// request in flight gets its 401 at once, and one re-read answers them all. Short, so that a
/// rotation just after a rejection is still read at once.
const RELOAD_COALESCE: Duration = Duration::from_millis(200);

static ENV_FALLBACK_WARNED: AtomicBool = AtomicBool::new(false);

impl SecretKeeperState {
    /// Re-reads one secret; publishes and counts a change.
    /// A reload: after a rejection of `rejected`, answered without reading when the value
    /// changed since (another caller's reload found a new one) or was read a moment ago.
    fn reload(&mut self, name: String, rejected: Option<Fingerprint>) -> Reloaded {
        let Some(rejected) = rejected else {
            return self.refresh(&name);
        };
        let current =
            self.args.channels.get(&name).and_then(|c| c.state.borrow().credential().map(Credential::fingerprint));
        if current.is_some_and(|current| current != rejected) {
            return Reloaded::Changed;
        }
        if let Some((at, outcome)) = self.reloaded.get(&name)
            && at.elapsed() < RELOAD_COALESCE
        {
            return *outcome;
        }
        let outcome = self.refresh(&name);
        self.reloaded.insert(name, (tokio::time::Instant::now(), outcome));
        outcome
    }

    fn refresh(&mut self, name: &str) -> Reloaded {
        let Some(channel) = self.args.channels.get(name) else {
            return Reloaded::Unchanged;
        };
        let loaded = secrets::load(&channel.spec, &self.args.dir, &*self.args.env);
        let next = match loaded {
            Ok(Some(credential)) => {
                self.last_error.remove(name);
                if matches!(credential.source(), secrets::SecretSource::Environment(_))
                    && !ENV_FALLBACK_WARNED.swap(true, Ordering::Relaxed)
                {
                    tracing::warn!(secret = name, source = %credential.source(),
                        "secret read from an environment variable: fine for development; use a secret file in production");
                }
                SecretState::Present(credential)
            }
            Ok(None) => {
                self.last_error.remove(name);
                SecretState::Absent
            }
            Err(error) => {
                let text = error.to_string();
                if self.last_error.get(name) != Some(&text) {
                    tracing::warn!(secret = name, error = %text, "secret source is unusable");
                    self.last_error.insert(name.to_owned(), text.clone());
                }
                let current = channel.state.borrow().clone();
                match current {
                    // Keep a good value while its file is being replaced or is broken.
                    SecretState::Present(_) => return Reloaded::Unchanged,
                    _ => SecretState::Invalid(text.into()),
                }
            }
        };
        let previous = channel.state.borrow().clone();
        let changed = match (&previous, &next) {
            (SecretState::Unknown, _) => {
                channel.state.send_replace(next);
                return Reloaded::Unchanged;
            }
            _ => {
                previous.fingerprint() != next.fingerprint()
                    || std::mem::discriminant(&previous) != std::mem::discriminant(&next)
            }
        };
        if !changed {
            return Reloaded::Unchanged;
        }
        let count = channel.rotations.fetch_add(1, Ordering::Relaxed) + 1;
        {
            use crate::telemetry::metrics::{kv, metrics};
            metrics().rotations.add(1, &[kv(crate::telemetry::names::attr::SECRET_NAME, name.to_owned())]);
        }
        tracing::info!(
            secret = name,
            from = %previous.fingerprint().map(|f| f.to_string()).unwrap_or_else(|| "none".into()),
            to = %next.fingerprint().map(|f| f.to_string()).unwrap_or_else(|| "none".into()),
            source = %next.credential().map(|c| c.source().to_string()).unwrap_or_default(),
            rotations = count,
            "secret rotated"
        );
        channel.state.send_replace(next);
        Reloaded::Changed
    }
}

impl Actor for SecretKeeper {
    type Msg = SecretKeeperMsg;
    type State = SecretKeeperState;
    type Arguments = SecretKeeperArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SecretKeeperArgs,
    ) -> Result<SecretKeeperState, ActorProcessingErr> {
        let poll_interval = args.poll_interval;
        let mut state = SecretKeeperState { args, timer: None, last_error: HashMap::new(), reloaded: HashMap::new() };
        let names: Vec<String> = state.args.channels.keys().cloned().collect();
        for name in &names {
            state.refresh(name);
        }
        state.timer = Some(myself.send_interval(poll_interval, || SecretKeeperMsg::Poll));
        Ok(state)
    }

    async fn post_stop(&self, _: ActorRef<Self::Msg>, state: &mut SecretKeeperState) -> Result<(), ActorProcessingErr> {
        if let Some(timer) = state.timer.take() {
            timer.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        message: SecretKeeperMsg,
        state: &mut SecretKeeperState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SecretKeeperMsg::Reload(name, rejected, reply) => {
                let _ = reply.send(state.reload(name, rejected));
            }
            SecretKeeperMsg::Poll => {
                let names: Vec<String> = state.args.channels.keys().cloned().collect();
                for name in &names {
                    state.refresh(name);
                }
            }
        }
        Ok(())
    }
}

/// What callers hold.
#[derive(Clone)]
pub struct SecretKeeperHandle {
    slot: Slot<SecretKeeperMsg>,
    channels: Arc<HashMap<String, Channel>>,
}

impl SecretKeeperHandle {
    /// The handle and the actor's arguments, for the supervisor's spec.
    pub(crate) fn new(
        specs: Vec<SecretSpec>,
        dir: PathBuf,
        poll_interval: Duration,
        env: EnvLookup,
    ) -> (Self, SecretKeeperArgs, Slot<SecretKeeperMsg>) {
        let channels: Arc<HashMap<String, Channel>> = Arc::new(
            specs
                .into_iter()
                .map(|spec| {
                    let name = spec.name.clone();
                    (
                        name,
                        Channel { spec, state: watch::Sender::new(SecretState::Unknown), rotations: AtomicU64::new(0) },
                    )
                })
                .collect(),
        );
        let slot = Slot::default();
        let args = SecretKeeperArgs { dir, poll_interval, env, channels: channels.clone() };
        (Self { slot: slot.clone(), channels }, args, slot)
    }

    /// Follows one secret. `None` for a secret nobody declared.
    pub fn subscribe(&self, name: &str) -> Option<watch::Receiver<SecretState>> {
        self.channels.get(name).map(|c| c.state.subscribe())
    }

    /// The current state of one secret.
    pub fn current(&self, name: &str) -> SecretState {
        self.channels.get(name).map_or(SecretState::Absent, |c| c.state.borrow().clone())
    }

    /// Scrubs the secrets' current values (and key shapes) out of text from servers.
    pub fn redactor(&self) -> Redactor {
        Redactor::new(self.channels.clone())
    }

    /// How many times a secret changed since start.
    pub fn rotations(&self, name: &str) -> u64 {
        self.channels.get(name).map_or(0, |c| c.rotations.load(Ordering::Relaxed))
    }

    /// Re-reads a secret now (after the server rejected it).
    pub async fn reload(&self, name: &str) -> Result<Reloaded, Unreachable> {
        let name = name.to_owned();
        self.slot
            .call("secret-keeper", RESTART_WAIT, RESTART_WAIT, |reply| SecretKeeperMsg::Reload(name, None, reply))
            .await
    }

    /// Re-reads a secret after a server rejected the value with `fingerprint`. Concurrent
    /// rejections of one value are one read: a reload that finds the value already changed, or
    /// comes within 200 ms of another, is answered without reading.
    pub async fn reload_rejected(&self, name: &str, fingerprint: Fingerprint) -> Result<Reloaded, Unreachable> {
        let name = name.to_owned();
        self.slot
            .call("secret-keeper", RESTART_WAIT, RESTART_WAIT, |reply| {
                SecretKeeperMsg::Reload(name, Some(fingerprint), reply)
            })
            .await
    }
}

#[cfg(test)]
mod tests;
