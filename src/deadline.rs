//! One deadline and one cancellation per question, passed down to everything it starts.
//!
//! A question creates its [`Deadline`] once (`agent.question_timeout` from its start). Every
//! layer below takes the smaller of its own timeout and what is left ([`Deadline::cap`]): a model
//! request, its retries and backoffs, a turn of tool calls, one MCP call, a wait for a restarting
//! actor. A shutdown brings the deadline forward to the end of the grace period. When the
//! question ends for any reason, its token is cancelled and the work it started is dropped.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard, WaitForCancellationFuture};

/// When a question's work must be done, and the token that ends it early.
///
/// Clones share the instant and the token; [`Deadline::child`] shares the instant and gets a
/// child token (cancelling it leaves the question's alone).
#[derive(Debug, Clone)]
pub struct Deadline {
    at: Arc<Mutex<Instant>>,
    cancel: CancellationToken,
}

/// How far away "no deadline" is: far enough never to matter, near enough not to overflow.
const NEVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

impl Deadline {
    /// A deadline `timeout` from now.
    pub fn after(timeout: Duration) -> Self {
        Self { at: Arc::new(Mutex::new(Instant::now() + timeout)), cancel: CancellationToken::new() }
    }

    /// No deadline beyond each layer's own timeouts (a single call outside a question).
    pub fn none() -> Self {
        Self::after(NEVER)
    }

    /// The same instant, with a token of its own that the question's cancels.
    pub fn child(&self) -> Self {
        Self { at: self.at.clone(), cancel: self.cancel.child_token() }
    }

    /// The instant.
    pub fn at(&self) -> Instant {
        *self.at.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What is left, zero once past.
    pub fn left(&self) -> Duration {
        self.at().saturating_duration_since(Instant::now())
    }

    /// The smaller of a layer's own timeout and what is left.
    pub fn cap(&self, own: Duration) -> Duration {
        own.min(self.left())
    }

    /// Brings the deadline forward to `within` from now (never pushes it back).
    pub fn shorten(&self, within: Duration) {
        let mut at = self.at.lock().unwrap_or_else(PoisonError::into_inner);
        *at = (*at).min(Instant::now() + within);
    }

    /// Ends the work: everything holding this token or a child of it stops.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Whether the work was ended.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Completes when the work is ended.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.cancel.cancelled()
    }

    /// Cancels the work when dropped.
    pub fn drop_guard(&self) -> DropGuard {
        self.cancel.clone().drop_guard()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn layers_take_the_smaller_of_their_timeout_and_what_is_left() {
        let deadline = Deadline::after(Duration::from_secs(10));
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(deadline.cap(Duration::from_secs(120)), Duration::from_secs(6));
        assert_eq!(deadline.cap(Duration::from_secs(2)), Duration::from_secs(2));
        tokio::time::advance(Duration::from_secs(7)).await;
        assert_eq!(deadline.left(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_shutdown_brings_the_deadline_forward_for_every_clone_and_child() {
        let deadline = Deadline::after(Duration::from_secs(300));
        let child = deadline.child();
        deadline.shorten(Duration::from_secs(10));
        deadline.shorten(Duration::from_secs(60));
        assert_eq!(child.left(), Duration::from_secs(10), "shortened once, never pushed back");
    }

    #[test]
    fn a_child_ends_with_the_question_but_not_the_other_way_round() {
        let question = Deadline::none();
        let (first, second) = (question.child(), question.child());
        first.cancel();
        assert!(!question.is_cancelled() && !second.is_cancelled());
        drop(question.drop_guard());
        assert!(second.is_cancelled());
    }
}
