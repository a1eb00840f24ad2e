//! Clients that hold what they should not: half-sent frames, idle
//! connections, too many connections, registrations of any size. Each gets
//! a typed refusal or is cut off in bounded time; a healthy job alongside
//! runs to the end. Hostile peers connect from other loopback addresses
//! (127.0.0.2 and up) so per-peer limits never throttle the healthy job.

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use bytes::BufMut;
use common::*;
use protocol::frame::Frame;
use protocol::net::proto::RegisterShuffleRequest;
use protocol::{AppId, AttemptId, MapId, PartitionId, ServiceError, ShuffleId, ShuffleMode, ShuffleSpec};
use shuffle_client::{
    RemoteOptions, RemoteShuffle, ShuffleClient, ShuffleReader, ShuffleWriter, WriterOptions,
};

const TAG_PUSH: u8 = 0x02;

fn peer(n: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, n])
}

/// The header of a push frame claiming `len` bytes, and `sent` bytes of it.
fn half_sent_push(len: u32, sent: usize) -> Vec<u8> {
    let mut out = Vec::new();
    out.put_u32_le(len);
    out.put_u8(TAG_PUSH);
    out.extend(std::iter::repeat_n(0u8, sent));
    out
}

/// A whole job through the real client: one map writes `bytes` over 8
/// partitions, commits, and every partition reads back exactly.
async fn healthy_job(server: &shuffle_server::LocalServer, app: &str, bytes: usize) -> Result<()> {
    let client = RemoteShuffle::connect_str(&server.tcp_url(), RemoteOptions::default()).await?;
    let app = AppId::new(app)?;
    let spec = ShuffleSpec::new(1, 8, ShuffleMode::Blocking)?;
    let handle = client.register_shuffle(&app, ShuffleId(1), spec).await?;
    let mut writer = client
        .open_writer(&handle, MapId(0), AttemptId(0), WriterOptions::default())
        .await?;
    let record = vec![0x5au8; 1000];
    let records = bytes / record.len();
    for i in 0..records {
        writer.write(PartitionId((i % 8) as u32), &record).await?;
    }
    writer.commit().await?;
    let mut read = 0;
    for p in 0..8 {
        let mut reader = client
            .open_reader(&handle, PartitionId(p), protocol::MapRange::all(1))
            .await?;
        while let Some(batch) = reader.next_batch().await? {
            for r in batch {
                ensure!(r?.as_ref() == record.as_slice());
                read += 1;
            }
        }
    }
    ensure!(read == records, "read {read} of {records} records");
    Ok(())
}

/// The case found by probing: with a 256 MiB budget, five connections each
/// claim a 60 MiB frame, send 10 bytes and hold. They hold only what they
/// sent: a 64 MiB job alongside runs to the end, the wait shows as
/// backpressure, and after `frame_timeout` the holders are told `Busy` and
/// closed, their credit back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_frames_hold_only_what_they_sent_for_a_bounded_time() -> Result<()> {
    let ts = TestServer::start_with(|c| {
        c.memory_budget = 256 << 20;
        c.frame_timeout = Duration::from_secs(4);
    })
    .await?;
    let mut holders = Vec::new();
    for n in 2..7 {
        let mut conn = DataConn::connect_from(peer(n), ts.server.addrs.tcp).await?;
        conn.send_raw(&half_sent_push(60 << 20, 10)).await?;
        holders.push(conn);
    }
    let started = Instant::now();
    within(
        Duration::from_secs(30),
        "the healthy job",
        healthy_job(&ts.server, "healthy", 64 << 20),
    )
    .await??;
    let took = started.elapsed();
    let text = ts.metrics().await?;
    ensure!(
        metric_or_zero(&text, "rss_backpressure_seconds_total") > 0.0,
        "the wait for the held credit is counted"
    );
    // Within a stall window of their credit, the holders keep only their
    // 10 bytes each while they wait.
    eventually(Duration::from_secs(3), "held credit returned", || async {
        let held = metric_or_zero(&ts.metrics().await?, "rss_buffer_bytes");
        Ok(held < 100.0)
    })
    .await?;
    for (i, conn) in holders.iter_mut().enumerate() {
        let frame = within(
            Duration::from_secs(10),
            "the holder's refusal",
            conn.reader.next(),
        )
        .await??;
        match frame {
            Frame::Error(e) => ensure!(
                matches!(e.error, ServiceError::Busy { ref reason } if reason.contains("not received within")),
                "holder {i}: {:?}",
                e.error
            ),
            other => bail!("holder {i}: expected Busy, got {other:?}"),
        }
        conn.reader.expect_closed().await?;
    }
    let text = ts.metrics().await?;
    ensure!(metric_or_zero(&text, "rss_buffer_bytes") == 0.0);
    ensure!(metric_or_zero(&text, r#"rss_rejected_requests_total{reason="busy"}"#) >= 5.0);
    eprintln!("healthy 64 MiB job beside 5 x 60 MiB half-sent frames: {took:?}");
    Ok(())
}

/// A stalled frame that resumes gets the rest of its credit back if it is
/// free, and is served.
#[tokio::test]
async fn a_stalled_frame_that_resumes_is_served() -> Result<()> {
    let ts = TestServer::start_with(|c| c.frame_stall = Duration::from_millis(100)).await?;
    let mut control = ts.control().await?;
    register_shuffle(&mut control, "stall", 1, 1, 1).await?;
    let mut conn = ts.data().await?;
    let blocks = vec![block(1, 0, 0, 0, 300_000)?];
    let frame = protocol::frame::FrameCodec::default().encode_to_bytes(&push_frame(
        1,
        "stall",
        1,
        blocks.clone(),
    )?)?;
    conn.send_raw(&frame[..1000]).await?;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let held = metric_or_zero(&ts.metrics().await?, "rss_buffer_bytes");
    ensure!(held < 2000.0, "a stalled frame holds what it sent, not {held}");
    conn.send_raw(&frame[1000..]).await?;
    match conn.reader.next().await? {
        Frame::PushAck(ack) => ensure!(ack.stored == 1, "{ack:?}"),
        other => bail!("expected an ack, got {other:?}"),
    }
    let reply = commit(&mut control, "stall", 1, 0, &[(0, 1)]).await?;
    ensure!(reply.sealed);
    let read = conn
        .fetch(2, "stall", 1, 0, 1)
        .await?
        .map_err(|e| anyhow::anyhow!("{:?}", e.error))?;
    ensure!(read == blocks);
    Ok(())
}

/// Connections that said hello and then nothing are closed after
/// `idle_timeout`, and so is one that sent half a frame header after
/// `frame_timeout`; a connection with a streaming fetch waiting is busy, not
/// idle, and gets its blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slowloris_connections_are_closed_busy_ones_are_not() -> Result<()> {
    let ts = TestServer::start_with(|c| {
        c.idle_timeout = Duration::from_millis(600);
        c.frame_timeout = Duration::from_millis(600);
    })
    .await?;
    let mut idle = Vec::new();
    for _ in 0..50 {
        idle.push(DataConn::connect_from(peer(2), ts.server.addrs.tcp).await?);
    }
    let mut slow = DataConn::connect_from(peer(3), ts.server.addrs.tcp).await?;
    slow.send_raw(&[0x10, 0x00]).await?;
    // A pipelined reader attached before anything is pushed.
    let mut control = ts.control().await?;
    within(
        IO_TIMEOUT,
        "register",
        control.register_shuffle(RegisterShuffleRequest {
            app_id: "busy".into(),
            shuffle_id: 1,
            num_maps: 1,
            num_partitions: 1,
            mode: u32::from(ShuffleMode::Pipelined.code()),
            ..Default::default()
        }),
    )
    .await??;
    let mut reader = ts.data().await?;
    reader.send(&fetch_frame(1, "busy", 1, 0, 1)?).await?;
    match reader.reader.next().await? {
        Frame::FetchBlocks(f) if f.blocks.is_empty() => {}
        other => bail!("expected the attach frame, got {other:?}"),
    }
    let mut closed = 0;
    for conn in &mut idle {
        within(Duration::from_secs(5), "idle close", conn.reader.expect_closed()).await??;
        closed += 1;
    }
    ensure!(closed == 50);
    match within(Duration::from_secs(5), "slow header", slow.reader.next()).await?? {
        Frame::Error(e) => ensure!(matches!(e.error, ServiceError::Busy { .. }), "{:?}", e.error),
        other => bail!("expected Busy, got {other:?}"),
    }
    slow.reader.expect_closed().await?;
    // Well past the idle timeout, the reader's connection still works.
    let mut pusher = ts.data().await?;
    let blocks = vec![block(1, 0, 0, 0, 100)?];
    pusher.push_ok(9, "busy", 1, blocks.clone()).await?;
    let mut got = Vec::new();
    while got.is_empty() {
        match reader.reader.next().await? {
            Frame::FetchBlocks(f) => got.extend(f.blocks),
            other => bail!("unexpected {other:?}"),
        }
    }
    ensure!(got == blocks);
    let text = ts.metrics().await?;
    let open = metric(&text, r#"rss_open_connections{transport="tcp"}"#);
    ensure!(
        open == Some(2.0),
        "the reader and the pusher are open, not {open:?}"
    );
    Ok(())
}

/// Beyond `max_connections_per_peer`, a peer's next connection gets a
/// `LimitExceeded` error frame naming the limit and is closed; other peers,
/// and the same peer once it closed one, are served.
#[tokio::test]
async fn connections_beyond_the_per_peer_cap_are_refused_with_limit_exceeded() -> Result<()> {
    let ts = TestServer::start_with(|c| c.max_connections_per_peer = 8).await?;
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(DataConn::connect_from(peer(2), ts.server.addrs.tcp).await?);
    }
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind((peer(2), 0).into())?;
    let stream = socket.connect(ts.server.addrs.tcp).await?;
    let mut ninth = DataConn::from_stream(stream)?;
    match ninth.reader.next().await? {
        Frame::Error(e) => match e.error {
            ServiceError::LimitExceeded { limit, max, .. } => {
                ensure!(
                    limit.contains("max_connections_per_peer") && limit.contains("127.0.0.2"),
                    "{limit}"
                );
                ensure!(max == 8);
            }
            other => bail!("expected LimitExceeded, got {other:?}"),
        },
        other => bail!("expected an error frame, got {other:?}"),
    }
    ninth.reader.expect_closed().await?;
    round_trip(&ts.server, "other-peer", 1).await?;
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(50)).await;
    DataConn::connect_from(peer(2), ts.server.addrs.tcp).await?;
    let text = ts.metrics().await?;
    ensure!(metric_or_zero(&text, r#"rss_rejected_requests_total{reason="limit_exceeded"}"#) >= 1.0);
    Ok(())
}

async fn register(
    control: &mut Control,
    app: &str,
    shuffle: u32,
    maps: u32,
    partitions: u32,
) -> Result<Result<(), ServiceError>> {
    let reply = within(
        IO_TIMEOUT,
        "register",
        control.register_shuffle(RegisterShuffleRequest {
            app_id: app.into(),
            shuffle_id: shuffle,
            num_maps: maps,
            num_partitions: partitions,
            mode: 0,
            ..Default::default()
        }),
    )
    .await?;
    match reply {
        Ok(_) => Ok(Ok(())),
        Err(status) => {
            ensure!(status.code() == tonic::Code::ResourceExhausted, "{status:?}");
            Ok(Err(service_error(&status)?))
        }
    }
}

/// Registrations beyond a limit get `LimitExceeded` naming it; the shapes
/// the defaults must admit (10,000 maps x 50,000 partitions) are admitted,
/// and cost nothing until written.
#[tokio::test]
async fn registrations_beyond_a_limit_are_refused_naming_it() -> Result<()> {
    let ts = TestServer::start_with(|c| {
        c.max_apps = 3;
        c.max_shuffles_per_app = 2;
        c.max_shuffles = 5;
    })
    .await?;
    let mut control = ts.control().await?;
    let huge = register(&mut control, "a", 1, 1 << 20, 1 << 20).await?;
    match huge {
        Err(ServiceError::LimitExceeded {
            limit,
            max,
            requested,
        }) => {
            ensure!(limit == "max_maps_x_partitions" && max == 1_000_000_000 && requested == 1 << 40);
        }
        other => bail!("expected LimitExceeded, got {other:?}"),
    }
    register(&mut control, "a", 1, 10_000, 50_000)
        .await?
        .map_err(anyhow::Error::new)?;
    register(&mut control, "a", 2, 10_000, 50_000)
        .await?
        .map_err(anyhow::Error::new)?;
    match register(&mut control, "a", 3, 1, 1).await? {
        Err(ServiceError::LimitExceeded { limit, .. }) => ensure!(limit == "max_shuffles_per_app"),
        other => bail!("expected LimitExceeded, got {other:?}"),
    }
    register(&mut control, "b", 1, 1, 1)
        .await?
        .map_err(anyhow::Error::new)?;
    register(&mut control, "c", 1, 1, 1)
        .await?
        .map_err(anyhow::Error::new)?;
    match register(&mut control, "d", 1, 1, 1).await? {
        Err(ServiceError::LimitExceeded { limit, max, .. }) => ensure!(limit == "max_apps" && max == 3),
        other => bail!("expected LimitExceeded, got {other:?}"),
    }
    register(&mut control, "c", 2, 1, 1)
        .await?
        .map_err(anyhow::Error::new)?;
    match register(&mut control, "b", 2, 1, 1).await? {
        Err(ServiceError::LimitExceeded { limit, .. }) => ensure!(limit == "max_shuffles"),
        other => bail!("expected LimitExceeded, got {other:?}"),
    }
    // Nothing was written: no folder exists yet for the big shuffles.
    ensure!(!app_dir_exists(&ts.dirs, "a"));
    let text = ts.metrics().await?;
    ensure!(
        metric_or_zero(&text, r#"rss_rejected_requests_total{reason="limit_exceeded"}"#) == 4.0,
        "{text}"
    );
    // The admitted big shuffle works.
    let mut conn = ts.data().await?;
    conn.push_ok(1, "a", 1, vec![block(1, 9_999, 49_999, 0, 100)?])
        .await?;
    let status = shuffle_status(&mut control, "a", 1)
        .await?
        .map_err(|s| anyhow::anyhow!("{s:?}"))?;
    ensure!(status.stored_bytes > 0 && status.num_partitions == 50_000);
    Ok(())
}
