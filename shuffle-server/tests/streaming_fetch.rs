//! Streaming fetches (pipelined, hybrid) over real TCP: a reader waits for
//! slow producers past the client's request timeout, and bad fetches get
//! typed errors while the connection and other clients keep working.

mod common;

use std::time::Duration;

use anyhow::{bail, ensure, Result};
use common::{within, TestServer, IO_TIMEOUT};
use protocol::frame::{FetchRequest, Frame};
use protocol::{AppId, MapId, MapRange, PartitionId, ServiceError, ShuffleId, ShuffleMode, ShuffleSpec};
use shuffle_client::{
    ClientError, RemoteOptions, RemoteShuffle, ShuffleClient, ShuffleReader, ShuffleWriter, WriterOptions,
};

async fn client(server: &TestServer, request_timeout: Duration) -> Result<RemoteShuffle> {
    let url = format!("tcp://{}", server.server.addrs.tcp).parse()?;
    let options = RemoteOptions {
        request_timeout,
        ..RemoteOptions::default()
    };
    Ok(RemoteShuffle::connect(&[url], options).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_fetch_waits_past_the_request_timeout() -> Result<()> {
    let server = TestServer::start_with(|c| c.stream_keepalive = Duration::from_millis(50)).await?;
    let timeout = Duration::from_millis(300);
    let c = client(&server, timeout).await?;
    let app = AppId::new("slow-producer")?;
    let spec = ShuffleSpec::new(1, 1, ShuffleMode::Pipelined)?;
    let handle = c.register_shuffle(&app, ShuffleId(1), spec).await?;
    let mut reader = c.open_reader(&handle, PartitionId(0), handle.all_maps()).await?;
    let producer = async {
        // The producer is slower than the reader's request timeout: the
        // time passing is what is tested here.
        tokio::time::sleep(timeout * 4).await;
        let mut w = c
            .open_writer(
                &handle,
                MapId(0),
                protocol::AttemptId(0),
                WriterOptions::default(),
            )
            .await?;
        w.write(PartitionId(0), b"late but fine").await?;
        w.commit().await?;
        anyhow::Ok(())
    };
    let consumer = async {
        let mut got = Vec::new();
        while let Some(batch) = reader.next_batch().await? {
            for r in batch {
                got.push(r?.to_vec());
            }
        }
        anyhow::Ok(got)
    };
    let (p, got) = within(IO_TIMEOUT * 2, "slow stream", async {
        tokio::join!(producer, consumer)
    })
    .await?;
    p?;
    ensure!(got? == vec![b"late but fine".to_vec()]);
    Ok(())
}

fn fetch(request_id: u64, app: &str, partition: u32, resume_from: u64, shuffle: u32) -> Result<Frame> {
    Ok(Frame::Fetch(FetchRequest {
        request_id,
        app: AppId::new(app)?,
        shuffle: ShuffleId(shuffle),
        partition: PartitionId(partition),
        maps: MapRange::new(MapId(0), MapId(1))?,
        resume_from,
    }))
}

async fn expect_error(conn: &mut common::DataConn, request_id: u64) -> Result<ServiceError> {
    match conn.reader.next().await? {
        Frame::Error(e) if e.request_id == request_id => Ok(e.error),
        other => bail!("expected an error for request {request_id}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_streaming_fetches_get_typed_errors_and_others_keep_working() -> Result<()> {
    let server = TestServer::start().await?;
    let c = client(&server, Duration::from_secs(10)).await?;
    let app = AppId::new("bad-fetch")?;
    let spec = ShuffleSpec::new(1, 2, ShuffleMode::Pipelined)?;
    let handle = c.register_shuffle(&app, ShuffleId(1), spec).await?;
    let mut conn = server.data().await?;
    conn.send(&fetch(1, "bad-fetch", 0, 3, 1)?).await?;
    match expect_error(&mut conn, 1).await? {
        ServiceError::Malformed { reason } => ensure!(reason.contains("resume"), "{reason}"),
        other => bail!("resume_from on pipelined: {other:?}"),
    }
    conn.send(&fetch(2, "bad-fetch", 9, 0, 1)?).await?;
    ensure!(matches!(
        expect_error(&mut conn, 2).await?,
        ServiceError::PartitionOutOfRange {
            num_partitions: 2,
            ..
        }
    ));
    conn.send(&fetch(3, "bad-fetch", 0, 0, 7)?).await?;
    ensure!(matches!(
        expect_error(&mut conn, 3).await?,
        ServiceError::UnknownShuffle { .. }
    ));
    // The same connection, and another client, keep working.
    conn.send(&fetch(4, "bad-fetch", 1, 0, 1)?).await?;
    match conn.reader.next().await? {
        Frame::FetchBlocks(f) if f.request_id == 4 && f.blocks.is_empty() => {}
        other => bail!("expected the attach frame, got {other:?}"),
    }
    let mut w = c
        .open_writer(
            &handle,
            MapId(0),
            protocol::AttemptId(0),
            WriterOptions::default(),
        )
        .await?;
    w.write(PartitionId(0), b"fine").await?;
    w.write(PartitionId(1), b"also fine").await?;
    let mut reader = c.open_reader(&handle, PartitionId(0), handle.all_maps()).await?;
    w.commit().await?;
    let batch = reader.next_batch().await?;
    ensure!(batch.is_some());
    ensure!(reader.next_batch().await?.is_none());
    let mut raw_blocks = 0;
    loop {
        match conn.reader.next().await? {
            Frame::FetchBlocks(f) => raw_blocks += f.blocks.len(),
            Frame::FetchEnd(end) if end.request_id == 4 => {
                ensure!(end.total_blocks == 1 && raw_blocks == 1);
                break;
            }
            other => bail!("unexpected {other:?}"),
        }
    }
    // A second reader of consumed pipelined data: DataGone, typed.
    ensure!(matches!(
        c.open_reader(&handle, PartitionId(0), handle.all_maps()).await,
        Err(ClientError::DataGone { .. })
    ));
    Ok(())
}

/// The value of `rss_spill_bytes_total{mode="MODE"}`.
fn spilled(text: &str, mode: &str) -> f64 {
    let label = format!("rss_spill_bytes_total{{mode=\"{mode}\"}}");
    text.lines()
        .find(|l| l.starts_with(&label))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hybrid_disk_writes_are_counted_by_mode() -> Result<()> {
    let server = TestServer::start_with(|c| c.spill_after = Duration::from_millis(20)).await?;
    let c = client(&server, IO_TIMEOUT).await?;
    let app = AppId::new("spills")?;
    let record = vec![7u8; 1000];
    for (id, mode) in [
        (1, ShuffleMode::Hybrid(protocol::SpillStrategy::Full)),
        (2, ShuffleMode::Hybrid(protocol::SpillStrategy::Selective)),
    ] {
        let handle = c
            .register_shuffle(&app, ShuffleId(id), ShuffleSpec::new(1, 1, mode)?)
            .await?;
        let mut w = c
            .open_writer(
                &handle,
                MapId(0),
                protocol::AttemptId(0),
                WriterOptions::default(),
            )
            .await?;
        for _ in 0..100 {
            w.write(PartitionId(0), &record).await?;
        }
        w.commit().await?;
    }
    // Hybrid-full wrote every block at once; hybrid-selective spills what
    // nobody read within `spill_after`; the counters follow at the next
    // housekeeping tick.
    let text = within(IO_TIMEOUT, "spill counters", async {
        loop {
            let text = server.metrics().await?;
            if spilled(&text, "hybrid-full") > 0.0 && spilled(&text, "hybrid-selective") > 0.0 {
                return anyhow::Ok(text);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await??;
    ensure!(spilled(&text, "pipelined") == 0.0, "pipelined never writes");
    ensure!(spilled(&text, "blocking") == 0.0, "no blocking shuffle here");
    Ok(())
}
