//! A job as a plan: a DAG of stages joined by shuffles, which a scheduler
//! runs task by task. This module is the contract between the dataflow
//! layer (which builds jobs, [`crate::dataflow`]) and whoever runs them
//! (the scheduler, or the test runner).
//!
//! * [`Job::stages`] are in topological order; `StageId(i)` is
//!   `stages()[i]`.
//! * Each [`Edge`] is one shuffle: the `from` stage's tasks are its maps,
//!   the `to` stage's tasks its partitions.
//! * [`Job::run_task`] runs one task given the shuffle handles (registered
//!   by the scheduler, one per edge); [`Job::finish`] validates the job
//!   from every task's [`TaskOutput`].

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use shuffle_client::protocol::AttemptId;
use shuffle_client::{ShuffleClient, ShuffleHandle, WriterOptions};

use crate::dataflow::StagePlan;
use crate::EngineError;

/// A stage's id: its index in [`Job::stages`].
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
    /// Indexes into [`Job::edges`], in input order (a join: left, right).
    pub inputs: Vec<usize>,
    /// Indexes into [`Job::edges`]; empty for a sink stage.
    pub outputs: Vec<usize>,
}

/// Validates a job's output: `outputs[stage][task]`.
pub type Finisher = Arc<dyn Fn(&Job, &[Vec<TaskOutput>]) -> Result<JobResult, EngineError> + Send + Sync>;

/// A runnable job. Built deterministically from a
/// [`crate::jobs::JobSpec`] (or by a [`crate::dataflow::JobBuilder`]), so
/// every worker process rebuilds the same plan.
pub struct Job {
    pub(crate) name: String,
    pub(crate) stages: Vec<StageInfo>,
    pub(crate) edges: Vec<Edge>,
    pub(crate) plans: Vec<StagePlan>,
    pub(crate) finisher: Finisher,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("name", &self.name)
            .field("stages", &self.stages)
            .field("edges", &self.edges)
            .finish_non_exhaustive()
    }
}

// A job is shared by the tasks of a worker.
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Job>();
};

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

impl Job {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Topological order; `StageId(i) == stages()[i].id`.
    pub fn stages(&self) -> &[StageInfo] {
        &self.stages
    }

    pub fn edges(&self) -> &[Edge] {
        &self.edges
    }

    /// Records out of the sink stages (stages without outputs).
    pub fn sink_records(&self, outputs: &[Vec<TaskOutput>]) -> u64 {
        self.stages
            .iter()
            .zip(outputs)
            .filter(|(s, _)| s.outputs.is_empty())
            .flat_map(|(_, o)| o.iter().map(|t| t.records_out))
            .sum()
    }

    /// Runs task `ctx.task` of `ctx.stage`: producer tasks are map
    /// `MapId(ctx.task)`, attempt `ctx.attempt`, of each output edge's
    /// shuffle (open_writer .. commit); consumer task `i` reads partition
    /// `i` of each input edge (all maps), several inputs concurrently.
    pub async fn run_task<C: ShuffleClient>(
        &self,
        ctx: TaskContext<'_, C>,
    ) -> Result<TaskOutput, EngineError> {
        crate::dataflow::run::run_task(self, ctx).await
    }

    /// Validates the job's output from every task's output (outer index =
    /// stage, inner = task).
    pub fn finish(&self, outputs: &[Vec<TaskOutput>]) -> Result<JobResult, EngineError> {
        if outputs.len() != self.stages.len()
            || outputs
                .iter()
                .zip(&self.stages)
                .any(|(o, s)| o.len() != s.tasks as usize)
        {
            return Err(EngineError::InvalidArgument {
                what: "task outputs",
                reason: format!(
                    "expected {:?} outputs per stage, got {:?}",
                    self.stages.iter().map(|s| s.tasks).collect::<Vec<_>>(),
                    outputs.iter().map(Vec::len).collect::<Vec<_>>()
                ),
            });
        }
        (self.finisher)(self, outputs)
    }
}
