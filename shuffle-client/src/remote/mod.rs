//! `RemoteShuffle`: the `ShuffleClient` for shuffle servers over the
//! network, one server or many.
//!
//! * Replication (`RemoteOptions::replication`, 1 by default): with 2,
//!   every partition of a blocking or hybrid-full shuffle has a primary and
//!   a replica on the next server of the placement; the client pushes and
//!   commits to both, reads the primary and fails over to the replica
//!   (see `copies` and `reader`).
//! * Placement: at registration each server is asked its status (one try,
//!   within `connect_timeout`); the shuffle is placed over those that
//!   answer, are not draining and have a healthy data directory, its
//!   partitions spread round-robin from an offset derived from (app,
//!   shuffle), so no server holds more than one partition above its share.
//!   The placement travels in the [`ShuffleHandle`] and never changes: a
//!   server lost later loses its partitions of the shuffle
//!   ([`ClientError::ServerLost`]), and the engine runs the producers
//!   again on a fresh shuffle, placed over the servers live then.
//! * Membership: the servers are fixed when the client connects. A URL
//!   whose host is a DNS name of several addresses (a Kubernetes headless
//!   Service) stands for one server per address, resolved then and not
//!   again (a new client resolves anew: a pod added later serves the next
//!   job); `RemoteShuffle::server_urls` gives the resolved list, which the
//!   engine hands its workers so every process of a job names the same
//!   servers. Servers that do not answer (or names that do not resolve)
//!   are left out (logged); the client fails only when none answers.
//! * Pushes: a writer batches blocks per server and keeps a bounded number
//!   of pushes in flight; a push that fails on a connection error is sent
//!   again (the server drops the duplicates).
//! * Commits go to every server in a fixed order (server 0 first, or the
//!   first live one of a replicated shuffle), so that two racing attempts
//!   of a map cannot each win a different server: the loser is refused by
//!   the first and stops.
//! * Fetches stream, and resume from the next block after a broken
//!   connection; every block received is checked to belong to the
//!   request.
//! * Retries: one policy (`retry.rs`) for every call, exponential backoff
//!   with full jitter; connection-class errors are retried for
//!   [`RemoteOptions::retry_window`], so a short server restart costs the
//!   caller nothing.
//! * Apps are registered on first use and kept alive by a heartbeat task
//!   until they are unregistered or the client is dropped.

mod conn;
mod control;
mod copies;
mod reader;
mod retry;
mod tls;
mod url;
mod writer;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use protocol::frame::{Frame, PushBlocks};
use protocol::net::proto;
use protocol::{
    AppId, AttemptId, Block, CommitManifest, MapId, MapRange, PartitionId, Replication, ShuffleId,
    ShuffleSpec,
};

use self::conn::DataClient;
use self::control::Control;
use self::copies::{CopyFailures, LostCopies};
pub use self::reader::RemoteReader;
use self::retry::RetryPolicy;
pub use self::tls::QuicTrust;
pub use self::url::{ServerUrl, Transport};
pub use self::writer::RemoteWriter;
use crate::batching::Batcher;
use crate::client::Placement;
use crate::{ClientError, CommitAck, PushAck, ShuffleClient, ShuffleHandle, ShuffleStatus, WriterOptions};

/// Settings of a [`RemoteShuffle`].
///
/// Retries follow one policy (see the `retry` module docs for its bounds):
/// connection-class errors (`Connection`, `Draining`, `Busy`) are retried
/// for `retry_window`, other retryable errors (`Internal`, `Io`) at most
/// `max_retries` times, `NotReady` never; before retry `n` the call sleeps
/// a random time in `[0, min(retry_max_delay, retry_backoff * 2^n)]`.
#[derive(Clone, Debug)]
pub struct RemoteOptions {
    /// Longest wait to connect (TCP, QUIC handshake, hello). Default 5 s.
    pub connect_timeout: Duration,
    /// Longest wait for a reply or the next fetch frame (and for a
    /// control-plane call). A push may wait for server memory credit, so
    /// this is generous. Default 120 s.
    pub request_timeout: Duration,
    /// Retries of a call after a server-side or I/O failure (`Internal`,
    /// `Io`). Connection-class errors are not counted: they are retried
    /// for `retry_window`. Default 5.
    pub max_retries: u32,
    /// Bound of the first retry delay, doubled at each retry (the delay
    /// is random below it). Default 50 ms.
    pub retry_backoff: Duration,
    /// Bound of any one retry delay. Default 2 s.
    pub retry_max_delay: Duration,
    /// How long a call retries connection-class errors (`Connection`,
    /// `Draining`, `Busy`), from its first failure: a server restart
    /// shorter than this costs the caller nothing. `Duration::ZERO`
    /// returns them at once. Default 30 s.
    pub retry_window: Duration,
    /// Bytes of blocks sent per push request, lowered for a server whose
    /// frame limit (announced in its hello) is smaller. Default 4 MiB.
    pub push_batch_bytes: usize,
    /// Push requests in flight per writer. Default 4.
    pub max_in_flight_pushes: usize,
    /// How QUIC servers are trusted. Default: none (QUIC URLs fail).
    pub quic_trust: QuicTrust,
    /// Copies of each partition of the blocking and hybrid-full shuffles
    /// this client registers (pipelined and hybrid-selective ones keep one:
    /// [`protocol::ShuffleMode::replicates`]). Default 1: a second copy
    /// doubles the bytes pushed and stored, and without it a lost server
    /// costs only the producers of what it held (the engine and Spark run
    /// them again); 2 is for jobs where re-running maps costs more than
    /// writing twice. With 2 a shuffle needs two live servers.
    pub replication: Replication,
}

impl Default for RemoteOptions {
    fn default() -> Self {
        RemoteOptions {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(120),
            max_retries: 5,
            retry_backoff: Duration::from_millis(50),
            retry_max_delay: Duration::from_secs(2),
            retry_window: Duration::from_secs(30),
            push_batch_bytes: 4 << 20,
            max_in_flight_pushes: 4,
            quic_trust: QuicTrust::None,
            replication: Replication::ONE,
        }
    }
}

/// What [`RemoteShuffle::committed_sizes`] returns.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct CommittedSizes {
    /// The committed attempt, when one map was asked for and it committed
    /// on every server.
    pub attempt: Option<AttemptId>,
    /// Bytes per partition, one entry per partition.
    pub bytes: Vec<u64>,
}

/// One server: its data plane and its control plane.
#[derive(Debug)]
pub(crate) struct Server {
    pub data: DataClient,
    pub control: Control,
    pub name: String,
    /// Bytes of blocks per push to this server: the configured batch,
    /// lowered to fit the frame limit the server announced in its hello.
    pub push_batch_bytes: usize,
}

/// Room in a push frame for everything but the blocks (tag, request id,
/// app id, shuffle id, block count).
const PUSH_FRAME_OVERHEAD: usize = 1024;

/// A control-plane client of one server.
type ControlClient = proto::shuffle_control_client::ShuffleControlClient<tonic::transport::Channel>;

/// The servers a shuffle was placed over, in its handle's order.
pub(crate) type Placed = Arc<[Arc<Server>]>;

#[derive(Debug)]
pub(crate) struct Inner {
    /// The configured servers that answered when the client connected.
    pub servers: Vec<Arc<Server>>,
    /// The configured servers that did not, and why.
    pub unreachable: Vec<(String, String)>,
    pub options: RemoteOptions,
    /// Copies of replicated shuffles found lost (see `copies`).
    pub lost: LostCopies,
    next_request: AtomicU64,
    heartbeats: Mutex<HashMap<AppId, tokio::task::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for (_, task) in self
            .heartbeats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
        {
            task.abort();
        }
    }
}

impl Inner {
    pub fn request_id(&self) -> u64 {
        self.next_request.fetch_add(1, Ordering::Relaxed)
    }

    /// The retry policy of every call of this client.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy::new(&self.options)
    }

    /// Runs `op` (named `what` in the logs) under the retry policy.
    pub async fn retry<T, F, Fut>(&self, what: &str, op: F) -> Result<T, ClientError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        retry::retry(self.retry_policy(), what, op).await
    }

    /// The servers `handle` was placed over, as this client's connections.
    /// A server this client could not reach when it connected is lost for
    /// the shuffle; one it was never given is an invalid handle.
    pub fn placed(&self, handle: &ShuffleHandle) -> Result<Placed, ClientError> {
        let Placement::Spread { servers, .. } = handle.placement() else {
            return Err(invalid_handle(format!(
                "placed {:?}, not on remote servers",
                handle.placement()
            )));
        };
        servers
            .iter()
            .map(|name| {
                if let Some(server) = self.servers.iter().find(|s| s.name == *name) {
                    return Ok(server.clone());
                }
                match self.unreachable.iter().find(|(n, _)| n == name) {
                    Some((_, reason)) => Err(ClientError::ServerLost {
                        server: name.clone(),
                        shuffle: handle.shuffle(),
                        reason: format!("unreachable when this client connected: {reason}"),
                    }),
                    None => Err(invalid_handle(format!(
                        "placed over {name}, which is not among this client's servers {:?}",
                        self.servers.iter().map(|s| &s.name).collect::<Vec<_>>()
                    ))),
                }
            })
            .collect()
    }

    /// One push of blocks to `server`, retried on connection errors (a
    /// server gone for the whole window is lost).
    pub async fn push(
        &self,
        server: &Server,
        app: &AppId,
        shuffle: ShuffleId,
        blocks: Vec<Block>,
    ) -> Result<PushAck, ClientError> {
        let frame = Frame::PushBlocks(PushBlocks {
            request_id: self.request_id(),
            app: app.clone(),
            shuffle,
            blocks,
        });
        self.retry("push", || async {
            let (stream, reply) = server.data.exchange(&frame, self.options.request_timeout).await?;
            match reply {
                Frame::PushAck(ack) => {
                    server.data.give_back(stream);
                    Ok(PushAck {
                        stored: ack.stored,
                        duplicates: ack.duplicates,
                    })
                }
                Frame::Error(e) => {
                    server.data.give_back(stream);
                    Err(ClientError::from_service(e.error, &server.name))
                }
                other => {
                    server.data.reset();
                    Err(server
                        .data
                        .error(format!("unexpected reply to a push: {other:?}")))
                }
            }
        })
        .await
        .map_err(|e| self.lost(&server.name, app, shuffle, e))
    }

    /// `e`, the final error of a call about `shuffle` on `server`: a
    /// connection error that outlasted the retry window becomes
    /// [`ClientError::ServerLost`], and the server is remembered as lost
    /// (releasing the app then skips it instead of waiting out another
    /// window; it is back for new shuffles once it answers a status call).
    pub fn lost(&self, server: &str, app: &AppId, shuffle: ShuffleId, e: ClientError) -> ClientError {
        let e = e.into_lost(shuffle);
        if matches!(e, ClientError::ServerLost { .. }) {
            self.lost.mark(server, app, shuffle, &e);
        }
        e
    }
}

fn invalid_handle(reason: String) -> ClientError {
    ClientError::InvalidArgument(protocol::ProtocolError::Malformed {
        what: "shuffle handle",
        reason,
    })
}

/// Shuffle servers over TCP or QUIC, as a [`ShuffleClient`].
#[derive(Clone, Debug)]
pub struct RemoteShuffle {
    inner: Arc<Inner>,
}

impl RemoteShuffle {
    /// Connects to every server (a data-plane hello, which also tells each
    /// server's control-plane port, one try within `connect_timeout`).
    /// A DNS name is first resolved into the servers it names (see the
    /// module docs). Servers that do not answer are left out and logged:
    /// shuffles are placed over the others. Fails only when no server
    /// answers.
    pub async fn connect(urls: &[ServerUrl], options: RemoteOptions) -> Result<Self, ClientError> {
        if urls.is_empty() {
            return Err(ClientError::InvalidArgument(protocol::ProtocolError::Malformed {
                what: "server list",
                reason: "at least one shuffle server URL is required".into(),
            }));
        }
        let mut unreachable = Vec::new();
        let mut expanded: Vec<ServerUrl> = Vec::with_capacity(urls.len());
        for url in urls {
            match url.resolve().await {
                Ok(fleet) => {
                    if fleet.len() > 1 {
                        tracing::info!(%url, servers = fleet.len(), "a DNS name of several servers");
                    }
                    for server in fleet {
                        if !expanded.contains(&server) {
                            expanded.push(server);
                        }
                    }
                }
                Err(reason) => {
                    tracing::warn!(server = %url, "left out: {reason}");
                    unreachable.push((url.to_string(), reason));
                }
            }
        }
        let mut servers = Vec::with_capacity(expanded.len());
        for url in &expanded {
            let data = DataClient::new(url.clone(), options.connect_timeout, &options.quic_trust)?;
            let hello = match data.hello().await {
                Ok(hello) => hello,
                Err(e @ ClientError::Connection { .. }) => {
                    tracing::warn!(server = %url, "left out: {e}");
                    unreachable.push((url.to_string(), e.to_string()));
                    continue;
                }
                Err(e) => return Err(e),
            };
            let name = url.to_string();
            let control = Control::new(
                name.clone(),
                &url.authority_with_port(hello.grpc_port),
                options.connect_timeout,
                options.request_timeout,
            )?;
            let fits = (hello.max_frame_len as usize).saturating_sub(PUSH_FRAME_OVERHEAD);
            let push_batch_bytes = options.push_batch_bytes.min(fits).max(1);
            servers.push(Arc::new(Server {
                data,
                control,
                name,
                push_batch_bytes,
            }));
        }
        if servers.is_empty() {
            let reasons: Vec<String> = unreachable.iter().map(|(_, r)| r.clone()).collect();
            return Err(ClientError::Connection {
                server: urls.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
                reason: format!("no shuffle server answered: {}", reasons.join("; ")),
            });
        }
        Ok(RemoteShuffle {
            inner: Arc::new(Inner {
                servers,
                unreachable,
                options,
                lost: LostCopies::default(),
                next_request: AtomicU64::new(1),
                heartbeats: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Every server this client was given, as it names them in shuffle
    /// handles (a DNS name of several servers expanded to their addresses),
    /// reachable or not. A process that hands work to others passes these
    /// on, so that every client of a job names the same servers even when
    /// the name would resolve differently later.
    pub fn server_urls(&self) -> Vec<String> {
        let reachable = self.inner.servers.iter().map(|s| s.name.clone());
        let unreachable = self.inner.unreachable.iter().map(|(name, _)| name.clone());
        reachable.chain(unreachable).collect()
    }

    /// The settings this client was connected with.
    pub fn options(&self) -> &RemoteOptions {
        &self.inner.options
    }

    /// Parses comma-separated URLs and connects.
    pub async fn connect_str(urls: &str, options: RemoteOptions) -> Result<Self, ClientError> {
        let urls: Vec<ServerUrl> = urls
            .split(',')
            .map(|u| u.trim().parse::<ServerUrl>())
            .collect::<Result<_, _>>()
            .map_err(ClientError::InvalidArgument)?;
        Self::connect(&urls, options).await
    }

    /// Bytes the servers store per partition (block headers plus stored
    /// payloads, dense: one entry per partition) for the committed attempt
    /// of `map`, or for every committed map with `None`; and, for one map,
    /// which attempt committed (`None` until it committed on every
    /// server). An engine whose map ran again after an earlier attempt
    /// committed reports these sizes (Spark's `MapStatus`); adaptive
    /// planning sizes partitions with them.
    pub async fn committed_sizes(
        &self,
        handle: &ShuffleHandle,
        map: Option<MapId>,
    ) -> Result<CommittedSizes, ClientError> {
        let placed = self.inner.placed(handle)?;
        let request = proto::CommittedSizesRequest {
            app_id: handle.app().to_string(),
            shuffle_id: handle.shuffle().0,
            one_map: map.is_some(),
            map_id: map.map_or(0, |m| m.0),
        };
        let replies = self
            .on_live_copies(&placed, handle, "committed_sizes", |mut c| {
                let request = request.clone();
                async move { c.committed_sizes(request).await }
            })
            .await?;
        let partitions = handle.spec().num_partitions();
        let mut bytes = vec![0u64; partitions as usize];
        let mut attempts = Vec::new();
        for (index, reply) in &replies {
            let server = &placed[*index];
            attempts.push(reply.committed.then_some(AttemptId(reply.attempt)));
            for p in &reply.partitions {
                let slot = bytes
                    .get_mut(p.partition as usize)
                    .ok_or_else(|| ClientError::Corrupt {
                        location: server.name.clone(),
                        reason: format!("sizes name partition {} of {partitions}", p.partition),
                    })?;
                // A partition's copies hold the same blocks; unreplicated,
                // one server reports it.
                *slot = (*slot).max(p.bytes);
            }
        }
        let attempt = match attempts.first() {
            Some(&Some(first)) if map.is_some() && attempts.iter().all(|a| *a == Some(first)) => Some(first),
            _ => None,
        };
        Ok(CommittedSizes { attempt, bytes })
    }

    /// Stops heartbeating `app` (its registration then expires on the
    /// servers unless another client heartbeats it or unregisters it).
    fn stop_heartbeat(&self, app: &AppId) {
        if let Some(task) = self
            .inner
            .heartbeats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(app)
        {
            task.abort();
        }
    }

    /// The indexes in `placed` of the servers holding `partition`'s
    /// copies, primary first.
    fn copy_indexes(
        placed: &Placed,
        handle: &ShuffleHandle,
        partition: PartitionId,
    ) -> Result<Vec<usize>, ClientError> {
        let n = handle.spec().num_partitions();
        if partition.0 >= n {
            return Err(ClientError::PartitionOutOfRange {
                partition,
                num_partitions: n,
            });
        }
        let copies = handle.placement().copies_of(partition);
        if copies.is_empty() || copies.iter().any(|&i| i >= placed.len()) {
            return Err(invalid_handle("not placed on remote servers".into()));
        }
        Ok(copies)
    }

    /// Calls `f` on each server of `placed` with retries, in order. For a
    /// replicated shuffle, copies found lost are skipped and a copy that
    /// fails as lost is marked and passed over (at least one must answer);
    /// otherwise the first error is returned. Returns the replies with
    /// their servers' indexes.
    async fn on_live_copies<T, F, Fut>(
        &self,
        placed: &Placed,
        handle: &ShuffleHandle,
        what: &str,
        f: F,
    ) -> Result<Vec<(usize, T)>, ClientError>
    where
        F: Fn(ControlClient) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let replicated = handle.placement().replication().copies() > 1;
        let (app, shuffle) = (handle.app(), handle.shuffle());
        let mut out = Vec::with_capacity(placed.len());
        let mut why = CopyFailures::default();
        for (index, server) in placed.iter().enumerate() {
            if replicated {
                if let Some(reason) = self.inner.lost.why(&server.name, app, shuffle) {
                    why.skipped(&server.name, &reason);
                    continue;
                }
            }
            // A replicated copy gone for the window is lost (and passed
            // over); unreplicated, the caller gets the connection error.
            let reply = self.on_server(server, what, &f).await;
            match reply.map_err(|e| if replicated { e.into_lost(shuffle) } else { e }) {
                Ok(reply) => out.push((index, reply)),
                Err(e) if replicated && e.loses_copy() => {
                    self.inner.lost.mark(&server.name, app, shuffle, &e);
                    why.failed(e);
                }
                Err(e) => return Err(e),
            }
        }
        if out.is_empty() {
            let names: Vec<&str> = placed.iter().map(|s| s.name.as_str()).collect();
            return Err(why.into_error(&names, shuffle));
        }
        Ok(out)
    }

    /// The servers a new shuffle is placed over: those that answer a status
    /// call now (one try, within `connect_timeout`), are not draining and
    /// have a healthy data directory. Fails when none qualifies, naming why
    /// each was left out.
    async fn live_servers(&self) -> Result<Vec<Arc<Server>>, ClientError> {
        let mut live = Vec::new();
        let mut left_out = Vec::new();
        for server in &self.inner.servers {
            let mut c = server.control.client.clone();
            let status = tokio::time::timeout(
                self.inner.options.connect_timeout,
                c.server_status(proto::Empty {}),
            )
            .await;
            let why = match status {
                Err(_) => Some("no status reply within the connect timeout".to_string()),
                Ok(Err(s)) => Some(server.control.error(s).to_string()),
                Ok(Ok(reply)) => {
                    let reply = reply.into_inner();
                    if reply.draining {
                        Some("draining".into())
                    } else if !reply.disks.is_empty() && !reply.disks.iter().any(|d| d.healthy) {
                        Some("no healthy data directory".into())
                    } else {
                        None
                    }
                }
            };
            match why {
                None => {
                    self.inner.lost.revive(&server.name);
                    live.push(server.clone());
                }
                Some(why) => {
                    tracing::warn!(server = %server.name, "left out of a new shuffle: {why}");
                    left_out.push(format!("{}: {why}", server.name));
                }
            }
        }
        left_out.extend(self.inner.unreachable.iter().map(|(n, r)| format!("{n}: {r}")));
        if live.is_empty() {
            return Err(ClientError::Connection {
                server: "every server".into(),
                reason: format!(
                    "no shuffle server can take a new shuffle: {}",
                    left_out.join("; ")
                ),
            });
        }
        Ok(live)
    }

    /// Registers the app on every server once and starts its heartbeat.
    async fn ensure_app(&self, app: &AppId) -> Result<(), ClientError> {
        if self
            .inner
            .heartbeats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(app)
        {
            return Ok(());
        }
        let mut expires = Duration::from_secs(120);
        for server in &self.inner.servers {
            let request = proto::AppRequest {
                app_id: app.to_string(),
            };
            let reply = self
                .inner
                .retry("register_app", || {
                    let mut c = server.control.client.clone();
                    let request = request.clone();
                    async move { c.register_app(request).await.map_err(|s| server.control.error(s)) }
                })
                .await?;
            expires = expires.min(Duration::from_millis(reply.into_inner().expires_in_ms.max(400)));
        }
        let weak = Arc::downgrade(&self.inner);
        let app_id = app.clone();
        let task = tokio::spawn(async move {
            let period = expires / 4;
            loop {
                tokio::time::sleep(period).await;
                let Some(inner) = weak.upgrade() else { return };
                for server in &inner.servers {
                    let mut c = server.control.client.clone();
                    let request = proto::AppRequest {
                        app_id: app_id.to_string(),
                    };
                    if let Err(status) = c.heartbeat(request).await {
                        tracing::warn!(app = %app_id, server = %server.name, "heartbeat failed: {}", status.message());
                    }
                }
            }
        });
        let previous = self
            .inner
            .heartbeats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(app.clone(), task);
        if let Some(previous) = previous {
            previous.abort();
        }
        Ok(())
    }

    /// Calls `f` on each of `servers`' control planes, with retries, going
    /// on past a server that fails (a lost server must not keep the others
    /// from deleting their data); returns the first error.
    async fn on_each_server_to_the_end<T, F, Fut>(
        &self,
        servers: &[Arc<Server>],
        what: &str,
        f: F,
    ) -> Result<(), ClientError>
    where
        F: Fn(ControlClient) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut first_error = None;
        for server in servers {
            if let Err(e) = self.on_server(server, what, &f).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Calls `f` on one server's control plane, with retries.
    async fn on_server<T, F, Fut>(&self, server: &Server, what: &str, f: &F) -> Result<T, ClientError>
    where
        F: Fn(ControlClient) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let reply = self
            .inner
            .retry(what, || {
                let fut = f(server.control.client.clone());
                async move { fut.await.map_err(|s| server.control.error(s)) }
            })
            .await?;
        Ok(reply.into_inner())
    }
}

fn shuffle_ref(handle: &ShuffleHandle) -> proto::ShuffleRef {
    proto::ShuffleRef {
        app_id: handle.app().to_string(),
        shuffle_id: handle.shuffle().0,
    }
}

/// The first server of a shuffle's spread: FNV-1a of (app, shuffle), as
/// the server's layout places partitions over its data directories.
fn placement_offset(app: &AppId, shuffle: ShuffleId, servers: usize) -> u32 {
    let h = protocol::fnv1a64(app.as_str().bytes().chain(shuffle.0.to_le_bytes()));
    (h % servers.max(1) as u64) as u32
}

impl ShuffleClient for RemoteShuffle {
    type Writer = RemoteWriter;
    type Reader = RemoteReader;

    async fn register_shuffle(
        &self,
        app: &AppId,
        shuffle: ShuffleId,
        spec: ShuffleSpec,
    ) -> Result<ShuffleHandle, ClientError> {
        self.ensure_app(app).await?;
        let replication = if spec.mode().replicates() {
            self.inner.options.replication
        } else {
            Replication::ONE
        };
        // With no server live (the only one restarting), placing is
        // retried like any call, for the retry window.
        let live = self.inner.retry("place_shuffle", || self.live_servers()).await?;
        if live.len() < replication.copies() {
            return Err(ClientError::Connection {
                server: live.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(","),
                reason: format!(
                    "replication {replication} needs {} live servers, {} can take a new shuffle",
                    replication.copies(),
                    live.len()
                ),
            });
        }
        let offset = placement_offset(app, shuffle, live.len());
        for (index, server) in live.iter().enumerate() {
            let request = proto::RegisterShuffleRequest {
                app_id: app.to_string(),
                shuffle_id: shuffle.0,
                num_maps: spec.num_maps(),
                num_partitions: spec.num_partitions(),
                mode: u32::from(spec.mode().code()),
                replication: replication.copies() as u32,
                placement_servers: live.len() as u32,
                placement_index: index as u32,
                placement_offset: offset,
            };
            let register = |mut c: ControlClient| {
                let request = request.clone();
                async move { c.register_shuffle(request).await }
            };
            self.on_server(server, "register_shuffle", &register).await?;
        }
        let names: Vec<String> = live.iter().map(|s| s.name.clone()).collect();
        let placement = Placement::Spread {
            servers: names.into(),
            offset,
            replication,
        };
        Ok(ShuffleHandle::new(app.clone(), shuffle, spec, placement))
    }

    async fn open_writer(
        &self,
        handle: &ShuffleHandle,
        map: MapId,
        attempt: AttemptId,
        options: WriterOptions,
    ) -> Result<RemoteWriter, ClientError> {
        let placed = self.inner.placed(handle)?;
        let num_maps = handle.spec().num_maps();
        if map.0 >= num_maps {
            return Err(ClientError::MapOutOfRange { map, num_maps });
        }
        let batcher = Batcher::new(
            handle.shuffle(),
            map,
            attempt,
            handle.spec().num_partitions(),
            options,
        );
        Ok(RemoteWriter::new(
            self.inner.clone(),
            placed,
            handle.clone(),
            batcher,
        ))
    }

    async fn push_blocks(&self, handle: &ShuffleHandle, blocks: Vec<Block>) -> Result<PushAck, ClientError> {
        let placed = self.inner.placed(handle)?;
        if blocks.is_empty() {
            // Nothing to send; still answer whether the shuffle exists.
            self.shuffle_status(handle).await?;
            return Ok(PushAck::default());
        }
        // Every copy gets the block: one push per (copy, server, primary),
        // primaries first. The ack counts each block once, as its primary
        // took it, or its replica when the primary is lost.
        let mut groups: std::collections::BTreeMap<(usize, usize, usize), Vec<Block>> = Default::default();
        let mut wanted = vec![false; placed.len()];
        for block in blocks {
            let copies = Self::copy_indexes(&placed, handle, block.id().partition)?;
            wanted[copies[0]] = true;
            for (copy, &server) in copies.iter().enumerate() {
                groups
                    .entry((copy, server, copies[0]))
                    .or_default()
                    .push(block.clone());
            }
        }
        let (app, shuffle) = (handle.app(), handle.shuffle());
        let replicated = handle.placement().replication().copies() > 1;
        let mut reached = vec![false; placed.len()];
        let mut total = PushAck::default();
        let mut why = CopyFailures::default();
        for ((copy, index, primary), blocks) in groups {
            let server = &placed[index];
            if replicated {
                if let Some(reason) = self.inner.lost.why(&server.name, app, shuffle) {
                    why.skipped(&server.name, &reason);
                    continue;
                }
            }
            match self.inner.push(server, app, shuffle, blocks).await {
                Ok(ack) => {
                    if copy == 0 || !reached[primary] {
                        total.stored += ack.stored;
                        total.duplicates += ack.duplicates;
                    }
                    reached[primary] = true;
                }
                Err(e) if replicated && e.loses_copy() => {
                    self.inner.lost.mark(&server.name, app, shuffle, &e);
                    why.failed(e);
                }
                Err(e) => return Err(e),
            }
        }
        if let Some(primary) = (0..placed.len()).find(|&p| wanted[p] && !reached[p]) {
            let names = [placed[primary].name.as_str()];
            return Err(why.into_error(&names, shuffle));
        }
        Ok(total)
    }

    async fn commit_map(
        &self,
        handle: &ShuffleHandle,
        map: MapId,
        attempt: AttemptId,
        manifest: CommitManifest,
    ) -> Result<CommitAck, ClientError> {
        let placed = self.inner.placed(handle)?;
        commit_on_every_server(&self.inner, &placed, handle, map, attempt, &manifest).await
    }

    async fn open_reader(
        &self,
        handle: &ShuffleHandle,
        partition: PartitionId,
        maps: MapRange,
    ) -> Result<RemoteReader, ClientError> {
        let placed = self.inner.placed(handle)?;
        let copies = Self::copy_indexes(&placed, handle, partition)?;
        // Copies already found lost are tried last.
        let (app, shuffle) = (handle.app(), handle.shuffle());
        let mut servers: Vec<Arc<Server>> = copies.iter().map(|&i| placed[i].clone()).collect();
        servers.sort_by_key(|s| self.inner.lost.why(&s.name, app, shuffle).is_some());
        RemoteReader::open(self.inner.clone(), servers, handle, partition, maps).await
    }

    async fn shuffle_status(&self, handle: &ShuffleHandle) -> Result<ShuffleStatus, ClientError> {
        let placed = self.inner.placed(handle)?;
        let request = shuffle_ref(handle);
        let replies: Vec<_> = self
            .on_live_copies(&placed, handle, "shuffle_status", |mut c| {
                let request = request.clone();
                async move { c.shuffle_status(request).await }
            })
            .await?
            .into_iter()
            .map(|(_, reply)| reply)
            .collect();
        Ok(ShuffleStatus {
            committed_maps: replies.iter().map(|r| r.committed_maps).min().unwrap_or(0),
            num_maps: handle.spec().num_maps(),
            sealed: replies.iter().all(|r| r.sealed),
            stored_bytes: replies.iter().map(|r| r.stored_bytes).sum(),
        })
    }

    async fn unregister_shuffle(&self, handle: &ShuffleHandle) -> Result<(), ClientError> {
        // A server lost for this shuffle has nothing left to delete.
        let placed: Vec<Arc<Server>> = match self.inner.placed(handle) {
            Ok(placed) => placed.to_vec(),
            Err(ClientError::ServerLost { .. }) => {
                let servers: &[String] = match handle.placement() {
                    Placement::Spread { servers, .. } => servers,
                    Placement::Local => &[],
                };
                self.inner
                    .servers
                    .iter()
                    .filter(|s| servers.contains(&s.name))
                    .cloned()
                    .collect()
            }
            Err(e) => return Err(e),
        };
        let placed: Vec<Arc<Server>> = placed
            .into_iter()
            .filter(|s| !self.inner.lost.server_lost(&s.name))
            .collect();
        let request = shuffle_ref(handle);
        self.on_each_server_to_the_end(&placed, "unregister_shuffle", |mut c| {
            let request = request.clone();
            async move { c.unregister_shuffle(request).await }
        })
        .await
    }

    async fn unregister_app(&self, app: &AppId) -> Result<(), ClientError> {
        self.stop_heartbeat(app);
        let request = proto::AppRequest {
            app_id: app.to_string(),
        };
        // A server found lost has nothing left to delete (should it come
        // back with the app's sealed data, the app expires there).
        let servers: Vec<Arc<Server>> = self
            .inner
            .servers
            .iter()
            .filter(|s| !self.inner.lost.server_lost(&s.name))
            .cloned()
            .collect();
        self.on_each_server_to_the_end(&servers, "unregister_app", |mut c| {
            let request = request.clone();
            async move { c.unregister_app(request).await }
        })
        .await
    }
}

/// Commits on server 0 first, then the others in order, each with the part
/// of the manifest it holds. See the module docs for why the order matters.
/// A replicated shuffle skips copies found lost, and goes on past a copy
/// that fails as lost (marked, degraded): the commit counts when every
/// partition of the manifest committed on at least one live copy.
pub(crate) async fn commit_on_every_server(
    inner: &Inner,
    placed: &Placed,
    handle: &ShuffleHandle,
    map: MapId,
    attempt: AttemptId,
    manifest: &CommitManifest,
) -> Result<CommitAck, ClientError> {
    let placement = handle.placement();
    let replicated = placement.replication().copies() > 1;
    let (app, shuffle) = (handle.app(), handle.shuffle());
    let mut sealed = true;
    let mut committed = vec![false; placed.len()];
    let mut why = CopyFailures::default();
    for (index, server) in placed.iter().enumerate() {
        if replicated {
            if let Some(reason) = inner.lost.why(&server.name, app, shuffle) {
                why.skipped(&server.name, &reason);
                continue;
            }
        }
        let blocks: Vec<proto::BlockCount> = manifest
            .entries()
            .iter()
            .filter(|(p, _)| placement.copies_of(*p).contains(&index))
            .map(|(p, n)| proto::BlockCount {
                partition: p.0,
                blocks: *n,
            })
            .collect();
        let request = proto::CommitMapRequest {
            app_id: app.to_string(),
            shuffle_id: shuffle.0,
            map_id: map.0,
            attempt_id: attempt.0,
            blocks,
        };
        let reply = inner
            .retry("commit_map", || {
                let mut c = server.control.client.clone();
                let request = request.clone();
                async move { c.commit_map(request).await.map_err(|s| server.control.error(s)) }
            })
            .await
            .map_err(|e| inner.lost(&server.name, app, shuffle, e));
        match reply {
            Ok(reply) => {
                committed[index] = true;
                sealed &= reply.into_inner().sealed;
            }
            Err(e) if replicated && e.loses_copy() => {
                inner.lost.mark(&server.name, app, shuffle, &e);
                why.failed(e);
            }
            Err(e) => return Err(e),
        }
    }
    let uncommitted = manifest
        .entries()
        .iter()
        .map(|(p, _)| placement.copies_of(*p))
        .find(|copies| !copies.iter().any(|&i| committed[i]));
    if let Some(copies) =
        uncommitted.or_else(|| (!committed.contains(&true)).then(|| (0..placed.len()).collect()))
    {
        let names: Vec<&str> = copies.iter().map(|&i| placed[i].name.as_str()).collect();
        return Err(why.into_error(&names, shuffle));
    }
    Ok(CommitAck { sealed })
}
