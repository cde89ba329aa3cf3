//! `agentry-testkit serve model|search`: one test peer as its own process, for trials by hand.
//! Prints `READY <url>` once listening; stops on Ctrl-C or SIGTERM. The model server enforces
//! OpenAI-style rate limits with `--rpm N --tpm N [--window 60s] [--no-headers]`, and streams as
//! the demo unless `--stream-pieces 1,3,2 --stream-interleave --stream-trickle 5ms
//! --stream-split-writes 3` say otherwise. `--text-only` answers in plain text and never calls a
//! tool (a small local model); `--models a,b` serves only those models (others: OpenAI's 404).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use agentry::demo::scripted::ScriptedResearcher;
use agentry_testkit::model_server::{Behaviour, CallOrder, ModelServer, RateLimits, StreamStyle, TextOnly};
use agentry_testkit::search::SlowSearchServer;
use clap::{Parser, Subcommand};

/// agentry's test peers.
#[derive(Debug, Parser)]
#[command(name = "agentry-testkit")]
enum Cli {
    /// Serve one peer until Ctrl-C or SIGTERM.
    Serve {
        #[command(subcommand)]
        peer: Peer,
    },
}

#[derive(Debug, Subcommand)]
enum Peer {
    /// The OpenAI-compatible test model server, answering as the demo's scripted researcher.
    Model {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// A fixed delay per completion.
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        latency: Duration,
        /// Accept only the key in this file (re-read every 100 ms), like the real API.
        #[arg(long, value_name = "FILE")]
        accept_key_file: Option<PathBuf>,
        /// Answer in plain text, never calling a tool (a model without tool calling).
        #[arg(long)]
        text_only: bool,
        /// Serve only these models (comma-separated): others get OpenAI's 404 model_not_found.
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
        #[command(flatten)]
        limits: LimitArgs,
        #[command(flatten)]
        stream: StreamArgs,
    },
    /// The demo's MCP search server (Streamable HTTP).
    Search {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// A fixed delay per search.
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        latency: Duration,
    },
}

/// OpenAI-style rate limits (off unless `--rpm` or `--tpm` is set).
#[derive(Debug, clap::Args)]
struct LimitArgs {
    /// Requests per window (0: no request limit).
    #[arg(long, default_value_t = 0)]
    rpm: u64,
    /// Tokens per window, charged on arrival as prompt characters / 4 plus max_tokens (0: no
    /// token limit).
    #[arg(long, default_value_t = 0)]
    tpm: u64,
    /// The window the limits count over (OpenAI's is a minute).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    window: Duration,
    /// Enforce the limits without saying them: no x-ratelimit-* headers.
    #[arg(long)]
    no_headers: bool,
}

impl LimitArgs {
    fn limits(&self) -> Option<RateLimits> {
        let limits = RateLimits::per_minute(self.rpm, self.tpm).per(self.window);
        let limits = if self.no_headers { limits.without_headers() } else { limits };
        (self.rpm > 0 || self.tpm > 0).then_some(limits)
    }
}

/// How answers to `"stream": true` are cut and paced (the demo's way unless set).
#[derive(Debug, clap::Args)]
struct StreamArgs {
    /// Characters per piece of text or tool-call arguments, taken in turn (e.g. 1,3,2; the
    /// demo's: 16).
    #[arg(long, value_delimiter = ',')]
    stream_pieces: Vec<usize>,
    /// Parallel tool calls take turns, one piece of each by index.
    #[arg(long)]
    stream_interleave: bool,
    /// A wait before each body write of a stream: a slow model.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    stream_trickle: Duration,
    /// Body writes of at most this many bytes, cut inside lines and UTF-8 characters.
    #[arg(long, value_name = "BYTES")]
    stream_split_writes: Option<usize>,
}

impl StreamArgs {
    fn style(&self) -> StreamStyle {
        let demo = StreamStyle::default();
        StreamStyle {
            pieces: if self.stream_pieces.is_empty() { demo.pieces } else { self.stream_pieces.clone() },
            calls: if self.stream_interleave { CallOrder::Interleaved } else { CallOrder::Sequential },
            trickle: self.stream_trickle,
            split_writes: self.stream_split_writes,
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let Cli::Serve { peer } = Cli::parse();
    let served = match peer {
        Peer::Model { listen, latency, accept_key_file, text_only, models, limits, stream } => {
            let behaviour: Arc<dyn Behaviour> =
                if text_only { Arc::new(TextOnly) } else { Arc::new(ScriptedResearcher) };
            let models = (!models.is_empty()).then_some(models);
            serve_model(listen, latency, accept_key_file, behaviour, models, limits.limits(), stream.style()).await
        }
        Peer::Search { listen, latency } => match SlowSearchServer::start_on(listen, latency).await {
            Ok(server) => {
                println!("READY {}", server.url());
                until_signal().await;
                server.shutdown().await;
                Ok(())
            }
            Err(error) => Err(error),
        },
    };
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: cannot listen: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn serve_model(
    listen: SocketAddr,
    latency: Duration,
    key_file: Option<PathBuf>,
    behaviour: Arc<dyn Behaviour>,
    models: Option<Vec<String>>,
    limits: Option<RateLimits>,
    style: StreamStyle,
) -> std::io::Result<()> {
    let server =
        Arc::new(ModelServer::start_on(listen, behaviour).await?.with_latency(latency).with_stream_style(style));
    server.set_rate_limits(limits);
    server.set_models(models);
    println!("READY {}", server.base_url());
    if let Some(path) = key_file {
        let server = server.clone();
        tokio::spawn(async move {
            loop {
                let key = std::fs::read_to_string(&path).ok().map(|k| k.trim().to_owned()).filter(|k| !k.is_empty());
                server.set_accepted_key(key);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }
    until_signal().await;
    Ok(())
}

async fn until_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let term = async {
        match term.as_mut() {
            Some(term) => term.recv().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
}
