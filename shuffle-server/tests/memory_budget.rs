//! Promise 3: the server buffers at most its memory budget. Writers beyond
//! it are slowed (backpressure) but never fail; a reader that stops reading
//! pins a bounded share and does not stall anyone else; a frame over the
//! limit is refused.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::*;
use protocol::frame::Frame;
use tokio::task::JoinHandle;

const BUDGET: u64 = 2 << 20;
const MAX_FRAME: u32 = 1 << 20;
/// A block that, alone in a push, nearly fills a frame.
const BLOCK_LEN: usize = 900 << 10;

async fn budget_server() -> Result<TestServer> {
    TestServer::start_with(|c| {
        c.memory_budget = BUDGET;
        c.max_frame_len = MAX_FRAME;
    })
    .await
}

/// Samples `rss_buffer_bytes` every few milliseconds until `stop`; returns
/// the largest value seen and how many samples were taken.
fn sample_buffer(http: SocketAddr, stop: Arc<AtomicBool>) -> JoinHandle<Result<(f64, usize)>> {
    tokio::spawn(async move {
        let (mut max, mut samples) = (0.0f64, 0usize);
        while !stop.load(Ordering::Acquire) {
            let text = metrics(http).await?;
            let limit = metric(&text, "rss_buffer_limit_bytes");
            ensure!(
                limit == Some(BUDGET as f64),
                "rss_buffer_limit_bytes is {limit:?}"
            );
            let held = metric(&text, "rss_buffer_bytes").context("rss_buffer_bytes")?;
            max = max.max(held);
            samples += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok((max, samples))
    })
}

/// Pushes `frames` one-block frames for `map` as fast as the socket takes
/// them while another task collects the acks.
async fn push_flat_out(addr: SocketAddr, map: u32, frames: u32, partitions: u32) -> Result<()> {
    let DataConn {
        mut reader,
        mut writer,
    } = DataConn::connect(addr).await?;
    let acks = tokio::spawn(async move {
        for i in 0..frames {
            match reader.next().await? {
                Frame::PushAck(a) if a.stored == 1 && a.duplicates == 0 => {}
                other => anyhow::bail!("frame {i} of map {map}: expected an ack, got {other:?}"),
            }
        }
        anyhow::Ok(())
    });
    for i in 0..frames {
        let b = block(1, map, i % partitions, i / partitions, BLOCK_LEN)?;
        writer.send(&push_frame(u64::from(i), "app", 1, vec![b])?).await?;
    }
    within(Duration::from_secs(20), "acks", acks).await???;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pushes_are_slowed_not_refused_and_stay_within_budget() -> Result<()> {
    const CONNS: u32 = 8;
    const FRAMES: u32 = 20;
    const PARTITIONS: u32 = 4;
    let ts = budget_server().await?;
    let mut c = ts.control().await?;
    register_shuffle(&mut c, "app", 1, CONNS, PARTITIONS).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_buffer(ts.server.addrs.http, stop.clone());
    let mut pushers = tokio::task::JoinSet::new();
    for map in 0..CONNS {
        pushers.spawn(push_flat_out(ts.server.addrs.tcp, map, FRAMES, PARTITIONS));
    }
    let mut outcome = Ok(());
    while let Some(joined) = pushers.join_next().await {
        if let Err(e) = joined.context("pusher panicked").and_then(|r| r) {
            outcome = Err(e);
        }
    }
    stop.store(true, Ordering::Release);
    let (max, samples) = sampler.await??;
    outcome?;
    ensure!(
        samples > 0 && max > 0.0,
        "{samples} samples never saw a buffered byte"
    );
    ensure!(
        max <= BUDGET as f64,
        "rss_buffer_bytes reached {max}, over the {BUDGET} budget"
    );

    let text = ts.metrics().await?;
    let waited = metric_or_zero(&text, "rss_backpressure_seconds_total");
    ensure!(waited > 0.0, "no backpressure with 8 writers on a 2 MiB budget");
    ensure!(
        metric_or_zero(&text, r#"rss_push_requests_total{result="ok"}"#) == f64::from(CONNS * FRAMES),
        "every push counted as ok"
    );
    eventually(Duration::from_secs(2), "buffers released", || async {
        Ok(metric(&ts.metrics().await?, "rss_buffer_bytes") == Some(0.0))
    })
    .await?;

    // Everything arrived: commit every map and read one partition back.
    let per_partition = FRAMES / PARTITIONS;
    let counts: Vec<(u32, u32)> = (0..PARTITIONS).map(|p| (p, per_partition)).collect();
    for map in 0..CONNS {
        commit(&mut c, "app", 1, map, &counts).await?;
    }
    let mut conn = ts.data().await?;
    let read = conn.fetch(1, "app", 1, 2, CONNS).await?.map_err(|e| e.error)?;
    ensure!(
        read.len() as u32 == CONNS * per_partition,
        "read {} blocks",
        read.len()
    );
    let expected = block(1, 3, 2, 1, BLOCK_LEN)?;
    ensure!(
        read[(3 * per_partition + 1) as usize] == expected,
        "partition 2 does not hold map 3's block 1 where it belongs"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_does_not_stall_other_clients() -> Result<()> {
    const BLOCKS: u32 = 24;
    let ts = budget_server().await?;
    let mut c = ts.control().await?;
    register_shuffle(&mut c, "big", 1, 1, 1).await?;
    let mut conn = ts.data().await?;
    for seq in 0..BLOCKS {
        conn.push_ok(u64::from(seq), "big", 1, vec![block(1, 0, 0, seq, BLOCK_LEN)?])
            .await?;
    }
    ensure!(commit(&mut c, "big", 1, 0, &[(0, BLOCKS)]).await?.sealed);
    let status = shuffle_status(&mut c, "big", 1).await??;
    ensure!(status.stored_bytes > 20 << 20, "{status:?}");

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_buffer(ts.server.addrs.http, stop.clone());
    // Ask for ~21 MiB and never read a byte of it.
    let mut stalled = ts.data().await?;
    stalled.send(&fetch_frame(1, "big", 1, 0, 1)?).await?;
    eventually(Duration::from_secs(3), "the stalled fetch starts", || async {
        let text = ts.metrics().await?;
        Ok(metric_or_zero(&text, r#"rss_fetch_bytes_total{transport="tcp"}"#) > 0.0)
    })
    .await?;
    // Let it fill every buffer it can.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let others = async {
        round_trip(&ts.server, "other", 1)
            .await
            .context("first session")?;
        round_trip(&ts.server, "other", 2).await.context("second session")
    };
    let others = within(Duration::from_secs(10), "another client's push and fetch", others).await;
    stop.store(true, Ordering::Release);
    let (max, samples) = sampler.await??;
    others??;
    ensure!(samples > 0, "no metric samples");
    ensure!(max <= BUDGET as f64, "rss_buffer_bytes reached {max}");

    // Closing the stalled connection gives its credit back.
    drop(stalled);
    eventually(Duration::from_secs(3), "credit returned", || async {
        Ok(metric(&ts.metrics().await?, "rss_buffer_bytes") == Some(0.0))
    })
    .await
}

#[tokio::test]
async fn a_push_frame_over_the_limit_closes_the_connection_with_an_error() -> Result<()> {
    let ts = budget_server().await?;
    let mut c = ts.control().await?;
    register_shuffle(&mut c, "app", 1, 1, 1).await?;
    let before = metric_or_zero(
        &ts.metrics().await?,
        r#"rss_rejected_requests_total{reason="malformed"}"#,
    );
    let mut conn = ts.data().await?;
    let big = push_frame(1, "app", 1, vec![block(1, 0, 0, 0, (3 << 20) / 2)?])?;
    let bytes = protocol::frame::FrameCodec::default().encode_to_bytes(&big)?;
    let e = conn.expect_rejected_after(&bytes).await?;
    ensure!(
        e.error
            .to_string()
            .contains(&format!("exceeds the maximum of {MAX_FRAME} bytes")),
        "{e:?}"
    );
    let text = ts.metrics().await?;
    let after = metric_or_zero(&text, r#"rss_rejected_requests_total{reason="malformed"}"#);
    ensure!(after == before + 1.0, "malformed rejections {before} -> {after}");
    ensure!(metric(&text, "rss_buffer_bytes") == Some(0.0), "no credit taken");
    // Nothing of it was stored, and the server serves others.
    let status = shuffle_status(&mut c, "app", 1).await??;
    ensure!(status.stored_bytes == 0, "{status:?}");
    round_trip(&ts.server, "other", 1).await
}

/// The client sizes its pushes to the frame limit the server announces in
/// its hello: with the default 4 MiB push batch, every push here would be
/// refused as oversized.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_size_their_pushes_to_the_servers_frame_limit() -> Result<()> {
    use shuffle_client::{
        RemoteOptions, RemoteShuffle, ShuffleClient, ShuffleReader, ShuffleWriter, WriterOptions,
    };
    let ts = TestServer::start_with(|c| {
        c.memory_budget = BUDGET;
        c.max_frame_len = 64 << 10;
    })
    .await?;
    let url = format!("tcp://{}", ts.server.addrs.tcp).parse()?;
    let client = RemoteShuffle::connect(&[url], RemoteOptions::default()).await?;
    let app = protocol::AppId::new("small-frames")?;
    let spec = protocol::ShuffleSpec::new(1, 2, protocol::ShuffleMode::Blocking)?;
    let handle = client
        .register_shuffle(&app, protocol::ShuffleId(1), spec)
        .await?;
    let options = WriterOptions {
        block_size: 8 << 10,
        compress: false,
        ..WriterOptions::default()
    };
    let mut w = client
        .open_writer(&handle, protocol::MapId(0), protocol::AttemptId(0), options)
        .await?;
    let record = [5u8; 500];
    for i in 0..4000u32 {
        w.write(protocol::PartitionId(i % 2), &record).await?;
    }
    w.commit().await.context("every push fits 64 KiB")?;
    let mut records = 0;
    for p in 0..2 {
        let mut r = client
            .open_reader(&handle, protocol::PartitionId(p), handle.all_maps())
            .await?;
        while let Some(batch) = r.next_batch().await? {
            records += batch.count();
        }
    }
    ensure!(records == 4000, "read {records} records");
    Ok(())
}
