//! A runnable job: its stages and shuffles as the scheduler sees them
//! ([`crate::plan`] values), how each stage runs ([`StagePlan`]), and how
//! the job validates its output. [`JobBuilder`](super::JobBuilder) makes
//! one; [`Job::run_task`] (in `run.rs`) runs one of its tasks.
//!
//! * [`Job::stages`] are in topological order; `StageId(i)` is
//!   `stages()[i]`.
//! * Each [`Edge`] is one shuffle: the `from` stage's tasks are its maps,
//!   the `to` stage's tasks its partitions.
//! * [`Job::finish`] validates the job from every task's [`TaskOutput`].

use std::sync::Arc;

use super::ops::Operator;
use super::sink::{Format, Sink, SummaryFactory};
use super::source::Source;
use super::wide::{Aggregator, Partitioner};
use crate::plan::{Edge, JobResult, StageInfo, TaskOutput};
use crate::EngineError;

/// Validates a job's output: `outputs[stage][task]`.
pub type Finisher = Arc<dyn Fn(&Job, &[Vec<TaskOutput>]) -> Result<JobResult, EngineError> + Send + Sync>;

/// How a stage gets its records.
pub(crate) enum StageInput {
    /// From a source (a stage without input edges).
    Source(Arc<dyn Source>),
    /// Its input shuffle's records as they come.
    Pass,
    /// Aggregation states merged by key, emitted by key once all are read.
    Merge(Arc<dyn Aggregator>),
    /// Its partition sorted by key.
    Sort,
    /// The inner join of its two inputs.
    Join,
}

/// Where a stage's records go.
pub(crate) enum StageOutput {
    /// To the stage's one output edge.
    Shuffle {
        partitioner: Partitioner,
        /// Map-side combine: pairs are folded into states before the push.
        combine: Option<Arc<dyn Aggregator>>,
    },
    /// To a sink.
    Sink { sink: Sink, format: Format },
}

/// How one stage runs.
pub(crate) struct StagePlan {
    pub input: StageInput,
    pub ops: Vec<Arc<dyn Operator>>,
    pub output: StageOutput,
    pub summary: Option<SummaryFactory>,
}

/// A runnable job. Built deterministically from a
/// [`crate::jobs::JobSpec`] (or by a [`super::JobBuilder`]), so every
/// worker process rebuilds the same plan.
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
