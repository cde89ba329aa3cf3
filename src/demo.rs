//! `agentry demo`: the whole pipeline against loopback stand-ins for the model and the search
//! tool. No keys, no Docker, nothing leaves the machine; everything is labelled a demo wherever
//! it shows.
//!
//! - [`scripted`]: the demo's "model": searches, saves the research, answers. Deterministic.
//! - [`model`]: serves it as an OpenAI-compatible Chat Completions endpoint (the completion
//!   shape is shared with the test kit's model server).
//! - [`search_server`]: an MCP server (Streamable HTTP, rmcp) with a `search` tool over an
//!   embedded corpus.
//! - [`loopback`]: the lifecycle both servers share: bind `127.0.0.1`, serve, stop.
//!
//! Test doubles (scriptable replies, request validation, hostile behaviours) live in the
//! `agentry-testkit` crate, never in the shipped binary.

pub mod loopback;
pub mod model;
pub mod scripted;
pub mod search_server;
