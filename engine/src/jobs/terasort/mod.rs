//! TeraSort: generate `size / 100` records of 100 bytes (a 10-byte random
//! key, then the row id and filler), range-partition them by key with
//! boundaries sampled from the data, sort each partition, and validate the
//! global order and a checksum over all records (as TeraValidate does).
//!
//! The checksum is the wrapping sum of the CRC32C of every record: it does
//! not depend on order, so the generator and the sorted output must agree.

use std::time::Instant;

use shuffle_client::protocol::PartitionId;

use crate::jobs::{parse_params, JobSpec};
use crate::EngineError;

mod plan;
pub use plan::{build, job, TerasortParams};

/// Bytes per record.
pub const RECORD_LEN: usize = 100;
/// Bytes of the sort key at the start of each record.
pub const KEY_LEN: usize = 10;

type Key = [u8; KEY_LEN];

/// What to sort.
#[derive(Clone, Copy, Debug)]
pub struct TerasortConfig {
    /// Bytes of input; `size / 100` records.
    pub size_bytes: u64,
    /// Map tasks (generators).
    pub maps: u32,
    /// Reduce partitions.
    pub partitions: u32,
    /// Seed of the generator: the same seed gives the same data.
    pub seed: u64,
}

impl TerasortConfig {
    /// Number of records.
    pub fn records(&self) -> u64 {
        self.size_bytes / RECORD_LEN as u64
    }
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

const FILLER: &[u8; 26 * 4] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZABCDEFGHIJKLMNOPQRSTUVWXYZABCDEFGHIJKLMNOPQRSTUVWXYZABCDEFGHIJKLMNOPQRSTUVWXYZ";

/// Writes row `row` of the data set into `out`.
pub fn generate_row(seed: u64, row: u64, out: &mut [u8; RECORD_LEN]) {
    let a = splitmix64(seed ^ row.wrapping_mul(0x2545_f491_4f6c_dd1d));
    let b = splitmix64(a);
    out[..8].copy_from_slice(&a.to_be_bytes());
    out[8..10].copy_from_slice(&b.to_be_bytes()[..2]);
    // Row id in hex, then filler, as TeraGen lays out its values.
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for (i, slot) in out[10..26].iter_mut().enumerate() {
        *slot = HEX[((row >> (60 - 4 * i)) & 0xf) as usize];
    }
    let shift = (row % 26) as usize;
    out[26..].copy_from_slice(&FILLER[shift..shift + RECORD_LEN - 26]);
}

fn key_of(record: &[u8]) -> Key {
    let mut k = [0u8; KEY_LEN];
    k.copy_from_slice(&record[..KEY_LEN]);
    k
}

/// Range partitioner: `partitions - 1` split keys sampled from the data.
#[derive(Clone, Debug)]
pub struct RangePartitioner {
    bounds: Vec<Key>,
}

impl RangePartitioner {
    /// Samples keys spread over the whole data set and picks evenly spaced
    /// quantiles as split points.
    pub fn sample(config: &TerasortConfig) -> Self {
        let n = config.records();
        let partitions = u64::from(config.partitions);
        let samples = n.min((partitions * 100).max(10_000));
        let mut keys: Vec<Key> = (0..samples)
            .map(|i| {
                let mut rec = [0u8; RECORD_LEN];
                generate_row(config.seed, i * n / samples.max(1), &mut rec);
                key_of(&rec)
            })
            .collect();
        keys.sort_unstable();
        let bounds = (1..partitions)
            .filter_map(|p| keys.get((p * keys.len() as u64 / partitions) as usize).copied())
            .collect();
        RangePartitioner { bounds }
    }

    /// As a dataflow partitioner (same split points).
    pub fn to_partitioner(&self) -> crate::dataflow::Partitioner {
        crate::dataflow::Partitioner::Range {
            bounds: self
                .bounds
                .iter()
                .map(|b| b.to_vec().into_boxed_slice())
                .collect(),
        }
    }

    /// The partition of a key: the number of split points at or below it.
    pub fn partition(&self, key: &[u8]) -> PartitionId {
        PartitionId(self.bounds.partition_point(|b| b.as_slice() <= key) as u32)
    }
}

/// Generates the whole data set without shuffling it, on `parallelism`
/// threads, and returns its checksum and the seconds it took: the baseline
/// the job's wall time is compared with.
pub fn generate_only(config: &TerasortConfig, parallelism: usize) -> (u64, f64) {
    let started = Instant::now();
    let threads = parallelism.max(1) as u64;
    let n = config.records();
    let sum = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut rec = [0u8; RECORD_LEN];
                    let mut sum = 0u64;
                    for row in (n * t / threads)..(n * (t + 1) / threads) {
                        generate_row(config.seed, row, &mut rec);
                        sum = sum.wrapping_add(u64::from(crc32c::crc32c(&rec)));
                    }
                    sum
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
            .fold(0u64, u64::wrapping_add)
    });
    (sum, started.elapsed().as_secs_f64())
}

/// This machine's own baseline for a TeraSort run, measured in the same
/// run: the seconds it takes to make the job's data alone, on all CPUs,
/// without shuffling it. Added to a report's `extra` as
/// `generate_seconds`; other jobs' reports are left as they are.
pub fn add_baseline(
    spec: &JobSpec,
    extra: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<(), EngineError> {
    if spec.name != "terasort" {
        return Ok(());
    }
    let params: TerasortParams = parse_params(&spec.name, &spec.params)?;
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let (_, seconds) = generate_only(&plan::config(&params)?, cpus);
    extra.insert("generate_seconds".into(), serde_json::json!(seconds));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generator_is_deterministic_and_keys_vary() {
        let (mut a, mut b) = ([0u8; RECORD_LEN], [0u8; RECORD_LEN]);
        generate_row(1, 42, &mut a);
        generate_row(1, 42, &mut b);
        assert_eq!(a, b);
        generate_row(1, 43, &mut b);
        assert_ne!(a[..KEY_LEN], b[..KEY_LEN]);
        assert_eq!(&a[10..26], b"000000000000002A");
    }

    #[test]
    fn range_partitions_are_ordered_and_balanced() {
        let config = TerasortConfig {
            size_bytes: 100 * 50_000,
            maps: 4,
            partitions: 8,
            seed: 7,
        };
        let part = RangePartitioner::sample(&config);
        let mut counts = [0u64; 8];
        let mut rec = [0u8; RECORD_LEN];
        for row in 0..config.records() {
            generate_row(config.seed, row, &mut rec);
            counts[part.partition(&rec[..KEY_LEN]).index()] += 1;
        }
        for c in counts {
            assert!((4_000..8_500).contains(&c), "unbalanced: {counts:?}");
        }
        assert!(part.partition(&[0; KEY_LEN]) == PartitionId(0));
        assert!(part.partition(&[0xff; KEY_LEN]) == PartitionId(7));
    }
}
