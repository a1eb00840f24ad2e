//! Setup shared by the criterion micro-benchmarks (`mod common;` in each).
//!
//! Everything here runs before the clock starts: TeraSort-like records, the
//! raw payloads and sealed blocks built from them, block ids, and the group
//! settings of benchmarks whose single iteration is long.
//!
//! Throughput convention (see `benches/MICRO.md`): a stage that works on a
//! block counts the block's *raw* record bytes (what the pipeline moves,
//! before compression), so every stage of the path reads on one scale.

// Each bench binary uses a different part of this module.
#![allow(dead_code)]

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, SamplingMode, Throughput};
use protocol::{records, AttemptId, Block, BlockId, MapId, PartitionId, ShuffleId};

/// One mebibyte.
pub const MIB: usize = 1 << 20;
/// Bytes of one record (as TeraSort's).
pub const RECORD_LEN: usize = 100;
/// The shuffle every benchmark block belongs to.
pub const SHUFFLE: ShuffleId = ShuffleId(1);

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The 64-bit hash a record's key starts with (also picks its partition).
pub fn key_hash(row: u64) -> u64 {
    splitmix64(row)
}

/// `len` incompressible bytes, so nothing data-dependent is measured.
pub fn noise(len: usize) -> Vec<u8> {
    let mut out: Vec<u8> = (0..len.div_ceil(8) as u64)
        .flat_map(|i| splitmix64(i).to_le_bytes())
        .collect();
    out.truncate(len);
    out
}

/// A TeraGen-like record: a 10-byte random key, the row id as 32 hex
/// digits, then filler letters repeated in runs of four.
pub fn record(row: u64) -> [u8; RECORD_LEN] {
    let mut rec = [0u8; RECORD_LEN];
    let k = key_hash(row);
    rec[..8].copy_from_slice(&k.to_be_bytes());
    rec[8..10].copy_from_slice(&splitmix64(k).to_be_bytes()[..2]);
    let id = format!("{row:032X}");
    rec[10..42].copy_from_slice(id.as_bytes());
    for (i, b) in rec[42..].iter_mut().enumerate() {
        *b = b'A' + ((row as usize + i / 4) % 26) as u8;
    }
    rec
}

/// A block's raw payload as a `Batcher` seals it: framed records appended
/// until it holds at least `at_least` bytes. Returns it with its record count.
pub fn raw_payload(at_least: usize) -> (Vec<u8>, u32) {
    let mut raw = Vec::with_capacity(at_least + RECORD_LEN + 1);
    let mut count = 0u32;
    while raw.len() < at_least {
        records::append(&mut raw, &record(u64::from(count))).expect("a 100-byte record fits a block");
        count += 1;
    }
    (raw, count)
}

/// `count` records back to back and the partition (of `partitions`) each
/// goes to, as a map task holds its input.
pub fn map_input(count: usize, partitions: u32) -> (Vec<u8>, Vec<PartitionId>) {
    let mut data = Vec::with_capacity(count * RECORD_LEN);
    let mut targets = Vec::with_capacity(count);
    for row in 0..count as u64 {
        data.extend_from_slice(&record(row));
        targets.push(PartitionId((key_hash(row) % u64::from(partitions)) as u32));
    }
    (data, targets)
}

/// The id of block `seq` of map `map` (attempt 0) for `partition`.
pub fn block_id(map: u32, partition: u32, seq: u32) -> BlockId {
    BlockId {
        shuffle: SHUFFLE,
        map: MapId(map),
        attempt: AttemptId(0),
        partition: PartitionId(partition),
        seq,
    }
}

/// A sealed block of about `raw_len` raw bytes of records.
pub fn sealed_block(raw_len: usize, compress: bool) -> Block {
    let (raw, count) = raw_payload(raw_len);
    Block::seal(block_id(0, 0, 0), raw, count, compress).expect("seal a benchmark block")
}

/// `block` under another id: the CRC covers the payload only, so the copy
/// stays valid, and the payload is shared, not copied.
pub fn with_id(block: &Block, id: BlockId) -> Block {
    let mut copy = block.clone();
    copy.header.id = id;
    copy
}

/// "lz4" or "raw", for benchmark names.
pub fn codec_name(compress: bool) -> &'static str {
    if compress {
        "lz4"
    } else {
        "raw"
    }
}

/// A group for benchmarks whose one iteration takes tens of milliseconds or
/// more: ten flat samples, so a run stays within its measurement time.
/// Times are left to the command line (`--warm-up-time`, `--measurement-time`).
pub fn long_group<'a>(c: &'a mut Criterion, name: &str, bytes: u64) -> BenchmarkGroup<'a, WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .throughput(Throughput::Bytes(bytes));
    group
}
