//! `RemoteShuffle`: the `ShuffleClient` for shuffle servers over the
//! network, one server or many.
//!
//! * Placement: at registration each server is asked its status (one try,
//!   within `connect_timeout`); the shuffle is placed over those that
//!   answer, are not draining and have a healthy data directory, its
//!   partitions spread round-robin from an offset derived from (app,
//!   shuffle), so no server holds more than one partition above its share.
//!   The placement travels in the [`ShuffleHandle`] and never changes: a
//!   server lost later loses its partitions of the shuffle
//!   ([`ClientError::ServerLost`]), and the engine runs the producers
//!   again on a fresh shuffle, placed over the servers live then.
//! * Membership: servers that do not answer when the client connects are
//!   left out (logged); the client fails only when none answers.
//! * Pushes: a writer batches blocks per server and keeps a bounded number
//!   of pushes in flight; a push that fails on a connection error is sent
//!   again (the server drops the duplicates).
//! * Commits go to every server in a fixed order (server 0 first), so that
//!   two racing attempts of a map cannot each win a different server: the
//!   loser is refused by server 0 and stops.
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
    AppId, AttemptId, Block, CommitManifest, MapId, MapRange, PartitionId, ShuffleId, ShuffleSpec,
};

use self::conn::DataClient;
use self::control::Control;
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

/// The servers a shuffle was placed over, in its handle's order.
pub(crate) type Placed = Arc<[Arc<Server>]>;

#[derive(Debug)]
pub(crate) struct Inner {
    /// The configured servers that answered when the client connected.
    pub servers: Vec<Arc<Server>>,
    /// The configured servers that did not, and why.
    pub unreachable: Vec<(String, String)>,
    pub options: RemoteOptions,
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
        .map_err(|e| e.into_lost(shuffle))
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
    /// Servers that do not answer are left out and logged: shuffles are
    /// placed over the others. Fails only when no server answers.
    pub async fn connect(urls: &[ServerUrl], options: RemoteOptions) -> Result<Self, ClientError> {
        if urls.is_empty() {
            return Err(ClientError::InvalidArgument(protocol::ProtocolError::Malformed {
                what: "server list",
                reason: "at least one shuffle server URL is required".into(),
            }));
        }
        let mut servers = Vec::with_capacity(urls.len());
        let mut unreachable = Vec::new();
        for url in urls {
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
                next_request: AtomicU64::new(1),
                heartbeats: Mutex::new(HashMap::new()),
            }),
        })
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
            .on_every_server(&placed, "committed_sizes", |mut c| {
                let request = request.clone();
                async move { c.committed_sizes(request).await }
            })
            .await?;
        let partitions = handle.spec().num_partitions();
        let mut bytes = vec![0u64; partitions as usize];
        let mut attempts = Vec::new();
        for (reply, server) in replies.iter().zip(placed.iter()) {
            attempts.push(reply.committed.then_some(AttemptId(reply.attempt)));
            for p in &reply.partitions {
                let slot = bytes
                    .get_mut(p.partition as usize)
                    .ok_or_else(|| ClientError::Corrupt {
                        location: server.name.clone(),
                        reason: format!("sizes name partition {} of {partitions}", p.partition),
                    })?;
                *slot += p.bytes;
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

    /// The index in `placed` of the server holding `partition`.
    fn server_index(
        placed: &Placed,
        handle: &ShuffleHandle,
        partition: PartitionId,
    ) -> Result<usize, ClientError> {
        let n = handle.spec().num_partitions();
        if partition.0 >= n {
            return Err(ClientError::PartitionOutOfRange {
                partition,
                num_partitions: n,
            });
        }
        handle
            .placement()
            .server_of(partition)
            .filter(|&i| i < placed.len())
            .ok_or_else(|| invalid_handle("not placed on remote servers".into()))
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
                None => live.push(server.clone()),
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

    /// Calls `f` on each of `servers`' control planes, in order, with
    /// retries.
    async fn on_every_server<T, F, Fut>(
        &self,
        servers: &[Arc<Server>],
        what: &str,
        f: F,
    ) -> Result<Vec<T>, ClientError>
    where
        F: Fn(proto::shuffle_control_client::ShuffleControlClient<tonic::transport::Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut out = Vec::with_capacity(servers.len());
        for server in servers {
            out.push(self.on_server(server, what, &f).await?);
        }
        Ok(out)
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
        F: Fn(proto::shuffle_control_client::ShuffleControlClient<tonic::transport::Channel>) -> Fut,
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
        F: Fn(proto::shuffle_control_client::ShuffleControlClient<tonic::transport::Channel>) -> Fut,
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
        let request = proto::RegisterShuffleRequest {
            app_id: app.to_string(),
            shuffle_id: shuffle.0,
            num_maps: spec.num_maps(),
            num_partitions: spec.num_partitions(),
            mode: u32::from(spec.mode().code()),
        };
        // With no server live (the only one restarting), placing is
        // retried like any call, for the retry window.
        let live = self.inner.retry("place_shuffle", || self.live_servers()).await?;
        self.on_every_server(&live, "register_shuffle", |mut c| {
            let request = request.clone();
            async move { c.register_shuffle(request).await }
        })
        .await?;
        let names: Vec<String> = live.iter().map(|s| s.name.clone()).collect();
        let placement = Placement::Spread {
            servers: names.into(),
            offset: placement_offset(app, shuffle, live.len()),
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
        let mut per_server: Vec<Vec<Block>> = vec![Vec::new(); placed.len()];
        for block in blocks {
            per_server[Self::server_index(&placed, handle, block.id().partition)?].push(block);
        }
        let mut total = PushAck::default();
        for (server, blocks) in placed.iter().zip(per_server) {
            if blocks.is_empty() {
                continue;
            }
            let ack = self
                .inner
                .push(server, handle.app(), handle.shuffle(), blocks)
                .await?;
            total.stored += ack.stored;
            total.duplicates += ack.duplicates;
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
        let server = placed[Self::server_index(&placed, handle, partition)?].clone();
        RemoteReader::open(self.inner.clone(), server, handle, partition, maps).await
    }

    async fn shuffle_status(&self, handle: &ShuffleHandle) -> Result<ShuffleStatus, ClientError> {
        let placed = self.inner.placed(handle)?;
        let request = shuffle_ref(handle);
        let replies = self
            .on_every_server(&placed, "shuffle_status", |mut c| {
                let request = request.clone();
                async move { c.shuffle_status(request).await }
            })
            .await?;
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
        self.on_each_server_to_the_end(&self.inner.servers, "unregister_app", |mut c| {
            let request = request.clone();
            async move { c.unregister_app(request).await }
        })
        .await
    }
}

/// Commits on server 0 first, then the others in order, each with the part
/// of the manifest it holds. See the module docs for why the order matters.
pub(crate) async fn commit_on_every_server(
    inner: &Inner,
    placed: &Placed,
    handle: &ShuffleHandle,
    map: MapId,
    attempt: AttemptId,
    manifest: &CommitManifest,
) -> Result<CommitAck, ClientError> {
    let mut sealed = true;
    for (index, server) in placed.iter().enumerate() {
        let blocks: Vec<proto::BlockCount> = manifest
            .entries()
            .iter()
            .filter(|(p, _)| handle.placement().server_of(*p) == Some(index))
            .map(|(p, n)| proto::BlockCount {
                partition: p.0,
                blocks: *n,
            })
            .collect();
        let request = proto::CommitMapRequest {
            app_id: handle.app().to_string(),
            shuffle_id: handle.shuffle().0,
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
            .map_err(|e| e.into_lost(handle.shuffle()))?;
        sealed &= reply.into_inner().sealed;
    }
    Ok(CommitAck { sealed })
}
