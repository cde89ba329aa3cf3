//! How the model server streams (`"stream": true`): an answer's `chat.completion.chunk`s cut in
//! pieces, and the body that writes them out as SSE events, one event per body write.
//!
//! By default a stream is the demo's ([`agentry::demo::model::stream_chunks`]): the role, the
//! text and then each call's arguments in 16-character pieces (a call's id and name in its first
//! piece), the finish reason, the usage chunk, `[DONE]`, each event written as soon as the one
//! before (an answer without text starts with `"content": null`, as OpenAI's does). A
//! [`StreamStyle`], for the whole server ([`ModelServer::with_stream_style`]) or for one reply
//! ([`Reply::Pieces`], [`Reply::Trickle`], [`Reply::SplitWrites`]), cuts and paces it otherwise:
//!
//! ```text
//! pieces [1, 3, 2]            "Ma" "chi" "n" "e l" "ea" …     text and arguments, in characters
//! CallOrder::Interleaved      call 0, call 1, call 2, call 0, call 1, …   (one piece each, by index)
//! trickle 5ms                 each body write waits 5 ms: a slow model that is still alive
//! split_writes 3              `dat` `a: ` `{"i` … `\xC3` `\xA9…`   writes cut anywhere, UTF-8 too
//! ```
//!
//! A reply can also end its body early: [`Reply::StallAfter`] (some events, then nothing, the
//! connection open) and [`Reply::EndAfter`] (some events, then a clean end: no finish reason,
//! no `[DONE]`).
//!
//! [`ModelServer::with_stream_style`]: super::ModelServer::with_stream_style
//! [`Reply::Pieces`]: super::Reply::Pieces
//! [`Reply::Trickle`]: super::Reply::Trickle
//! [`Reply::SplitWrites`]: super::Reply::SplitWrites
//! [`Reply::StallAfter`]: super::Reply::StallAfter
//! [`Reply::EndAfter`]: super::Reply::EndAfter

use std::time::Duration;

use agentry::demo::model as shape;
use axum::body::{Body, Bytes};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// The demo's piece: 16 characters.
const DEMO_PIECE: usize = 16;

/// How streamed answers are cut and paced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStyle {
    /// Characters per piece of the text and of each call's arguments, taken in turn and cycled
    /// over the whole answer, so cuts fall anywhere: between a `\` and the character it escapes
    /// in the arguments' JSON, say. A 0 counts as 1; none: the demo's 16.
    pub pieces: Vec<usize>,
    /// The order of several tool calls' pieces.
    pub calls: CallOrder,
    /// The wait before each body write (zero: none).
    pub trickle: Duration,
    /// Body writes of at most this many bytes (a 0 counts as 1), cut anywhere: inside an SSE
    /// line and inside a multi-byte UTF-8 character. `None`: one write per event.
    pub split_writes: Option<usize>,
}

/// In which order a stream sends several tool calls' pieces.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CallOrder {
    /// Each call whole before the next, as OpenAI streams them.
    #[default]
    Sequential,
    /// Round robin by index: every call's first piece (its id and name), then one piece of each
    /// in turn, as servers that generate parallel calls side by side stream them.
    Interleaved,
}

impl Default for StreamStyle {
    /// The demo's stream.
    fn default() -> Self {
        Self { pieces: vec![DEMO_PIECE], calls: CallOrder::Sequential, trickle: Duration::ZERO, split_writes: None }
    }
}

impl StreamStyle {
    /// A stream cut as finely as a valid one can be: pieces of 1 to 7 characters in an uneven
    /// turn, parallel calls interleaved, body writes of 3 bytes.
    pub fn ragged() -> Self {
        Self::default().pieces([1, 4, 2, 7, 1, 3, 5]).interleaved().split_writes(3)
    }

    /// The same style with pieces of these sizes in turn.
    pub fn pieces(self, sizes: impl IntoIterator<Item = usize>) -> Self {
        Self { pieces: sizes.into_iter().collect(), ..self }
    }

    /// The same style with parallel calls interleaved by index.
    pub fn interleaved(self) -> Self {
        Self { calls: CallOrder::Interleaved, ..self }
    }

    /// The same style with a wait of `every` before each body write.
    pub fn trickle(self, every: Duration) -> Self {
        Self { trickle: every, ..self }
    }

    /// The same style with body writes of at most `bytes` bytes.
    pub fn split_writes(self, bytes: usize) -> Self {
        Self { split_writes: Some(bytes), ..self }
    }
}

/// A reply's own stream settings (its `Pieces`, `Trickle`, `SplitWrites`, `StallAfter` and
/// `EndAfter` wrappers), the outermost of each kind winning.
#[derive(Debug, Default)]
pub(super) struct Overrides {
    pieces: Option<(Vec<usize>, CallOrder)>,
    trickle: Option<Duration>,
    split_writes: Option<usize>,
    ending: Option<Ending>,
}

/// How a body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// After its last event.
    Whole,
    /// After this many events, with nothing more until the server stops.
    StallAfter(usize),
    /// Cleanly after this many events.
    EndAfter(usize),
}

impl Overrides {
    pub(super) fn pieces(&mut self, sizes: Vec<usize>, calls: CallOrder) {
        self.pieces.get_or_insert((sizes, calls));
    }

    pub(super) fn trickle(&mut self, every: Duration) {
        self.trickle.get_or_insert(every);
    }

    pub(super) fn split_writes(&mut self, bytes: usize) {
        self.split_writes.get_or_insert(bytes);
    }

    pub(super) fn stall_after(&mut self, events: usize) {
        self.ending.get_or_insert(Ending::StallAfter(events));
    }

    pub(super) fn end_after(&mut self, events: usize) {
        self.ending.get_or_insert(Ending::EndAfter(events));
    }

    /// The style of one reply: the server's for a stream, and for a body that is not one the
    /// whole body at once; the reply's own settings over either.
    pub(super) fn style(&self, server: &StreamStyle, streamed: bool) -> StreamStyle {
        let base = if streamed { server.clone() } else { StreamStyle::default() };
        let (pieces, calls) = self.pieces.clone().unwrap_or((base.pieces, base.calls));
        StreamStyle {
            pieces,
            calls,
            trickle: self.trickle.unwrap_or(base.trickle),
            split_writes: self.split_writes.or(base.split_writes),
        }
    }

    /// How a body in `style` is written out.
    pub(super) fn writing(&self, style: &StreamStyle) -> Writing {
        Writing {
            trickle: style.trickle,
            split_writes: style.split_writes,
            ending: self.ending.unwrap_or(Ending::Whole),
        }
    }
}

/// How a body's events are written: paced, split, ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Writing {
    trickle: Duration,
    split_writes: Option<usize>,
    ending: Ending,
}

impl Writing {
    /// All events, at once, one write each.
    pub(super) fn plain() -> Self {
        Self { trickle: Duration::ZERO, split_writes: None, ending: Ending::Whole }
    }

    pub(super) fn is_plain(&self) -> bool {
        *self == Self::plain()
    }

    /// The body that writes `events`, holding `held` (the request's place in flight) until it
    /// ends or the client goes. A stall ends, dropping the connection, when `stopping` is
    /// cancelled: the server is stopping.
    pub(super) fn body(self, mut events: Vec<Bytes>, stopping: CancellationToken, held: impl Send + 'static) -> Body {
        let Writing { trickle, split_writes, ending } = self;
        if let Ending::StallAfter(count) | Ending::EndAfter(count) = ending {
            events.truncate(count);
        }
        let writes: Vec<Bytes> = match split_writes {
            Some(size) => events.iter().flat_map(|event| split(event, size.max(1))).collect(),
            None => events,
        };
        let paced = futures::stream::iter(writes).then(move |write| async move {
            if !trickle.is_zero() {
                tokio::time::sleep(trickle).await;
            }
            Ok::<_, std::io::Error>(write)
        });
        let stall = matches!(ending, Ending::StallAfter(_));
        let end = futures::stream::once(async move {
            if !stall {
                drop(held);
                return None;
            }
            stopping.cancelled_owned().await;
            drop(held);
            // An error from the body makes hyper drop the connection: the stalled peer is gone.
            Some(Err(std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "the model server stopped")))
        });
        Body::from_stream(paced.chain(end.filter_map(std::future::ready)))
    }
}

/// `bytes` in pieces of `size` bytes (the last may be shorter).
fn split(bytes: &Bytes, size: usize) -> impl Iterator<Item = Bytes> + '_ {
    (0..bytes.len()).step_by(size).map(move |start| bytes.slice(start..(start + size).min(bytes.len())))
}

/// The SSE events of the completion `whole` streamed in `style`'s pieces: `data: <chunk>` each,
/// then `data: [DONE]`. The fields every chunk shares are rendered once, around each delta:
/// the peer's cost per event stays small next to the client's it is measured against.
pub(super) fn sse_events(whole: &Value, include_usage: bool, style: &StreamStyle) -> Vec<Bytes> {
    let Stream { first, deltas, last } = stream(whole, include_usage, style);
    let mut frame = first.clone();
    frame["choices"][0]["delta"] = Value::Null;
    let frame = frame.to_string();
    let (head, tail) = frame.split_once(r#""delta":null"#).unwrap_or((&frame, ""));
    let event = |chunk: &Value| Bytes::from(format!("data: {chunk}\n\n"));
    std::iter::once(event(&first))
        .chain(deltas.iter().map(|delta| Bytes::from(format!("data: {head}\"delta\":{delta}{tail}\n\n"))))
        .chain(last.iter().map(event))
        .chain(std::iter::once(Bytes::from_static(b"data: [DONE]\n\n")))
        .collect()
}

/// A stream: the demo's first chunk (the role), the deltas of the text and the calls, the
/// demo's last chunks (the finish reason, the usage).
struct Stream {
    first: Value,
    deltas: Vec<Value>,
    last: Vec<Value>,
}

/// The `chat.completion.chunk`s of the completion `whole`: the demo's, with the text and the
/// arguments cut in `style`'s pieces and the calls in its order.
#[cfg(test)]
fn chunks(whole: &Value, include_usage: bool, style: &StreamStyle) -> Vec<Value> {
    let Stream { first, deltas, last } = stream(whole, include_usage, style);
    let with_delta = |delta: Value| {
        let mut chunk = first.clone();
        chunk["choices"][0]["delta"] = delta;
        chunk
    };
    let middle: Vec<Value> = deltas.into_iter().map(with_delta).collect();
    std::iter::once(first.clone()).chain(middle).chain(last).collect()
}

fn stream(whole: &Value, include_usage: bool, style: &StreamStyle) -> Stream {
    let message = &whole["choices"][0]["message"];
    // The demo's frame of this answer: its stream without the text and calls.
    let mut bare = whole.clone();
    if let Some(bare) = bare.pointer_mut("/choices/0/message").and_then(Value::as_object_mut) {
        bare.remove("tool_calls");
        if bare.get("content").is_some_and(|content| !content.is_null()) {
            bare.insert("content".into(), Value::from(""));
        }
    }
    let mut demo = shape::stream_chunks(&bare, include_usage);
    let first = if demo.is_empty() { Value::Null } else { demo.remove(0) };
    let mut cutter = Cutter::new(&style.pieces);
    let mut deltas: Vec<Value> = cutter
        .cut(message["content"].as_str().unwrap_or_default())
        .into_iter()
        .map(|piece| json!({"content": piece}))
        .collect();
    let calls: Vec<Vec<Value>> = message["tool_calls"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(index, call)| {
            let head = json!({"tool_calls": [{"index": index, "id": call["id"], "type": "function",
                "function": {"name": call["function"]["name"], "arguments": ""}}]});
            let arguments = cutter.cut(call["function"]["arguments"].as_str().unwrap_or_default());
            std::iter::once(head)
                .chain(
                    arguments
                        .into_iter()
                        .map(|piece| json!({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})),
                )
                .collect()
        })
        .collect();
    match style.calls {
        CallOrder::Sequential => deltas.extend(calls.into_iter().flatten()),
        CallOrder::Interleaved => {
            let turns = calls.iter().map(Vec::len).max().unwrap_or(0);
            deltas.extend((0..turns).flat_map(|turn| calls.iter().filter_map(move |call| call.get(turn))).cloned());
        }
    }
    Stream { first, deltas, last: demo }
}

/// Cuts texts in pieces of the given sizes in turn, the turn going on from one text to the next.
struct Cutter {
    sizes: Vec<usize>,
    next: usize,
}

impl Cutter {
    fn new(sizes: &[usize]) -> Self {
        let sizes: Vec<usize> = sizes.iter().map(|&size| size.max(1)).collect();
        Self { sizes: if sizes.is_empty() { vec![DEMO_PIECE] } else { sizes }, next: 0 }
    }

    fn cut(&mut self, text: &str) -> Vec<String> {
        let chars: Vec<char> = text.chars().collect();
        let mut pieces = Vec::new();
        let mut start = 0;
        while start < chars.len() {
            let size = self.sizes[self.next % self.sizes.len()];
            self.next += 1;
            let end = (start + size).min(chars.len());
            pieces.push(chars[start..end].iter().collect());
            start = end;
        }
        pieces
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentry::demo::model::{CallOut, Completion, completion_body};

    fn whole(content: Option<&str>, calls: &[(&str, &str)]) -> Value {
        completion_body(&Completion {
            id: "chatcmpl-1".into(),
            model: json!("m"),
            content: content.map(str::to_owned),
            tool_calls: calls
                .iter()
                .enumerate()
                .map(|(n, (name, arguments))| CallOut {
                    id: format!("call_{n}"),
                    name: (*name).to_owned(),
                    arguments: (*arguments).to_owned(),
                })
                .collect(),
            finish_reason: None,
            prompt_tokens: 10,
            cached_tokens: 0,
        })
    }

    /// Each delta of `chunks` as (which call, or none for the text; the piece).
    fn pieces(chunks: &[Value]) -> Vec<(Option<u64>, String)> {
        chunks
            .iter()
            .filter_map(|chunk| {
                let delta = &chunk["choices"][0]["delta"];
                if let Some(text) = delta["content"].as_str().filter(|text| !text.is_empty()) {
                    return Some((None, text.to_owned()));
                }
                let call = &delta["tool_calls"][0];
                let piece = call["function"]["arguments"].as_str().filter(|piece| !piece.is_empty())?;
                Some((call["index"].as_u64(), piece.to_owned()))
            })
            .collect()
    }

    #[test]
    fn the_events_are_the_chunks_framed_once() {
        let whole = whole(Some("Hé, 日本 and 🦀 \"quoted\""), &[("search", r#"{"q":"\"x\""}"#), ("save", "{}")]);
        for (style, include_usage) in [(StreamStyle::default(), true), (StreamStyle::ragged(), false)] {
            let events = sse_events(&whole, include_usage, &style);
            let data: Vec<&str> = events
                .iter()
                .map(|event| {
                    std::str::from_utf8(event).expect("utf-8").strip_prefix("data: ").expect("data").trim_end()
                })
                .collect();
            assert_eq!(data.last(), Some(&"[DONE]"));
            let parsed: Vec<Value> =
                data[..data.len() - 1].iter().map(|chunk| serde_json::from_str(chunk).expect("a chunk")).collect();
            assert_eq!(parsed, chunks(&whole, include_usage, &style));
        }
    }

    #[test]
    fn the_default_style_is_the_demos_stream() {
        let cases = [
            whole(Some("Machine learning is learning from data, not from rules written by hand."), &[]),
            whole(Some("Let me look."), &[("search", r#"{"query":"ml"}"#)]),
        ];
        for whole in &cases {
            for include_usage in [false, true] {
                assert_eq!(
                    chunks(whole, include_usage, &StreamStyle::default()),
                    shape::stream_chunks(whole, include_usage),
                    "{whole}"
                );
            }
        }
    }

    #[test]
    fn an_answer_without_text_starts_with_null_content_as_openais() {
        let whole = whole(None, &[("search", r#"{"query":"machine learning, a definition"}"#), ("save", "{}")]);
        let mut demo = shape::stream_chunks(&whole, true);
        let chunks = chunks(&whole, true, &StreamStyle::default());
        assert_eq!(chunks[0]["choices"][0]["delta"], json!({"role": "assistant", "content": null, "refusal": null}));
        // Otherwise the demo's stream.
        demo[0]["choices"][0]["delta"]["content"] = Value::Null;
        assert_eq!(chunks, demo);
    }

    #[test]
    fn pieces_are_cut_in_turn_across_the_text_and_the_arguments() {
        let whole = whole(Some("abcdefg"), &[("f", r#"{"q":"a\"b"}"#)]);
        let got = pieces(&chunks(&whole, false, &StreamStyle::default().pieces([1, 2, 4])));
        // The text takes 1, 2, 4; the arguments go on with 1, 2, 4, then 1: a cut inside `\"`.
        let text = ["a", "bc", "defg"].map(|piece| (None, piece.to_owned()));
        let arguments = ["{", r#""q"#, r#"":"a"#, r"\", r#""b"#, r#""}"#].map(|piece| (Some(0), piece.to_owned()));
        assert_eq!(got, [text.as_slice(), arguments.as_slice()].concat());
    }

    #[test]
    fn interleaved_calls_take_turns_by_index() {
        let whole = whole(None, &[("a", "0123"), ("b", "45"), ("c", "6789ab")]);
        let chunks = chunks(&whole, true, &StreamStyle::default().pieces([2]).interleaved());
        let order: Vec<(u64, bool)> = chunks
            .iter()
            .filter_map(|chunk| {
                let call = &chunk["choices"][0]["delta"]["tool_calls"][0];
                Some((call["index"].as_u64()?, call.get("id").is_some()))
            })
            .collect();
        let heads = [(0, true), (1, true), (2, true)];
        let turns = [(0, false), (1, false), (2, false), (0, false), (2, false), (2, false)];
        assert_eq!(order, heads.into_iter().chain(turns).collect::<Vec<_>>());
        assert!(chunks.last().is_some_and(|chunk| chunk["choices"] == json!([])), "the usage chunk stays last");
    }

    #[test]
    fn writes_are_cut_anywhere() {
        let event = Bytes::from("data: é\n\n");
        let writes: Vec<Bytes> = split(&event, 3).collect();
        assert_eq!(writes, [&b"dat"[..], b"a: ", b"\xC3\xA9\n", b"\n"]);
        assert_eq!(split(&event, 1).count(), event.len());
    }
}
