//! Prints a question's answers to stdout as the model writes them (`agentry ask`, and `run`
//! with one question): only their text, never tool-call arguments, flushed piece by piece on
//! a terminal and through a pipe alike.
//!
//! A model call that writes text and then asks for tools is followed by a blank line; one that
//! broke off after some text (and is asked again) is marked on stderr, so the text that
//! follows is read as a new start.

use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};

use crate::llm::stream::{Echo, Shown};

/// What the printer has shown.
#[derive(Debug, Default)]
struct Screen {
    /// Text of the model call in progress was printed.
    in_call: bool,
    /// The last answer (no tool calls) was printed whole.
    answer: bool,
}

/// Prints answers as they come; says afterwards whether the final one was printed.
#[derive(Debug, Clone, Default)]
pub(super) struct AnswerPrinter(Arc<Mutex<Screen>>);

impl AnswerPrinter {
    /// The echo that prints through this printer.
    pub(super) fn echo(&self) -> Echo {
        let screen = self.0.clone();
        Echo::new(move |what| show(&mut screen.lock().unwrap_or_else(PoisonError::into_inner), what))
    }

    /// Whether the final answer was printed whole as it was written (then it is not printed
    /// again).
    pub(super) fn printed_answer(&self) -> bool {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).answer
    }
}

fn show(screen: &mut Screen, what: Shown) {
    match what {
        Shown::Text(text) => {
            print(&text);
            screen.in_call = true;
        }
        Shown::Abandoned if screen.in_call => {
            print("\n");
            eprintln!("[the answer broke off; asking the model again]");
            screen.in_call = false;
        }
        Shown::Abandoned => {}
        Shown::Answered { calls_tools } => {
            if screen.in_call {
                print(if calls_tools { "\n\n" } else { "\n" });
            }
            screen.answer = screen.in_call && !calls_tools;
            screen.in_call = false;
        }
    }
}

/// Writes and flushes (stdout is line-buffered: a piece without a newline would wait). A
/// closed pipe ends the printing quietly; the answer is still saved.
fn print(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush());
}
