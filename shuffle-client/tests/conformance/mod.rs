//! The conformance suite: every `ShuffleClient` implementation must pass
//! every case here. A test file provides a [`Harness`] and expands
//! [`conformance_suite!`] with an expression that builds one.
//!
//! Records written by the suite name their own origin
//! (`map:attempt:partition:index`), so a reader's output can be compared
//! exactly with what the committed attempts wrote, in order.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use protocol::{
    records, AppId, AttemptId, Block, BlockId, CommitManifest, MapId, MapRange, PartitionId, ShuffleId,
    ShuffleMode, ShuffleSpec,
};
use shuffle_client::{
    ClientError, ShuffleClient, ShuffleHandle, ShuffleReader, ShuffleWriter, WriterOptions,
};

/// What the suite needs from an implementation under test.
pub trait Harness: Send + Sync {
    type Client: ShuffleClient;
    /// The client under test.
    fn client(&self) -> &Self::Client;
    /// Every data directory of every server behind the client.
    fn data_dirs(&self) -> Vec<PathBuf>;
    /// A folder that contains all data directories and nothing else the
    /// service may write to.
    fn sandbox(&self) -> PathBuf;
    /// A fresh implementation whose memory budget is (about) `bytes`: the
    /// smallest the implementation allows at or above it.
    fn with_budget(bytes: u64) -> impl std::future::Future<Output = Self> + Send
    where
        Self: Sized;
    /// Bytes of memory budget in use now, and the budget (summed over every
    /// server behind the client).
    fn memory(&self) -> impl std::future::Future<Output = (u64, u64)> + Send;
    /// Partitions of the wide-shuffle case. Every server keeps a file open
    /// per partition it holds, and in-process servers share one process's
    /// descriptor limit (20,000 on the test machine), which two copies of
    /// 10,000 partitions, beside the other cases running at once, exceed.
    fn wide_partitions(&self) -> u32 {
        10_000
    }
}

/// Expands to one `#[tokio::test]` per conformance case.
#[macro_export]
macro_rules! conformance_suite {
    ($make:expr) => {
        $crate::conformance_suite!(@cases $make;
            round_trip_in_map_then_write_order,
            duplicate_pushes_are_served_once,
            a_retried_attempt_replaces_the_failed_one,
            speculative_attempts_are_served_once,
            seal_gates_blocking_readers,
            a_commit_naming_lost_blocks_is_refused,
            corruption_on_disk_is_a_checksum_mismatch,
            unregister_deletes_the_data,
            hostile_ids_never_reach_the_disk,
            empty_partitions_read_as_empty,
            ten_thousand_partitions,
            eight_mib_records,
            map_ranges_split_a_partition,
            out_of_range_ids_are_refused,
            streaming_readers_get_blocks_before_the_last_commit,
            streaming_duplicate_pushes_are_delivered_once,
            a_reader_of_a_losing_attempt_fails_with_attempt_failed,
            pipelined_blocks_consumed_by_one_reader_are_gone_for_another,
            hybrid_full_late_readers_read_everything_from_disk,
            hybrid_selective_with_ample_memory_writes_nothing,
            hybrid_selective_with_a_small_budget_spills_and_completes,
            pipelined_backpressure_keeps_the_budget,
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() -> anyhow::Result<()> {
                let harness = $make;
                conformance::$case(&harness).await
            }
        )*
    };
}

fn app(name: &str) -> AppId {
    AppId::new(name).expect("test app ids are valid")
}

fn blocking(maps: u32, partitions: u32) -> ShuffleSpec {
    ShuffleSpec::new(maps, partitions, ShuffleMode::Blocking).expect("valid spec")
}

fn record(map: u32, attempt: u32, partition: u32, i: u32) -> Vec<u8> {
    format!("{map}:{attempt}:{partition}:{i}").into_bytes()
}

/// Writes `per_partition[p]` records to each partition p and commits.
async fn write_map<C: ShuffleClient>(
    client: &C,
    handle: &ShuffleHandle,
    map: u32,
    attempt: u32,
    per_partition: &[u32],
    commit: bool,
    options: WriterOptions,
) -> Result<Option<C::Writer>> {
    let mut writer = client
        .open_writer(handle, MapId(map), AttemptId(attempt), options)
        .await?;
    let most = per_partition.iter().copied().max().unwrap_or(0);
    // Interleave partitions, as a real map task does.
    for i in 0..most {
        for (p, n) in per_partition.iter().enumerate() {
            if i < *n {
                writer
                    .write(PartitionId(p as u32), &record(map, attempt, p as u32, i))
                    .await?;
            }
        }
    }
    if commit {
        writer.commit().await?;
        return Ok(None);
    }
    Ok(Some(writer))
}

async fn read_partition<C: ShuffleClient>(
    client: &C,
    handle: &ShuffleHandle,
    partition: u32,
    maps: MapRange,
) -> Result<Vec<Vec<u8>>, ClientError> {
    let mut reader = client.open_reader(handle, PartitionId(partition), maps).await?;
    let mut out = Vec::new();
    while let Some(batch) = reader.next_batch().await? {
        for rec in batch {
            out.push(rec?.to_vec());
        }
    }
    ensure_stats(&reader, out.len());
    Ok(out)
}

fn ensure_stats<R: ShuffleReader>(reader: &R, records: usize) {
    assert_eq!(
        reader.stats().records,
        records as u64,
        "reader stats count every record"
    );
}

/// What a reader must see: each map's winning attempt, in map order, each
/// partition's records in write order.
fn expected(winners: &[(u32, u32)], per_partition: &[u32], partition: u32) -> Vec<Vec<u8>> {
    winners
        .iter()
        .flat_map(|&(map, attempt)| {
            (0..per_partition[partition as usize]).map(move |i| record(map, attempt, partition, i))
        })
        .collect()
}

fn opts() -> WriterOptions {
    // Small blocks so that every case spans many blocks and sequence numbers.
    WriterOptions {
        block_size: 64,
        ..WriterOptions::default()
    }
}

pub async fn round_trip_in_map_then_write_order<H: Harness>(h: &H) -> Result<()> {
    let c = h.client();
    let handle = c
        .register_shuffle(&app("roundtrip"), ShuffleId(1), blocking(3, 4))
        .await?;
    let counts = [10, 0, 3, 25];
    // Maps commit out of order.
    for map in [2, 0, 1] {
        write_map(c, &handle, map, 0, &counts, true, opts()).await?;
    }
    for p in 0..4 {
        let got = read_partition(c, &handle, p, handle.all_maps()).await?;
        ensure!(
            got == expected(&[(0, 0), (1, 0), (2, 0)], &counts, p),
            "partition {p} differs"
        );
    }
    c.unregister_shuffle(&handle).await?;
    Ok(())
}

fn block_of(map: u32, attempt: u32, partition: u32, seq: u32, recs: std::ops::Range<u32>) -> Block {
    let mut raw = Vec::new();
    for i in recs.clone() {
        records::append(&mut raw, &record(map, attempt, partition, i)).expect("fits");
    }
    let id = BlockId {
        shuffle: ShuffleId(2),
        map: MapId(map),
        attempt: AttemptId(attempt),
        partition: PartitionId(partition),
        seq,
    };
    Block::seal(id, raw, recs.len() as u32, true).expect("seal")
}

pub async fn duplicate_pushes_are_served_once<H: Harness>(h: &H) -> Result<()> {
    let c = h.client();
    let handle = c
        .register_shuffle(&app("dups"), ShuffleId(2), blocking(1, 2))
        .await?;
    let blocks = [
        block_of(0, 0, 0, 0, 0..3),
        block_of(0, 0, 0, 1, 3..5),
        block_of(0, 0, 1, 0, 0..2),
    ];
    let first = c.push_blocks(&handle, blocks[..2].to_vec()).await?;
    ensure!(
        first.stored == 2 && first.duplicates == 0,
        "first push: {first:?}"
    );
    // A retried push overlapping the first, out of order.
    let retry = c
        .push_blocks(
            &handle,
            vec![blocks[2].clone(), blocks[1].clone(), blocks[0].clone()],
        )
        .await?;
    ensure!(
        retry.stored == 1 && retry.duplicates == 2,
        "retried push: {retry:?}"
    );
    let ack = c
        .commit_map(
            &handle,
            MapId(0),
            AttemptId(0),
            CommitManifest::from_dense(&[2, 1]),
        )
        .await?;
    ensure!(ack.sealed, "the only map's commit seals");
    // A retried commit of the same attempt is harmless.
    c.commit_map(
        &handle,
        MapId(0),
        AttemptId(0),
        CommitManifest::from_dense(&[2, 1]),
    )
    .await?;
    ensure!(read_partition(c, &handle, 0, handle.all_maps()).await? == expected(&[(0, 0)], &[5, 2], 0));
    ensure!(read_partition(c, &handle, 1, handle.all_maps()).await? == expected(&[(0, 0)], &[5, 2], 1));
    Ok(())
}

pub async fn a_retried_attempt_replaces_the_failed_one<H: Harness>(h: &H) -> Result<()> {
    let c = h.client();
    let handle = c
        .register_shuffle(&app("retry"), ShuffleId(3), blocking(2, 3))
        .await?;
    let counts = [20, 7, 13];
    // Attempt 0 of map 1 pushes blocks, then dies without committing.
    let dead = write_map(
        c,
        &handle,
        1,
        0,
        &counts,
        false,
        WriterOptions {
            buffer_limit: 32,
            ..opts()
        },
    )
    .await?;
    drop(dead);
    write_map(c, &handle, 0, 0, &counts, true, opts()).await?;
    write_map(c, &handle, 1, 1, &counts, true, opts()).await?;
    for p in 0..3 {
        let got = read_partition(c, &handle, p, handle.all_maps()).await?;
        ensure!(
            got == expected(&[(0, 0), (1, 1)], &counts, p),
            "partition {p} serves the failed attempt"
        );
    }
    Ok(())
}

pub async fn speculative_attempts_are_served_once<H: Harness>(h: &H) -> Result<()> {
    let c = h.client();
    let handle = c
        .register_shuffle(&app("speculative"), ShuffleId(4), blocking(1, 2))
        .await?;
    let counts = [9, 4];
    let slow = write_map(c, &handle, 0, 0, &counts, false, opts())
        .await?
        .context("writer")?;
    write_map(c, &handle, 0, 1, &counts, true, opts()).await?;
    match slow.commit().await {
        Err(ClientError::CommitConflict {
            committed: AttemptId(1),
            attempt: AttemptId(0),
            ..
        })
        | Err(ClientError::AttemptSuperseded {
            committed: AttemptId(1),
            attempt: AttemptId(0),
            ..
        }) => {}
        other => bail!("the losing attempt must be refused, got {other:?}"),
    }
    for p in 0..2 {
        ensure!(read_partition(c, &handle, p, handle.all_maps()).await? == expected(&[(0, 1)], &counts, p));
    }
    Ok(())
}

pub async fn seal_gates_blocking_readers<H: Harness>(h: &H) -> Result<()> {
    let c = h.client();
    let handle = c
        .register_shuffle(&app("seal"), ShuffleId(5), blocking(2, 1))
        .await?;
    write_map(c, &handle, 0, 0, &[5], true, opts()).await?;
    match c.open_reader(&handle, PartitionId(0), handle.all_maps()).await {
        Err(
            e @ ClientError::NotReady {
                committed: 1,
                num_maps: 2,
                ..
            },
        ) => ensure!(e.is_retryable()),
        other => bail!(
            "a read before the seal must be NotReady, got {:?}",
            other.map(|_| ())
        ),
    }
    let status = c.shuffle_status(&handle).await?;
    ensure!(
        status.committed_maps == 1 && status.num_maps == 2 && !status.sealed,
        "{status:?}"
    );
    write_map(c, &handle, 1, 0, &[5], true, opts()).await?;
    let status = c.shuffle_status(&handle).await?;
    ensure!(status.sealed && status.stored_bytes > 0, "{status:?}");
    ensure!(read_partition(c, &handle, 0, handle.all_maps()).await?.len() == 10);
    Ok(())
}

pub async fn a_commit_naming_lost_blocks_is_refused<H: Harness>(h: &H) -> Result<()> {
    let c = h.client();
    let handle = c
        .register_shuffle(&app("lost"), ShuffleId(2), blocking(1, 1))
        .await?;
    // Block 1 of 3 was lost in transit.
    c.push_blocks(
        &handle,
        vec![block_of(0, 0, 0, 0, 0..1), block_of(0, 0, 0, 2, 2..3)],
    )
    .await?;
    match c
        .commit_map(&handle, MapId(0), AttemptId(0), CommitManifest::from_dense(&[3]))
        .await
    {
        Err(
            e @ ClientError::MissingBlocks {
                missing_seq: 1,
                expected: 3,
                ..
            },
        ) => ensure!(e.loses_data()),
        other => bail!("expected MissingBlocks, got {other:?}"),
    }
    ensure!(matches!(
        c.open_reader(&handle, PartitionId(0), handle.all_maps()).await,
        Err(ClientError::NotReady { .. })
    ));
    Ok(())
}

fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_below(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Every file of an app, in every data dir.
fn files_of<H: Harness>(h: &H, app: &str) -> Vec<PathBuf> {
    h.data_dirs()
        .iter()
        .flat_map(|d| files_below(&d.join(app)))
        .collect()
}

/// The partition data files of an app (a sealed shuffle also keeps a
/// `shuffle.meta` next to them, which is not data).
fn data_files_of<H: Harness>(h: &H, app: &str) -> Vec<PathBuf> {
    files_of(h, app)
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "data"))
        .collect()
}

pub async fn corruption_on_disk_is_a_checksum_mismatch<H: Harness>(h: &H) -> Result<()> {
    let c = h.client();
    let handle = c
        .register_shuffle(&app("corrupt"), ShuffleId(6), blocking(1, 1))
        .await?;
    write_map(c, &handle, 0, 0, &[40], true, opts()).await?;
    let copies = handle.placement().replication().copies();
    let files = data_files_of(h, "corrupt");
    ensure!(
        files.len() == copies,
        "{copies} partition file(s) expected, found {files:?}"
    );
    // Flip one bit of the last block's payload.
    let flip = |file: &PathBuf| -> Result<()> {
        let mut bytes = std::fs::read(file)?;
        let last = bytes.len() - 1;
        bytes[last] ^= 0x10;
        std::fs::write(file, &bytes)?;
        Ok(())
    };
    for (n, file) in files.iter().enumerate() {
        flip(file)?;
        if n + 1 < copies {
            // A replicated partition reads its other copy: all of it, once.
            let got = read_partition(c, &handle, 0, handle.all_maps()).await?;
            ensure!(got.len() == 40, "copy {n} corrupt: {} records read", got.len());
        }
    }
    match read_partition(c, &handle, 0, handle.all_maps()).await {
        Err(e @ ClientError::ChecksumMismatch { block, .. }) => {
            ensure!(e.loses_data());
            ensure!(
                block.map == MapId(0) && block.partition == PartitionId(0) && block.seq > 0,
                "{block}"
            );
        }
        other => bail!("expected a checksum mismatch, got {:?}", other.map(|r| r.len())),
    }
    Ok(())
}

pub async fn unregister_deletes_the_data<H: Harness>(h: &H) -> Result<()> {
    let c = h.client();
    let a = app("unregister");
    let one = c.register_shuffle(&a, ShuffleId(1), blocking(1, 8)).await?;
    let two = c.register_shuffle(&a, ShuffleId(2), blocking(1, 8)).await?;
    write_map(c, &one, 0, 0, &[3; 8], true, opts()).await?;
    write_map(c, &two, 0, 0, &[3; 8], true, opts()).await?;
    let copies = one.placement().replication().copies();
    ensure!(data_files_of(h, "unregister").len() == 16 * copies);
    c.unregister_shuffle(&one).await?;
    ensure!(
        data_files_of(h, "unregister").len() == 8 * copies,
        "shuffle 1's files remain"
    );
    ensure!(matches!(
        c.open_reader(&one, PartitionId(0), one.all_maps()).await,
        Err(ClientError::UnknownShuffle { .. })
    ));
    c.unregister_app(&a).await?;
    ensure!(files_of(h, "unregister").is_empty(), "the app's files remain");
    ensure!(matches!(
        c.open_reader(&two, PartitionId(0), two.all_maps()).await,
        Err(ClientError::UnknownShuffle { .. })
    ));
    Ok(())
}

pub async fn hostile_ids_never_reach_the_disk<H: Harness>(h: &H) -> Result<()> {
    let long = "a".repeat(129);
    for hostile in [
        "../x",
        "..",
        ".",
        "/etc/passwd",
        "a/../../b",
        "nul\0byte",
        "",
        &long,
        "dir\\x",
        "sp ace",
        "...",
        ".quarantine",
    ] {
        ensure!(AppId::new(hostile).is_err(), "{hostile:?} must be refused");
    }
    // The longest valid id and one ending in dots still stay inside.
    let c = h.client();
    for name in ["a".repeat(128), "x...".to_string()] {
        let handle = c
            .register_shuffle(&app(&name), ShuffleId(u32::MAX), blocking(1, 1))
            .await?;
        write_map(c, &handle, 0, 0, &[2], true, opts()).await?;
    }
    let data_dirs = h.data_dirs();
    for file in files_below(&h.sandbox()) {
        ensure!(
            data_dirs.iter().any(|d| file.starts_with(d)),
            "{} was written outside the data directories",
            file.display()
        );
    }
    Ok(())
}

pub async fn empty_partitions_read_as_empty<H: Harness>(h: &H) -> Result<()> {
    let c = h.client();
    let handle = c
        .register_shuffle(&app("empty"), ShuffleId(7), blocking(2, 5))
        .await?;
    write_map(c, &handle, 0, 0, &[0, 4, 0, 0, 0], true, opts()).await?;
    write_map(c, &handle, 1, 0, &[0; 5], true, opts()).await?;
    for p in [0, 2, 3, 4] {
        ensure!(
            read_partition(c, &handle, p, handle.all_maps()).await?.is_empty(),
            "partition {p}"
        );
    }
    ensure!(read_partition(c, &handle, 1, handle.all_maps()).await?.len() == 4);
    Ok(())
}

pub async fn ten_thousand_partitions<H: Harness>(h: &H) -> Result<()> {
    let c = h.client();
    let n = h.wide_partitions();
    let handle = c
        .register_shuffle(&app("wide"), ShuffleId(8), blocking(2, n))
        .await?;
    let counts: Vec<u32> = (0..n).map(|p| 1 + p % 3).collect();
    let small_buffers = WriterOptions {
        buffer_limit: 256 << 10,
        ..WriterOptions::default()
    };
    write_map(c, &handle, 0, 0, &counts, true, small_buffers).await?;
    write_map(c, &handle, 1, 0, &counts, true, small_buffers).await?;
    for p in 0..n {
        let got = read_partition(c, &handle, p, handle.all_maps()).await?;
        ensure!(
            got == expected(&[(0, 0), (1, 0)], &counts, p),
            "partition {p} differs"
        );
    }
    c.unregister_shuffle(&handle).await?;
    Ok(())
}

pub async fn eight_mib_records<H: Harness>(h: &H) -> Result<()> {
    let c = h.client();
    let handle = c
        .register_shuffle(&app("big"), ShuffleId(9), blocking(1, 2))
        .await?;
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let noise: Vec<u8> = (0..8 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let zeros = vec![0u8; 8 << 20];
    let mut w = c
        .open_writer(&handle, MapId(0), AttemptId(0), WriterOptions::default())
        .await?;
    for rec in [&noise, &zeros, &noise] {
        w.write(PartitionId(1), rec).await?;
    }
    w.write(PartitionId(0), b"small").await?;
    w.commit().await?;
    let got = read_partition(c, &handle, 1, handle.all_maps()).await?;
    ensure!(got.len() == 3, "3 records expected, got {}", got.len());
    ensure!(
        got[0] == noise && got[1] == zeros && got[2] == noise,
        "8 MiB records differ"
    );
    ensure!(read_partition(c, &handle, 0, handle.all_maps()).await? == vec![b"small".to_vec()]);
    Ok(())
}

pub async fn map_ranges_split_a_partition<H: Harness>(h: &H) -> Result<()> {
    let c = h.client();
    let handle = c
        .register_shuffle(&app("ranges"), ShuffleId(10), blocking(4, 1))
        .await?;
    for map in 0..4 {
        write_map(c, &handle, map, 0, &[6], true, opts()).await?;
    }
    let mut joined = Vec::new();
    for (start, end) in [(0, 1), (1, 3), (3, 4)] {
        let range = MapRange::new(MapId(start), MapId(end))?;
        let got = read_partition(c, &handle, 0, range).await?;
        let winners: Vec<(u32, u32)> = (start..end).map(|m| (m, 0)).collect();
        ensure!(got == expected(&winners, &[6], 0), "maps {start}..{end}");
        joined.extend(got);
    }
    ensure!(joined == read_partition(c, &handle, 0, handle.all_maps()).await?);
    Ok(())
}

pub async fn out_of_range_ids_are_refused<H: Harness>(h: &H) -> Result<()> {
    let c = h.client();
    let handle = c
        .register_shuffle(&app("ranges-bad"), ShuffleId(11), blocking(2, 3))
        .await?;
    let mut w = c.open_writer(&handle, MapId(0), AttemptId(0), opts()).await?;
    ensure!(matches!(
        w.write(PartitionId(3), b"x").await,
        Err(ClientError::PartitionOutOfRange {
            num_partitions: 3,
            ..
        })
    ));
    ensure!(matches!(
        c.open_writer(&handle, MapId(2), AttemptId(0), opts()).await,
        Err(ClientError::MapOutOfRange { num_maps: 2, .. })
    ));
    ensure!(matches!(
        c.push_blocks(&handle, vec![block_of(0, 0, 7, 0, 0..1)]).await,
        Err(ClientError::PartitionOutOfRange { .. }) | Err(ClientError::InvalidArgument(_))
    ));
    ensure!(matches!(
        c.register_shuffle(&app("ranges-bad"), ShuffleId(11), blocking(3, 3))
            .await,
        Err(ClientError::ShuffleExists { .. })
    ));
    let unknown = c
        .register_shuffle(&app("ranges-bad"), ShuffleId(12), blocking(1, 1))
        .await?;
    c.unregister_shuffle(&unknown).await?;
    ensure!(matches!(
        c.push_blocks(&unknown, vec![]).await,
        Err(ClientError::UnknownShuffle { .. })
    ));
    w.write(PartitionId(2), b"still usable").await?;
    Ok(())
}

mod modes;
pub use modes::*;
