//! agentry's test kit: the peers its tests and benchmarks talk to, kept out of the shipped
//! binary.
//!
//! - [`model_server`]: an OpenAI-compatible Chat Completions server that behaves like the real
//!   API (validation, error JSON, 401/429/5xx, `Retry-After`), scriptable per test, recording
//!   every request and the peak number in flight.
//!   Its hostile replies (an echoed key, HTML, bodies cut short, stalled or endless) are here too,
//!   and OpenAI-style rate limits in front of any behaviour ([`model_server::rate_limit`]).
//!   It streams when asked, one SSE event per body write, in the demo's pieces or ragged ones,
//!   slowly, stalled or ended early ([`model_server::stream`]).
//! - [`search`]: the demo's MCP search server with a fixed latency per call, for benchmarks.
//! - [`hostile_mcp`]: MCP servers that misbehave on purpose (tool names the model would refuse,
//!   malformed JSON-RPC over legacy SSE and Streamable HTTP).
//!
//! The `agentry-testkit` binary serves either on its own (`agentry-testkit serve model|search`)
//! for trials by hand.

pub mod hostile_mcp;
pub mod model_server;
pub mod search;
