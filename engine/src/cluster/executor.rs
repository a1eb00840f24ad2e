//! Where tasks run: in this process, or on worker processes. The scheduler
//! drives both through [`Executor`] and hears back through [`Event`]s.

use std::collections::HashMap;
use std::sync::Arc;

use shuffle_client::{ShuffleClient, ShuffleHandle, WriterOptions};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::wire::{CoordinatorMsg, Counts, TaskFailure, TaskKey, WireHandle};
use super::worker::{classify, counts_of, run_one};
use crate::dataflow::Job;
use crate::plan::{TaskCounters, TaskOutput};

/// What executors report to the scheduler.
#[derive(Debug)]
pub(crate) enum Event {
    Progress {
        key: TaskKey,
        counts: Counts,
    },
    Finished {
        key: TaskKey,
        output: TaskOutput,
    },
    Failed {
        key: TaskKey,
        failure: TaskFailure,
    },
    /// The worker's connection closed or broke: its tasks are gone.
    WorkerLost {
        worker: usize,
        reason: String,
    },
}

/// Starts and stops tasks. Calls never wait: results come back as events.
pub(crate) trait Executor {
    /// Runs `key` on `worker` with one handle per edge of the job.
    fn launch(&mut self, worker: usize, key: TaskKey, handles: &[ShuffleHandle]);
    /// Stops `key` on `worker`; no event follows for it.
    fn cancel(&mut self, worker: usize, key: TaskKey);
    /// Figures of running tasks, for executors that do not send
    /// [`Event::Progress`] themselves.
    fn poll_progress(&mut self) -> Vec<(TaskKey, Counts)> {
        Vec::new()
    }
}

/// Runs tasks as tasks of this process's runtime (one worker, id 0).
pub(crate) struct LocalExecutor<C> {
    job: Arc<Job>,
    client: Arc<C>,
    writer_options: WriterOptions,
    events: mpsc::UnboundedSender<Event>,
    running: HashMap<TaskKey, (AbortHandle, Arc<TaskCounters>)>,
}

impl<C: ShuffleClient> LocalExecutor<C> {
    pub(crate) fn new(
        job: Arc<Job>,
        client: Arc<C>,
        writer_options: WriterOptions,
        events: mpsc::UnboundedSender<Event>,
    ) -> Self {
        LocalExecutor {
            job,
            client,
            writer_options,
            events,
            running: HashMap::new(),
        }
    }
}

impl<C: ShuffleClient> Executor for LocalExecutor<C> {
    fn launch(&mut self, _worker: usize, key: TaskKey, handles: &[ShuffleHandle]) {
        let counters = Arc::new(TaskCounters::default());
        let (job, client, events, c2) = (
            self.job.clone(),
            self.client.clone(),
            self.events.clone(),
            counters.clone(),
        );
        let handles = handles.to_vec();
        let options = self.writer_options;
        let task = tokio::spawn(async move {
            let result = run_one(&job, &client, key, &handles, options, &c2).await;
            let _ = events.send(match result {
                Ok(output) => Event::Finished { key, output },
                Err(e) => Event::Failed {
                    key,
                    failure: TaskFailure {
                        class: classify(&e),
                        message: e.to_string(),
                    },
                },
            });
        });
        self.running.insert(key, (task.abort_handle(), counters));
    }

    fn cancel(&mut self, _worker: usize, key: TaskKey) {
        if let Some((abort, _)) = self.running.remove(&key) {
            abort.abort();
        }
    }

    fn poll_progress(&mut self) -> Vec<(TaskKey, Counts)> {
        self.running.retain(|_, (abort, _)| !abort.is_finished());
        self.running
            .iter()
            .map(|(k, (_, c))| (*k, counts_of(c)))
            .collect()
    }
}

/// Sends tasks to worker processes over their connections.
pub(crate) struct RemoteExecutor {
    /// One sender per worker, by worker id (its connection's writer task).
    pub(crate) workers: Vec<mpsc::UnboundedSender<CoordinatorMsg>>,
}

impl Executor for RemoteExecutor {
    fn launch(&mut self, worker: usize, key: TaskKey, handles: &[ShuffleHandle]) {
        let handles = handles.iter().map(WireHandle::from_handle).collect();
        if let Some(w) = self.workers.get(worker) {
            // A closed channel means the worker is gone; its reader task
            // reports that as `WorkerLost`, which fails this task too.
            let _ = w.send(CoordinatorMsg::Run { key, handles });
        }
    }

    fn cancel(&mut self, worker: usize, key: TaskKey) {
        if let Some(w) = self.workers.get(worker) {
            let _ = w.send(CoordinatorMsg::Cancel { key });
        }
    }
}
