//! The client's retry policy against the real daemon: a SIGKILL and a
//! restart a couple of seconds later, on the same ports and data dir,
//! cost calls in flight nothing (they complete, the data reads back
//! exactly); a server that never comes back fails the calls once
//! `retry_window` is over, not before, not much after: a `Connection`
//! error, or `ServerLost` for reads and pushes (its data is gone).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use common::daemon::{free_ports, Daemon};
use protocol::{
    records, AppId, AttemptId, Block, BlockId, MapId, PartitionId, ShuffleId, ShuffleMode, ShuffleSpec,
};
use shuffle_client::remote::RemoteReader;
use shuffle_client::{
    ClientError, RemoteOptions, RemoteShuffle, ShuffleClient, ShuffleHandle, ShuffleReader, ShuffleWriter,
    WriterOptions,
};

const MAPS: u32 = 2;
const PARTITIONS: u32 = 3;
const RECORDS_PER_MAP: u32 = 30_000;

/// Starts the daemon on `ports` and waits until it listens.
fn start(data: &Path, ports: &[String; 4]) -> Result<Daemon> {
    Daemon::start(data, Some(ports), &[])
}

fn options(retry_window: Duration) -> RemoteOptions {
    RemoteOptions {
        // Few count-limited retries: only the window keeps calls alive.
        max_retries: 1,
        retry_backoff: Duration::from_millis(20),
        retry_max_delay: Duration::from_millis(250),
        retry_window,
        connect_timeout: Duration::from_secs(2),
        ..RemoteOptions::default()
    }
}

/// The result of `call` and how long it took.
async fn timed<T>(call: impl std::future::Future<Output = T>) -> (T, Duration) {
    let start = Instant::now();
    let out = call.await;
    (out, start.elapsed())
}

fn record(map: u32, i: u32) -> Vec<u8> {
    format!("{map}-{i:06}-{}", "r".repeat(40)).into_bytes()
}

/// Writes and commits every map of `handle` (the last commit seals it).
async fn write_all(client: &RemoteShuffle, handle: &ShuffleHandle) -> Result<()> {
    let small_blocks = WriterOptions {
        block_size: 16 << 10,
        ..WriterOptions::default()
    };
    for map in 0..MAPS {
        let mut w = client
            .open_writer(handle, MapId(map), AttemptId(0), small_blocks)
            .await?;
        for i in 0..RECORDS_PER_MAP {
            w.write(PartitionId(i % PARTITIONS), &record(map, i)).await?;
        }
        w.commit().await?;
    }
    Ok(())
}

async fn drain(reader: &mut RemoteReader, out: &mut Vec<Vec<u8>>) -> Result<()> {
    while let Some(batch) = reader.next_batch().await? {
        for r in batch {
            out.push(r?.to_vec());
        }
    }
    Ok(())
}

async fn read_partition(client: &RemoteShuffle, handle: &ShuffleHandle, p: u32) -> Result<Vec<Vec<u8>>> {
    let mut reader = client
        .open_reader(handle, PartitionId(p), handle.all_maps())
        .await?;
    let mut out = Vec::new();
    drain(&mut reader, &mut out).await?;
    Ok(out)
}

async fn read_all(client: &RemoteShuffle, handle: &ShuffleHandle) -> Result<Vec<Vec<Vec<u8>>>> {
    let mut out = Vec::new();
    for p in 0..PARTITIONS {
        out.push(read_partition(client, handle, p).await?);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_of_a_few_seconds_costs_calls_in_flight_nothing() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data");
    let ports = free_ports()?;
    let daemon = start(&data, &ports)?;
    let client =
        RemoteShuffle::connect_str(&format!("tcp://{}", ports[0]), options(Duration::from_secs(30))).await?;
    let app = AppId::new("restart")?;
    let spec = ShuffleSpec::new(MAPS, PARTITIONS, ShuffleMode::Blocking)?;
    let sealed = client.register_shuffle(&app, ShuffleId(1), spec).await?;
    write_all(&client, &sealed).await?;
    let before = read_all(&client, &sealed).await?;
    let total: usize = before.iter().map(Vec::len).sum();
    ensure!(
        total == (MAPS * RECORDS_PER_MAP) as usize,
        "{total} records before the kill"
    );

    // A read under way when the server dies.
    let mut midway = client
        .open_reader(&sealed, PartitionId(0), sealed.all_maps())
        .await?;
    let mut midway_records = Vec::new();
    let first = midway.next_batch().await?.context("a first batch")?;
    for r in first {
        midway_records.push(r?.to_vec());
    }

    drop(daemon);
    let killed = Instant::now();
    let restart = {
        let (data, ports) = (data.clone(), ports.clone());
        tokio::task::spawn_blocking(move || {
            std::thread::sleep(Duration::from_secs(2));
            start(&data, &ports)
        })
    };

    // Calls made while the server is down, all in flight over the restart.
    let status = async {
        let status = client.shuffle_status(&sealed).await?;
        Ok::<_, anyhow::Error>((status, killed.elapsed()))
    };
    let fresh_read = read_partition(&client, &sealed, 1);
    let resumed_read = async {
        drain(&mut midway, &mut midway_records).await?;
        Ok::<_, anyhow::Error>(())
    };
    let register = client.register_shuffle(&app, ShuffleId(2), spec);
    let (status, fresh, resumed, registered) = tokio::join!(status, fresh_read, resumed_read, register);
    let _restarted = restart.await??;

    let (status, waited) = status.context("shuffle_status over the restart")?;
    ensure!(status.sealed, "{status:?}");
    ensure!(
        waited >= Duration::from_secs(2),
        "the status call must have waited for the restart, took {waited:?}"
    );
    ensure!(fresh.context("a read opened during the restart")? == before[1]);
    resumed.context("a read resumed over the restart")?;
    ensure!(midway_records == before[0], "the resumed read differs");
    let second = registered.context("register_shuffle over the restart")?;

    // Everything else reads back exactly, and the new shuffle works.
    ensure!(read_all(&client, &sealed).await? == before);
    write_all(&client, &second).await?;
    ensure!(read_all(&client, &second).await? == before);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_comes_back_fails_calls_after_the_window() -> Result<()> {
    let window = Duration::from_secs(3);
    let margin = Duration::from_millis(1500);
    let tmp = tempfile::tempdir()?;
    let ports = free_ports()?;
    let daemon = start(&tmp.path().join("data"), &ports)?;
    let client = RemoteShuffle::connect_str(&format!("tcp://{}", ports[0]), options(window)).await?;
    let app = AppId::new("gone")?;
    let spec = ShuffleSpec::new(MAPS, PARTITIONS, ShuffleMode::Blocking)?;
    let handle = client.register_shuffle(&app, ShuffleId(1), spec).await?;
    write_all(&client, &handle).await?;
    drop(daemon);

    // A status call fails as a connection error; reads and pushes, whose
    // data on the server is now gone, say so: the server is lost, with the
    // shuffle named.
    let check = |what: &str, lost: bool, (result, took): (Result<(), ClientError>, Duration)| -> Result<()> {
        match result {
            Err(ClientError::Connection { .. }) if !lost => {}
            Err(ClientError::ServerLost { shuffle, .. }) if lost && shuffle == ShuffleId(1) => {}
            other => bail!(
                "{what}: expected {}, got {other:?}",
                if lost { "ServerLost" } else { "Connection" }
            ),
        }
        ensure!(
            took >= window - Duration::from_millis(100) && took <= window + margin,
            "{what} failed after {took:?}, not within {window:?} + {margin:?}"
        );
        Ok(())
    };
    let mut raw = Vec::new();
    records::append(&mut raw, b"late")?;
    let id = BlockId {
        shuffle: ShuffleId(1),
        map: MapId(0),
        attempt: AttemptId(1),
        partition: PartitionId(0),
        seq: 0,
    };
    let block = Block::seal(id, raw, 1, false)?;
    let (status, read, push) = tokio::join!(
        timed(async { client.shuffle_status(&handle).await.map(|_| ()) }),
        timed(async {
            client
                .open_reader(&handle, PartitionId(0), handle.all_maps())
                .await
                .map(|_| ())
        }),
        timed(async { client.push_blocks(&handle, vec![block]).await.map(|_| ()) }),
    );
    check("shuffle_status", false, status)?;
    check("open_reader", true, read)?;
    check("push_blocks", true, push)?;
    Ok(())
}
