//! A server running inside the current tokio runtime, on ephemeral
//! loopback ports: what tests and benchmarks start instead of a daemon.

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::ServerConfig;
use crate::server::Opened;
use crate::tls::QuicIdentity;
use crate::{BoundAddrs, Listeners, ServerError};

/// A running in-process server. Dropping it stops it abruptly (its task is
/// aborted); [`LocalServer::shutdown`] drains it like SIGTERM does.
#[derive(Debug)]
pub struct LocalServer {
    pub addrs: BoundAddrs,
    /// SHA-256 of the QUIC certificate, for clients to pin.
    pub quic_fingerprint: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServerError>>>,
}

impl LocalServer {
    /// Starts a server with `config` (its listen addresses are ignored:
    /// every service binds `127.0.0.1:0`).
    pub async fn start(config: ServerConfig) -> Result<Self, ServerError> {
        config.validate()?;
        let identity = QuicIdentity::self_signed(&["localhost", "127.0.0.1"])?;
        let quic_fingerprint = identity.fingerprint();
        let listeners = Listeners::bind_ephemeral(identity).await?;
        let addrs = listeners.addrs()?;
        // Start-up errors (a missing data dir...) come back from here.
        let opened = Opened::open(config, listeners).await?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(opened.serve(async move {
            let _ = stopped.await;
        }));
        Ok(LocalServer {
            addrs,
            quic_fingerprint,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// `tcp://…` URL of the data plane.
    pub fn tcp_url(&self) -> String {
        format!("tcp://{}", self.addrs.tcp)
    }

    /// `quic://…` URL of the data plane.
    pub fn quic_url(&self) -> String {
        format!("quic://{}", self.addrs.quic)
    }

    /// Drains and waits for the server to return.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.unwrap_or_else(|e| {
                Err(ServerError::Io {
                    op: "join",
                    path: "server task".into(),
                    error: std::io::Error::other(e),
                })
            }),
            None => Ok(()),
        }
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
