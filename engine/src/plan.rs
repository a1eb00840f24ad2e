//! STUB (replaced by the dataflow branch): the job interface the scheduler uses.
#![allow(missing_docs, dead_code)]

use std::sync::atomic::AtomicU64;

use serde::{Deserialize, Serialize};
use shuffle_client::protocol::AttemptId;
use shuffle_client::{ShuffleClient, ShuffleHandle, WriterOptions};

use crate::EngineError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StageId(pub u32);

#[derive(Clone, Debug)]
pub struct Edge {
    pub from: StageId,
    pub to: StageId,
    pub partitions: u32,
}

#[derive(Clone, Debug)]
pub struct StageInfo {
    pub id: StageId,
    pub name: String,
    pub tasks: u32,
    pub inputs: Vec<usize>,
    pub outputs: Vec<usize>,
}

pub struct Job {
    name: String,
    stages: Vec<StageInfo>,
    edges: Vec<Edge>,
}

impl Job {
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn stages(&self) -> &[StageInfo] {
        &self.stages
    }
    pub fn edges(&self) -> &[Edge] {
        &self.edges
    }
    pub async fn run_task<C: ShuffleClient>(&self, _ctx: TaskContext<'_, C>) -> Result<TaskOutput, EngineError> {
        Ok(TaskOutput::default())
    }
    pub fn finish(&self, _outputs: &[Vec<TaskOutput>]) -> Result<JobResult, EngineError> {
        Ok(JobResult {
            valid: true,
            records_out: 0,
            problems: vec![],
            extra: Default::default(),
        })
    }
}

pub struct TaskContext<'a, C> {
    pub client: &'a C,
    pub stage: StageId,
    pub task: u32,
    pub attempt: AttemptId,
    pub handles: &'a [ShuffleHandle],
    pub writer_options: WriterOptions,
    pub counters: &'a TaskCounters,
}

#[derive(Debug, Default)]
pub struct TaskCounters {
    pub records_in: AtomicU64,
    pub records_out: AtomicU64,
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct TaskOutput {
    pub records_in: u64,
    pub records_out: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub summary: serde_json::Value,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct JobResult {
    pub valid: bool,
    pub records_out: u64,
    pub problems: Vec<String>,
    pub extra: serde_json::Map<String, serde_json::Value>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct JobSpec {
    pub name: String,
    pub params: serde_json::Value,
}

pub type JobFactory = fn(&JobSpec) -> Result<Job, EngineError>;

#[derive(Default)]
pub struct Registry;

impl Registry {
    pub fn builtin() -> Self {
        Registry
    }
    pub fn build(&self, spec: &JobSpec) -> Result<Job, EngineError> {
        Err(EngineError::InvalidArgument {
            what: "job",
            reason: format!("unknown job {}", spec.name),
        })
    }
}
