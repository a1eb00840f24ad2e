//! TeraSort on the plan: a `map` stage generating pairs (the 10-byte key,
//! then the other 90 bytes of the record as the value), range-partitioned
//! by key with split points sampled from the seeded generator at build
//! time, and a `reduce` stage sorting each partition. Each task's summary
//! carries its count and checksum (and, for reducers, first and last key
//! and whether its output was ordered); `finish` checks the global order
//! across partitions and that the sorted records' checksum equals the
//! generator's.

use serde::{Deserialize, Serialize};
use shuffle_client::protocol::units::parse_size;

use super::{generate_row, RangePartitioner, TerasortConfig, KEY_LEN, RECORD_LEN};
use crate::dataflow::{Job, JobBuilder, Sink, Summary};
use crate::jobs::params::at_least_one;
use crate::jobs::{parse_params, summary, JobSpec};
use crate::plan::{JobResult, TaskOutput};
use crate::{kv, EngineError};

/// TeraSort's parameters: JSON, a job file's `[params]`, or the flags of
/// `engine run terasort`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct TerasortParams {
    /// Bytes of data to sort (1GiB, 256MiB, 10MB...), size / 100 records.
    /// Default: 1GiB.
    #[serde(with = "crate::jobs::size")]
    #[arg(long, value_parser = parse_size, default_value_t = Self::DEFAULT.size, hide_default_value = true)]
    pub size: u64,
    /// Reduce partitions. Default: 64.
    #[arg(long, default_value_t = Self::DEFAULT.partitions, hide_default_value = true)]
    pub partitions: u32,
    /// Map tasks (generators). Default: 16.
    #[arg(long, default_value_t = Self::DEFAULT.maps, hide_default_value = true)]
    pub maps: u32,
    /// Seed of the data generator. Default: 0x5eed.
    #[arg(long, default_value_t = Self::DEFAULT.seed, hide_default_value = true)]
    pub seed: u64,
}

impl TerasortParams {
    /// The defaults of JSON and job files, and of the flags that have one.
    pub const DEFAULT: TerasortParams = TerasortParams {
        size: 1 << 30,
        partitions: 64,
        maps: 16,
        seed: 0x5eed,
    };
}

impl Default for TerasortParams {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The registry's factory.
pub fn build(spec: &JobSpec) -> Result<Job, EngineError> {
    job(&parse_params(&spec.name, &spec.params)?)
}

/// What a generator task saw.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct MapSummary {
    records: u64,
    checksum: u64,
}

impl Summary for MapSummary {
    fn observe(&mut self, record: &[u8]) -> Result<(), EngineError> {
        self.records += 1;
        self.checksum = self
            .checksum
            .wrapping_add(u64::from(crc32c::crc32c(kv::key_and_value(record)?)));
        Ok(())
    }

    fn finish(self: Box<Self>) -> serde_json::Value {
        serde_json::to_value(*self).unwrap_or_default()
    }
}

/// What a reducer's sorted output looked like.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct SortedSummary {
    records: u64,
    checksum: u64,
    sorted: bool,
    /// First and last key, hex.
    first: Option<String>,
    last: Option<String>,
    #[serde(skip)]
    prev: Vec<u8>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Summary for SortedSummary {
    fn observe(&mut self, record: &[u8]) -> Result<(), EngineError> {
        let (key, _) = kv::decode(record)?;
        let whole = kv::key_and_value(record)?;
        if whole.len() != RECORD_LEN || key.len() != KEY_LEN {
            return Err(EngineError::MalformedRecord {
                reason: format!(
                    "a {}-byte terasort record with a {}-byte key",
                    whole.len(),
                    key.len()
                ),
            });
        }
        if self.records == 0 {
            self.first = Some(hex(key));
        } else if self.prev.as_slice() > key {
            self.sorted = false;
        }
        self.prev.clear();
        self.prev.extend_from_slice(key);
        self.records += 1;
        self.checksum = self.checksum.wrapping_add(u64::from(crc32c::crc32c(whole)));
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> serde_json::Value {
        if self.records > 0 {
            self.last = Some(hex(&self.prev));
        }
        serde_json::to_value(*self).unwrap_or_default()
    }
}

/// The generator's settings of valid parameters.
pub(super) fn config(p: &TerasortParams) -> Result<TerasortConfig, EngineError> {
    let config = TerasortConfig {
        size_bytes: p.size,
        maps: at_least_one("maps", p.maps)?,
        partitions: at_least_one("partitions", p.partitions)?,
        seed: p.seed,
    };
    if config.records() == 0 {
        return Err(EngineError::InvalidArgument {
            what: "size",
            reason: format!("{} bytes hold no 100-byte record", p.size),
        });
    }
    if u64::from(p.maps) > config.records() {
        return Err(EngineError::InvalidArgument {
            what: "maps",
            reason: format!("{} maps for {} records", p.maps, config.records()),
        });
    }
    Ok(config)
}

/// TeraSort as a plan.
pub fn job(p: &TerasortParams) -> Result<Job, EngineError> {
    let config = config(p)?;
    let seed = config.seed;
    let mut b = JobBuilder::new("terasort");
    b.generate_rows(config.maps, config.records(), move |row, buf| {
        let mut rec = [0u8; RECORD_LEN];
        generate_row(seed, row, &mut rec);
        buf.push(KEY_LEN as u8); // the pair's key length: the key is the prefix
        buf.extend_from_slice(&rec);
    })
    .keyed()
    .name("map")
    .summarize(|_, _| Box::new(MapSummary::default()))
    .sort_with(RangePartitioner::sample(&config).to_partitioner())
    .name("reduce")
    .summarize(|_, _| {
        Box::new(SortedSummary {
            records: 0,
            checksum: 0,
            sorted: true,
            first: None,
            last: None,
            prev: Vec::new(),
        })
    })
    .sink(Sink::Count);
    b.finish_with(move |job, outputs| finish(&config, job, outputs));
    b.build()
}

/// TeraValidate: every partition sorted, partitions in key order, the same
/// records (count and checksum) as generated.
fn finish(
    config: &TerasortConfig,
    _job: &Job,
    outputs: &[Vec<TaskOutput>],
) -> Result<JobResult, EngineError> {
    let maps: Vec<MapSummary> = summary::read(&outputs[0])?;
    let parts: Vec<SortedSummary> = summary::read(&outputs[1])?;
    let records_in: u64 = maps.iter().map(|m| m.records).sum();
    let map_checksum = maps.iter().fold(0u64, |s, m| s.wrapping_add(m.checksum));
    let records_out: u64 = parts.iter().map(|p| p.records).sum();
    let out_checksum = parts.iter().fold(0u64, |s, p| s.wrapping_add(p.checksum));
    let all_sorted = parts.iter().all(|p| p.sorted);
    // Hex of equal-length keys orders as the keys do.
    let non_empty: Vec<&SortedSummary> = parts.iter().filter(|p| p.records > 0).collect();
    let ordered = non_empty.windows(2).all(|w| w[0].last <= w[1].first);
    let mut problems = Vec::new();
    if records_in != config.records() {
        problems.push(format!(
            "generated {records_in} records, expected {}",
            config.records()
        ));
    }
    if records_out != records_in {
        problems.push(format!("sorted {records_out} records of {records_in}"));
    }
    if out_checksum != map_checksum {
        problems.push(format!(
            "checksum {out_checksum:016x} of the output, {map_checksum:016x} generated"
        ));
    }
    if !all_sorted {
        problems.push("a partition is not sorted".into());
    }
    if !ordered {
        problems.push("partitions are not in key order".into());
    }
    let mut extra = serde_json::Map::new();
    extra.insert("size_bytes".into(), config.size_bytes.into());
    extra.insert("checksum".into(), format!("{out_checksum:016x}").into());
    extra.insert("partitions_sorted".into(), all_sorted.into());
    extra.insert("partitions_in_order".into(), ordered.into());
    extra.insert(
        "largest_partition_records".into(),
        parts.iter().map(|p| p.records).max().unwrap_or(0).into(),
    );
    Ok(JobResult::from_problems(records_out, problems, extra))
}
