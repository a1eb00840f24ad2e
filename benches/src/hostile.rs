//! A hostile load beside the benchmark's own: what an idle connection
//! costs the server, and what it holds in memory while clients keep
//! half-sent frames open and registrations fill every limit.
//!
//! Hostile connections come from other loopback addresses (127.0.0.2 and
//! up), at most 1000 per address, so the server's per-peer cap (default
//! 1024) never throttles the benchmark's own client.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use protocol::frame::{Frame, FrameCodec, Hello, PROTOCOL_VERSION};
use protocol::{AppId, ShuffleId, ShuffleMode, ShuffleSpec};
use serde::Serialize;
use shuffle_client::{RemoteShuffle, ShuffleClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::servers::Daemon;

/// Connections per hostile source address.
const PER_PEER: usize = 1000;

/// What the hostile load found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct HostileReport {
    /// Idle connections opened (each said hello, then nothing).
    pub idle_connections: usize,
    /// Server RSS growth per idle connection, in bytes.
    pub idle_connection_bytes: f64,
    /// Connections holding a half-sent push frame claiming the server's
    /// largest frame, throughout the benchmark.
    pub half_sent_frames: usize,
    /// Shuffles registered (10,000 maps x 50,000 partitions each) before the
    /// benchmark, over as many apps as it took; the first refusal stops it.
    pub registered_shuffles: usize,
    pub registered_apps: usize,
    /// What stopped the registrations (a limit, named), if anything.
    pub registration_refusal: Option<String>,
    pub registration_seconds: f64,
    /// Server RSS after the registrations, before the benchmark.
    pub rss_after_registrations_bytes: u64,
}

/// The connections the load keeps open (closing them ends it).
#[derive(Debug, Default)]
pub struct Held {
    pub connections: Vec<TcpStream>,
}

fn source(i: usize) -> IpAddr {
    let n = 2 + i / PER_PEER;
    IpAddr::from([127, 0, (n / 250) as u8, (n % 250) as u8 + 2])
}

async fn connect_from(local: IpAddr, server: SocketAddr) -> Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(local, 0))?;
    Ok(socket.connect(server).await?)
}

/// Connects from `local`, says hello, reads the reply; returns the stream
/// and the frame limit the server announced.
async fn hello(local: IpAddr, server: SocketAddr) -> Result<(TcpStream, u32)> {
    let mut stream = connect_from(local, server).await?;
    let codec = FrameCodec::default();
    let hello = Frame::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        grpc_port: 0,
        max_frame_len: protocol::frame::DEFAULT_MAX_FRAME_LEN,
    });
    stream.write_all(&codec.encode_to_bytes(&hello)?).await?;
    let mut buf = bytes::BytesMut::new();
    loop {
        if let Some(frame) = codec.decode(&mut buf)? {
            match frame {
                Frame::Hello(h) => return Ok((stream, h.max_frame_len)),
                other => bail!("expected a hello, got {other:?}"),
            }
        }
        if stream.read_buf(&mut buf).await? == 0 {
            bail!("the server closed the connection before its hello");
        }
    }
}

/// Parses `tcp://host:port`.
fn tcp_addr(daemon: &Daemon) -> Result<SocketAddr> {
    daemon
        .tcp
        .strip_prefix("tcp://")
        .context("a tcp:// URL")?
        .parse()
        .context("the daemon's TCP address")
}

/// Opens `n` idle connections and measures the server's RSS growth per
/// connection (after a settle, so lazily touched pages count).
pub async fn idle_connections(daemon: &Daemon, n: usize, held: &mut Held) -> Result<f64> {
    let addr = tcp_addr(daemon)?;
    let settle = Duration::from_millis(500);
    tokio::time::sleep(settle).await;
    let before = daemon.rss_bytes().context("reading the server's RSS")?;
    for i in 0..n {
        let (stream, _) = hello(source(i), addr)
            .await
            .with_context(|| format!("idle connection {i}"))?;
        held.connections.push(stream);
    }
    tokio::time::sleep(settle).await;
    let after = daemon.rss_bytes().context("reading the server's RSS")?;
    Ok(after.saturating_sub(before) as f64 / n.max(1) as f64)
}

/// Opens `n` connections that each send the header of a push frame as large
/// as the server accepts, and 10 bytes of its body, then hold.
pub async fn half_sent_frames(daemon: &Daemon, n: usize, held: &mut Held) -> Result<()> {
    let addr = tcp_addr(daemon)?;
    for i in 0..n {
        // Sources after the idle connections' ones.
        let (mut stream, max_frame) = hello(source(PER_PEER * 10 + i), addr).await?;
        let mut header = Vec::with_capacity(15);
        header.extend_from_slice(&max_frame.to_le_bytes());
        header.push(0x02); // push
        header.extend_from_slice(&[0u8; 10]);
        stream.write_all(&header).await?;
        held.connections.push(stream);
    }
    Ok(())
}

/// Registers shuffles of 10,000 maps x 50,000 partitions, `per_app` per
/// app (64 calls at a time), until the server refuses one (a limit) or
/// `most` are registered. Returns (shuffles, apps, refusal, seconds).
pub async fn registrations(
    client: &RemoteShuffle,
    per_app: u32,
    most: usize,
) -> Result<(usize, usize, Option<String>, f64)> {
    let spec = ShuffleSpec::new(10_000, 50_000, ShuffleMode::Blocking)?;
    let started = Instant::now();
    let (mut count, mut apps) = (0, 0);
    let mut refusal = None;
    while count < most && refusal.is_none() {
        let app = AppId::new(format!("hostile-{apps}"))?;
        apps += 1;
        let mut set = tokio::task::JoinSet::new();
        for s in 0..per_app {
            let (client, app) = (client.clone(), app.clone());
            set.spawn(async move { client.register_shuffle(&app, ShuffleId(s), spec).await });
            if set.len() >= 64 {
                if let Some(r) = set.join_next().await {
                    tally(r?, &mut count, &mut refusal);
                }
            }
        }
        while let Some(r) = set.join_next().await {
            tally(r?, &mut count, &mut refusal);
        }
    }
    Ok((count, apps, refusal, started.elapsed().as_secs_f64()))
}

fn tally<T>(r: Result<T, shuffle_client::ClientError>, count: &mut usize, refusal: &mut Option<String>) {
    match r {
        Ok(_) => *count += 1,
        Err(e) => {
            refusal.get_or_insert(e.to_string());
        }
    }
}
