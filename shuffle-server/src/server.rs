//! `run`: the whole server on listeners bound by the caller, until the
//! shutdown future resolves; then it drains.
//!
//! Drain order: mark draining (readyz 503; new apps, shuffles and pushes
//! refused with `Draining`), wait until no push, fetch or commit is in
//! flight and none of the pushes or commits ended in the last
//! [`DRAIN_QUIET`] (a map commits right after its last push: the drain
//! must not end in between), up to `drain_timeout`; meanwhile the data
//! planes keep serving fetches of sealed data, and commits of maps in
//! flight go through. Then stop the data planes, fsync what is open, stop
//! the control plane and HTTP, return.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the drain waits after the last push or commit ended before it
/// counts the server idle.
pub const DRAIN_QUIET: Duration = Duration::from_millis(500);

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::budget::MemoryBudget;
use crate::config::ServerConfig;
use crate::metrics::Metrics;
use crate::state::Shared;
use crate::storage::{Store, StoreConfig};
use crate::tls::QuicIdentity;
use crate::{data, grpc, housekeeping, http, proto, ServerError};

/// The sockets a server runs on, bound before it starts (tests bind port 0).
#[derive(Debug)]
pub struct Listeners {
    pub tcp: TcpListener,
    pub quic: std::net::UdpSocket,
    pub grpc: TcpListener,
    pub http: TcpListener,
    /// TLS identity of the QUIC endpoint.
    pub quic_identity: QuicIdentity,
}

/// The bound addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BoundAddrs {
    pub tcp: SocketAddr,
    pub quic: SocketAddr,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
}

impl Listeners {
    /// Binds the configured addresses; loads the QUIC identity from the
    /// configured files or generates a self-signed one.
    pub async fn bind(config: &ServerConfig) -> Result<Self, ServerError> {
        let identity = match (&config.quic_cert, &config.quic_key) {
            (Some(cert), Some(key)) => QuicIdentity::from_pem_files(cert, key)?,
            _ => QuicIdentity::self_signed(&["localhost", "127.0.0.1", "::1"])?,
        };
        Self::bind_addrs(
            config.listen,
            config.quic_listen,
            config.grpc_listen,
            config.http_listen,
            identity,
        )
        .await
    }

    /// Binds every service on `127.0.0.1` with ports chosen by the system.
    pub async fn bind_ephemeral(identity: QuicIdentity) -> Result<Self, ServerError> {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        Self::bind_addrs(any, any, any, any, identity).await
    }

    async fn bind_addrs(
        tcp: SocketAddr,
        quic: SocketAddr,
        grpc: SocketAddr,
        http: SocketAddr,
        quic_identity: QuicIdentity,
    ) -> Result<Self, ServerError> {
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(ServerError::io("bind", addr.to_string()))
        };
        Ok(Listeners {
            tcp: bind(tcp).await?,
            quic: std::net::UdpSocket::bind(quic).map_err(ServerError::io("bind", quic.to_string()))?,
            grpc: bind(grpc).await?,
            http: bind(http).await?,
            quic_identity,
        })
    }

    /// Where each service listens.
    pub fn addrs(&self) -> Result<BoundAddrs, ServerError> {
        let addr = |r: std::io::Result<SocketAddr>| r.map_err(ServerError::io("read address", "listener"));
        Ok(BoundAddrs {
            tcp: addr(self.tcp.local_addr())?,
            quic: addr(self.quic.local_addr())?,
            grpc: addr(self.grpc.local_addr())?,
            http: addr(self.http.local_addr())?,
        })
    }
}

/// Runs the server until `shutdown` resolves, then drains and returns.
pub async fn run(
    config: ServerConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    Opened::open(config, listeners).await?.serve(shutdown).await
}

/// A server whose store is open (recovered) and whose sockets are bound,
/// not serving yet: the errors of starting up (bad config, a missing data
/// directory, an unreadable disk) come from [`Opened::open`], before any
/// client can connect.
#[derive(Debug)]
pub struct Opened {
    config: ServerConfig,
    addrs: BoundAddrs,
    tcp: TcpListener,
    grpc: TcpListener,
    http: TcpListener,
    fingerprint: String,
    shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
}

impl Opened {
    /// Validates the config and opens the store.
    pub async fn open(config: ServerConfig, listeners: Listeners) -> Result<Self, ServerError> {
        config.validate()?;
        let addrs = listeners.addrs()?;
        let metrics = Metrics::new();
        // One budget for the data plane and the store's streaming blocks, so
        // `rss_buffer_bytes` counts everything buffered.
        let budget = MemoryBudget::new(config.memory_budget, metrics.clone());
        let store_config = StoreConfig {
            data_dirs: config.data_dirs.clone(),
            create_data_dirs: config.create_data_dirs,
            disk_reserve: config.disk_reserve,
            check_interval: config.check_interval,
            limits: config.store_limits(),
            max_open_files: crate::limits::fit_open_files(config.max_open_files),
            fsync_on_seal: config.fsync_on_seal,
            memory_budget: budget,
            spill_after: config.spill_after,
            // Hybrid copies leave room for the largest push frame: hybrid
            // producers never wait on memory.
            stream_headroom: u64::from(config.max_frame_len),
        };
        let store = tokio::task::spawn_blocking(move || Store::open(store_config))
            .await
            .map_err(|e| ServerError::io("open store", "data dirs")(std::io::Error::other(e)))??;
        let report = store.recovery();
        tracing::info!(
            restored = report.restored.len(),
            discarded = report.discarded.len(),
            quarantined = report.quarantined.len(),
            held = report.held.len(),
            ignored = report.ignored.len(),
            "storage recovered"
        );
        for path in &report.discarded {
            tracing::info!(path = %path.display(), "discarded unsealed shuffle data (no meta: never sealed)");
        }
        metrics
            .quarantined_shuffles
            .inc_by(report.quarantined.len() as u64);
        let store = Arc::new(store);
        store.start_maintenance();
        let shared = Arc::new(Shared::new(store, config.clone(), metrics, addrs.grpc.port()));
        let endpoint = data::quic::endpoint(listeners.quic, &listeners.quic_identity)?;
        Ok(Opened {
            config,
            addrs,
            tcp: listeners.tcp,
            grpc: listeners.grpc,
            http: listeners.http,
            fingerprint: listeners.quic_identity.fingerprint(),
            shared,
            endpoint,
        })
    }

    /// Serves until `shutdown` resolves, then drains and returns.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), ServerError> {
        let Opened {
            config,
            addrs,
            tcp,
            grpc,
            http,
            fingerprint,
            shared,
            endpoint,
        } = self;
        tracing::info!(
            tcp = %addrs.tcp, quic = %addrs.quic, grpc = %addrs.grpc, http = %addrs.http,
            quic_fingerprint = %fingerprint,
            "shuffle server listening"
        );

        // `stop_data` ends the data planes; `stop_all` the rest, after draining.
        let (stop_data, data_rx) = watch::channel(false);
        let (stop_all, all_rx) = watch::channel(false);
        let tcp = tokio::spawn(data::tcp::serve(shared.clone(), tcp, data_rx.clone()));
        let quic = tokio::spawn(data::quic::serve(shared.clone(), endpoint, data_rx));
        let http_task = tokio::spawn(http::serve(shared.clone(), http, all_rx.clone()));
        let housekeeping = tokio::spawn(housekeeping::run(shared.clone(), all_rx.clone()));
        let grpc_task = {
            let service = proto::shuffle_control_server::ShuffleControlServer::new(grpc::ControlService {
                shared: shared.clone(),
            });
            // Without TCP_NODELAY, small replies wait for delayed ACKs (40 ms a
            // call on Linux).
            let incoming = tonic::transport::server::TcpIncoming::from(grpc).with_nodelay(Some(true));
            let stopped = crate::state::stopped(all_rx.clone());
            tokio::spawn(async move {
                tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming_shutdown(incoming, stopped)
                    .await
            })
        };

        shutdown.await;
        tracing::info!("draining: refusing new shuffles and pushes, serving fetches");
        shared.start_draining();
        let started = Instant::now();
        let idle = async {
            // New pushes are refused from now on; fetches may still come and go
            // until none is left.
            loop {
                shared.pushes.wait_idle().await;
                shared.fetches.wait_idle().await;
                shared.commits.wait_idle().await;
                let quiet_for = [&shared.pushes, &shared.commits]
                    .iter()
                    .filter_map(|f| f.since_last_done())
                    .min()
                    .unwrap_or(DRAIN_QUIET);
                let idle =
                    shared.pushes.count() == 0 && shared.fetches.count() == 0 && shared.commits.count() == 0;
                if idle && quiet_for >= DRAIN_QUIET {
                    return;
                }
                tokio::time::sleep(
                    DRAIN_QUIET
                        .saturating_sub(quiet_for)
                        .max(Duration::from_millis(10)),
                )
                .await;
            }
        };
        if tokio::time::timeout(config.drain_timeout, idle).await.is_err() {
            tracing::warn!(
                pushes = shared.pushes.count(),
                fetches = shared.fetches.count(),
                "drain timeout: requests still in flight are abandoned"
            );
        }
        let _ = stop_data.send(true);
        let store = shared.store.clone();
        match tokio::task::spawn_blocking(move || store.sync_all()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("flush on drain failed: {e}"),
            Err(e) => tracing::error!("flush on drain failed: {e}"),
        }
        let _ = stop_all.send(true);
        let _ = tokio::join!(tcp, quic, http_task, housekeeping);
        match grpc_task.await {
            Ok(Err(e)) => tracing::warn!("grpc server ended with: {e}"),
            Err(e) => tracing::warn!("grpc task failed: {e}"),
            Ok(Ok(())) => {}
        }
        tracing::info!(seconds = started.elapsed().as_secs_f64(), "drained, exiting");
        Ok(())
    }
}
