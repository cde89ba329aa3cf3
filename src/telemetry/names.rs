//! Span, attribute and metric names in one place (OpenTelemetry GenAI and MCP semantic
//! conventions, v1.41 names; agentry's own under `agentry.`).
//!
//! [`INSTRUMENTS`] is the catalogue of every metric agentry registers. The dashboards and the
//! collector's Prometheus names are checked against it by tests, so renaming an instrument
//! here breaks those tests rather than a dashboard in production.

/// What kind of instrument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstrumentKind {
    /// A histogram (Prometheus: `_bucket`, `_sum`, `_count`).
    Histogram,
    /// A monotonic counter (Prometheus: `_total`).
    Counter,
    /// A gauge.
    Gauge,
}

/// One metric instrument.
#[derive(Debug, Clone, Copy)]
pub struct Instrument {
    /// OpenTelemetry name.
    pub name: &'static str,
    /// Kind.
    pub kind: InstrumentKind,
    /// UCUM unit (`s`, `{token}`).
    pub unit: &'static str,
    /// Description.
    pub description: &'static str,
    /// Explicit bucket boundaries (histograms only).
    pub buckets: &'static [f64],
}

/// `gen_ai.client.token.usage` buckets, as the GenAI conventions advise.
pub const TOKEN_BUCKETS: &[f64] = &[
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0,
    67108864.0,
];
/// `gen_ai.client.operation.duration` buckets, as the GenAI conventions advise.
pub const GENAI_DURATION_BUCKETS: &[f64] =
    &[0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92];
/// `mcp.client.operation.duration` buckets, as the MCP conventions advise.
pub const MCP_DURATION_BUCKETS: &[f64] =
    &[0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

/// Token counts per model call, by `gen_ai.token.type` (`input`, `output`).
pub const TOKEN_USAGE: &str = "gen_ai.client.token.usage";
/// Duration of one model call (including retries).
pub const OPERATION_DURATION: &str = "gen_ai.client.operation.duration";
/// Time from a streamed model request to its first chunk.
pub const TIME_TO_FIRST_CHUNK: &str = "gen_ai.client.operation.time_to_first_chunk";
/// Duration of one MCP request (`tools/call`).
pub const MCP_OPERATION_DURATION: &str = "mcp.client.operation.duration";
/// Questions finished, by `agentry.question.status`.
pub const QUESTIONS: &str = "agentry.questions";
/// Tool calls, by `gen_ai.tool.name` and `agentry.tool.outcome`.
pub const TOOL_CALLS: &str = "agentry.tool.calls";
/// MCP session restarts, by `agentry.mcp.server`.
pub const MCP_RESTARTS: &str = "agentry.mcp.restarts";
/// Credential rotations seen, by `agentry.secret.name`.
pub const CREDENTIAL_ROTATIONS: &str = "agentry.credential.rotations";
/// The model route in use: 1 for the current `agentry.route`, 0 for the other.
pub const ROUTE: &str = "agentry.model.route";
/// Time a model request waited for its route's rate limits before it was sent, by `agentry.route`.
pub const RATE_LIMIT_WAIT: &str = "agentry.rate_limit.wait";
/// Responses refused with HTTP 429, by `agentry.route`.
pub const RATE_LIMIT_REFUSALS: &str = "agentry.rate_limit.refusals";
/// Model requests a route lets be in flight now, by `agentry.route`.
pub const RATE_LIMIT_IN_FLIGHT: &str = "agentry.rate_limit.in_flight_limit";

/// Spans the batch span processor finished with: handed to the exporter, or dropped with
/// `error.type = queue_full` (OpenTelemetry SDK metrics conventions).
pub const SPANS_PROCESSED: &str = "otel.sdk.processor.span.processed";

/// Every metric agentry registers.
pub const INSTRUMENTS: &[Instrument] = &[
    Instrument {
        name: TOKEN_USAGE,
        kind: InstrumentKind::Histogram,
        unit: "{token}",
        description: "Number of input and output tokens used per model call",
        buckets: TOKEN_BUCKETS,
    },
    Instrument {
        name: OPERATION_DURATION,
        kind: InstrumentKind::Histogram,
        unit: "s",
        description: "Duration of a model call, retries included",
        buckets: GENAI_DURATION_BUCKETS,
    },
    Instrument {
        name: TIME_TO_FIRST_CHUNK,
        kind: InstrumentKind::Histogram,
        unit: "s",
        description: "Time from a streamed model request to its first chunk",
        buckets: GENAI_DURATION_BUCKETS,
    },
    Instrument {
        name: MCP_OPERATION_DURATION,
        kind: InstrumentKind::Histogram,
        unit: "s",
        description: "Duration of an MCP request as the client sees it",
        buckets: MCP_DURATION_BUCKETS,
    },
    Instrument {
        name: QUESTIONS,
        kind: InstrumentKind::Counter,
        unit: "{question}",
        description: "Questions finished, by status",
        buckets: &[],
    },
    Instrument {
        name: TOOL_CALLS,
        kind: InstrumentKind::Counter,
        unit: "{call}",
        description: "Tool calls, by tool and outcome",
        buckets: &[],
    },
    Instrument {
        name: MCP_RESTARTS,
        kind: InstrumentKind::Counter,
        unit: "{restart}",
        description: "MCP session restarts, by server",
        buckets: &[],
    },
    Instrument {
        name: CREDENTIAL_ROTATIONS,
        kind: InstrumentKind::Counter,
        unit: "{rotation}",
        description: "Credential rotations seen, by secret",
        buckets: &[],
    },
    Instrument {
        name: ROUTE,
        kind: InstrumentKind::Gauge,
        unit: "{route}",
        description: "1 for the model route in use, 0 for the other",
        buckets: &[],
    },
    Instrument {
        name: RATE_LIMIT_WAIT,
        kind: InstrumentKind::Histogram,
        unit: "s",
        description: "Time a model request waited for its route's rate limits",
        buckets: GENAI_DURATION_BUCKETS,
    },
    Instrument {
        name: RATE_LIMIT_REFUSALS,
        kind: InstrumentKind::Counter,
        unit: "{response}",
        description: "Model responses refused with HTTP 429, by route",
        buckets: &[],
    },
    Instrument {
        name: RATE_LIMIT_IN_FLIGHT,
        kind: InstrumentKind::Gauge,
        unit: "{request}",
        description: "Model requests the route lets be in flight now",
        buckets: &[],
    },
    Instrument {
        name: SPANS_PROCESSED,
        kind: InstrumentKind::Counter,
        unit: "{span}",
        description: "Spans handed to the exporter, or dropped (error.type queue_full) when the export queue was full",
        buckets: &[],
    },
];

/// Attribute keys.
pub mod attr {
    /// `chat`, `execute_tool`, `invoke_agent`.
    pub const OPERATION_NAME: &str = "gen_ai.operation.name";
    /// `openai` (both routes speak the OpenAI API).
    pub const PROVIDER_NAME: &str = "gen_ai.provider.name";
    /// Model asked for.
    pub const REQUEST_MODEL: &str = "gen_ai.request.model";
    /// Model that answered.
    pub const RESPONSE_MODEL: &str = "gen_ai.response.model";
    /// Seconds from a streamed request to its first chunk (on the `chat` span).
    pub const RESPONSE_TIME_TO_FIRST_CHUNK: &str = "gen_ai.response.time_to_first_chunk";
    /// `input` or `output`.
    pub const TOKEN_TYPE: &str = "gen_ai.token.type";
    /// Tool name.
    pub const TOOL_NAME: &str = "gen_ai.tool.name";
    /// Error class.
    pub const ERROR_TYPE: &str = "error.type";
    /// Kind of telemetry pipeline component (`batching_span_processor`).
    pub const OTEL_COMPONENT_TYPE: &str = "otel.component.type";
    /// Host of the model or MCP server.
    pub const SERVER_ADDRESS: &str = "server.address";
    /// MCP method (`tools/call`).
    pub const MCP_METHOD: &str = "mcp.method.name";
    /// `tcp` for HTTP transports, `pipe` for stdio.
    pub const NETWORK_TRANSPORT: &str = "network.transport";
    /// `cloud` or `local`.
    pub const ROUTE: &str = "agentry.route";
    /// `ok`, `failed`, `skipped`, `interrupted`.
    pub const QUESTION_STATUS: &str = "agentry.question.status";
    /// `ok` or `error`.
    pub const TOOL_OUTCOME: &str = "agentry.tool.outcome";
    /// MCP server name from the config.
    pub const MCP_SERVER: &str = "agentry.mcp.server";
    /// Secret name.
    pub const SECRET_NAME: &str = "agentry.secret.name";
    /// Input tokens the provider read from its prompt cache (`chat` span; GenAI conventions).
    pub const CACHE_READ_INPUT_TOKENS: &str = "gen_ai.usage.cache_read.input_tokens";
}
