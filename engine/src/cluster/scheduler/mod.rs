//! The scheduler: runs a job's tasks on an [`Executor`] according to the
//! shuffle mode, and recovers from failures.
//!
//! * blocking: a stage starts once every stage it reads from has finished;
//!   a failed task runs again alone (its inputs are on the shuffle service).
//! * pipelined: every task of the region runs at once (checked up front:
//!   too few slots is an error, never a hang); any failure restarts the
//!   whole region on fresh shuffles, since consumed data is gone.
//! * hybrid: producers first; a consumer starts as soon as a slot is free
//!   and every producer it reads from has started. In hybrid-full a failed
//!   task runs again alone (everything is on disk); in hybrid-selective the
//!   region restarts, since blocks consumed from memory are gone.
//!
//! The whole job is one region: the built-in jobs are connected graphs,
//! and the mode is chosen per job. Failures are handled in `recovery.rs`;
//! `tests.rs` runs the scheduler against a scripted executor.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use shuffle_client::protocol::{AppId, ShuffleId, ShuffleMode, ShuffleSpec};
use shuffle_client::{ShuffleClient, ShuffleHandle};
use tokio::sync::mpsc;

use crate::cluster::executor::{Event, Executor};
use crate::cluster::wire::{Counts, TaskKey};
use crate::dataflow::Job;
use crate::plan::{StageId, TaskOutput};
use crate::progress::{Progress, StageProgress};
use crate::EngineError;

mod recovery;
#[cfg(test)]
mod tests;

/// How the scheduler behaves.
#[derive(Clone, Debug)]
pub struct SchedulePolicy {
    pub mode: ShuffleMode,
    /// Attempts per task (and runs per region), the first included.
    pub max_attempts: u32,
    /// How often progress is redrawn.
    pub tick: Duration,
}

/// A worker as the scheduler sees it.
#[derive(Debug)]
pub(crate) struct WorkerSlots {
    pub slots: u32,
    pub alive: bool,
    pub running: BTreeSet<TaskKey>,
}

impl WorkerSlots {
    pub(crate) fn new(slots: u32) -> Self {
        WorkerSlots {
            slots,
            alive: true,
            running: BTreeSet::new(),
        }
    }

    fn free(&self) -> u32 {
        if self.alive {
            self.slots.saturating_sub(self.running.len() as u32)
        } else {
            0
        }
    }
}

#[derive(Debug)]
enum TaskState {
    Pending,
    Running { worker: usize, key: TaskKey },
    Done(TaskOutput),
}

#[derive(Debug)]
struct Task {
    state: TaskState,
    failures: u32,
    counts: Counts,
}

/// Timing of one stage, in seconds since the job started.
#[derive(Clone, Debug, Default)]
pub struct StageTiming {
    pub started: Option<f64>,
    /// When a task of the stage first reported input records.
    pub first_input: Option<f64>,
    pub finished: Option<f64>,
}

/// What the scheduler did.
#[derive(Debug)]
pub struct ScheduleOutcome {
    /// Outputs by stage, then task.
    pub outputs: Vec<Vec<TaskOutput>>,
    pub timings: Vec<StageTiming>,
    /// Task attempts that failed and ran again.
    pub retries: u32,
    pub region_restarts: u32,
    /// The shuffles the job finally used, one per edge.
    pub handles: Vec<ShuffleHandle>,
    /// Producer tasks that ran again because a shuffle server holding
    /// their output was lost (blocking, hybrid-full).
    pub maps_rerun: u32,
    /// Each such recovery, in order.
    pub recoveries: Vec<Recovery>,
}

/// One recovery from a lost shuffle: its producers ran again on a fresh
/// shuffle.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Recovery {
    /// The stage whose output was lost.
    pub stage: String,
    /// The lost shuffle and the one that replaced it.
    pub lost_shuffle: u32,
    pub new_shuffle: u32,
    /// Producer tasks run again.
    pub tasks_rerun: u32,
    /// When the loss was reported, in seconds since the job started.
    pub at: f64,
    /// From the loss being reported until every producer had run again
    /// (`None` if the job ended first).
    pub seconds: Option<f64>,
}

/// Where a scheduler's tasks run: the executor, the events it reports and
/// the workers' slots.
pub(crate) struct Runners<E> {
    pub exec: E,
    pub events: mpsc::UnboundedReceiver<Event>,
    pub workers: Vec<WorkerSlots>,
}

/// What a [`Scheduler`] runs, and with what.
pub(crate) struct SchedulerContext<'a, C, E> {
    pub job: &'a Job,
    /// The shuffle service the job's shuffles are registered with.
    pub client: &'a C,
    pub app: AppId,
    pub policy: SchedulePolicy,
    pub runners: Runners<E>,
    /// Where each stage's progress bar comes from.
    pub progress: &'a Progress,
}

pub(crate) struct Scheduler<'a, C, E> {
    job: &'a Job,
    client: &'a C,
    app: AppId,
    policy: SchedulePolicy,
    exec: E,
    events: mpsc::UnboundedReceiver<Event>,
    workers: Vec<WorkerSlots>,
    tasks: Vec<Vec<Task>>,
    handles: Vec<ShuffleHandle>,
    next_shuffle: u32,
    next_attempt: u32,
    retries: u32,
    region_restarts: u32,
    maps_rerun: u32,
    recoveries: Vec<Recovery>,
    started: Instant,
    timings: Vec<StageTiming>,
    bars: Vec<std::sync::Arc<StageProgress>>,
}

impl<'a, C: ShuffleClient, E: Executor> Scheduler<'a, C, E> {
    pub(crate) fn new(ctx: SchedulerContext<'a, C, E>) -> Self {
        let SchedulerContext {
            job,
            client,
            app,
            policy,
            runners:
                Runners {
                    exec,
                    events,
                    workers,
                },
            progress,
        } = ctx;
        let tasks = job
            .stages()
            .iter()
            .map(|s| {
                (0..s.tasks)
                    .map(|_| Task {
                        state: TaskState::Pending,
                        failures: 0,
                        counts: Counts::default(),
                    })
                    .collect()
            })
            .collect();
        let bars = job
            .stages()
            .iter()
            .map(|s| progress.stage(&s.name, u64::from(s.tasks)))
            .collect();
        Scheduler {
            job,
            client,
            app,
            policy,
            exec,
            events,
            workers,
            tasks,
            handles: Vec::new(),
            next_shuffle: 0,
            next_attempt: 0,
            retries: 0,
            region_restarts: 0,
            maps_rerun: 0,
            recoveries: Vec::new(),
            started: Instant::now(),
            timings: vec![StageTiming::default(); job.stages().len()],
            bars,
        }
    }

    fn now(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Runs the job to the end.
    pub(crate) async fn run(mut self) -> Result<ScheduleOutcome, EngineError> {
        self.check_slots()?;
        self.register_shuffles().await?;
        let mut tick = tokio::time::interval(self.policy.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result = loop {
            if self.all_done() {
                break Ok(());
            }
            self.launch_ready();
            if self.running_count() == 0 && !self.any_launchable() {
                break Err(EngineError::Workers {
                    reason: "no worker left to run the remaining tasks".into(),
                });
            }
            let event = tokio::select! {
                e = self.events.recv() => e,
                _ = tick.tick() => {
                    for (key, counts) in self.exec.poll_progress() {
                        self.on_progress(key, counts);
                    }
                    self.redraw();
                    continue;
                }
            };
            let Some(event) = event else {
                break Err(EngineError::Workers {
                    reason: "every executor went away".into(),
                });
            };
            if let Err(e) = self.on_event(event).await {
                break Err(e);
            }
        };
        if let Err(e) = result {
            self.cancel_all();
            return Err(e);
        }
        self.redraw();
        for bar in &self.bars {
            bar.finish();
        }
        let outputs = self
            .tasks
            .into_iter()
            .map(|stage| {
                stage
                    .into_iter()
                    .map(|t| match t.state {
                        TaskState::Done(o) => o,
                        _ => TaskOutput::default(),
                    })
                    .collect()
            })
            .collect();
        Ok(ScheduleOutcome {
            outputs,
            timings: self.timings,
            retries: self.retries,
            region_restarts: self.region_restarts,
            handles: self.handles,
            maps_rerun: self.maps_rerun,
            recoveries: self.recoveries,
        })
    }

    fn total_tasks(&self) -> u32 {
        self.job.stages().iter().map(|s| s.tasks).sum()
    }

    fn live_slots(&self) -> u32 {
        self.workers.iter().filter(|w| w.alive).map(|w| w.slots).sum()
    }

    /// Pipelined runs a region's tasks all at once: refuse early rather
    /// than deadlock with producers waiting for consumers that never start.
    fn check_slots(&self) -> Result<(), EngineError> {
        if runs_region_at_once(self.policy.mode) && self.total_tasks() > self.live_slots() {
            return Err(EngineError::NotEnoughSlots {
                mode: self.policy.mode,
                needed: self.total_tasks(),
                available: self.live_slots(),
            });
        }
        Ok(())
    }

    async fn register_shuffles(&mut self) -> Result<(), EngineError> {
        let mut handles = Vec::with_capacity(self.job.edges().len());
        for e in 0..self.job.edges().len() {
            handles.push(self.register_edge(e).await?);
        }
        self.handles = handles;
        Ok(())
    }

    /// Registers a fresh shuffle for edge `e` (placed over the servers
    /// live now).
    async fn register_edge(&mut self, e: usize) -> Result<ShuffleHandle, EngineError> {
        let edge = &self.job.edges()[e];
        let maps = self.job.stages()[edge.from.0 as usize].tasks;
        let spec = ShuffleSpec::new(maps, edge.partitions, self.policy.mode).map_err(|e| {
            EngineError::InvalidArgument {
                what: "shuffle shape",
                reason: e.to_string(),
            }
        })?;
        let id = ShuffleId(self.next_shuffle);
        self.next_shuffle += 1;
        Ok(self.client.register_shuffle(&self.app, id, spec).await?)
    }

    fn all_done(&self) -> bool {
        self.tasks
            .iter()
            .flatten()
            .all(|t| matches!(t.state, TaskState::Done(_)))
    }

    fn running_count(&self) -> usize {
        self.workers.iter().map(|w| w.running.len()).sum()
    }

    fn stage_all(&self, stage: StageId, pred: impl Fn(&TaskState) -> bool) -> bool {
        self.tasks[stage.0 as usize].iter().all(|t| pred(&t.state))
    }

    /// Whether the tasks of `stage` may start now, by mode.
    fn launchable(&self, stage: usize) -> bool {
        let mode = self.policy.mode;
        if runs_region_at_once(mode) {
            return true;
        }
        let mut producers = self.job.stages()[stage]
            .inputs
            .iter()
            .map(|&e| self.job.edges()[e].from);
        if mode.streams() {
            // Hybrid: once every producer it reads from has started.
            producers.all(|s| self.stage_all(s, |t| !matches!(t, TaskState::Pending)))
        } else {
            // Blocking: once every producer it reads from has finished.
            producers.all(|s| self.stage_all(s, |t| matches!(t, TaskState::Done(_))))
        }
    }

    fn any_launchable(&self) -> bool {
        (0..self.tasks.len()).any(|s| {
            self.launchable(s)
                && self.tasks[s]
                    .iter()
                    .any(|t| matches!(t.state, TaskState::Pending))
        }) && self.workers.iter().any(|w| w.alive)
    }

    /// Starts pending tasks on free slots, stages in topological order, so
    /// producers get slots before their consumers.
    fn launch_ready(&mut self) {
        for stage in 0..self.tasks.len() {
            if !self.launchable(stage) {
                continue;
            }
            for task in 0..self.tasks[stage].len() {
                if !matches!(self.tasks[stage][task].state, TaskState::Pending) {
                    continue;
                }
                // The worker with the most free slots: spreads the load.
                let Some(worker) = (0..self.workers.len())
                    .filter(|&w| self.workers[w].free() > 0)
                    .max_by_key(|&w| (self.workers[w].free(), std::cmp::Reverse(w)))
                else {
                    return;
                };
                let key = TaskKey {
                    stage: StageId(stage as u32),
                    task: task as u32,
                    attempt: self.next_attempt,
                };
                self.next_attempt += 1;
                self.workers[worker].running.insert(key);
                self.tasks[stage][task].state = TaskState::Running { worker, key };
                self.tasks[stage][task].counts = Counts::default();
                if self.timings[stage].started.is_none() {
                    self.timings[stage].started = Some(self.now());
                }
                self.exec.launch(worker, key, &self.handles);
            }
        }
    }

    fn task_mut(&mut self, key: TaskKey) -> Option<&mut Task> {
        self.tasks
            .get_mut(key.stage.0 as usize)?
            .get_mut(key.task as usize)
            .filter(|t| matches!(t.state, TaskState::Running { key: k, .. } if k == key))
    }

    async fn on_event(&mut self, event: Event) -> Result<(), EngineError> {
        match event {
            Event::Progress { key, counts } => self.on_progress(key, counts),
            Event::Finished { key, output } => {
                let now = self.now();
                let Some(task) = self.task_mut(key) else {
                    return Ok(()); // a cancelled attempt
                };
                let TaskState::Running { worker, .. } = task.state else {
                    return Ok(());
                };
                let had_input = output.records_in > 0;
                task.counts = Counts {
                    records_in: output.records_in,
                    records_out: output.records_out,
                    bytes_read: output.bytes_read,
                    bytes_written: output.bytes_written,
                };
                task.state = TaskState::Done(output);
                self.workers[worker].running.remove(&key);
                let stage = key.stage.0 as usize;
                self.bars[stage].task_done();
                // A task too short for any progress report: its input
                // arrived by the time it finished, at the latest.
                if had_input && self.timings[stage].first_input.is_none() {
                    self.timings[stage].first_input = Some(now);
                }
                if self.stage_all(key.stage, |t| matches!(t, TaskState::Done(_))) {
                    self.timings[stage].finished = Some(now);
                    let name = &self.job.stages()[stage].name;
                    for r in &mut self.recoveries {
                        if r.seconds.is_none() && r.stage == *name {
                            r.seconds = Some(now - r.at);
                        }
                    }
                }
            }
            Event::Failed { key, failure } => self.on_failure(key, failure).await?,
            Event::WorkerLost { worker, reason } => self.on_worker_lost(worker, reason).await?,
        }
        Ok(())
    }

    fn on_progress(&mut self, key: TaskKey, counts: Counts) {
        let now = self.now();
        let Some(task) = self.task_mut(key) else {
            return;
        };
        task.counts = counts;
        let timing = &mut self.timings[key.stage.0 as usize];
        if counts.records_in > 0 && timing.first_input.is_none() {
            timing.first_input = Some(now);
        }
    }

    fn redraw(&self) {
        for (s, stage) in self.tasks.iter().enumerate() {
            let running = stage
                .iter()
                .filter(|t| matches!(t.state, TaskState::Running { .. }))
                .count();
            let (read, written) = stage.iter().fold((0, 0), |(r, w), t| {
                (r + t.counts.bytes_read, w + t.counts.bytes_written)
            });
            self.bars[s].figures(running as u64, read, written);
        }
    }
}

/// The mode runs every task of a region at once (pipelined: producers
/// and consumers stream through bounded memory, nothing waits on disk), so
/// the region needs a slot per task. Not a protocol predicate: it is a
/// scheduling rule of the engine's.
fn runs_region_at_once(mode: ShuffleMode) -> bool {
    mode == ShuffleMode::Pipelined
}
