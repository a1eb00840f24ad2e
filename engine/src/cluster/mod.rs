//! Running a job: a coordinator that schedules tasks by shuffle mode, and
//! the worker processes that run them.
//!
//! * [`run_job`]: the coordinator's entry (the `engine run` command).
//! * [`worker::run_worker`]: a worker process (`engine worker`).
//! * `scheduler/`: per-mode scheduling and failure recovery;
//!   `executor.rs`: in-process or remote execution; `pool.rs`: worker
//!   processes; `wire.rs`: the coordinator–worker protocol.

pub mod clients;
mod executor;
mod pool;
pub(crate) mod scheduler;
pub mod service;
pub mod wire;
pub mod worker;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shuffle_client::embedded::EmbeddedOptions;
use shuffle_client::protocol::units::human_bytes;
use shuffle_client::protocol::{AppId, ShuffleMode};
use shuffle_client::{EmbeddedShuffle, ServedShuffle, ShuffleClient, WriterOptions};
use tokio::sync::mpsc;

use self::clients::SlowReads;
use self::executor::{LocalExecutor, RemoteExecutor};
pub use self::pool::WorkerSource;
pub use self::scheduler::SchedulePolicy;
use self::scheduler::{Runners, Scheduler, SchedulerContext, WorkerSlots};
use self::wire::{CoordinatorMsg, ServiceSpec};
use crate::dataflow::Job;
use crate::jobs::{JobSpec, Registry};
use crate::progress::Progress;
use crate::report::{report_of, stored_bytes, JobReport};
use crate::EngineError;

/// Where the shuffle service is.
#[derive(Clone, Debug)]
pub enum ServiceChoice {
    /// Hosted by this process: the store directly when tasks run in
    /// process, a loopback server when they run on workers.
    Embedded {
        /// Data folder; a temporary one (deleted at the end) when `None`.
        data_dir: Option<PathBuf>,
        /// Bytes of shuffle data held in memory (streaming modes).
        memory_budget: u64,
        /// Hybrid-selective: a block not read within this long spills.
        spill_after: Duration,
    },
    /// Shuffle servers.
    Servers(ServiceSpec),
}

/// Where tasks run.
#[derive(Clone, Debug)]
pub enum Executors {
    /// As tasks of this process, at most `slots` at once.
    InProcess { slots: u32 },
    /// On worker processes.
    Workers {
        source: WorkerSource,
        /// Address the coordinator listens on for its workers.
        listen: std::net::SocketAddr,
    },
}

/// Everything [`run_job`] needs besides the job.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub mode: ShuffleMode,
    pub executors: Executors,
    pub service: ServiceChoice,
    /// Attempts per task (and runs per region), the first included.
    pub max_attempts: u32,
    pub writer_options: WriterOptions,
    pub progress: Progress,
    /// How often workers report progress and bars redraw.
    pub progress_every: Duration,
    /// Every shuffle reader waits this long before each block (a
    /// deliberately slow consumer; zero in normal runs).
    pub read_delay: Duration,
}

/// Builds the job of `spec`, runs it, validates its output and releases
/// its shuffles.
pub async fn run_job(
    registry: &Registry,
    spec: JobSpec,
    config: &RunConfig,
) -> Result<JobReport, EngineError> {
    if let ServiceChoice::Embedded { memory_budget, .. } = &config.service {
        let block = config.writer_options.block_size as u64;
        if *memory_budget < (2 << 20).max(4 * block) {
            return Err(EngineError::InvalidArgument {
                what: "memory_budget",
                reason: format!(
                    "{} is too small: the embedded service needs at least 2 MiB and four blocks ({} each)",
                    human_bytes(*memory_budget),
                    human_bytes(block)
                ),
            });
        }
    }
    if config.max_attempts == 0 {
        return Err(EngineError::InvalidArgument {
            what: "max_attempts",
            reason: "must be at least 1".into(),
        });
    }
    let job = Arc::new(registry.build(&spec)?);
    let app = AppId::new(format!(
        "engine-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    ))
    .map_err(|e| EngineError::InvalidArgument {
        what: "app id",
        reason: e.to_string(),
    })?;
    let temp;
    let data_dir = match &config.service {
        ServiceChoice::Embedded {
            data_dir: Some(d), ..
        } => d.clone(),
        _ => {
            temp = tempfile::Builder::new()
                .prefix("rss-engine-")
                .tempdir()
                .map_err(EngineError::io("create temporary folder", std::env::temp_dir()))?;
            temp.path().to_path_buf()
        }
    };
    let label = match &config.service {
        ServiceChoice::Embedded { .. } => "embedded".to_string(),
        ServiceChoice::Servers(service) => service.urls.join(","),
    };
    let run = JobRun {
        job: &job,
        app,
        config,
        label,
    };
    match (&config.service, &config.executors) {
        (
            ServiceChoice::Embedded {
                memory_budget,
                spill_after,
                ..
            },
            Executors::InProcess { slots },
        ) => {
            let store = embedded_store(data_dir, *memory_budget, *spill_after)?;
            run.in_process(store, *slots).await
        }
        (
            ServiceChoice::Embedded {
                memory_budget,
                spill_after,
                ..
            },
            Executors::Workers { .. },
        ) => {
            let served = ServedShuffle::start(vec![data_dir], *memory_budget, *spill_after).await?;
            let spec_ = ServiceSpec {
                urls: vec![served.tcp_url()],
                quic_pins: Vec::new(),
                quic_ca: None,
                retry_window_ms: None,
                replication: 1,
            };
            let result = run.on_workers(spec, spec_).await;
            if let Err(e) = served.shutdown().await {
                config
                    .progress
                    .say(format!("stopping the embedded shuffle server: {e}"));
            }
            result
        }
        (ServiceChoice::Servers(service), Executors::InProcess { slots }) => {
            let client = service::connect_remote(service).await?;
            run.in_process(client, *slots).await
        }
        (ServiceChoice::Servers(service), Executors::Workers { .. }) => {
            run.on_workers(spec, service.clone()).await
        }
    }
}

fn embedded_store(
    data_dir: PathBuf,
    memory_budget: u64,
    spill_after: Duration,
) -> Result<EmbeddedShuffle, EngineError> {
    let mut options = EmbeddedOptions::new(vec![data_dir]);
    options.memory_budget = memory_budget;
    options.spill_after = spill_after;
    // Job data is transient: a crash loses the job anyway.
    options.fsync_on_seal = false;
    Ok(EmbeddedShuffle::with_options(options)?)
}

/// A job on its way to the scheduler.
struct JobRun<'a> {
    job: &'a Arc<Job>,
    /// The job's app on the shuffle service.
    app: AppId,
    config: &'a RunConfig,
    /// The report's `shuffle`: `embedded` or the server URLs.
    label: String,
}

impl JobRun<'_> {
    /// Runs the tasks in this process, at most `slots` at once, with
    /// `client`.
    async fn in_process<C: ShuffleClient>(self, client: C, slots: u32) -> Result<JobReport, EngineError> {
        let client = Arc::new(SlowReads::new(client, self.config.read_delay));
        let (tx, events) = mpsc::unbounded_channel();
        let runners = Runners {
            exec: LocalExecutor::new(self.job.clone(), client.clone(), self.config.writer_options, tx),
            events,
            workers: vec![WorkerSlots::new(slots.max(1))],
        };
        self.drive(client, runners, 0.0).await
    }

    /// Runs the tasks on worker processes that build the job from `spec`
    /// and reach the shuffle service through `service`.
    async fn on_workers(self, spec: JobSpec, mut service: ServiceSpec) -> Result<JobReport, EngineError> {
        let config = self.config;
        let Executors::Workers { source, listen } = &config.executors else {
            return Err(EngineError::Workers {
                reason: "no workers configured".into(),
            });
        };
        let started = Instant::now();
        let client = Arc::new(service::connect_remote(&service).await?);
        // The workers name the servers as this client resolved them.
        service.urls = client.server_urls();
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(EngineError::io("listen for workers on", listen.to_string()))?;
        let setup = CoordinatorMsg::Setup {
            job: spec,
            service,
            writer: config.writer_options.into(),
            progress_every: config.progress_every,
            read_delay: config.read_delay,
        };
        let (tx, events) = mpsc::unbounded_channel();
        let progress = config.progress.clone();
        let say = move |m: String| progress.say(m);
        let pool = pool::WorkerPool::start(listener, source, setup, tx, &say).await?;
        let runners = Runners {
            exec: RemoteExecutor {
                workers: pool.senders.clone(),
            },
            events,
            workers: pool.slots.iter().map(|&s| WorkerSlots::new(s)).collect(),
        };
        let startup_seconds = started.elapsed().as_secs_f64();
        let result = self.drive(client, runners, startup_seconds).await;
        pool.shutdown().await;
        result
    }

    /// Schedules the job to the end on `runners`, validates it, releases
    /// its app on the shuffle service and reports (`startup_seconds`: the
    /// time it took to start the workers).
    async fn drive<C: ShuffleClient, E: executor::Executor>(
        self,
        client: Arc<C>,
        runners: Runners<E>,
        startup_seconds: f64,
    ) -> Result<JobReport, EngineError> {
        let JobRun {
            job,
            app,
            config,
            label,
        } = self;
        let worker_count = match config.executors {
            Executors::InProcess { .. } => 0,
            Executors::Workers { .. } => runners.workers.len() as u32,
        };
        let slots = runners.workers.iter().map(|w| w.slots).sum();
        let policy = SchedulePolicy {
            mode: config.mode,
            max_attempts: config.max_attempts,
            tick: config.progress_every,
        };
        let started = Instant::now();
        let scheduler = Scheduler::new(SchedulerContext {
            job,
            client: &*client,
            app: app.clone(),
            policy,
            runners,
            progress: &config.progress,
        });
        let outcome = scheduler.run().await;
        let report = match outcome {
            Ok(outcome) => {
                let stored = stored_bytes(&*client, &outcome).await;
                let result = job.finish(&outcome.outputs);
                result.map(|result| {
                    let mut report = report_of(job, config.mode, &outcome, result);
                    report.stored_bytes = stored;
                    report
                })
            }
            Err(e) => Err(e),
        };
        if let Err(e) = client.unregister_app(&app).await {
            config.progress.say(format!(
                "warning: releasing the app on the shuffle service failed: {e}"
            ));
        }
        let mut report = report?;
        report.wall_seconds = started.elapsed().as_secs_f64();
        report.startup_seconds = startup_seconds;
        report.shuffle = label;
        report.workers = worker_count;
        report.slots = slots;
        Ok(report)
    }
}
