//! Shared helpers of the shuffle-server integration tests: real servers in
//! process on loopback, a hand-driven TCP data-plane connection, the gRPC
//! control client, and `/metrics` over a hand-written HTTP request.
//!
//! Every network wait is bounded by [`IO_TIMEOUT`], so a server that stops
//! answering fails a test instead of hanging it.

#![allow(dead_code)]

pub mod daemon;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bytes::{BufMut, BytesMut};
use protocol::frame::{
    ErrorFrame, FetchRequest, Frame, FrameCodec, Hello, PushAck, PushBlocks, PROTOCOL_VERSION,
};
use protocol::net::proto::shuffle_control_client::ShuffleControlClient;
use protocol::net::proto::{
    BlockCount, CommitMapReply, CommitMapRequest, RegisterShuffleRequest, ShuffleRef, ShuffleStatusReply,
};
use protocol::{
    records, AppId, AttemptId, Block, BlockId, MapId, MapRange, PartitionId, ServiceError, ShuffleId,
};
use shuffle_server::config::ServerConfig;
use shuffle_server::LocalServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tonic::transport::Channel;

/// Longest wait for any one network step.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// The gRPC control-plane client.
pub type Control = ShuffleControlClient<Channel>;

/// Runs `fut` with a deadline.
pub async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout(limit, fut)
        .await
        .with_context(|| format!("{what}: no answer within {limit:?}"))
}

/// Test defaults: no fsync, fast housekeeping.
pub fn test_config(dirs: Vec<PathBuf>) -> ServerConfig {
    let mut config = ServerConfig::new(dirs);
    config.create_data_dirs = true;
    config.fsync_on_seal = false;
    config.check_interval = Duration::from_millis(50);
    config
}

/// A server on two fresh data dirs inside its own temp dir.
#[derive(Debug)]
pub struct TestServer {
    pub server: LocalServer,
    pub dirs: Vec<PathBuf>,
    pub tmp: tempfile::TempDir,
}

impl TestServer {
    pub async fn start() -> Result<Self> {
        Self::start_with(|_| {}).await
    }

    /// Starts with [`test_config`] adjusted by `tune`.
    pub async fn start_with(tune: impl FnOnce(&mut ServerConfig)) -> Result<Self> {
        let tmp = tempfile::tempdir().context("temp dir")?;
        let dirs = vec![tmp.path().join("data-0"), tmp.path().join("data-1")];
        let mut config = test_config(dirs.clone());
        tune(&mut config);
        let server = LocalServer::start(config).await.context("server starts")?;
        Ok(TestServer { server, dirs, tmp })
    }

    pub async fn control(&self) -> Result<Control> {
        control(&self.server).await
    }

    /// A data-plane connection that said hello.
    pub async fn data(&self) -> Result<DataConn> {
        DataConn::connect(self.server.addrs.tcp).await
    }

    pub async fn metrics(&self) -> Result<String> {
        metrics(self.server.addrs.http).await
    }

    /// Every file or folder under the temp dir that is not inside a data dir.
    pub fn entries_outside_data_dirs(&self) -> Result<Vec<PathBuf>> {
        let mut stray = Vec::new();
        walk_outside(self.tmp.path(), &self.dirs, &mut stray)?;
        Ok(stray)
    }
}

fn walk_outside(dir: &Path, allowed: &[PathBuf], stray: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("list {}", dir.display()))? {
        let path = entry?.path();
        if allowed.iter().any(|a| path.starts_with(a)) {
            continue;
        }
        if allowed.iter().any(|a| a.starts_with(&path)) {
            walk_outside(&path, allowed, stray)?;
        } else {
            stray.push(path);
        }
    }
    Ok(())
}

/// Whether any data dir holds a folder for `app`.
pub fn app_dir_exists(dirs: &[PathBuf], app: &str) -> bool {
    dirs.iter().any(|d| d.join(app).exists())
}

// ---------------------------------------------------------------- blocks

/// A block of one record of `len` bytes, stored uncompressed (so its size
/// is predictable); the record starts with the block's ids, so blocks differ.
pub fn block(shuffle: u32, map: u32, partition: u32, seq: u32, len: usize) -> Result<Block> {
    let mut record = vec![(seq ^ map.wrapping_mul(7) ^ partition.wrapping_mul(13)) as u8; len];
    let ids: Vec<u8> = [shuffle, map, partition, seq]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let n = ids.len().min(len);
    record[..n].copy_from_slice(&ids[..n]);
    let mut raw = Vec::with_capacity(len + 5);
    records::append(&mut raw, &record)?;
    let id = BlockId {
        shuffle: ShuffleId(shuffle),
        map: MapId(map),
        attempt: AttemptId(0),
        partition: PartitionId(partition),
        seq,
    };
    Ok(Block::seal(id, raw, 1, false)?)
}

pub fn app_id(app: &str) -> Result<AppId> {
    Ok(AppId::new(app)?)
}

pub fn push_frame(request_id: u64, app: &str, shuffle: u32, blocks: Vec<Block>) -> Result<Frame> {
    Ok(Frame::PushBlocks(PushBlocks {
        request_id,
        app: app_id(app)?,
        shuffle: ShuffleId(shuffle),
        blocks,
    }))
}

/// A fetch of every map's blocks of one partition.
pub fn fetch_frame(request_id: u64, app: &str, shuffle: u32, partition: u32, num_maps: u32) -> Result<Frame> {
    Ok(Frame::Fetch(FetchRequest {
        request_id,
        app: app_id(app)?,
        shuffle: ShuffleId(shuffle),
        partition: PartitionId(partition),
        maps: MapRange::all(num_maps),
        resume_from: 0,
    }))
}

/// The bytes of a frame with `len` (tag + body) in its prefix, as given.
pub fn raw_frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.put_u32_le(body.len() as u32 + 1);
    out.put_u8(tag);
    out.put_slice(body);
    out
}

// ------------------------------------------------------------ data plane

/// Reading side of a data-plane connection.
#[derive(Debug)]
pub struct FrameReader {
    half: OwnedReadHalf,
    buf: BytesMut,
    codec: FrameCodec,
}

impl FrameReader {
    /// The next frame; `None` when the server closed between frames.
    pub async fn recv(&mut self) -> Result<Option<Frame>> {
        loop {
            if let Some(frame) = self.codec.decode(&mut self.buf)? {
                return Ok(Some(frame));
            }
            let n = within(IO_TIMEOUT, "read a frame", self.half.read_buf(&mut self.buf)).await??;
            if n == 0 {
                ensure!(self.buf.is_empty(), "connection closed inside a frame");
                return Ok(None);
            }
        }
    }

    /// The next frame, which must exist.
    pub async fn next(&mut self) -> Result<Frame> {
        self.recv().await?.context("server closed the connection")
    }

    /// Succeeds once the server closed the connection (end of stream or a
    /// reset), failing if it sends anything else first.
    pub async fn expect_closed(&mut self) -> Result<()> {
        match self.recv().await {
            Ok(None) => Ok(()),
            Ok(Some(frame)) => bail!("expected the connection to be closed, got {frame:?}"),
            Err(e) if is_reset(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn is_reset(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>().is_some_and(|io| {
        matches!(
            io.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        )
    })
}

/// Writing side of a data-plane connection.
#[derive(Debug)]
pub struct FrameWriter {
    half: OwnedWriteHalf,
    codec: FrameCodec,
}

impl FrameWriter {
    pub async fn send(&mut self, frame: &Frame) -> Result<()> {
        let bytes = self.codec.encode_to_bytes(frame)?;
        self.send_raw(&bytes).await
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        within(IO_TIMEOUT, "write", self.half.write_all(bytes)).await??;
        Ok(())
    }

    /// Closes the writing direction (the server sees end of stream).
    pub async fn finish(&mut self) -> Result<()> {
        within(IO_TIMEOUT, "shutdown", self.half.shutdown()).await??;
        Ok(())
    }
}

/// A data-plane TCP connection driven frame by frame.
#[derive(Debug)]
pub struct DataConn {
    pub reader: FrameReader,
    pub writer: FrameWriter,
}

impl DataConn {
    /// Connects without saying hello.
    pub async fn open(addr: SocketAddr) -> Result<Self> {
        let stream = within(IO_TIMEOUT, "connect", TcpStream::connect(addr)).await??;
        Self::from_stream(stream)
    }

    /// Connects from `local` (another loopback address, such as
    /// 127.0.0.2, so that per-peer limits see another host) and says hello.
    pub async fn connect_from(local: std::net::IpAddr, addr: SocketAddr) -> Result<Self> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(local, 0))?;
        let stream = within(IO_TIMEOUT, "connect", socket.connect(addr)).await??;
        let mut conn = Self::from_stream(stream)?;
        conn.hello().await?;
        Ok(conn)
    }

    /// A connection over an already connected stream (no hello yet).
    pub fn from_stream(stream: TcpStream) -> Result<Self> {
        stream.set_nodelay(true)?;
        let (r, w) = stream.into_split();
        let codec = FrameCodec::default();
        Ok(DataConn {
            reader: FrameReader {
                half: r,
                buf: BytesMut::with_capacity(64 << 10),
                codec,
            },
            writer: FrameWriter { half: w, codec },
        })
    }

    /// Connects and exchanges hellos; the server's names its gRPC port.
    pub async fn connect(addr: SocketAddr) -> Result<Self> {
        let mut conn = Self::open(addr).await?;
        conn.hello().await?;
        Ok(conn)
    }

    /// Exchanges hellos.
    pub async fn hello(&mut self) -> Result<()> {
        let conn = self;
        conn.send(&Frame::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            grpc_port: 0,
            max_frame_len: protocol::frame::DEFAULT_MAX_FRAME_LEN,
        }))
        .await?;
        match conn.reader.next().await? {
            Frame::Hello(h) if h.protocol_version == PROTOCOL_VERSION && h.grpc_port != 0 => Ok(()),
            other => bail!("expected the server's hello, got {other:?}"),
        }
    }

    pub async fn send(&mut self, frame: &Frame) -> Result<()> {
        self.writer.send(frame).await
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.writer.send_raw(bytes).await
    }

    /// Pushes blocks and waits for the reply to this request.
    pub async fn push(
        &mut self,
        request_id: u64,
        app: &str,
        shuffle: u32,
        blocks: Vec<Block>,
    ) -> Result<Result<PushAck, ErrorFrame>> {
        self.send(&push_frame(request_id, app, shuffle, blocks)?).await?;
        match self.reader.next().await? {
            Frame::PushAck(ack) if ack.request_id == request_id => Ok(Ok(ack)),
            Frame::Error(e) if e.request_id == request_id => Ok(Err(e)),
            other => bail!("expected the reply to push {request_id}, got {other:?}"),
        }
    }

    /// A push that must be acked with every block stored.
    pub async fn push_ok(
        &mut self,
        request_id: u64,
        app: &str,
        shuffle: u32,
        blocks: Vec<Block>,
    ) -> Result<()> {
        let n = blocks.len() as u32;
        let ack = self
            .push(request_id, app, shuffle, blocks)
            .await?
            .map_err(|e| anyhow::anyhow!("push {request_id} refused: {}", e.error))?;
        ensure!(ack.stored == n && ack.duplicates == 0, "unexpected ack {ack:?}");
        Ok(())
    }

    /// Fetches one whole partition (every map); the blocks in stream order,
    /// or the error frame that ended the stream.
    pub async fn fetch(
        &mut self,
        request_id: u64,
        app: &str,
        shuffle: u32,
        partition: u32,
        num_maps: u32,
    ) -> Result<Result<Vec<Block>, ErrorFrame>> {
        self.send(&fetch_frame(request_id, app, shuffle, partition, num_maps)?)
            .await?;
        let mut blocks = Vec::new();
        loop {
            match self.reader.next().await? {
                Frame::FetchBlocks(f) if f.request_id == request_id => {
                    ensure!(f.first_index == blocks.len() as u64, "gap in the fetch stream");
                    blocks.extend(f.blocks);
                }
                Frame::FetchEnd(end) if end.request_id == request_id => {
                    ensure!(
                        end.total_blocks == blocks.len() as u64,
                        "fetch end count mismatch"
                    );
                    return Ok(Ok(blocks));
                }
                Frame::Error(e) if e.request_id == request_id => return Ok(Err(e)),
                other => bail!("unexpected frame in fetch {request_id}: {other:?}"),
            }
        }
    }

    /// Sends `bytes` and expects the server to answer with a connection-level
    /// `Malformed` error frame and to close the connection.
    pub async fn expect_rejected_after(&mut self, bytes: &[u8]) -> Result<ErrorFrame> {
        // The server may close while we still write: a failed write is fine.
        let _ = self.send_raw(bytes).await;
        self.expect_rejected().await
    }

    /// Expects a connection-level `Malformed` error frame, then the close.
    pub async fn expect_rejected(&mut self) -> Result<ErrorFrame> {
        let frame = self.reader.next().await?;
        let Frame::Error(e) = frame else {
            bail!("expected an error frame, got {frame:?}");
        };
        ensure!(e.request_id == 0, "a connection error has request id 0: {e:?}");
        ensure!(
            matches!(e.error, ServiceError::Malformed { .. }),
            "expected Malformed, got {:?}",
            e.error
        );
        self.reader.expect_closed().await?;
        Ok(e)
    }
}

// ----------------------------------------------------------- control plane

pub async fn control(server: &LocalServer) -> Result<Control> {
    let url = format!("http://{}", server.addrs.grpc);
    Ok(within(IO_TIMEOUT, "grpc connect", Control::connect(url)).await??)
}

/// The typed error carried by a gRPC status.
pub fn service_error(status: &tonic::Status) -> Result<ServiceError> {
    let mut details = status.details();
    ServiceError::decode(&mut details).with_context(|| format!("status details of {status:?}"))
}

pub async fn register_shuffle(
    control: &mut Control,
    app: &str,
    shuffle: u32,
    num_maps: u32,
    num_partitions: u32,
) -> Result<()> {
    within(
        IO_TIMEOUT,
        "register shuffle",
        control.register_shuffle(RegisterShuffleRequest {
            app_id: app.into(),
            shuffle_id: shuffle,
            num_maps,
            num_partitions,
            mode: 0,
            ..Default::default()
        }),
    )
    .await??;
    Ok(())
}

pub fn commit_request(app: &str, shuffle: u32, map: u32, counts: &[(u32, u32)]) -> CommitMapRequest {
    CommitMapRequest {
        app_id: app.into(),
        shuffle_id: shuffle,
        map_id: map,
        attempt_id: 0,
        blocks: counts
            .iter()
            .map(|&(partition, blocks)| BlockCount { partition, blocks })
            .collect(),
    }
}

/// Commits attempt 0 of `map` with `(partition, blocks)` counts.
pub async fn commit(
    control: &mut Control,
    app: &str,
    shuffle: u32,
    map: u32,
    counts: &[(u32, u32)],
) -> Result<CommitMapReply> {
    let reply = within(
        IO_TIMEOUT,
        "commit",
        control.commit_map(commit_request(app, shuffle, map, counts)),
    )
    .await??;
    Ok(reply.into_inner())
}

/// ShuffleStatus of one shuffle: the reply, or the status refusing it.
pub async fn shuffle_status(
    control: &mut Control,
    app: &str,
    shuffle: u32,
) -> Result<Result<ShuffleStatusReply, tonic::Status>> {
    let request = ShuffleRef {
        app_id: app.into(),
        shuffle_id: shuffle,
    };
    let reply = within(IO_TIMEOUT, "shuffle status", control.shuffle_status(request)).await?;
    Ok(reply.map(tonic::Response::into_inner))
}

/// Whether a call was refused with NOT_FOUND.
pub fn is_not_found<T>(result: &Result<T, tonic::Status>) -> bool {
    result.as_ref().is_err_and(|s| s.code() == tonic::Code::NotFound)
}

/// A whole healthy client session over fresh connections: register a
/// one-map, two-partition shuffle, push three blocks, commit (which
/// seals), and read partition 1 back byte for byte.
pub async fn round_trip(server: &LocalServer, app: &str, shuffle: u32) -> Result<()> {
    let mut control = control(server).await?;
    register_shuffle(&mut control, app, shuffle, 1, 2).await?;
    let mut conn = DataConn::connect(server.addrs.tcp).await?;
    let blocks = vec![
        block(shuffle, 0, 0, 0, 300)?,
        block(shuffle, 0, 1, 0, 5000)?,
        block(shuffle, 0, 1, 1, 70)?,
    ];
    conn.push_ok(1, app, shuffle, blocks.clone()).await?;
    let reply = commit(&mut control, app, shuffle, 0, &[(0, 1), (1, 2)]).await?;
    ensure!(reply.sealed, "the only map's commit seals");
    let read = conn
        .fetch(2, app, shuffle, 1, 1)
        .await?
        .map_err(|e| anyhow::anyhow!("fetch refused: {}", e.error))?;
    ensure!(read == blocks[1..], "fetched blocks differ from the pushed ones");
    Ok(())
}

// ------------------------------------------------------------------ http

/// Status code and body of a `GET`, over a hand-written HTTP/1.1 request.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        anyhow::Ok(String::from_utf8(response)?)
    };
    let response = within(IO_TIMEOUT, "http get", exchange).await??;
    let (head, body) = response.split_once("\r\n\r\n").context("no end of headers")?;
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("bad status line in {head:?}"))?;
    Ok((code, body.to_string()))
}

/// The `/metrics` text.
pub async fn metrics(addr: SocketAddr) -> Result<String> {
    let (code, body) = http_get(addr, "/metrics").await?;
    ensure!(code == 200, "/metrics answered {code}");
    Ok(body)
}

/// The value of one series, named exactly as exposed (`name` or
/// `name{label="value"}`).
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Like [`metric`], absent counting as zero.
pub fn metric_or_zero(text: &str, series: &str) -> f64 {
    metric(text, series).unwrap_or(0.0)
}

/// Polls `check` every 25 ms until it holds or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await? {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "{what}: still false after {limit:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A tmpfs mounted for one test, unmounted when dropped.
pub struct Tmpfs {
    pub dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` at `dir`, or says why it cannot.
    pub fn mount(dir: &Path, size: &str) -> Result<Option<Self>> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: mounting a tmpfs to fill a disk for real needs root");
            return Ok(None);
        }
        std::fs::create_dir_all(dir)?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .context("running mount")?;
        if !out.status.success() {
            eprintln!(
                "SKIPPED: mount -t tmpfs failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return Ok(None);
        }
        Ok(Some(Tmpfs {
            dir: dir.to_path_buf(),
        }))
    }
}

impl Tmpfs {
    /// Remounts it with `options` (`ro`, `rw`).
    pub fn remount(&self, options: &str) -> Result<()> {
        let out = std::process::Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.dir)
            .output()
            .context("running mount")?;
        anyhow::ensure!(
            out.status.success(),
            "mount -o remount,{options}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
    }
}
