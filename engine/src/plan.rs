//! The values a job is scheduled by: stage and shuffle shapes, what a task
//! is given to run and what it reports. This module is the contract between
//! the dataflow layer, whose jobs are made of these values and run the
//! tasks, and whoever runs them (the scheduler, or the test runner).
//!
//! * [`StageInfo`] and [`Edge`]: a stage and a shuffle as the scheduler
//!   sees them;
//! * [`TaskContext`]: what one task runs with (the shuffle handles are
//!   registered by the scheduler, one per edge); [`TaskCounters`]: its live
//!   figures; [`TaskOutput`]: what it reports once finished;
//! * [`JobResult`]: a job's validated outcome.

use std::sync::atomic::AtomicU64;

use serde::{Deserialize, Serialize};
use shuffle_client::protocol::AttemptId;
use shuffle_client::{ShuffleHandle, WriterOptions};

/// A stage's id: its index in the job's stages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StageId(pub u32);

/// A shuffle between two stages; `partitions` is the `to` stage's tasks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Edge {
    pub from: StageId,
    pub to: StageId,
    pub partitions: u32,
}

/// A stage as the scheduler sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageInfo {
    pub id: StageId,
    pub name: String,
    pub tasks: u32,
    /// Indexes into the job's edges, in input order (a join: left, right).
    pub inputs: Vec<usize>,
    /// Indexes into the job's edges; empty for a sink stage.
    pub outputs: Vec<usize>,
}

/// What a task needs to run.
#[derive(Debug)]
pub struct TaskContext<'a, C> {
    pub client: &'a C,
    pub stage: StageId,
    pub task: u32,
    pub attempt: AttemptId,
    /// One per edge, by edge index.
    pub handles: &'a [ShuffleHandle],
    pub writer_options: WriterOptions,
    pub counters: &'a TaskCounters,
}

/// A running task's progress, updated per batch or block.
#[derive(Debug, Default)]
pub struct TaskCounters {
    /// Records read from the source or the input shuffles.
    pub records_in: AtomicU64,
    /// Records written to the output shuffle or the sink.
    pub records_out: AtomicU64,
    /// Bytes fetched from the input shuffles.
    pub bytes_read: AtomicU64,
    /// Bytes pushed to the output shuffle (record bytes while running,
    /// pushed block bytes once committed).
    pub bytes_written: AtomicU64,
}

impl TaskCounters {
    /// Back to zero (the task runs again).
    pub fn reset(&self) {
        for c in [
            &self.records_in,
            &self.records_out,
            &self.bytes_read,
            &self.bytes_written,
        ] {
            c.store(0, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// What a finished task reports.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct TaskOutput {
    pub records_in: u64,
    pub records_out: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// Times a read of a replicated partition went on from its other copy.
    #[serde(default)]
    pub read_failovers: u64,
    /// What the stage's summary saw (job-specific); `null` without one.
    pub summary: serde_json::Value,
}

/// A job's validated outcome.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct JobResult {
    pub valid: bool,
    /// Records the sink stages produced.
    pub records_out: u64,
    /// Why the job is not valid, one line each.
    pub problems: Vec<String>,
    /// Job-specific figures for the report.
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl JobResult {
    /// A result from `problems` (valid when there is none).
    pub fn from_problems(
        records_out: u64,
        problems: Vec<String>,
        extra: serde_json::Map<String, serde_json::Value>,
    ) -> Self {
        JobResult {
            valid: problems.is_empty(),
            records_out,
            problems,
            extra,
        }
    }
}
