//! Built-in jobs. Each registers its shuffle through the
//! [`ShuffleClient`] trait, runs a map stage and a reduce stage, validates
//! its output and returns a [`JobReport`].

pub mod terasort;
pub mod wordcount;

use std::sync::Arc;
use std::time::Instant;

use shuffle_client::protocol::{AppId, PartitionId, ShuffleId, ShuffleMode, ShuffleSpec};
use shuffle_client::{ReadStats, ShuffleClient, ShuffleHandle, ShuffleReader, WriterOptions};

use crate::exec::{run_stage, StagePolicy};
use crate::progress::Progress;
use crate::report::StageReport;
use crate::EngineError;

/// What every job needs to run.
#[derive(Debug)]
pub struct JobContext<C> {
    pub client: Arc<C>,
    pub app: AppId,
    pub mode: ShuffleMode,
    pub policy: StagePolicy,
    pub writer_options: WriterOptions,
    pub progress: Progress,
    /// Names the shuffle service in reports (`embedded`, URLs).
    pub shuffle_label: String,
}

impl<C> Clone for JobContext<C> {
    fn clone(&self) -> Self {
        JobContext {
            client: self.client.clone(),
            app: self.app.clone(),
            mode: self.mode,
            policy: self.policy,
            writer_options: self.writer_options,
            progress: self.progress.clone(),
            shuffle_label: self.shuffle_label.clone(),
        }
    }
}

/// Runs `count` tasks of a stage and times it.
pub(crate) async fn timed_stage<C, T, F, Fut>(
    ctx: &JobContext<C>,
    stage: &'static str,
    count: u32,
    task: F,
) -> Result<(Vec<T>, StageReport), EngineError>
where
    T: Send + 'static,
    F: Fn(u32, shuffle_client::protocol::AttemptId) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<T, EngineError>> + Send + 'static,
{
    let started = Instant::now();
    let bar = ctx.progress.stage(stage, u64::from(count));
    let out = run_stage(stage, count, ctx.policy, &bar, task).await;
    bar.finish();
    let report = StageReport {
        name: stage.to_string(),
        tasks: count,
        seconds: started.elapsed().as_secs_f64(), started: None, first_input: None, finished: None,
    };
    Ok((out?, report))
}

/// Registers a shuffle of the job's mode.
pub(crate) async fn register<C: ShuffleClient>(
    ctx: &JobContext<C>,
    shuffle: ShuffleId,
    maps: u32,
    partitions: u32,
) -> Result<ShuffleHandle, EngineError> {
    let spec = ShuffleSpec::new(maps, partitions, ctx.mode).map_err(|e| EngineError::InvalidArgument {
        what: "shuffle shape",
        reason: e.to_string(),
    })?;
    Ok(ctx.client.register_shuffle(&ctx.app, shuffle, spec).await?)
}

/// Feeds every record of one partition to `each`; returns what was read.
pub(crate) async fn read_partition<C: ShuffleClient>(
    client: &C,
    handle: &ShuffleHandle,
    partition: PartitionId,
    mut each: impl FnMut(&[u8]) -> Result<(), EngineError>,
) -> Result<ReadStats, EngineError> {
    let mut reader = client.open_reader(handle, partition, handle.all_maps()).await?;
    while let Some(batch) = reader.next_batch().await? {
        batch.for_each_record(&mut each)?;
    }
    Ok(reader.stats())
}
