//! Failure recovery: a failed task runs again alone where its inputs are
//! all on disk (blocking, hybrid-full); otherwise its whole region restarts
//! on fresh shuffles (pipelined, hybrid-selective, or data gone). A lost
//! worker's running tasks fail with it. A lost shuffle server (blocking,
//! hybrid-full) costs only the producers of the shuffles it held: each
//! such shuffle is replaced by a fresh one, placed over the live servers,
//! its producers run again, and its unfinished consumers read the new one
//! (finished consumers keep what they made; earlier stages are untouched).

use shuffle_client::ShuffleClient;

use super::{Recovery, Scheduler, TaskState};
use crate::cluster::executor::Executor;
use crate::cluster::wire::{Counts, FailureClass, TaskFailure, TaskKey};
use crate::progress::StageProgress;
use crate::EngineError;

impl<C: ShuffleClient, E: Executor> Scheduler<'_, C, E> {
    /// A worker's connection closed or broke: its running tasks failed
    /// (transiently), and it gets no more.
    pub(super) async fn on_worker_lost(&mut self, worker: usize, reason: String) -> Result<(), EngineError> {
        let Some(w) = self.workers.get_mut(worker) else {
            return Ok(());
        };
        if !w.alive {
            return Ok(());
        }
        w.alive = false;
        let lost: Vec<TaskKey> = w.running.iter().copied().collect();
        self.bars[0].note(format!(
            "worker {worker} lost ({reason}); {} running task(s) will run again",
            lost.len()
        ));
        for key in lost {
            let failure = TaskFailure {
                class: FailureClass::Transient,
                message: format!("worker {worker} lost: {reason}"),
            };
            self.on_failure(key, failure).await?;
        }
        self.check_slots()?;
        Ok(())
    }

    /// An attempt failed: the job fails (a permanent failure, or the last
    /// attempt), the region restarts, or the task waits to run again alone.
    pub(super) async fn on_failure(&mut self, key: TaskKey, failure: TaskFailure) -> Result<(), EngineError> {
        let Some(task) = self.task_mut(key) else {
            return Ok(()); // a cancelled attempt
        };
        let TaskState::Running { worker, .. } = task.state else {
            return Ok(());
        };
        task.state = TaskState::Pending;
        task.failures += 1;
        let failures = task.failures;
        self.workers[worker].running.remove(&key);
        let stage_name = self.job.stages()[key.stage.0 as usize].name.clone();
        let source = || {
            Box::new(EngineError::Remote {
                class: failure.class,
                message: failure.message.clone(),
            })
        };
        if let FailureClass::ShuffleLost { shuffle } = failure.class {
            if self.policy.mode.persists_seal() {
                return self.on_shuffle_lost(key, shuffle, &failure.message).await;
            }
        }
        if failure.class == FailureClass::Permanent {
            return Err(EngineError::JobTaskFailed {
                stage: stage_name,
                task: key.task,
                attempts: failures,
                source: source(),
            });
        }
        // Unless every block is also on disk (blocking, hybrid-full), blocks
        // consumers took from memory are gone: the region runs again.
        // (A lost shuffle gets here only in those modes.)
        let region_wide = failure.class == FailureClass::InputGone || !self.policy.mode.persists_seal();
        let limit = self.policy.max_attempts.max(1);
        if region_wide {
            self.region_restarts += 1;
            if self.region_restarts >= limit {
                return Err(EngineError::TooManyRestarts {
                    restarts: self.region_restarts,
                    limit: limit - 1,
                    last: format!("{stage_name} task {}: {}", key.task, failure.message),
                });
            }
            self.bars[key.stage.0 as usize].note(format!(
                "{stage_name} task {} failed ({}); restarting the region",
                key.task, failure.message
            ));
            return self.restart_region().await;
        }
        if failures >= limit {
            return Err(EngineError::JobTaskFailed {
                stage: stage_name,
                task: key.task,
                attempts: failures,
                source: source(),
            });
        }
        self.retries += 1;
        self.bars[key.stage.0 as usize].note(format!(
            "{stage_name} task {} attempt {} failed, running it again: {}",
            key.task, key.attempt, failure.message
        ));
        Ok(())
    }

    /// Task `key` (already back to pending) found `shuffle` lost with a
    /// server: the shuffle is replaced and its producers run again, once
    /// per lost shuffle (a report about a shuffle already replaced only
    /// sends the task back to run on the new one).
    async fn on_shuffle_lost(
        &mut self,
        key: TaskKey,
        shuffle: u32,
        message: &str,
    ) -> Result<(), EngineError> {
        let stage_name = self.job.stages()[key.stage.0 as usize].name.clone();
        let Some(e) = self.handles.iter().position(|h| h.shuffle().0 == shuffle) else {
            self.bars[key.stage.0 as usize].note(format!(
                "{stage_name} task {} read or wrote shuffle {shuffle}, already replaced; running it again",
                key.task
            ));
            return Ok(());
        };
        // Each shuffle may be lost `max_attempts` times.
        let limit = self.policy.max_attempts.max(1) * self.job.edges().len().max(1) as u32;
        if self.recoveries.len() as u32 >= limit {
            return Err(EngineError::TooManyRestarts {
                restarts: self.recoveries.len() as u32,
                limit,
                last: format!("{stage_name} task {}: {message}", key.task),
            });
        }
        let edge = self.job.edges()[e].clone();
        let (producer, consumer) = (edge.from.0 as usize, edge.to.0 as usize);
        let fresh = self.register_edge(e).await?;
        // The old shuffle is not unregistered: that call would wait out the
        // retry window on the lost server while no task runs. What it holds
        // on the live servers is freed with the app at the end.
        self.handles[e] = fresh;
        let tasks_rerun = self.tasks[producer].len() as u32;
        let producer_name = self.job.stages()[producer].name.clone();
        self.bars[producer].note(format!(
            "shuffle {shuffle} lost ({message}); running the {tasks_rerun} {producer_name} task(s) again on shuffle {}",
            self.handles[e].shuffle().0
        ));
        self.recoveries.push(Recovery {
            stage: producer_name,
            lost_shuffle: shuffle,
            new_shuffle: self.handles[e].shuffle().0,
            tasks_rerun,
            at: self.now(),
            seconds: None,
        });
        self.maps_rerun += tasks_rerun;
        // Every producer runs again; a consumer that has not finished reads
        // the new shuffle (one that finished keeps its output).
        for (s, rerun_done) in [(producer, true), (consumer, false)] {
            for t in 0..self.tasks[s].len() {
                let state = &self.tasks[s][t].state;
                let rerun = match state {
                    TaskState::Done(_) => rerun_done,
                    TaskState::Running { .. } | TaskState::Pending => true,
                };
                if !rerun {
                    continue;
                }
                if let TaskState::Running { worker, key } = *state {
                    self.exec.cancel(worker, key);
                    self.workers[worker].running.remove(&key);
                }
                self.tasks[s][t].state = TaskState::Pending;
                self.tasks[s][t].counts = Counts::default();
            }
            self.timings[s].finished = None;
            if rerun_done {
                self.bars[s].reset();
            }
        }
        Ok(())
    }

    pub(super) fn cancel_all(&mut self) {
        for (w, worker) in self.workers.iter_mut().enumerate() {
            for key in std::mem::take(&mut worker.running) {
                self.exec.cancel(w, key);
            }
        }
    }

    /// Stops every task, replaces the region's shuffles with fresh ones and
    /// runs every task again (finished ones too: what they produced was
    /// consumed, or may have been).
    async fn restart_region(&mut self) -> Result<(), EngineError> {
        self.cancel_all();
        for handle in std::mem::take(&mut self.handles) {
            if let Err(e) = self.client.unregister_shuffle(&handle).await {
                note_on_first(&self.bars, format!("releasing shuffle {}: {e}", handle.shuffle()));
            }
        }
        self.register_shuffles().await?;
        for (s, stage) in self.tasks.iter_mut().enumerate() {
            for task in stage.iter_mut() {
                task.state = TaskState::Pending;
                task.counts = Counts::default();
            }
            self.bars[s].reset();
        }
        Ok(())
    }
}

fn note_on_first(bars: &[std::sync::Arc<StageProgress>], msg: String) {
    if let Some(bar) = bars.first() {
        bar.note(msg);
    }
}
