//! The server's store on a temp dir: `Store::push` (whole-batch checks,
//! CRC32C of every payload, index insert, file append), `Store::commit` of
//! a map with 64 partitions, and a `PartitionReader` streaming a sealed
//! partition of 64 MiB of records (index lookup, mmap, header and CRC32C
//! checks).
//!
//! `cargo bench -p benches --bench storage`
//!
//! The store and its temp dir live for a whole benchmark; written data is
//! dropped (the app unregistered, its files deleted) outside the clock every
//! few hundred MiB so the page cache, not the disk, absorbs the appends, as
//! it does on a server. Nothing is fsynced except at a seal, which only the
//! read benchmark's setup does.

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use protocol::{
    AppId, AttemptId, Block, CommitManifest, MapId, MapRange, PartitionId, ShuffleMode, ShuffleSpec,
};
use shuffle_server::storage::{Store, StoreConfig};
use tempfile::TempDir;

use common::{block_id, codec_name, long_group, sealed_block, with_id, MIB, SHUFFLE};

/// Bytes stored before an app's files are deleted and a new app starts.
const ROTATE_AFTER: u64 = 512 << 20;

/// A store on a temp dir, and the app whose shuffle the benchmark writes.
struct BenchStore {
    store: Store,
    app: AppId,
    apps: u32,
    spec: ShuffleSpec,
    stored: u64,
    _dir: TempDir,
}

impl BenchStore {
    fn new(num_maps: u32, num_partitions: u32) -> Self {
        let dir = tempfile::tempdir().expect("create a temp dir");
        let store = Store::open(StoreConfig::new(vec![dir.path().to_path_buf()])).expect("open the store");
        let spec = ShuffleSpec::new(num_maps, num_partitions, ShuffleMode::Blocking).expect("a valid spec");
        let mut bench = BenchStore {
            store,
            app: AppId::new("bench-0").expect("a valid app id"),
            apps: 0,
            spec,
            stored: 0,
            _dir: dir,
        };
        bench.register();
        bench
    }

    fn register(&mut self) {
        self.app = AppId::new(format!("bench-{}", self.apps)).expect("a valid app id");
        self.apps += 1;
        self.stored = 0;
        self.store
            .register_shuffle(&self.app, SHUFFLE, self.spec)
            .expect("register the shuffle");
    }

    /// Deletes the current app's files and starts a fresh shuffle.
    fn rotate(&mut self) {
        self.store.unregister_app(&self.app).expect("unregister the app");
        self.register();
    }

    fn push(&mut self, blocks: &[Block]) {
        let outcome = self.store.push(&self.app, SHUFFLE, blocks).expect("push");
        assert_eq!(outcome.stored as usize, blocks.len(), "every block is new");
        self.stored += blocks.iter().map(|b| b.encoded_len() as u64).sum::<u64>();
    }

    fn commit(&self, map: u32, manifest: CommitManifest) {
        self.store
            .commit(&self.app, SHUFFLE, MapId(map), AttemptId(0), manifest)
            .expect("commit");
    }
}

/// `Store::push` of one request's blocks (the client's 4 MiB push batch):
/// four 1 MiB blocks over 64 partitions, or ~6.7 KiB blocks (what a 64 MiB
/// writer buffer gives each of 10,000 partitions) over 10,000 partitions,
/// past the 4,096 files the store keeps open.
fn push(c: &mut Criterion) {
    let mut group = c.benchmark_group("store_push_4MiB");
    let cases = [
        (64u32, MIB, true),
        (64, MIB, false),
        (10_000, (64 * MIB) / 10_000, true),
    ];
    for (partitions, block_raw, compress) in cases {
        let template = sealed_block(block_raw, compress);
        let per_push = (4 * MIB).div_ceil(template.header.raw_len as usize) as u32;
        group.throughput(Throughput::Bytes(u64::from(template.header.raw_len * per_push)));
        let name = format!(
            "{partitions}-partitions-{}KiB-{}",
            block_raw >> 10,
            codec_name(compress)
        );
        let mut bench = BenchStore::new(1, partitions);
        let mut next_seq = vec![0u32; partitions as usize];
        let mut cursor = 0u32;
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    if bench.stored > ROTATE_AFTER {
                        bench.rotate();
                        next_seq.fill(0);
                    }
                    let batch: Vec<Block> = (0..per_push)
                        .map(|_| {
                            let p = cursor % partitions;
                            cursor = cursor.wrapping_add(1);
                            let seq = &mut next_seq[p as usize];
                            *seq += 1;
                            with_id(&template, block_id(0, p, *seq - 1))
                        })
                        .collect();
                    let started = Instant::now();
                    bench.push(&batch);
                    timed += started.elapsed();
                }
                timed
            })
        });
    }
    group.finish();
}

/// `Store::commit` of one map attempt that wrote one block to each of 64
/// partitions (manifest checks, then every partition's index). Not the
/// last map, so nothing seals. Its cost does not depend on block sizes, so
/// the setup pushes one-record blocks; the throughput is stated per 64 MiB
/// of map output (64 blocks of 1 MiB, as `partitioning` produces), the
/// nanoseconds per commit are the direct reading.
fn commit(c: &mut Criterion) {
    const PARTITIONS: u32 = 64;
    const MAPS: u32 = 4096;
    let mut group = c.benchmark_group("store_commit");
    group.throughput(Throughput::Bytes(u64::from(PARTITIONS) * MIB as u64));
    let template = sealed_block(1, false);
    let manifest = CommitManifest::from_dense(&[1; PARTITIONS as usize]);
    // One more map than is ever committed: the shuffle never seals.
    let mut bench = BenchStore::new(MAPS + 1, PARTITIONS);
    let mut map = 0u32;
    group.bench_function("64-partitions", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                if map == MAPS {
                    bench.rotate();
                    map = 0;
                }
                let blocks: Vec<Block> = (0..PARTITIONS)
                    .map(|p| with_id(&template, block_id(map, p, 0)))
                    .collect();
                bench.push(&blocks);
                let manifest = manifest.clone();
                let started = Instant::now();
                bench.commit(map, manifest);
                timed += started.elapsed();
                map += 1;
            }
            timed
        })
    });
    group.finish();
}

/// A reducer's source: `Store::read` of a sealed partition of 64 blocks
/// (one per map, 1 MiB of records each: 64 MiB raw), streamed to the end
/// with `next_block`. The file is in the page cache, as just after a map
/// stage; each iteration maps it anew.
fn read(c: &mut Criterion) {
    const MAPS: u32 = 64;
    let mut group = long_group(c, "partition_read_64MiB", 0);
    for compress in [true, false] {
        let template = sealed_block(MIB, compress);
        let mut bench = BenchStore::new(MAPS, 1);
        for map in 0..MAPS {
            bench.push(&[with_id(&template, block_id(map, 0, 0))]);
            bench.commit(map, CommitManifest::from_dense(&[1]));
        }
        group.throughput(Throughput::Bytes(u64::from(template.header.raw_len * MAPS)));
        let name = format!("{}-{}MiB-stored", codec_name(compress), bench.stored >> 20);
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut reader = bench
                    .store
                    .read(&bench.app, SHUFFLE, PartitionId(0), MapRange::all(MAPS))
                    .expect("open the sealed partition");
                let mut blocks = 0u32;
                while let Some(block) = reader.next_block().expect("a valid block") {
                    black_box(block);
                    blocks += 1;
                }
                assert_eq!(blocks, MAPS);
            })
        });
    }
    group.finish();
}

criterion_group!(storage, push, commit, read);
criterion_main!(storage);
