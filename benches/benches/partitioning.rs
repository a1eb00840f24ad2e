//! A map task's write path: `Batcher::write` of 64 MiB of 100-byte records
//! spread over 64 or 10,000 partitions, with `finish`, so every block it
//! seals (LZ4 + CRC32C, or CRC32C alone) is timed. Default `WriterOptions`
//! (1 MiB blocks, 64 MiB buffer limit): with 64 partitions blocks fill to
//! 1 MiB; with 10,000 each partition holds ~6.7 KiB, sealed when the buffer
//! limit is crossed or at `finish`.
//!
//! `cargo bench -p benches --bench partitioning`

mod common;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use protocol::{AttemptId, Block, MapId};
use shuffle_client::{Batcher, WriterOptions};

use common::{codec_name, long_group, map_input, MIB, RECORD_LEN, SHUFFLE};

/// Record bytes one iteration writes.
const INPUT_BYTES: usize = 64 * MIB;

fn batcher_write(c: &mut Criterion) {
    let count = INPUT_BYTES / RECORD_LEN;
    let mut group = long_group(c, "batcher_write_64MiB", (count * RECORD_LEN) as u64);
    for partitions in [64u32, 10_000] {
        let (data, targets) = map_input(count, partitions);
        for compress in [true, false] {
            let options = WriterOptions {
                compress,
                ..WriterOptions::default()
            };
            let name = format!("{partitions}-partitions-{}", codec_name(compress));
            group.bench_function(name, |b| {
                b.iter_batched(
                    || Batcher::new(SHUFFLE, MapId(0), AttemptId(0), partitions, options),
                    |mut batcher| {
                        let mut ready: Vec<Block> = Vec::new();
                        for (rec, &p) in data.chunks_exact(RECORD_LEN).zip(&targets) {
                            batcher.write(p, rec, &mut ready).expect("write");
                        }
                        batcher.finish(&mut ready).expect("finish");
                        ready
                    },
                    BatchSize::PerIteration,
                )
            });
        }
    }
    group.finish();
}

criterion_group!(partitioning, batcher_write);
criterion_main!(partitioning);
