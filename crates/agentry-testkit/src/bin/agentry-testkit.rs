//! `agentry-testkit serve model|search`: one test peer as its own process, for trials by hand.
//! Prints `READY <url>` once listening; stops on Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use agentry::demo::scripted::ScriptedResearcher;
use agentry_testkit::model_server::ModelServer;
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

#[tokio::main]
async fn main() -> ExitCode {
    let Cli::Serve { peer } = Cli::parse();
    let served = match peer {
        Peer::Model { listen, latency, accept_key_file } => serve_model(listen, latency, accept_key_file).await,
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

async fn serve_model(listen: SocketAddr, latency: Duration, key_file: Option<PathBuf>) -> std::io::Result<()> {
    let server = Arc::new(ModelServer::start_on(listen, Arc::new(ScriptedResearcher)).await?.with_latency(latency));
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
