use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use protocol::{
    records, AppId, AttemptId, Block, BlockId, ChecksumSite, CommitManifest, MapId, MapRange, PartitionId,
    ServiceError, ShuffleId, ShuffleMode, ShuffleSpec,
};

use super::*;
use crate::ServerError;

mod failed_appends;
mod recovery;
mod streaming;

const SHUFFLE: ShuffleId = ShuffleId(7);

fn app() -> AppId {
    AppId::new("app-test").expect("valid")
}

fn store(dirs: usize, max_open_files: usize) -> (tempfile::TempDir, Store) {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut config = StoreConfig::new((0..dirs).map(|i| tmp.path().join(format!("disk{i}"))).collect());
    config.max_open_files = max_open_files;
    let store = Store::open(config).expect("open");
    (tmp, store)
}

fn register(store: &Store, maps: u32, partitions: u32) {
    let spec = ShuffleSpec::new(maps, partitions, ShuffleMode::Blocking).expect("spec");
    store.register_shuffle(&app(), SHUFFLE, spec).expect("register");
}

/// A block whose single record names its own identity.
fn block(map: u32, attempt: u32, partition: u32, seq: u32) -> Block {
    let mut raw = Vec::new();
    records::append(&mut raw, format!("m{map}a{attempt}p{partition}s{seq}").as_bytes()).expect("fits");
    let id = BlockId {
        shuffle: SHUFFLE,
        map: MapId(map),
        attempt: AttemptId(attempt),
        partition: PartitionId(partition),
        seq,
    };
    Block::seal(id, raw, 1, seq % 2 == 0).expect("seal")
}

/// The shuffle's folders that exist, over every data dir.
fn folders(store: &Store, shuffle: ShuffleId) -> Vec<PathBuf> {
    (0..store.disks.len())
        .map(|d| store.disks.layout.shuffle_dir(d, &app(), shuffle))
        .filter(|p| p.is_dir())
        .collect()
}

/// Where a partition's file was placed.
fn partition_path(store: &Store, shuffle: ShuffleId, partition: u32) -> PathBuf {
    let state = store.shuffle(&app(), shuffle).expect("registered");
    let file = state.file(PartitionId(partition)).expect("written");
    let path = locks::lock(&file).place().expect("placed").path.clone();
    path
}

fn manifest(counts: &[u32]) -> CommitManifest {
    CommitManifest::from_dense(counts)
}

fn read_all(store: &Store, partition: u32, maps: MapRange) -> Result<Vec<String>, ServerError> {
    let mut reader = store.read(&app(), SHUFFLE, PartitionId(partition), maps)?;
    let mut out = Vec::new();
    while let Some(block) = reader.next_block()? {
        for rec in block.records()? {
            out.push(String::from_utf8(rec?.to_vec()).expect("utf8"));
        }
    }
    Ok(out)
}

#[test]
fn committed_blocks_come_back_in_map_then_seq_order() {
    let (_tmp, store) = store(2, 16);
    register(&store, 2, 2);
    // Arrival order is scrambled across maps and sequence numbers.
    let blocks = [
        block(1, 0, 0, 1),
        block(0, 0, 0, 1),
        block(1, 0, 0, 0),
        block(0, 0, 0, 0),
        block(0, 0, 1, 0),
    ];
    let out = store.push(&app(), SHUFFLE, &blocks).expect("push");
    assert_eq!(
        out,
        PushOutcome {
            stored: 5,
            duplicates: 0,
            replica_bytes: 0
        }
    );
    store
        .commit(&app(), SHUFFLE, MapId(0), AttemptId(0), manifest(&[2, 1]))
        .expect("commit 0");
    let sealed = store
        .commit(&app(), SHUFFLE, MapId(1), AttemptId(0), manifest(&[2]))
        .expect("commit 1");
    assert!(sealed.sealed);
    assert_eq!(
        read_all(&store, 0, MapRange::all(2)).expect("read"),
        ["m0a0p0s0", "m0a0p0s1", "m1a0p0s0", "m1a0p0s1"]
    );
    assert_eq!(read_all(&store, 1, MapRange::all(2)).expect("read"), ["m0a0p1s0"]);
    // A skew split reads one map only.
    let only_map1 = MapRange::new(MapId(1), MapId(2)).expect("range");
    assert_eq!(
        read_all(&store, 0, only_map1).expect("read"),
        ["m1a0p0s0", "m1a0p0s1"]
    );
}

#[test]
fn duplicates_are_dropped_and_counted() {
    let (_tmp, store) = store(1, 16);
    register(&store, 1, 1);
    store.push(&app(), SHUFFLE, &[block(0, 0, 0, 0)]).expect("push");
    let again = store
        .push(&app(), SHUFFLE, &[block(0, 0, 0, 0), block(0, 0, 0, 1)])
        .expect("push");
    assert_eq!(
        again,
        PushOutcome {
            stored: 1,
            duplicates: 1,
            replica_bytes: 0
        }
    );
    assert_eq!(store.stats().duplicates_dropped, 1);
    store
        .commit(&app(), SHUFFLE, MapId(0), AttemptId(0), manifest(&[2]))
        .expect("commit");
    assert_eq!(
        read_all(&store, 0, MapRange::all(1)).expect("read"),
        ["m0a0p0s0", "m0a0p0s1"]
    );
}

#[test]
fn first_attempt_to_commit_wins_and_losers_are_never_served() {
    let (_tmp, store) = store(1, 16);
    register(&store, 1, 1);
    store
        .push(&app(), SHUFFLE, &[block(0, 0, 0, 0), block(0, 1, 0, 0)])
        .expect("push");
    store
        .commit(&app(), SHUFFLE, MapId(0), AttemptId(1), manifest(&[1]))
        .expect("attempt 1 commits");
    let err = store
        .commit(&app(), SHUFFLE, MapId(0), AttemptId(0), manifest(&[1]))
        .expect_err("conflict");
    assert!(matches!(
        err,
        ServerError::Service(ServiceError::CommitConflict {
            committed: AttemptId(1),
            attempt: AttemptId(0),
            ..
        })
    ));
    let err = store
        .push(&app(), SHUFFLE, &[block(0, 0, 0, 1)])
        .expect_err("superseded");
    assert!(matches!(
        err,
        ServerError::Service(ServiceError::AttemptSuperseded { .. })
    ));
    // Retrying the winning commit is harmless; changing its manifest is not.
    let again = store
        .commit(&app(), SHUFFLE, MapId(0), AttemptId(1), manifest(&[1]))
        .expect("idempotent");
    assert!(again.already_committed && again.sealed);
    assert!(matches!(
        store.commit(&app(), SHUFFLE, MapId(0), AttemptId(1), manifest(&[2])),
        Err(ServerError::Service(ServiceError::ManifestMismatch { .. }))
    ));
    assert_eq!(read_all(&store, 0, MapRange::all(1)).expect("read"), ["m0a1p0s0"]);
}

#[test]
fn after_a_commit_its_blocks_are_duplicates_and_blocks_past_its_manifest_are_refused() {
    let (_tmp, store) = store(1, 16);
    register(&store, 2, 2);
    store.push(&app(), SHUFFLE, &[block(0, 0, 0, 0)]).expect("push");
    store
        .commit(&app(), SHUFFLE, MapId(0), AttemptId(0), manifest(&[1]))
        .expect("commit");
    let again = store
        .push(&app(), SHUFFLE, &[block(0, 0, 0, 0)])
        .expect("a retried push");
    assert_eq!(again.duplicates, 1);
    for late in [block(0, 0, 0, 1), block(0, 0, 1, 0)] {
        let err = store
            .push(&app(), SHUFFLE, &[late])
            .expect_err("past the manifest");
        assert!(matches!(err, ServerError::BeyondManifest { .. }), "{err}");
    }
    store
        .commit(&app(), SHUFFLE, MapId(1), AttemptId(0), manifest(&[]))
        .expect("seal");
    assert_eq!(read_all(&store, 0, MapRange::all(2)).expect("read"), ["m0a0p0s0"]);
    assert!(read_all(&store, 1, MapRange::all(2)).expect("read").is_empty());
}

#[test]
fn a_commit_naming_blocks_that_never_arrived_is_refused() {
    let (_tmp, store) = store(1, 16);
    register(&store, 1, 2);
    store
        .push(&app(), SHUFFLE, &[block(0, 0, 1, 0), block(0, 0, 1, 2)])
        .expect("push");
    let err = store
        .commit(&app(), SHUFFLE, MapId(0), AttemptId(0), manifest(&[0, 3]))
        .expect_err("gap");
    assert!(matches!(
        err,
        ServerError::Service(ServiceError::MissingBlocks {
            partition: PartitionId(1),
            missing_seq: 1,
            expected: 3,
            ..
        })
    ));
    assert!(!store.status(&app(), SHUFFLE).expect("status").sealed);
}

#[test]
fn reading_before_the_seal_is_not_ready() {
    let (_tmp, store) = store(1, 16);
    register(&store, 2, 1);
    store
        .commit(&app(), SHUFFLE, MapId(0), AttemptId(0), manifest(&[]))
        .expect("commit");
    let err = store
        .read(&app(), SHUFFLE, PartitionId(0), MapRange::all(2))
        .expect_err("not sealed");
    assert!(matches!(
        err,
        ServerError::Service(ServiceError::NotReady {
            committed: 1,
            num_maps: 2,
            ..
        })
    ));
    store
        .commit(&app(), SHUFFLE, MapId(1), AttemptId(0), manifest(&[]))
        .expect("commit");
    assert!(read_all(&store, 0, MapRange::all(2))
        .expect("empty partition")
        .is_empty());
}

#[test]
fn out_of_range_ids_are_refused_and_store_nothing() {
    let (_tmp, store) = store(1, 16);
    register(&store, 1, 2);
    let err = store
        .push(&app(), SHUFFLE, &[block(0, 0, 0, 0), block(0, 0, 2, 0)])
        .expect_err("partition");
    assert!(matches!(
        err,
        ServerError::Service(ServiceError::PartitionOutOfRange {
            num_partitions: 2,
            ..
        })
    ));
    let err = store
        .push(&app(), SHUFFLE, &[block(1, 0, 0, 0)])
        .expect_err("map");
    assert!(matches!(
        err,
        ServerError::Service(ServiceError::MapOutOfRange { num_maps: 1, .. })
    ));
    assert_eq!(store.stats().blocks_stored, 0);
    assert!(matches!(
        store.read(&app(), SHUFFLE, PartitionId(5), MapRange::all(1)),
        Err(ServerError::Service(ServiceError::PartitionOutOfRange { .. }))
    ));
    assert!(matches!(
        store.push(&app(), ShuffleId(99), &[]),
        Err(ServerError::Service(ServiceError::UnknownShuffle { .. }))
    ));
}

#[test]
fn a_corrupt_payload_in_a_push_is_refused() {
    let (_tmp, store) = store(1, 16);
    register(&store, 1, 1);
    let mut bad = block(0, 0, 0, 0);
    let mut payload = bad.payload.to_vec();
    payload[0] ^= 0xff;
    bad.payload = payload.into();
    let err = store
        .push(&app(), SHUFFLE, &[block(0, 0, 0, 1), bad])
        .expect_err("crc");
    assert!(matches!(
        err,
        ServerError::Service(ServiceError::ChecksumMismatch {
            site: ChecksumSite::Received,
            ..
        })
    ));
    assert_eq!(store.stats().blocks_stored, 0);
}

fn sealed_single_partition(store: &Store) -> PathBuf {
    register(store, 1, 1);
    store
        .push(&app(), SHUFFLE, &[block(0, 0, 0, 0), block(0, 0, 0, 1)])
        .expect("push");
    store
        .commit(&app(), SHUFFLE, MapId(0), AttemptId(0), manifest(&[2]))
        .expect("commit");
    partition_path(store, SHUFFLE, 0)
}

#[test]
fn a_flipped_byte_on_disk_is_a_checksum_mismatch_naming_the_block() {
    let (_tmp, store) = store(1, 16);
    let file = sealed_single_partition(&store);
    let mut bytes = std::fs::read(&file).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&file, bytes).expect("write");
    let mut reader = store
        .read(&app(), SHUFFLE, PartitionId(0), MapRange::all(1))
        .expect("open");
    assert!(reader.next_block().expect("first block intact").is_some());
    match reader.next_block() {
        Err(ServerError::Service(ServiceError::ChecksumMismatch {
            block,
            site: ChecksumSite::Stored,
            ..
        })) => {
            assert_eq!(
                (block.map, block.seq, block.partition),
                (MapId(0), 1, PartitionId(0))
            );
        }
        other => panic!("expected a checksum mismatch, got {other:?}"),
    }
    assert_eq!(store.stats().checksum_mismatches, 1);
}

#[test]
fn a_truncated_file_is_an_error_not_a_crash() {
    let (_tmp, store) = store(1, 16);
    let file = sealed_single_partition(&store);
    let len = std::fs::metadata(&file).expect("stat").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .expect("open")
        .set_len(len - 3)
        .expect("truncate");
    let err = store
        .read(&app(), SHUFFLE, PartitionId(0), MapRange::all(1))
        .expect_err("truncated");
    assert!(matches!(err, ServerError::CorruptFile { .. }), "{err}");
}

#[test]
fn unregister_deletes_the_files_and_forgets_the_shuffle() {
    let (tmp, store) = store(3, 16);
    register(&store, 1, 6);
    let blocks: Vec<Block> = (0..6).map(|p| block(0, 0, p, 0)).collect();
    store.push(&app(), SHUFFLE, &blocks).expect("push");
    let files = walk(tmp.path());
    assert_eq!(files.len(), 6);
    store.unregister_shuffle(&app(), SHUFFLE).expect("unregister");
    assert!(walk(tmp.path()).is_empty());
    assert!(matches!(
        store.status(&app(), SHUFFLE),
        Err(ServerError::Service(ServiceError::UnknownShuffle { .. }))
    ));
    register(&store, 1, 1);
    store.unregister_app(&app()).expect("unregister app");
    for d in store.data_dirs() {
        assert_eq!(
            std::fs::read_dir(d).expect("dir").count(),
            0,
            "{} not empty",
            d.display()
        );
    }
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn works_with_no_file_handles_kept_open() {
    let (_tmp, store) = store(1, 0);
    register(&store, 1, 3);
    for seq in 0..3 {
        let blocks: Vec<Block> = (0..3).map(|p| block(0, 0, p, seq)).collect();
        store.push(&app(), SHUFFLE, &blocks).expect("push");
    }
    store
        .commit(&app(), SHUFFLE, MapId(0), AttemptId(0), manifest(&[3, 3, 3]))
        .expect("commit");
    assert_eq!(
        read_all(&store, 2, MapRange::all(1)).expect("read"),
        ["m0a0p2s0", "m0a0p2s1", "m0a0p2s2"]
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// The index returns exactly the committed attempt's blocks, once each,
    /// in (map, seq) order, whatever the arrival order, duplicates and
    /// competing attempts.
    #[test]
    fn index_serves_exactly_the_committed_attempts(
        counts in proptest::collection::vec(proptest::collection::vec(0u32..4, 3), 1..4),
        winners in proptest::collection::vec(0u32..3, 4),
        order in any::<u64>(),
        dup_every in 1usize..5,
        max_open_files in 0usize..3,
    ) {
        let maps = counts.len() as u32;
        let (_tmp, store) = store(2, max_open_files);
        register(&store, maps, 3);
        // Every attempt 0..3 of every map writes the same counts.
        let mut blocks = Vec::new();
        for (m, per_part) in counts.iter().enumerate() {
            for a in 0..3 {
                for (p, n) in per_part.iter().enumerate() {
                    for s in 0..*n {
                        blocks.push(block(m as u32, a, p as u32, s));
                    }
                }
            }
        }
        // Deterministic shuffle of the arrival order, with duplicates.
        let mut x = order | 1;
        for i in (1..blocks.len()).rev() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            blocks.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let dups: Vec<Block> = blocks.iter().step_by(dup_every).cloned().collect();
        for chunk in blocks.chunks(5).chain(dups.chunks(3)) {
            store.push(&app(), SHUFFLE, chunk).expect("push");
        }
        for m in 0..maps {
            let w = winners[m as usize];
            store.commit(&app(), SHUFFLE, MapId(m), AttemptId(w), manifest(&counts[m as usize])).expect("commit");
        }
        let check = |store: &Store| -> Result<(), TestCaseError> {
            for p in 0..3u32 {
                let got = read_all(store, p, MapRange::all(maps)).expect("read");
                let want: Vec<String> = (0..maps)
                    .flat_map(|m| {
                        let w = winners[m as usize];
                        (0..counts[m as usize][p as usize]).map(move |s| format!("m{m}a{w}p{p}s{s}"))
                    })
                    .collect();
                prop_assert_eq!(got, want);
            }
            Ok(())
        };
        check(&store)?;
        // The same after a restart, from the meta written at seal.
        let dirs = store.data_dirs().to_vec();
        drop(store);
        check(&Store::open(StoreConfig::new(dirs)).expect("reopen"))?;
    }
}
