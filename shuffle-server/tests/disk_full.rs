//! A data directory on a file system that really fills up (a small tmpfs,
//! mounted by the test: it needs root, and says why it skipped otherwise).
//!
//! Found by probing: one job filling the disk used to corrupt the committed
//! data of a second job writing there at the same time (a failed append was
//! cut back, but the next block landed past a hole of zeros). Now a failed
//! append leaves every file and index as before: whatever the server
//! acknowledged reads back byte for byte; the full disk is logged, counted
//! and reported, and takes no new partitions.

mod common;

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::*;
use protocol::{
    AppId, AttemptId, Block, CommitManifest, MapId, MapRange, PartitionId, ShuffleId, ShuffleMode,
    ShuffleSpec,
};
use shuffle_client::{RemoteOptions, RemoteShuffle, ShuffleClient, ShuffleHandle, ShuffleReader};
use shuffle_server::LocalServer;

fn options() -> RemoteOptions {
    RemoteOptions {
        // The disk stays full: do not retry failed appends here.
        max_retries: 0,
        retry_window: Duration::from_secs(1),
        ..RemoteOptions::default()
    }
}

/// Blocks of map 0 of `shuffle`: `count` per partition, round robin.
fn blocks(shuffle: u32, partitions: u32, count: u32, len: usize) -> Result<Vec<Block>> {
    let mut out = Vec::new();
    for seq in 0..count {
        for p in 0..partitions {
            out.push(block(shuffle, 0, p, seq, len)?);
        }
    }
    Ok(out)
}

async fn read_partition(client: &RemoteShuffle, handle: &ShuffleHandle, p: u32) -> Result<Vec<Vec<u8>>> {
    let mut reader = client
        .open_reader(handle, PartitionId(p), MapRange::all(1))
        .await?;
    let mut out = Vec::new();
    while let Some(batch) = reader.next_batch().await? {
        for r in batch {
            out.push(r?.to_vec());
        }
    }
    Ok(out)
}

fn record_of(b: &Block) -> Result<Vec<u8>> {
    let mut records = b.records()?;
    let first = records.next().context("one record")??;
    Ok(first.to_vec())
}

/// A small shuffle and a big one write to the same nearly full directory
/// at the same time. The big one runs out of space; every small block the
/// server acknowledged, and the small blocks pushed again once the big
/// shuffle is gone, read back byte for byte.
async fn fill_and_check(server: &LocalServer, full_dir: &Path, dirs: usize) -> Result<()> {
    let client = RemoteShuffle::connect_str(&server.tcp_url(), options()).await?;
    let app = AppId::new("disk-full")?;
    let small_spec = ShuffleSpec::new(1, 4, ShuffleMode::Blocking)?;
    let big_spec = ShuffleSpec::new(1, 4, ShuffleMode::Blocking)?;
    let small = client.register_shuffle(&app, ShuffleId(1), small_spec).await?;
    let big = client.register_shuffle(&app, ShuffleId(2), big_spec).await?;
    let small_blocks = blocks(1, 4, 40, 3000)?;
    let big_blocks = blocks(2, 4, 64, 200_000)?;
    // Every partition of both shuffles is placed first.
    client.push_blocks(&small, small_blocks[..4].to_vec()).await?;
    client.push_blocks(&big, big_blocks[..4].to_vec()).await?;
    let mut unacked: Vec<Block> = Vec::new();
    let mut big_failure = None;
    let mut big_iter = big_blocks[4..].iter();
    for b in &small_blocks[4..] {
        // Two big blocks for every small one, until the big one fails.
        for _ in 0..2 {
            if big_failure.is_some() {
                break;
            }
            if let Some(big_block) = big_iter.next() {
                if let Err(e) = client.push_blocks(&big, vec![big_block.clone()]).await {
                    big_failure = Some(e);
                }
            }
        }
        if client.push_blocks(&small, vec![b.clone()]).await.is_err() {
            unacked.push(b.clone());
        }
    }
    let failure = big_failure.context("the big shuffle should have filled the disk")?;
    ensure!(
        failure.to_string().contains("No space left on device") && failure.is_retryable(),
        "{failure}"
    );
    let text = metrics(server.addrs.http).await?;
    let label = full_dir.canonicalize()?.display().to_string();
    let no_space = metric_or_zero(
        &text,
        &format!(r#"rss_disk_errors_total{{disk="{label}",kind="no_space"}}"#),
    );
    // Counters are exported by housekeeping (every 50 ms here).
    let no_space = if no_space > 0.0 {
        no_space
    } else {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let text = metrics(server.addrs.http).await?;
        metric_or_zero(
            &text,
            &format!(r#"rss_disk_errors_total{{disk="{label}",kind="no_space"}}"#),
        )
    };
    ensure!(no_space >= 1.0, "no_space errors counted for {label}");
    let (code, body) = http_get(server.addrs.http, "/readyz").await?;
    ensure!(body.contains(&label) && body.contains("not accepting"), "{body}");
    let mut control = protocol::net::proto::shuffle_control_client::ShuffleControlClient::connect(format!(
        "http://{}",
        server.addrs.grpc
    ))
    .await?;
    let status = control
        .server_status(protocol::net::proto::Empty {})
        .await?
        .into_inner();
    let disk = status
        .disks
        .iter()
        .find(|d| d.path == label)
        .context("the full dir in the server status")?;
    ensure!(!disk.accepting && !disk.reason.is_empty(), "{disk:?}");
    if dirs == 1 {
        ensure!(code == 503, "no directory can take data: {code} {body}");
    } else {
        ensure!(code == 200, "another directory takes data: {code} {body}");
    }

    // Space comes back; what failed is pushed again.
    client.unregister_shuffle(&big).await?;
    eventually(Duration::from_secs(5), "the disk accepts again", || async {
        Ok(http_get(server.addrs.http, "/readyz").await?.0 == 200)
    })
    .await?;
    if !unacked.is_empty() {
        client.push_blocks(&small, unacked).await?;
    }
    let manifest = CommitManifest::from_dense(&[40; 4]);
    ensure!(
        client
            .commit_map(&small, MapId(0), AttemptId(0), manifest)
            .await?
            .sealed
    );
    for p in 0..4u32 {
        let want: Vec<Vec<u8>> = small_blocks
            .iter()
            .filter(|b| b.id().partition.0 == p)
            .map(record_of)
            .collect::<Result<_>>()?;
        let got = read_partition(&client, &small, p).await?;
        ensure!(got == want, "partition {p} reads back byte for byte");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_loses_nothing_the_server_acknowledged() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let small = tmp.path().join("small");
    let Some(_mount) = Tmpfs::mount(&small, "6m")? else {
        return Ok(());
    };
    let mut config = test_config(vec![small.clone()]);
    config.disk_reserve = 1 << 20;
    let server = LocalServer::start(config).await?;
    fill_and_check(&server, &small, 1).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_another_dir_new_partitions_go_there_and_the_server_stays_ready() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let small = tmp.path().join("small");
    let Some(_mount) = Tmpfs::mount(&small, "6m")? else {
        return Ok(());
    };
    let roomy = tmp.path().join("roomy");
    // The small disk is listed first: new partitions prefer it by hash.
    let mut config = test_config(vec![small.clone(), roomy.clone()]);
    config.disk_reserve = 1 << 20;
    let server = LocalServer::start(config).await?;
    fill_and_check(&server, &small, 2).await?;
    // Something else fills the small disk below its reserve; once probed,
    // a fresh shuffle lands wholly on the roomy directory.
    let client = RemoteShuffle::connect_str(&server.tcp_url(), options()).await?;
    let app = AppId::new("placement")?;
    let filler = vec![0xeeu8; 5 << 20];
    let _ = std::fs::write(small.join("filler"), &filler);
    let label = small.canonicalize()?.display().to_string();
    eventually(Duration::from_secs(5), "the small disk is seen full", || async {
        let (code, body) = http_get(server.addrs.http, "/readyz").await?;
        // Under its reserve, or not even writable (the probe's own file).
        let line = body.lines().find(|l| l.starts_with(&label)).unwrap_or_default();
        Ok(code == 200 && line.contains("not accepting"))
    })
    .await?;
    let fresh = client
        .register_shuffle(
            &app,
            ShuffleId(2),
            ShuffleSpec::new(1, 16, ShuffleMode::Blocking)?,
        )
        .await?;
    client.push_blocks(&fresh, blocks(2, 16, 1, 1000)?).await?;
    let on_small = small.join("placement").join("shuffle-2");
    ensure!(!on_small.exists(), "no new partition on the full disk");
    let on_roomy = roomy.join("placement").join("shuffle-2");
    ensure!(std::fs::read_dir(&on_roomy)?.count() == 16);
    Ok(())
}
