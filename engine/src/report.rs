//! The report a job prints (as one JSON object with `--json`).

use serde::Serialize;

/// What a job did. Field names are stable: scripts read them.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct JobReport {
    /// `terasort`, `wordcount`.
    pub job: String,
    /// Shuffle mode (`blocking`, ...).
    pub mode: String,
    /// `embedded` or the shuffle server URLs.
    pub shuffle: String,
    /// Records produced by the sources.
    pub records_in: u64,
    /// Records produced by the sinks.
    pub records_out: u64,
    /// Bytes pushed to the shuffle (block headers + stored payloads).
    pub shuffle_bytes_written: u64,
    /// Bytes fetched from the shuffle.
    pub shuffle_bytes_read: u64,
    /// Bytes the shuffle service wrote to disk.
    pub spilled_bytes: u64,
    /// Wall time of the job, source to sink (data generation for terasort
    /// included, since it is the job's source).
    pub wall_seconds: f64,
    /// Time of each stage, in order.
    pub stages: Vec<StageReport>,
    pub maps: u32,
    pub partitions: u32,
    pub parallelism: usize,
    /// The job's output passed its validation.
    pub valid: bool,
    /// Job-specific figures.
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// One stage's timing.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct StageReport {
    pub name: String,
    pub tasks: u32,
    pub seconds: f64,
}
