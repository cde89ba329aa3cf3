//! agentry's integration tests: one binary (built once), a module per topic.
//!
//! Peers are real where they can run here: the official Python MCP SDK server
//! (`tests/peers/mcp_search_server.py`), `@modelcontextprotocol/server-everything` over stdio,
//! and agentry's OpenAI-compatible test server (`agentry_testkit::model_server`). `.ci/run`
//! installs the Python and npm peers.

#![allow(unreachable_pub, missing_docs)]

#[path = "../support/otlp.rs"]
mod otlp;
#[path = "../support/peers.rs"]
mod peers;

mod harness;

mod legacy_sse;

mod batch;
mod budget;
mod cli_shell;
mod conformance;
mod demo_scripted_flow;
mod demo_search_server;
mod doctor;
mod failure_behaviour;
mod first_hour;
mod mcp_restarts;
mod model_errors;
mod observability_config;
mod rate_limits;
mod reference_servers;
mod release_binary;
mod report_journal;
mod rotation;
mod secrets_containment;
mod seed_flow;
mod sharding;
mod shipping;
mod shutdown;
mod streaming;
mod supervision;
mod telemetry;
mod testkit_model_server;
mod testkit_openai_stream;
mod testkit_rate_limited;
mod tools_and_files;
mod unresearched;
