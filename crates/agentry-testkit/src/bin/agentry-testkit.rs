//! `agentry-testkit serve model|search`: one test peer as its own process, for trials by hand.
//! Prints `READY <url>` once listening; stops on Ctrl-C or SIGTERM. The model server enforces
//! OpenAI-style rate limits with `--rpm N --tpm N [--window 60s] [--no-headers]`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use agentry::demo::scripted::ScriptedResearcher;
use agentry_testkit::model_server::{ModelServer, RateLimits};
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
        #[command(flatten)]
        limits: LimitArgs,
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

#[tokio::main]
async fn main() -> ExitCode {
    let Cli::Serve { peer } = Cli::parse();
    let served = match peer {
        Peer::Model { listen, latency, accept_key_file, limits } => {
            serve_model(listen, latency, accept_key_file, limits.limits()).await
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
    limits: Option<RateLimits>,
) -> std::io::Result<()> {
    let server = Arc::new(ModelServer::start_on(listen, Arc::new(ScriptedResearcher)).await?.with_latency(latency));
    server.set_rate_limits(limits);
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
