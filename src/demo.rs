//! `agentry demo`: loopback stand-ins for the model and the search tool.
//!
//! - [`model_server`]: an OpenAI-compatible Chat Completions server (real wire format: tool
//!   calls, usage, error JSON, 401/429 with `Retry-After`, 5xx), scriptable per test, counting
//!   requests and the peak number in flight. The integration tests use it as their model.
//! - [`scripted`]: the demo's model: searches, saves the research, answers. Deterministic.
//! - [`search_server`]: an MCP server (Streamable HTTP, rmcp) with a `search` tool over an
//!   embedded corpus.
//!
//! Everything here is labelled a demo wherever it shows; nothing reaches the network.

pub mod model_server;
pub mod scripted;
pub mod search_server;
