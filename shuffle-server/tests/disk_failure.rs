//! A data directory that fails is taken out of service: a directory
//! removed during a job, and a tmpfs remounted read-only during a job
//! (mounted by the test: it needs root, and says why it skipped otherwise;
//! `chmod` does not stop root). The failure is logged, counted and shown
//! (`rss_disk_healthy{disk} 0`, the server status, the `/readyz` body); no
//! new partition goes there; the partitions it held fail with the typed
//! `DiskFailed` error (data lost), also once the directory is back in
//! service. The other directory keeps serving.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use common::*;
use protocol::{AppId, CommitManifest, MapId, MapRange, PartitionId, ShuffleId, ShuffleMode, ShuffleSpec};
use shuffle_client::{
    ClientError, RemoteOptions, RemoteShuffle, ShuffleClient, ShuffleHandle, ShuffleReader,
};
use shuffle_server::LocalServer;

const PARTITIONS: u32 = 8;

fn options() -> RemoteOptions {
    RemoteOptions {
        max_retries: 0,
        retry_window: Duration::from_secs(1),
        ..RemoteOptions::default()
    }
}

/// The partitions of shuffle `shuffle` with a file under `dir`.
fn partitions_in(dir: &Path) -> Result<Vec<u32>> {
    let mut out = Vec::new();
    for entry in walk(dir)? {
        let name = entry
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        if let Some(p) = name
            .strip_prefix("partition-")
            .and_then(|n| n.strip_suffix(".data"))
        {
            out.push(p.parse()?);
        }
    }
    out.sort_unstable();
    Ok(out)
}

fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(walk(&path)?);
        } else {
            out.push(path);
        }
    }
    Ok(out)
}

async fn healthy(server: &LocalServer, dir: &Path) -> Result<Option<f64>> {
    let label = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let text = metrics(server.addrs.http).await?;
    Ok(metric(
        &text,
        &format!(r#"rss_disk_healthy{{disk="{}"}}"#, label.display()),
    ))
}

async fn read_all(client: &RemoteShuffle, handle: &ShuffleHandle, p: u32) -> Result<usize, ClientError> {
    let mut reader = client
        .open_reader(handle, PartitionId(p), MapRange::all(1))
        .await?;
    let mut n = 0;
    while let Some(batch) = reader.next_batch().await? {
        for r in batch {
            r?;
            n += 1;
        }
    }
    Ok(n)
}

fn is_disk_failed(e: &ClientError, dir: &Path) -> bool {
    matches!(e, ClientError::DiskFailed { dir: d, .. } if Path::new(d) == dir)
        && e.loses_data()
        && !e.is_retryable()
}

/// One map's first block in every partition (placing each), the dir
/// fails (`fail`), then: its partitions refuse pushes and reads with
/// `DiskFailed`, the others work, the failure is shown, a new shuffle goes
/// to the other directory only. `repair` brings the directory back: it is
/// healthy again and takes new partitions, the lost ones stay lost.
async fn fail_and_check(
    server: &LocalServer,
    failing: &Path,
    fail: impl FnOnce() -> Result<()>,
    repair: impl FnOnce() -> Result<()>,
) -> Result<()> {
    let failing = failing.canonicalize()?;
    let client = RemoteShuffle::connect_str(&server.tcp_url(), options()).await?;
    let app = AppId::new("disk-failure")?;
    let spec = ShuffleSpec::new(1, PARTITIONS, ShuffleMode::Blocking)?;
    let first = client.register_shuffle(&app, ShuffleId(1), spec).await?;
    let seq0: Vec<_> = (0..PARTITIONS)
        .map(|p| block(1, 0, p, 0, 500))
        .collect::<Result<_>>()?;
    client.push_blocks(&first, seq0).await?;
    let lost = partitions_in(&failing)?;
    ensure!(
        !lost.is_empty() && lost.len() < PARTITIONS as usize,
        "partitions spread over both dirs: {lost:?}"
    );

    fail()?;
    eventually(
        Duration::from_secs(10),
        "the failed dir is shown unhealthy",
        || async { Ok(healthy(server, &failing).await? == Some(0.0)) },
    )
    .await?;
    for p in 0..PARTITIONS {
        let pushed = client.push_blocks(&first, vec![block(1, 0, p, 1, 500)?]).await;
        match (lost.contains(&p), pushed) {
            (true, Err(e)) if is_disk_failed(&e, &failing) => {}
            (false, Ok(_)) => {}
            (lost, other) => bail!("partition {p} (lost: {lost}): push gave {other:?}"),
        }
    }
    let (code, body) = http_get(server.addrs.http, "/readyz").await?;
    ensure!(code == 200, "the other directory takes data: {code} {body}");
    ensure!(
        body.contains(&format!(
            "{}: not accepting new partitions (failed:",
            failing.display()
        )),
        "{body}"
    );
    let mut control = control(server).await?;
    let status = control
        .server_status(protocol::net::proto::Empty {})
        .await?
        .into_inner();
    let disk = status
        .disks
        .iter()
        .find(|d| Path::new(&d.path) == failing)
        .context("the failed dir in the server status")?;
    ensure!(
        !disk.healthy && !disk.accepting && disk.reason.contains("failed"),
        "{disk:?}"
    );

    // The map commits what it stored; the lost partitions cannot be read.
    let counts: Vec<u32> = (0..PARTITIONS)
        .map(|p| if lost.contains(&p) { 1 } else { 2 })
        .collect();
    client
        .commit_map(
            &first,
            MapId(0),
            protocol::AttemptId(0),
            CommitManifest::from_dense(&counts),
        )
        .await?;
    for p in 0..PARTITIONS {
        match (lost.contains(&p), read_all(&client, &first, p).await) {
            (true, Err(e)) if is_disk_failed(&e, &failing) => {}
            (false, Ok(2)) => {}
            (lost, other) => bail!("partition {p} (lost: {lost}): read gave {other:?}"),
        }
    }

    // A new shuffle is placed on the other directory only, and works.
    let second = client.register_shuffle(&app, ShuffleId(2), spec).await?;
    let blocks: Vec<_> = (0..PARTITIONS)
        .map(|p| block(2, 0, p, 0, 500))
        .collect::<Result<_>>()?;
    client.push_blocks(&second, blocks).await?;
    client
        .commit_map(
            &second,
            MapId(0),
            protocol::AttemptId(0),
            CommitManifest::from_dense(&[1; 8]),
        )
        .await?;
    for p in 0..PARTITIONS {
        ensure!(
            read_all(&client, &second, p).await? == 1,
            "partition {p} of the new shuffle"
        );
    }

    repair()?;
    eventually(
        Duration::from_secs(10),
        "the repaired dir is healthy again",
        || async { Ok(healthy(server, &failing).await? == Some(1.0)) },
    )
    .await?;
    for &p in &lost {
        match read_all(&client, &first, p).await {
            Err(e) if is_disk_failed(&e, &failing) => {}
            other => bail!("lost partition {p} after the repair: {other:?}"),
        }
    }
    let third = client.register_shuffle(&app, ShuffleId(3), spec).await?;
    let blocks: Vec<_> = (0..PARTITIONS)
        .map(|p| block(3, 0, p, 0, 500))
        .collect::<Result<_>>()?;
    client.push_blocks(&third, blocks).await?;
    ensure!(
        !partitions_in(&failing)?.is_empty(),
        "the repaired dir takes new partitions again"
    );
    Ok(())
}

#[tokio::test]
async fn a_data_dir_removed_during_a_job_is_taken_out_of_service() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let server = LocalServer::start(test_config(vec![a.clone(), b])).await?;
    let removed = a.clone();
    fail_and_check(
        &server,
        &a,
        || Ok(std::fs::remove_dir_all(&removed)?),
        || Ok(std::fs::create_dir_all(&a)?),
    )
    .await
}

#[tokio::test]
async fn a_data_dir_remounted_read_only_during_a_job_is_taken_out_of_service() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let ro = tmp.path().join("ro");
    let Some(fs) = Tmpfs::mount(&ro, "32m")? else {
        return Ok(());
    };
    let mut config = test_config(vec![ro.clone(), tmp.path().join("plain")]);
    config.disk_reserve = 1 << 20;
    // Linux refuses to remount a file system read-only while a file on it
    // is open for writing: append without keeping files open.
    config.max_open_files = 0;
    let server = LocalServer::start(config).await?;
    fail_and_check(&server, &ro, || fs.remount("ro"), || fs.remount("rw")).await
}
