//! Scrubbing secrets out of text that came from a server.
//!
//! A server may quote what it was sent: an API's error message names the key it refused, a
//! proxy's HTML page shows the request's headers, an MCP server pastes its bearer token into a
//! JSON-RPC error. Such text goes into errors, logs, the report and the conversation, so it is
//! scrubbed where it enters agentry. [`Redactor::scrub`] replaces
//!
//! - every loaded secret's value, and any piece of it of [`MIN_PIECE`] characters or more (a
//!   server may quote a key in part), by `[redacted <secret name>]`;
//! - anything shaped like an OpenAI-style key (`sk-` and at least eight key characters) by
//!   `[redacted key]`, and a credential-looking word after `Bearer ` by `[redacted]`, whatever
//!   its value.
//!
//! The values come from a [`SecretValues`] (SecretKeeper's channels in the running tree), read
//! at each scrub, so a rotated secret is scrubbed from the moment it is published.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use super::Credential;

/// A quoted piece of a secret this long or longer is scrubbed, wherever it occurs.
pub const MIN_PIECE: usize = 12;

/// Values shorter than this are not scrubbed: replacing every occurrence of a three-letter
/// "secret" would make any text unreadable, and such a value protects nothing anyway.
pub const MIN_SECRET: usize = 6;

/// Where a [`Redactor`] finds the current secret values.
pub trait SecretValues: Send + Sync {
    /// Calls `visit` with each secret that has a value now.
    fn each(&self, visit: &mut dyn FnMut(&Credential));
}

/// Scrubs secrets out of server text. Cheap to clone; the default one knows no values and
/// scrubs key shapes only.
#[derive(Clone, Default)]
pub struct Redactor {
    values: Option<Arc<dyn SecretValues>>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redactor").field("knows_values", &self.values.is_some()).finish()
    }
}

impl Redactor {
    /// A redactor that scrubs the values `values` holds at each call.
    pub fn new(values: Arc<dyn SecretValues>) -> Self {
        Self { values: Some(values) }
    }

    /// `text` without secret values or key-shaped tokens.
    pub fn scrub(&self, text: &str) -> String {
        self.scrub_with(text, None)
    }

    /// As [`scrub`](Self::scrub), also scrubbing `also` (the credential a request was sent
    /// with, which may have been rotated out of the current values since).
    pub fn scrub_with(&self, text: &str, also: Option<&Credential>) -> String {
        let mut secrets: Vec<Credential> = also.into_iter().cloned().collect();
        if let Some(values) = &self.values {
            values.each(&mut |credential| secrets.push(credential.clone()));
        }
        let mut marked = Marks::new(text);
        for credential in &secrets {
            marked.secret(credential.expose(), credential.name());
        }
        marked.key_shapes();
        marked.render()
    }
}

/// A text and the byte ranges to replace, each with its replacement.
struct Marks<'t> {
    text: &'t str,
    ranges: Vec<(usize, usize, String)>,
}

impl<'t> Marks<'t> {
    fn new(text: &'t str) -> Self {
        Self { text, ranges: Vec::new() }
    }

    fn mark(&mut self, start: usize, end: usize, replacement: String) {
        // Widened to whole characters: a secret's bytes may start or end inside one.
        let start = (0..=start).rev().find(|&i| self.text.is_char_boundary(i)).unwrap_or(0);
        let end = (end..=self.text.len()).find(|&i| self.text.is_char_boundary(i)).unwrap_or(self.text.len());
        self.ranges.push((start, end, replacement));
    }

    /// Marks `value` where it occurs whole, and every run of the text that is made of pieces of
    /// it at least [`MIN_PIECE`] bytes long.
    fn secret(&mut self, value: &str, name: &str) {
        let value = value.as_bytes();
        if value.len() < MIN_SECRET {
            return;
        }
        let text = self.text.as_bytes();
        let replacement = format!("[redacted {name}]");
        if value.len() < MIN_PIECE {
            let mut from = 0;
            while let Some(at) = find(&text[from..], value) {
                self.mark(from + at, from + at + value.len(), replacement.clone());
                from += at + value.len();
            }
            return;
        }
        let pieces: HashSet<&[u8]> = value.windows(MIN_PIECE).collect();
        let mut run: Option<(usize, usize)> = None;
        for (start, window) in text.windows(MIN_PIECE).enumerate() {
            if !pieces.contains(window) {
                continue;
            }
            let end = start + MIN_PIECE;
            run = match run {
                Some((from, to)) if start <= to => Some((from, end)),
                Some((from, to)) => {
                    self.mark(from, to, replacement.clone());
                    Some((start, end))
                }
                None => Some((start, end)),
            };
        }
        if let Some((from, to)) = run {
            self.mark(from, to, replacement);
        }
    }

    /// Marks `sk-…` keys and the credential after `Bearer `, whatever their values.
    fn key_shapes(&mut self) {
        let text = self.text.as_bytes();
        let key_char = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
        let mut i = 0;
        while i < text.len() {
            let word_start = i == 0 || !key_char(text[i - 1]);
            if word_start && text[i..].starts_with(b"sk-") {
                let end = i + 3 + text[i + 3..].iter().take_while(|&&b| key_char(b)).count();
                if end - i - 3 >= 8 {
                    self.mark(i, end, "[redacted key]".to_owned());
                    i = end;
                    continue;
                }
            }
            if word_start && text.len() - i > 7 && text[i..i + 6].eq_ignore_ascii_case(b"bearer") {
                let spaces = text[i + 6..].iter().take_while(|&&b| b == b' ' || b == b'\t').count();
                let from = i + 6 + spaces;
                let end = from
                    + text[from..]
                        .iter()
                        .take_while(|&&b| !b.is_ascii_whitespace() && !matches!(b, b'"' | b'\'' | b',' | b';'))
                        .count();
                if spaces > 0 && looks_like_a_credential(&text[from..end]) {
                    self.mark(from, end, "[redacted]".to_owned());
                    i = end;
                    continue;
                }
            }
            i += 1;
        }
    }

    /// The text with the marked ranges replaced; overlapping ranges merge, the first
    /// replacement wins.
    fn render(mut self) -> String {
        if self.ranges.is_empty() {
            return self.text.to_owned();
        }
        self.ranges.sort_by_key(|&(start, end, _)| (start, std::cmp::Reverse(end)));
        let mut out = String::with_capacity(self.text.len());
        let mut at = 0;
        for (start, end, replacement) in self.ranges {
            if end <= at {
                continue;
            }
            if start >= at {
                out.push_str(&self.text[at..start]);
                out.push_str(&replacement);
            }
            at = end;
        }
        out.push_str(&self.text[at..]);
        out
    }
}

/// After `Bearer `: a random-looking word (a digit in it, or long), not `token` or
/// `authentication` in a sentence about bearer tokens.
fn looks_like_a_credential(word: &[u8]) -> bool {
    word.len() >= 8 && (word.iter().any(u8::is_ascii_digit) || word.len() >= 24) && word != b"[redacted]"
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

#[cfg(test)]
mod tests;
