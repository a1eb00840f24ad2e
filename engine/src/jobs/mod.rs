//! Built-in jobs, built on the dataflow layer ([`crate::dataflow`]): each is
//! a factory from a [`JobSpec`] (a name and JSON parameters) to a
//! [`Job`], deterministic so that every worker rebuilds the same plan. A
//! [`Registry`] maps names to factories: [`Registry::builtin`] has
//! `terasort`, `wordcount`, `groupby` and `join`; users add their own.
//!
//! Each job's parameters are one typed struct (`TerasortParams`, ...):
//! unknown fields are refused, missing ones take their documented default,
//! sizes are an integer or a string such as `"1GiB"`.
//!
//! The older entry points (`terasort::run`, `wordcount::run`,
//! [`JobContext`]) run a job without the plan; they are kept until the CLI
//! moves to the scheduler, and replaced by the plan.

pub mod groupby;
pub mod join;
mod params;
pub mod summary;
pub mod terasort;
pub mod wordcount;

pub use params::{parse_params, size};

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::plan::Job;

/// A job to run, as sent to worker processes (JSON).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct JobSpec {
    pub name: String,
    /// The job's parameters; `null` for every default.
    #[serde(default)]
    pub params: serde_json::Value,
}

impl JobSpec {
    pub fn new(name: impl Into<String>, params: serde_json::Value) -> Self {
        JobSpec {
            name: name.into(),
            params,
        }
    }
}

/// Builds a job from its spec.
pub type JobFactory = fn(&JobSpec) -> Result<Job, EngineError>;

/// Job factories by name.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    factories: BTreeMap<String, JobFactory>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry::default()
    }

    /// The built-in jobs: terasort, wordcount, groupby, join.
    pub fn builtin() -> Self {
        let mut r = Registry::new();
        r.register("terasort", terasort::build);
        r.register("wordcount", wordcount::build);
        r.register("groupby", groupby::build);
        r.register("join", join::build);
        r
    }

    /// Adds (or replaces) a job.
    pub fn register(&mut self, name: impl Into<String>, factory: JobFactory) -> &mut Self {
        self.factories.insert(name.into(), factory);
        self
    }

    /// The registered names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.factories.keys().map(String::as_str)
    }

    /// Builds the job `spec` names.
    pub fn build(&self, spec: &JobSpec) -> Result<Job, EngineError> {
        let factory = self
            .factories
            .get(&spec.name)
            .ok_or_else(|| EngineError::UnknownJob {
                name: spec.name.clone(),
                known: self.names().collect::<Vec<_>>().join(", "),
            })?;
        factory(spec)
    }
}

use std::sync::Arc;
use std::time::Instant;

use shuffle_client::protocol::{AppId, PartitionId, ShuffleId, ShuffleMode, ShuffleSpec};
use shuffle_client::{ReadStats, ShuffleClient, ShuffleHandle, ShuffleReader, WriterOptions};

use crate::exec::{run_stage, StagePolicy};
use crate::progress::Progress;
use crate::report::StageReport;
use crate::EngineError;

/// What every job needs to run (the older entry points; replaced by the
/// plan).
#[doc(hidden)]
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
        seconds: started.elapsed().as_secs_f64(),
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
