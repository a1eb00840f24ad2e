//! Replication 2 against real daemons killed with SIGKILL: a read goes on
//! from the replica with no duplicate and no gap (blocking and hybrid-full,
//! whose copies may store blocks in different orders); a copy killed
//! during the map stage leaves the shuffle degraded, not lost; the servers
//! count the replica bytes they store.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::daemon::Daemon;
use common::{metric_or_zero, metrics};
use protocol::{AppId, AttemptId, MapId, PartitionId, Replication, ShuffleId, ShuffleMode, ShuffleSpec};
use shuffle_client::{
    ClientError, Placement, RemoteOptions, RemoteShuffle, ShuffleClient, ShuffleHandle, ShuffleReader,
    ShuffleWriter, WriterOptions,
};

const MAPS: u32 = 3;
const PARTITIONS: u32 = 3;
/// 2 KiB each, uncompressed: 20 MiB per partition, more than the socket
/// buffers hold, so the primary dies with the read in flight.
const RECORDS_PER_MAP: u32 = 10_000;

struct Fleet {
    _tmp: tempfile::TempDir,
    daemons: Vec<Daemon>,
    client: RemoteShuffle,
}

async fn fleet(n: usize) -> Result<Fleet> {
    let tmp = tempfile::tempdir()?;
    let mut daemons = Vec::new();
    for i in 0..n {
        daemons.push(Daemon::start(&tmp.path().join(format!("s{i}")), None, &[])?);
    }
    let urls: Vec<String> = daemons.iter().map(|d| format!("tcp://{}", d.tcp)).collect();
    let options = RemoteOptions {
        replication: Replication::TWO,
        retry_backoff: Duration::from_millis(20),
        // A killed server is given up on after a second.
        retry_window: Duration::from_secs(1),
        connect_timeout: Duration::from_secs(2),
        ..RemoteOptions::default()
    };
    let client = RemoteShuffle::connect_str(&urls.join(","), options).await?;
    Ok(Fleet {
        _tmp: tmp,
        daemons,
        client,
    })
}

impl Fleet {
    /// The daemon holding copy `copy` of `partition`.
    fn holder(&mut self, handle: &ShuffleHandle, partition: u32, copy: usize) -> Result<&mut Daemon> {
        let Placement::Spread { servers, .. } = handle.placement() else {
            anyhow::bail!("not spread");
        };
        let index = handle.placement().copies_of(PartitionId(partition))[copy];
        let name = &servers[index];
        self.daemons
            .iter_mut()
            .find(|d| format!("tcp://{}", d.tcp) == *name)
            .context("holder daemon")
    }

    async fn replication_bytes(&self) -> Result<f64> {
        let mut total = 0.0;
        for d in &self.daemons {
            total += metric_or_zero(&metrics(d.http).await?, "rss_replication_bytes_total");
        }
        Ok(total)
    }
}

fn record(map: u32, i: u32) -> Vec<u8> {
    let mut r = format!("map-{map}-record-{i:06}-").into_bytes();
    r.resize(2048 - (i % 37) as usize, b'x');
    r
}

/// Writes and commits `map` (records spread over the partitions); returns
/// the bytes it pushed.
async fn write_map(client: &RemoteShuffle, handle: &ShuffleHandle, map: u32) -> Result<u64> {
    let options = WriterOptions {
        block_size: 64 << 10,
        compress: false,
        ..WriterOptions::default()
    };
    let mut w = client
        .open_writer(handle, MapId(map), AttemptId(0), options)
        .await?;
    for i in 0..RECORDS_PER_MAP {
        w.write(PartitionId(i % PARTITIONS), &record(map, i)).await?;
    }
    Ok(w.commit().await?.pushed_bytes)
}

/// Every record each partition must hold, sorted.
fn expected() -> BTreeMap<u32, Vec<Vec<u8>>> {
    let mut out: BTreeMap<u32, Vec<Vec<u8>>> = BTreeMap::new();
    for map in 0..MAPS {
        for i in 0..RECORDS_PER_MAP {
            out.entry(i % PARTITIONS).or_default().push(record(map, i));
        }
    }
    for records in out.values_mut() {
        records.sort();
    }
    out
}

async fn drain(
    reader: &mut impl ShuffleReader,
    into: &mut Vec<Vec<u8>>,
    batches: Option<usize>,
) -> Result<()> {
    let mut n = 0;
    while batches.is_none_or(|b| n < b) {
        let Some(batch) = reader.next_batch().await? else {
            break;
        };
        for r in batch {
            into.push(r?.to_vec());
        }
        n += 1;
    }
    Ok(())
}

async fn read_all(client: &RemoteShuffle, handle: &ShuffleHandle) -> Result<BTreeMap<u32, Vec<Vec<u8>>>> {
    let mut out = BTreeMap::new();
    for p in 0..PARTITIONS {
        let mut reader = client
            .open_reader(handle, PartitionId(p), handle.all_maps())
            .await?;
        let mut records = Vec::new();
        drain(&mut reader, &mut records, None).await?;
        records.sort();
        out.insert(p, records);
    }
    Ok(out)
}

async fn mid_read_failover(mode: ShuffleMode) -> Result<()> {
    let mut f = fleet(3).await?;
    let app = AppId::new(format!("repl-{mode}"))?;
    let spec = ShuffleSpec::new(MAPS, PARTITIONS, mode)?;
    let handle = f.client.register_shuffle(&app, ShuffleId(1), spec).await?;
    ensure!(
        handle.placement().replication() == Replication::TWO,
        "{mode}: placed with one copy"
    );
    let mut pushed = 0;
    for map in 0..MAPS {
        pushed += write_map(&f.client, &handle, map).await?;
    }
    // Each block is stored once as a replica, on another server.
    let replicated = f.replication_bytes().await?;
    ensure!(
        replicated == pushed as f64,
        "{mode}: rss_replication_bytes_total {replicated} != pushed {pushed}"
    );

    // Partition 0: read some of it, kill its primary, read the rest.
    let mut reader = f
        .client
        .open_reader(&handle, PartitionId(0), handle.all_maps())
        .await?;
    let mut got = Vec::new();
    drain(&mut reader, &mut got, Some(3)).await?;
    ensure!(!got.is_empty(), "{mode}: nothing read before the kill");
    f.holder(&handle, 0, 0)?.child.kill()?;
    drain(&mut reader, &mut got, None).await?;
    got.sort();
    let want = expected();
    ensure!(
        got.len() == want[&0].len(),
        "{mode}: {} records after the failover, {} expected (duplicates or a gap)",
        got.len(),
        want[&0].len()
    );
    ensure!(got == want[&0], "{mode}: partition 0 differs after the failover");
    ensure!(reader.stats().failovers >= 1, "{mode}: {:?}", reader.stats());

    // Every partition still reads whole: one server of three is gone, each
    // of its partitions has a copy elsewhere.
    let all = read_all(&f.client, &handle).await?;
    ensure!(all == want, "{mode}: a partition differs with one server killed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_read_goes_on_from_the_replica_when_the_primary_is_killed() -> Result<()> {
    mid_read_failover(ShuffleMode::Blocking).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hybrid_full_read_goes_on_from_the_replica_when_the_primary_is_killed() -> Result<()> {
    mid_read_failover(ShuffleMode::Hybrid(protocol::SpillStrategy::Full)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_killed_during_the_map_stage_leaves_the_shuffle_degraded_not_lost() -> Result<()> {
    let mut f = fleet(3).await?;
    let app = AppId::new("repl-degraded")?;
    let spec = ShuffleSpec::new(MAPS, PARTITIONS, ShuffleMode::Blocking)?;
    let handle = f.client.register_shuffle(&app, ShuffleId(1), spec).await?;
    write_map(&f.client, &handle, 0).await?;
    // The server holding partition 0's primary (and others' replicas) dies
    // between two maps: the next maps go on with the live copies.
    f.holder(&handle, 0, 0)?.child.kill()?;
    for map in 1..MAPS {
        write_map(&f.client, &handle, map).await?;
    }
    let status = f.client.shuffle_status(&handle).await?;
    ensure!(status.sealed && status.committed_maps == MAPS, "{status:?}");
    ensure!(
        read_all(&f.client, &handle).await? == expected(),
        "a partition differs"
    );

    // A second server lost leaves some partition with no copy: that data is
    // lost, and the error says so (the engine runs the producers again).
    f.holder(&handle, 0, 1)?.child.kill()?;
    let mut lost = None;
    for p in 0..PARTITIONS {
        match f
            .client
            .open_reader(&handle, PartitionId(p), handle.all_maps())
            .await
        {
            Err(e) => {
                lost = Some(e);
                break;
            }
            Ok(mut r) => {
                if let Err(e) = drain(&mut r, &mut Vec::new(), None).await {
                    lost = Some(e.downcast::<ClientError>()?);
                    break;
                }
            }
        }
    }
    let e = lost.context("two servers of three killed, yet every partition read")?;
    ensure!(e.lost_shuffle() == Some(ShuffleId(1)), "{e:?}");
    Ok(())
}
