//! A test-only runner of plans: registers one blocking shuffle per edge on
//! an `EmbeddedShuffle`, runs every task of a stage, then the next stage,
//! and validates with `Job::finish`. (The real scheduler lives elsewhere.)

#![allow(dead_code)]

use std::sync::atomic::Ordering;
use std::sync::Arc;

use engine::dataflow::Job;
use engine::plan::{JobResult, TaskContext, TaskCounters, TaskOutput};
use engine::EngineError;
use shuffle_client::protocol::{AppId, AttemptId, ShuffleId, ShuffleMode, ShuffleSpec};
use shuffle_client::{EmbeddedShuffle, ShuffleClient, ShuffleHandle, WriterOptions};

/// An embedded shuffle over a temporary folder (kept alive with it).
pub fn embedded() -> (tempfile::TempDir, Arc<EmbeddedShuffle>) {
    let tmp = tempfile::tempdir().expect("tmp");
    let client = EmbeddedShuffle::open(vec![tmp.path().join("shuffle")]).expect("store");
    (tmp, Arc::new(client))
}

async fn register(
    job: &Job,
    client: &EmbeddedShuffle,
    app: &AppId,
) -> Result<Vec<ShuffleHandle>, EngineError> {
    let mut handles = Vec::new();
    for (i, e) in job.edges().iter().enumerate() {
        let maps = job.stages()[e.from.0 as usize].tasks;
        let spec = ShuffleSpec::new(maps, e.partitions, ShuffleMode::Blocking).map_err(|e| {
            EngineError::InvalidArgument {
                what: "shuffle",
                reason: e.to_string(),
            }
        })?;
        handles.push(client.register_shuffle(app, ShuffleId(i as u32), spec).await?);
    }
    Ok(handles)
}

fn assert_send<T: Send>(t: T) -> T {
    t
}

/// Runs `job` task by task, stage by stage; returns its result and every
/// task's output.
pub async fn run(
    job: &Job,
    client: &EmbeddedShuffle,
) -> Result<(JobResult, Vec<Vec<TaskOutput>>), EngineError> {
    let app = AppId::new(format!("test-{}", job.name())).expect("app id");
    let handles = register(job, client, &app).await?;
    let mut outputs = Vec::new();
    for stage in job.stages() {
        let mut outs = Vec::new();
        for task in 0..stage.tasks {
            let counters = TaskCounters::default();
            let ctx = TaskContext {
                client,
                stage: stage.id,
                task,
                attempt: AttemptId(0),
                handles: &handles,
                writer_options: WriterOptions::default(),
                counters: &counters,
            };
            let out = assert_send(job.run_task(ctx)).await?;
            // The live counters end where the output does.
            assert_eq!(counters.records_out.load(Ordering::Relaxed), out.records_out);
            assert_eq!(counters.bytes_written.load(Ordering::Relaxed), out.bytes_written);
            assert_eq!(counters.bytes_read.load(Ordering::Relaxed), out.bytes_read);
            outs.push(out);
        }
        outputs.push(outs);
    }
    client.unregister_app(&app).await?;
    let result = job.finish(&outputs)?;
    Ok((result, outputs))
}
