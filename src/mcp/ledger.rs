//! What a transport that sees both directions knows about the requests it carries, so that a
//! mangled answer fails its call at once instead of leaving it to its timeout (rmcp drops,
//! without a word, what it cannot match to a request).
//!
//! The transport notes each request as it sends it ([`Ledger::sending`]) and shows the ledger
//! every message it reads ([`Ledger::received`], or [`Ledger::malformed`] for one that is not
//! JSON-RPC). Per session, each kind of defect is warned about once (later ones at `debug`):
//!
//! * a message that is not JSON-RPC: if it still names a request in flight (e.g. a response
//!   with neither `result` nor `error`), that request gets an error saying what was wrong, at
//!   once; garbage that names no request is skipped;
//! * a response with an id never sent: if exactly one request is in flight, the answer was meant
//!   for it and can no longer arrive under its id, so it gets an error at once; with several in
//!   flight no call can be blamed;
//! * an error response without an id (the server could not read a request): likewise for the
//!   one request in flight.
//!
//! Used by the legacy SSE and the stdio transports; Streamable HTTP checks each POST's own
//! reply instead (`CheckedHttp` in the parent module).

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};

use rmcp::model::{ClientJsonRpcMessage, ClientNotification, JsonRpcMessage, RequestId, ServerJsonRpcMessage};

use super::{Defect, Defects, failure, malformation};

/// The requests in flight, the ids ever sent, and the defects already warned about: what the
/// reader needs to tell a mangled answer from a late one (see the [module docs](self)).
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    in_flight: HashSet<RequestId>,
    /// The lowest and highest numeric id sent: rmcp numbers a session's requests 0, 1, 2, …,
    /// so the range is every id sent, in two numbers however long the session.
    numbers_sent: Option<(i64, i64)>,
    /// Text ids sent (rmcp sends none).
    texts_sent: HashSet<std::sync::Arc<str>>,
    warned: Defects,
}

/// The ledger, even if a panic elsewhere poisoned it (its sets stay consistent).
pub(crate) fn lock(ledger: &Mutex<Ledger>) -> std::sync::MutexGuard<'_, Ledger> {
    ledger.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Ledger {
    /// Notes an outgoing message; returns the id of a request (an answer is now expected).
    pub(crate) fn sending(&mut self, message: &ClientJsonRpcMessage) -> Option<RequestId> {
        match message {
            JsonRpcMessage::Request(request) => {
                self.in_flight.insert(request.id.clone());
                match &request.id {
                    RequestId::Number(n) => {
                        let (low, high) = self.numbers_sent.unwrap_or((*n, *n));
                        self.numbers_sent = Some((low.min(*n), high.max(*n)));
                    }
                    RequestId::String(text) => {
                        self.texts_sent.insert(text.clone());
                    }
                }
                Some(request.id.clone())
            }
            JsonRpcMessage::Notification(notification) => {
                // The client gave up on a request: its answer no longer matters.
                if let ClientNotification::CancelledNotification(cancelled) = &notification.notification
                    && let Some(id) = &cancelled.params.request_id
                {
                    self.answered(id);
                }
                None
            }
            _ => None,
        }
    }

    /// Takes `id` out of flight (`"3"` matches `3`, as in rmcp); whether it was in flight.
    pub(crate) fn answered(&mut self, id: &RequestId) -> bool {
        if self.in_flight.remove(id) {
            return true;
        }
        match id {
            RequestId::String(text) => text.parse().is_ok_and(|n| self.in_flight.remove(&RequestId::Number(n))),
            RequestId::Number(_) => false,
        }
    }

    fn was_sent(&self, id: &RequestId) -> bool {
        let number_sent = |n: i64| self.numbers_sent.is_some_and(|(low, high)| (low..=high).contains(&n));
        match id {
            RequestId::Number(n) => number_sent(*n),
            RequestId::String(text) => self.texts_sent.contains(text) || text.parse().is_ok_and(number_sent),
        }
    }

    /// The one request in flight, taken out of flight: the only one an unmatched answer can
    /// be blamed on.
    fn only_in_flight(&mut self) -> Option<RequestId> {
        if self.in_flight.len() != 1 {
            return None;
        }
        let id = self.in_flight.iter().next().cloned()?;
        self.in_flight.remove(&id);
        Some(id)
    }

    /// Checks a well-formed server message. Returns an error answer for the request an
    /// unmatched answer must have been meant for, when that is clear.
    pub(crate) fn received(&mut self, message: &ServerJsonRpcMessage, endpoint: &str) -> Option<ServerJsonRpcMessage> {
        match message {
            JsonRpcMessage::Response(response) => self.answer(&response.id, endpoint),
            JsonRpcMessage::Error(error) => match &error.id {
                Some(id) => self.answer(id, endpoint),
                None => {
                    let what = format!(
                        "the MCP server sent an error response without an id (code {}: {})",
                        error.error.code.0, error.error.message
                    );
                    self.warned.warn(Defect::ErrorWithoutId, &what, endpoint);
                    let blamed = self.only_in_flight()?;
                    Some(failure(blamed, format!("{what}; it was the only request in flight")))
                }
            },
            JsonRpcMessage::Request(_) | JsonRpcMessage::Notification(_) => None,
        }
    }

    fn answer(&mut self, id: &RequestId, endpoint: &str) -> Option<ServerJsonRpcMessage> {
        if self.answered(id) || self.was_sent(id) {
            // Expected, or late (or repeated): rmcp matches it or drops it.
            return None;
        }
        let blamed = self.in_flight.iter().next().cloned();
        let what = match &blamed {
            Some(blamed) if self.in_flight.len() == 1 => {
                format!("the MCP server answered with id {id}, which agentry never sent, instead of {blamed}")
            }
            _ => format!("the MCP server answered with id {id}, which agentry never sent"),
        };
        self.warned.warn(Defect::UnknownId, &what, endpoint);
        let blamed = self.only_in_flight()?;
        Some(failure(blamed, what))
    }

    /// A message longer than `limit` bytes, skipped unread: it fails the one request in
    /// flight, if there is one (with several, no call can be blamed).
    pub(crate) fn oversized(&mut self, limit: usize, endpoint: &str) -> Option<ServerJsonRpcMessage> {
        let what = format!("the MCP server sent a message longer than {} MiB; agentry skipped it", limit >> 20);
        self.warned.warn(Defect::TooLarge, &what, endpoint);
        let blamed = self.only_in_flight()?;
        Some(failure(blamed, format!("{what}; it was the only request in flight")))
    }

    /// A `message` event that is not JSON-RPC. Returns an error answer for the request it
    /// names, if one is in flight.
    pub(crate) fn malformed(
        &mut self,
        data: &str,
        error: &serde_json::Error,
        endpoint: &str,
    ) -> Option<ServerJsonRpcMessage> {
        let value = serde_json::from_str::<serde_json::Value>(data).ok();
        let what =
            format!("the MCP server sent a message that is not JSON-RPC: {}", malformation(value.as_ref(), error));
        self.warned.warn(Defect::NotJsonRpc, &what, endpoint);
        let object = value.as_ref()?.as_object()?;
        // A malformed request or notification of the server's (its ids are its own) is no answer.
        if object.contains_key("method") {
            return None;
        }
        let id = serde_json::from_value::<RequestId>(object.get("id")?.clone()).ok()?;
        self.answered(&id).then(|| failure(id, what))
    }
}

#[cfg(test)]
impl Ledger {
    /// How many sent ids the ledger holds.
    fn ids_remembered(&self) -> usize {
        usize::from(self.numbers_sent.is_some()) + self.texts_sent.len()
    }
}

#[cfg(test)]
mod tests {
    use rmcp::model::{CallToolRequest, CallToolRequestParams, ClientRequest};

    use super::*;

    fn call(id: i64) -> ClientJsonRpcMessage {
        ClientJsonRpcMessage::request(
            ClientRequest::CallToolRequest(CallToolRequest::new(CallToolRequestParams::new("echo"))),
            RequestId::Number(id),
        )
    }

    fn server(raw: &str) -> ServerJsonRpcMessage {
        serde_json::from_str(raw).expect("a JSON-RPC message")
    }

    #[test]
    fn an_unknown_id_is_blamed_on_the_one_request_in_flight_only() {
        let mut ledger = Ledger::default();
        ledger.sending(&call(1));
        ledger.sending(&call(2));
        // Two in flight: nobody can be blamed.
        assert!(ledger.received(&server(r#"{"jsonrpc":"2.0","id":99,"result":{}}"#), "/m").is_none());
        assert!(ledger.received(&server(r#"{"jsonrpc":"2.0","id":"1","result":{}}"#), "/m").is_none(), "\"1\" is 1");
        let blamed = ledger.received(&server(r#"{"jsonrpc":"2.0","id":98,"result":{}}"#), "/m");
        let Some(JsonRpcMessage::Error(error)) = blamed else { panic!("request 2 is blamed: {blamed:?}") };
        assert_eq!(error.id, Some(RequestId::Number(2)));
        assert!(error.error.message.contains("id 98") && error.error.message.contains("instead of 2"));
        // A late or repeated answer to a request sent is no defect.
        assert!(ledger.received(&server(r#"{"jsonrpc":"2.0","id":2,"result":{}}"#), "/m").is_none());
        assert!(ledger.in_flight.is_empty());
    }

    #[test]
    fn a_long_session_remembers_the_range_of_ids_sent_not_each_one() {
        let mut ledger = Ledger::default();
        for id in 0..10_000 {
            ledger.sending(&call(id));
            let answer = format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{{}}}}"#);
            assert!(ledger.received(&server(&answer), "/m").is_none());
        }
        assert!(ledger.ids_remembered() <= 1, "{} ids remembered", ledger.ids_remembered());
        // A late answer to any of them is still known as ours, and an id never sent is not.
        assert!(ledger.received(&server(r#"{"jsonrpc":"2.0","id":17,"result":{}}"#), "/m").is_none());
        assert!(ledger.was_sent(&RequestId::String("9999".into())));
        assert!(!ledger.was_sent(&RequestId::Number(10_000)));
        assert!(!ledger.was_sent(&RequestId::Number(-1)));
    }

    #[test]
    fn a_malformed_answer_fails_the_request_it_names_and_says_what_is_wrong() {
        let mut ledger = Ledger::default();
        ledger.sending(&call(7));
        let parse = |raw: &str| serde_json::from_str::<ServerJsonRpcMessage>(raw).expect_err("malformed");
        // The server's own malformed request with a colliding id is not our answer.
        let theirs = r#"{"jsonrpc":"2.0","id":7,"method":"ping","params":3}"#;
        assert!(ledger.malformed(theirs, &parse(theirs), "/m").is_none());
        let garbage = r#"{"jsonrpc":"2.0","id":"#;
        assert!(ledger.malformed(garbage, &parse(garbage), "/m").is_none(), "no id: no request named");
        let no_result = r#"{"jsonrpc":"2.0","id":7}"#;
        let failed = ledger.malformed(no_result, &parse(no_result), "/m");
        let Some(JsonRpcMessage::Error(error)) = failed else { panic!("request 7 fails: {failed:?}") };
        assert_eq!(error.id, Some(RequestId::Number(7)));
        assert!(
            error.error.message.ends_with("a response with neither `result` nor `error`"),
            "{}",
            error.error.message
        );
        assert!(ledger.in_flight.is_empty());
    }
}
