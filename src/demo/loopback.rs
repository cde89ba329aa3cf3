//! The one lifecycle of every loopback server agentry starts (the demo's, and the test kit's):
//! bind `127.0.0.1`, serve an axum router, stop on [`Loopback::shutdown`] or when dropped.

use std::net::SocketAddr;
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long [`Loopback::shutdown`] waits for open connections to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A running server. Dropping it stops it (without waiting).
#[derive(Debug)]
pub struct Loopback {
    addr: SocketAddr,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Loopback {
    /// Serves on `addr` (port 0: any free port) the router `make` builds. `make` gets the
    /// server's cancellation token, for services that close their own sessions on shutdown.
    pub async fn start(
        addr: SocketAddr,
        what: &'static str,
        make: impl FnOnce(&CancellationToken) -> axum::Router,
    ) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        // Each write goes out at once, as real servers send streams (nginx, uvicorn): with
        // Nagle's algorithm a stream's small writes wait for the client's delayed ACK.
        let listener = listener.tap_io(|tcp| {
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::debug!(%error, "cannot set TCP_NODELAY");
            }
        });
        let cancel = CancellationToken::new();
        let router = make(&cancel);
        let stop = cancel.clone();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, router).with_graceful_shutdown(stop.cancelled_owned()).await;
            if let Err(error) = served {
                tracing::warn!(%error, "{what} stopped with an error");
            }
        });
        tracing::debug!(%addr, "{what} listening");
        Ok(Self { addr, cancel, task: Some(task) })
    }

    /// On `127.0.0.1`, any free port.
    pub async fn start_local(
        what: &'static str,
        make: impl FnOnce(&CancellationToken) -> axum::Router,
    ) -> std::io::Result<Self> {
        Self::start(SocketAddr::from(([127, 0, 0, 1], 0)), what, make).await
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting connections and waits (briefly) for open ones.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, task).await;
        }
    }
}

impl Drop for Loopback {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
