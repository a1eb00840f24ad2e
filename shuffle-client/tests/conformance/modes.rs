//! Conformance cases of the streaming modes: pipelined, hybrid-full and
//! hybrid-selective.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{bail, ensure, Result};
use protocol::{
    AttemptId, CommitManifest, MapId, PartitionId, ShuffleId, ShuffleMode, ShuffleSpec, SpillStrategy,
};
use shuffle_client::{
    ClientError, ShuffleClient, ShuffleHandle, ShuffleReader, ShuffleWriter, WriterOptions,
};

use super::{app, block_of, opts, read_partition, record, write_map, Harness};

const STREAMING: [ShuffleMode; 3] = [
    ShuffleMode::Pipelined,
    ShuffleMode::Hybrid(SpillStrategy::Full),
    ShuffleMode::Hybrid(SpillStrategy::Selective),
];

fn spec(maps: u32, partitions: u32, mode: ShuffleMode) -> ShuffleSpec {
    ShuffleSpec::new(maps, partitions, mode).expect("valid spec")
}

/// Records grouped by the map that wrote them (streaming readers
/// interleave maps in any order, each map's records in write order).
fn by_map(records: &[Vec<u8>]) -> BTreeMap<u32, Vec<Vec<u8>>> {
    let mut out: BTreeMap<u32, Vec<Vec<u8>>> = BTreeMap::new();
    for r in records {
        let map = String::from_utf8_lossy(r)
            .split(':')
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or(u32::MAX);
        out.entry(map).or_default().push(r.clone());
    }
    out
}

fn expected_by_map(winners: &[(u32, u32)], count: u32, partition: u32) -> BTreeMap<u32, Vec<Vec<u8>>> {
    winners
        .iter()
        .map(|&(m, a)| (m, (0..count).map(|i| record(m, a, partition, i)).collect()))
        .collect()
}

/// Reads `reader` to its end.
async fn drain<R: ShuffleReader>(reader: &mut R, out: &mut Vec<Vec<u8>>) -> Result<(), ClientError> {
    while let Some(batch) = reader.next_batch().await? {
        for rec in batch {
            out.push(rec?.to_vec());
        }
    }
    Ok(())
}

pub async fn streaming_readers_get_blocks_before_the_last_commit<H: Harness>(h: &H) -> Result<()> {
    let c = h.client();
    for (i, mode) in STREAMING.into_iter().enumerate() {
        let handle = c
            .register_shuffle(&app("early"), ShuffleId(20 + i as u32), spec(2, 1, mode))
            .await?;
        // Opened before any push.
        let mut reader = c.open_reader(&handle, PartitionId(0), handle.all_maps()).await?;
        let (first_map_read, map0_read) = tokio::sync::oneshot::channel::<()>();
        let producer = async {
            write_map(c, &handle, 0, 0, &[12], true, opts()).await?;
            // Map 1 writes only once the reader got map 0's blocks: the
            // reader streamed before the last commit.
            map0_read.await?;
            write_map(c, &handle, 1, 0, &[9], true, opts()).await?;
            anyhow::Ok(())
        };
        let consumer = async {
            let mut got = Vec::new();
            while got.len() < 12 {
                let Some(batch) = reader.next_batch().await? else {
                    bail!("{mode}: the stream ended before map 1 committed");
                };
                for rec in batch {
                    got.push(rec?.to_vec());
                }
            }
            let _ = first_map_read.send(());
            drain(&mut reader, &mut got).await?;
            ensure!(reader.next_batch().await?.is_none(), "{mode}: ended stays ended");
            anyhow::Ok(got)
        };
        let (produced, got) = tokio::join!(producer, consumer);
        produced?;
        let got = got?;
        let mut want = expected_by_map(&[(0, 0)], 12, 0);
        want.extend(expected_by_map(&[(1, 0)], 9, 0));
        ensure!(by_map(&got) == want, "{mode}: wrong records {got:?}");
        c.unregister_shuffle(&handle).await?;
    }
    Ok(())
}

pub async fn streaming_duplicate_pushes_are_delivered_once<H: Harness>(h: &H) -> Result<()> {
    let c = h.client();
    for mode in STREAMING {
        // `block_of` builds blocks of shuffle 2.
        let handle = c
            .register_shuffle(&app(&format!("sdup-{mode}")), ShuffleId(2), spec(1, 1, mode))
            .await?;
        let mut reader = c.open_reader(&handle, PartitionId(0), handle.all_maps()).await?;
        let blocks = [block_of(0, 0, 0, 0, 0..3), block_of(0, 0, 0, 1, 3..5)];
        c.push_blocks(&handle, vec![blocks[0].clone()]).await?;
        let again = c
            .push_blocks(&handle, vec![blocks[1].clone(), blocks[0].clone()])
            .await?;
        ensure!(again.stored == 1 && again.duplicates == 1, "{mode}: {again:?}");
        c.commit_map(&handle, MapId(0), AttemptId(0), CommitManifest::from_dense(&[2]))
            .await?;
        // A retried push after the commit changes nothing.
        c.push_blocks(&handle, vec![blocks[1].clone()]).await?;
        let mut got = Vec::new();
        drain(&mut reader, &mut got).await?;
        let want: Vec<Vec<u8>> = (0..5).map(|i| record(0, 0, 0, i)).collect();
        ensure!(got == want, "{mode}: {got:?}");
    }
    Ok(())
}

pub async fn a_reader_of_a_losing_attempt_fails_with_attempt_failed<H: Harness>(h: &H) -> Result<()> {
    let c = h.client();
    for mode in STREAMING {
        let handle = c
            .register_shuffle(&app(&format!("lose-{mode}")), ShuffleId(2), spec(1, 1, mode))
            .await?;
        let mut reader = c.open_reader(&handle, PartitionId(0), handle.all_maps()).await?;
        c.push_blocks(&handle, vec![block_of(0, 0, 0, 0, 0..2)]).await?;
        ensure!(reader.next_batch().await?.is_some(), "{mode}: attempt 0's block");
        c.push_blocks(&handle, vec![block_of(0, 1, 0, 0, 0..2)]).await?;
        c.commit_map(&handle, MapId(0), AttemptId(1), CommitManifest::from_dense(&[1]))
            .await?;
        match reader.next_batch().await {
            Err(
                e @ ClientError::AttemptFailed {
                    map: MapId(0),
                    attempt: AttemptId(0),
                },
            ) => ensure!(!e.is_retryable() && !e.loses_data()),
            other => bail!(
                "{mode}: expected AttemptFailed, got {:?}",
                other.map(|b| b.is_some())
            ),
        }
        // A restarted consumer reads the winner (from memory or disk).
        let got = read_partition(c, &handle, 0, handle.all_maps()).await?;
        ensure!(
            got == vec![record(0, 1, 0, 0), record(0, 1, 0, 1)],
            "{mode}: {got:?}"
        );
        // The loser's pushes are refused.
        ensure!(matches!(
            c.push_blocks(&handle, vec![block_of(0, 0, 0, 1, 2..3)]).await,
            Err(ClientError::AttemptSuperseded { .. })
        ));
    }
    Ok(())
}

pub async fn pipelined_blocks_consumed_by_one_reader_are_gone_for_another<H: Harness>(h: &H) -> Result<()> {
    let c = h.client();
    let handle = c
        .register_shuffle(&app("gone"), ShuffleId(2), spec(1, 1, ShuffleMode::Pipelined))
        .await?;
    let mut first = c.open_reader(&handle, PartitionId(0), handle.all_maps()).await?;
    c.push_blocks(&handle, vec![block_of(0, 0, 0, 0, 0..2)]).await?;
    ensure!(first.next_batch().await?.is_some());
    match c.open_reader(&handle, PartitionId(0), handle.all_maps()).await {
        Err(
            e @ ClientError::DataGone {
                partition: PartitionId(0),
                map: MapId(0),
            },
        ) => ensure!(!e.is_retryable()),
        Err(other) => bail!("expected DataGone, got {other:?}"),
        Ok(_) => bail!("expected DataGone, got a reader"),
    }
    // The first reader goes on.
    c.push_blocks(&handle, vec![block_of(0, 0, 0, 1, 2..3)]).await?;
    c.commit_map(&handle, MapId(0), AttemptId(0), CommitManifest::from_dense(&[2]))
        .await?;
    let mut got = Vec::new();
    drain(&mut first, &mut got).await?;
    ensure!(got == vec![record(0, 0, 0, 2)], "{got:?}");
    let status = c.shuffle_status(&handle).await?;
    ensure!(status.sealed && status.stored_bytes == 0, "{status:?}");
    Ok(())
}

pub async fn hybrid_full_late_readers_read_everything_from_disk<H: Harness>(h: &H) -> Result<()> {
    let c = h.client();
    let handle = c
        .register_shuffle(
            &app("full-late"),
            ShuffleId(30),
            spec(2, 3, ShuffleMode::Hybrid(SpillStrategy::Full)),
        )
        .await?;
    let counts = [7, 0, 11];
    write_map(c, &handle, 1, 0, &counts, true, opts()).await?;
    write_map(c, &handle, 0, 0, &counts, true, opts()).await?;
    let status = c.shuffle_status(&handle).await?;
    ensure!(status.sealed && status.stored_bytes > 0, "{status:?}");
    // Many readers, each exactly once, in (map, seq) order like blocking.
    for _ in 0..2 {
        for p in 0..3u32 {
            let got = read_partition(c, &handle, p, handle.all_maps()).await?;
            ensure!(
                got == super::expected(&[(0, 0), (1, 0)], &counts, p),
                "partition {p}"
            );
        }
    }
    Ok(())
}

pub async fn hybrid_selective_with_ample_memory_writes_nothing<H: Harness>(h: &H) -> Result<()> {
    let c = h.client();
    let handle = c
        .register_shuffle(
            &app("sel-ample"),
            ShuffleId(31),
            spec(2, 1, ShuffleMode::Hybrid(SpillStrategy::Selective)),
        )
        .await?;
    let mut reader = c.open_reader(&handle, PartitionId(0), handle.all_maps()).await?;
    let producer = async {
        write_map(c, &handle, 0, 0, &[20], true, opts()).await?;
        write_map(c, &handle, 1, 0, &[20], true, opts()).await?;
        anyhow::Ok(())
    };
    let mut got = Vec::new();
    let (produced, read) = tokio::join!(producer, drain(&mut reader, &mut got));
    produced?;
    read?;
    ensure!(
        by_map(&got) == expected_by_map(&[(0, 0), (1, 0)], 20, 0),
        "{got:?}"
    );
    let status = c.shuffle_status(&handle).await?;
    ensure!(status.sealed && status.stored_bytes == 0, "{status:?}");
    Ok(())
}

/// Records of 1 KiB that do not compress, naming their origin like
/// `record`.
fn big_record(map: u32, i: u32) -> Vec<u8> {
    let mut r = record(map, 0, 0, i);
    r.push(b':');
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (u64::from(map) << 32 | u64::from(i));
    while r.len() < 1024 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        r.push(x as u8);
    }
    r
}

fn big_blocks() -> WriterOptions {
    WriterOptions {
        block_size: 16 << 10,
        ..WriterOptions::default()
    }
}

async fn write_big<C: ShuffleClient>(c: &C, handle: &ShuffleHandle, map: u32, n: u32) -> Result<()> {
    let mut w = c
        .open_writer(handle, MapId(map), AttemptId(0), big_blocks())
        .await?;
    for i in 0..n {
        w.write(PartitionId(0), &big_record(map, i)).await?;
    }
    w.commit().await?;
    Ok(())
}

pub async fn hybrid_selective_with_a_small_budget_spills_and_completes<H: Harness>(_: &H) -> Result<()> {
    let h = H::with_budget(1 << 20).await;
    let (_, limit) = h.memory().await;
    let c = h.client();
    let handle = c
        .register_shuffle(
            &app("sel-small"),
            ShuffleId(32),
            spec(1, 1, ShuffleMode::Hybrid(SpillStrategy::Selective)),
        )
        .await?;
    // More data than the budget, and nobody reads until the commit.
    let n = u32::try_from(limit.max(1 << 20) * 3 / 1024).unwrap_or(3072);
    write_big(c, &handle, 0, n).await?;
    let status = c.shuffle_status(&handle).await?;
    ensure!(status.sealed && status.stored_bytes > 0, "{status:?}");
    let got = read_partition(c, &handle, 0, handle.all_maps()).await?;
    ensure!(got.len() == n as usize, "{} of {n} records", got.len());
    ensure!(
        got.iter().zip(0..).all(|(r, i)| *r == big_record(0, i)),
        "records differ"
    );
    Ok(())
}

pub async fn pipelined_backpressure_keeps_the_budget<H: Harness>(_: &H) -> Result<()> {
    let h = H::with_budget(1 << 20).await;
    let (_, limit) = h.memory().await;
    let c = h.client();
    let handle = c
        .register_shuffle(
            &app("backpressure"),
            ShuffleId(33),
            spec(1, 1, ShuffleMode::Pipelined),
        )
        .await?;
    let mut reader = c.open_reader(&handle, PartitionId(0), handle.all_maps()).await?;
    let n = 16 * 1024u32; // 16 MiB of records through a 1 MiB budget
    let total = u64::from(n) * 1024;
    let read_bytes = AtomicU64::new(0);
    let producer = async {
        write_big(c, &handle, 0, n).await?;
        // The commit needs every block to have arrived, and the budget held
        // at most `limit` of them: the reader must have taken the rest
        // (minus what socket buffers hold on the way).
        anyhow::Ok(read_bytes.load(Ordering::Acquire))
    };
    let consumer = async {
        let mut count = 0u32;
        let mut most = 0u64;
        while let Some(batch) = reader.next_batch().await? {
            for rec in batch {
                let rec = rec?;
                ensure!(
                    rec.as_ref() == big_record(0, count).as_slice(),
                    "record {count} differs"
                );
                count += 1;
                read_bytes.fetch_add(rec.len() as u64, Ordering::AcqRel);
            }
            if count % 64 == 0 {
                let (in_use, limit) = h.memory().await;
                most = most.max(in_use);
                ensure!(in_use <= limit, "{in_use} bytes buffered over a {limit} budget");
            }
            // A deliberately slow reader.
            tokio::time::sleep(std::time::Duration::from_micros(300)).await;
        }
        anyhow::Ok((count, most))
    };
    let (read_at_commit, consumed) = tokio::join!(producer, consumer);
    let read_at_commit = read_at_commit?;
    let (count, most) = consumed?;
    ensure!(count == n, "{count} of {n} records arrived");
    ensure!(most <= limit, "{most} over {limit}");
    // Socket buffers between the server and the reader (the server's send
    // buffer, the reader's receive buffer) may hold what the reader has not
    // taken yet: as much as the kernel lets them grow.
    let slack = tcp_buffer_max("tcp_wmem") + tcp_buffer_max("tcp_rmem");
    ensure!(
        read_at_commit + limit + slack >= total,
        "the producer finished {} bytes ahead of the reader: not slowed",
        total - read_at_commit
    );
    Ok(())
}

/// The most a TCP socket buffer may grow to (`net.ipv4.tcp_{r,w}mem`, third
/// field); 8 MiB when unreadable.
fn tcp_buffer_max(name: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}"))
        .ok()
        .and_then(|s| s.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(8 << 20)
}
