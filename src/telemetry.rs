//! Logging set-up: `tracing` to stderr, human-readable or JSON, levels from `RUST_LOG`.
//!
//! Default levels keep agentry at `info` and its dependencies at `warn`: HTTP and MCP
//! libraries log per request at `info`/`debug`, which is noise in a batch. Header values are
//! marked sensitive where they are built, so even `RUST_LOG=trace` does not print a key.

pub mod names;

use std::sync::Once;

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, TelemetrySettings};

static INIT: Once = Once::new();

/// Installs the global subscriber (once; later calls do nothing).
pub fn init(settings: &TelemetrySettings) {
    INIT.call_once(|| {
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn,agentry=info"));
        let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false);
        let _ = match settings.log_format {
            LogFormat::Json => builder.json().try_init(),
            LogFormat::Text => builder.compact().try_init(),
        };
    });
}
