//! The daemon killed with SIGKILL in the middle of a push: once the retry
//! window is over the client gets a typed `ServerLost` naming the shuffle; after a restart on the same data directories the
//! sealed shuffle reads back whole and the unsealed one is gone.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use bytes::Bytes;
use common::daemon::Daemon;
use common::{block, http_get, metric_or_zero, push_frame, DataConn};
use protocol::frame::{Frame, FrameCodec};
use protocol::net::proto::shuffle_control_client::ShuffleControlClient;
use protocol::ServiceError;
use protocol::{AppId, AttemptId, MapId, PartitionId, ShuffleId, ShuffleMode, ShuffleSpec};
use shuffle_client::{
    ClientError, RemoteOptions, RemoteShuffle, ShuffleClient, ShuffleHandle, ShuffleReader, ShuffleWriter,
    WriterOptions,
};

fn start(data: &Path, ports: Option<&[String; 4]>) -> Result<Daemon> {
    Daemon::start(data, ports, &[])
}

fn options() -> RemoteOptions {
    RemoteOptions {
        max_retries: 2,
        retry_backoff: Duration::from_millis(20),
        // A server killed for good: give up quickly.
        retry_window: Duration::from_secs(1),
        connect_timeout: Duration::from_secs(2),
        ..RemoteOptions::default()
    }
}

async fn read_all(
    client: &RemoteShuffle,
    handle: &ShuffleHandle,
    partitions: u32,
) -> Result<Vec<Vec<Vec<u8>>>> {
    let mut out = Vec::new();
    for p in 0..partitions {
        let mut reader = client
            .open_reader(handle, PartitionId(p), handle.all_maps())
            .await?;
        let mut records = Vec::new();
        while let Some(batch) = reader.next_batch().await? {
            for r in batch {
                records.push(r?.to_vec());
            }
        }
        out.push(records);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_data_survives_kill_9_and_unsealed_data_is_discarded() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data");
    let daemon = start(&data, None)?;
    let url = format!("tcp://{}", daemon.tcp);
    let client = RemoteShuffle::connect_str(&url, options()).await?;
    let app = AppId::new("kill-test")?;

    // A sealed shuffle.
    let spec = ShuffleSpec::new(1, 4, ShuffleMode::Blocking)?;
    let sealed = client.register_shuffle(&app, ShuffleId(1), spec).await?;
    let mut w = client
        .open_writer(&sealed, MapId(0), AttemptId(0), WriterOptions::default())
        .await?;
    for i in 0..20_000u32 {
        w.write(PartitionId(i % 4), format!("record-{i}").as_bytes())
            .await?;
    }
    w.commit().await?;
    let before = read_all(&client, &sealed, 4).await?;
    assert_eq!(before.iter().map(Vec::len).sum::<usize>(), 20_000);

    // An unsealed shuffle, pushed to when the server dies.
    let open = client.register_shuffle(&app, ShuffleId(2), spec).await?;
    let small_blocks = WriterOptions {
        block_size: 16 << 10,
        ..WriterOptions::default()
    };
    let mut w = client
        .open_writer(&open, MapId(0), AttemptId(0), small_blocks)
        .await?;
    let ports = daemon.ports.clone();
    let mut killed = Some(daemon);
    let mut failure = None;
    for i in 0..2_000_000u32 {
        if i == 50_000 {
            // SIGKILL: no drain, no flush.
            drop(killed.take());
        }
        if let Err(e) = w.write(PartitionId(i % 4), &[7u8; 100]).await {
            failure = Some(e);
            break;
        }
    }
    let failure = match failure {
        Some(e) => e,
        None => match w.commit().await {
            Err(e) => e,
            Ok(_) => bail!("writing to a killed server succeeded"),
        },
    };
    // Still down after the retry window: the server is lost, and with it
    // what the writer had pushed there.
    assert!(
        matches!(
            failure,
            ClientError::ServerLost {
                shuffle: ShuffleId(2),
                ..
            }
        ) && failure.loses_data(),
        "expected ServerLost for shuffle 2, got {failure:?}"
    );

    // Restart on the same data directory and the same addresses.
    let restarted = start(&data, Some(&ports))?;
    assert_eq!(restarted.tcp.to_string(), ports[0]);
    let client = RemoteShuffle::connect_str(&url, options()).await?;
    let after = read_all(&client, &sealed, 4).await?;
    assert_eq!(
        after, before,
        "sealed data must read back unchanged after kill -9"
    );
    match client.shuffle_status(&open).await {
        Err(ClientError::UnknownShuffle {
            shuffle: ShuffleId(2),
            ..
        }) => {}
        other => bail!("unsealed shuffle must be gone after restart, got {other:?}"),
    }
    // Nothing of the unsealed shuffle is left on disk.
    let leftovers: Vec<_> = std::fs::read_dir(data.join("kill-test"))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(leftovers, vec!["shuffle-1".to_string()]);
    Ok(())
}

/// Writes `records` records over the partitions of a new one-map shuffle
/// and commits it (sealed).
async fn sealed_shuffle(
    client: &RemoteShuffle,
    app: &AppId,
    shuffle: u32,
    partitions: u32,
    records: u32,
) -> Result<ShuffleHandle> {
    let spec = ShuffleSpec::new(1, partitions, ShuffleMode::Blocking)?;
    let handle = client.register_shuffle(app, ShuffleId(shuffle), spec).await?;
    let mut w = client
        .open_writer(&handle, MapId(0), AttemptId(0), WriterOptions::default())
        .await?;
    for i in 0..records {
        w.write(
            PartitionId(i % partitions),
            format!("{shuffle}-record-{i}").as_bytes(),
        )
        .await?;
    }
    w.commit().await?;
    Ok(handle)
}

/// SIGTERM with a push still arriving: while the daemon drains, readiness
/// says so, new shuffles and new pushes get `Draining`, sealed data is still
/// served and commits go through; the push in flight finishes (acked, its
/// shuffle seals), and then, with nothing in flight, the daemon exits 0
/// without waiting out its drain timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_what_is_in_flight_and_exits_zero() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data");
    let mut daemon = start(&data, None)?;
    let url = format!("tcp://{}", daemon.tcp);
    let client = RemoteShuffle::connect_str(&url, options()).await?;
    let app = AppId::new("term-test")?;
    let sealed = sealed_shuffle(&client, &app, 1, 2, 1000).await?;
    let before = read_all(&client, &sealed, 2).await?;
    let spec = ShuffleSpec::new(1, 1, ShuffleMode::Blocking)?;
    client.register_shuffle(&app, ShuffleId(2), spec).await?;

    // Half of a push frame is on the wire when the signal comes.
    let mut pushing = DataConn::connect(daemon.tcp).await?;
    let blocks = vec![block(2, 0, 0, 0, 200_000)?];
    let frame = FrameCodec::default().encode_to_bytes(&push_frame(7, "term-test", 2, blocks)?)?;
    let half = frame.len() / 2;
    pushing.send_raw(&frame[..half]).await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    daemon.terminate()?;
    let signalled = Instant::now();
    loop {
        let (code, body) = http_get(daemon.http, "/readyz").await?;
        if code == 503 {
            ensure!(body.starts_with("draining"), "{body}");
            break;
        }
        ensure!(
            signalled.elapsed() < Duration::from_secs(5),
            "never reported draining"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // New work is refused with Draining, not a refused connection.
    let grpc = format!("http://{}", daemon.ports[2]);
    let mut control = ShuffleControlClient::connect(grpc).await?;
    let refused = control
        .register_shuffle(protocol::net::proto::RegisterShuffleRequest {
            app_id: "term-test".into(),
            shuffle_id: 3,
            num_maps: 1,
            num_partitions: 1,
            mode: 0,
            ..Default::default()
        })
        .await
        .expect_err("a new shuffle while draining");
    let error = ServiceError::decode(&mut Bytes::copy_from_slice(refused.details()))?;
    ensure!(error == ServiceError::Draining, "{error:?}");
    let mut late = DataConn::connect(daemon.tcp).await?;
    let reply = late
        .push(8, "term-test", 2, vec![block(2, 0, 0, 1, 100)?])
        .await?
        .expect_err("a push that starts while draining");
    ensure!(reply.error == ServiceError::Draining, "{:?}", reply.error);
    // Sealed data is still served.
    ensure!(read_all(&client, &sealed, 2).await? == before);

    // The push in flight finishes and its shuffle seals.
    pushing.send_raw(&frame[half..]).await?;
    match pushing.reader.next().await? {
        Frame::PushAck(ack) => ensure!(ack.stored == 1, "{ack:?}"),
        other => bail!("expected the in-flight push to be acked, got {other:?}"),
    }
    let commit = control
        .commit_map(common::commit_request("term-test", 2, 0, &[(0, 1)]))
        .await?
        .into_inner();
    ensure!(commit.sealed);
    drop((pushing, late, client));

    let code = tokio::task::spawn_blocking(move || daemon.wait_exit(Duration::from_secs(20))).await??;
    ensure!(code.success(), "exit status after SIGTERM: {code:?}");
    ensure!(
        signalled.elapsed() < Duration::from_secs(15),
        "the drain waited {:?}: it should end once nothing is in flight",
        signalled.elapsed()
    );
    for shuffle in ["shuffle-1", "shuffle-2"] {
        ensure!(
            data.join("term-test").join(shuffle).join("shuffle.meta").exists(),
            "{shuffle} is sealed on disk"
        );
    }
    Ok(())
}

/// A missing data directory is refused at start, naming it: an unmounted
/// disk must not silently become a folder on the root file system.
#[test]
fn a_missing_data_dir_is_refused_at_start() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let missing = tmp.path().join("not-mounted");
    let out = Command::new(env!("CARGO_BIN_EXE_shuffle-server"))
        .arg("--data-dir")
        .arg(&missing)
        .args(["--listen", "127.0.0.1:0", "--quic-listen", "127.0.0.1:0"])
        .args(["--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .output()?;
    ensure!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        stderr.contains(&missing.display().to_string()) && stderr.contains("create_data_dirs"),
        "{stderr}"
    );
    ensure!(!missing.exists(), "not created");
    Ok(())
}

/// A meta whose magic bytes were changed: after a restart the shuffle is
/// quarantined (counted, moved aside whole, not deleted) and everything
/// else is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_meta_is_quarantined_at_restart_and_the_rest_is_served() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data");
    let daemon = start(&data, None)?;
    let client = RemoteShuffle::connect_str(&format!("tcp://{}", daemon.tcp), options()).await?;
    let app = AppId::new("meta-test")?;
    let damaged = sealed_shuffle(&client, &app, 1, 2, 500).await?;
    let kept = sealed_shuffle(&client, &app, 2, 2, 500).await?;
    let want = read_all(&client, &kept, 2).await?;
    let ports = daemon.ports.clone();
    drop((client, daemon));
    let folder = data.join("meta-test").join("shuffle-1");
    let meta = folder.join("shuffle.meta");
    let mut bytes = std::fs::read(&meta)?;
    bytes[..4].copy_from_slice(b"XXXX");
    std::fs::write(&meta, &bytes)?;
    let files: Vec<(std::ffi::OsString, Vec<u8>)> = std::fs::read_dir(&folder)?
        .map(|e| {
            let e = e?;
            Ok((e.file_name(), std::fs::read(e.path())?))
        })
        .collect::<Result<_>>()?;

    let daemon = start(&data, Some(&ports))?;
    let client = RemoteShuffle::connect_str(&format!("tcp://{}", daemon.tcp), options()).await?;
    ensure!(read_all(&client, &kept, 2).await? == want);
    match client.shuffle_status(&damaged).await {
        Err(ClientError::UnknownShuffle { .. }) => {}
        other => bail!("a quarantined shuffle is not served, got {other:?}"),
    }
    let text = common::metrics(daemon.http).await?;
    ensure!(
        metric_or_zero(&text, "rss_quarantined_shuffles_total") == 1.0,
        "{text}"
    );
    ensure!(!folder.exists());
    let quarantine = data.join(".quarantine").join("meta-test");
    let moved: Vec<_> = std::fs::read_dir(&quarantine)?.collect::<Result<_, _>>()?;
    ensure!(moved.len() == 1);
    for (name, bytes) in files {
        ensure!(
            std::fs::read(moved[0].path().join(&name))? == bytes,
            "{name:?} kept"
        );
    }
    Ok(())
}
