//! Failure recovery: a failed task runs again alone where its inputs are
//! all on disk (blocking, hybrid-full); otherwise its whole region restarts
//! on fresh shuffles (pipelined, hybrid-selective, or data gone). A lost
//! worker's running tasks fail with it.

use shuffle_client::ShuffleClient;

use super::{Scheduler, TaskState};
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
