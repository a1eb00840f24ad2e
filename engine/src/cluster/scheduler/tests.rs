//! The scheduler against a scripted executor: which tasks start when, by
//! mode, and what happens on failures and lost workers. Shuffles are
//! registered with a real embedded store.

use std::time::Duration;

use shuffle_client::protocol::{AppId, ShuffleId, ShuffleMode, SpillStrategy};
use shuffle_client::{EmbeddedShuffle, ShuffleHandle};
use tokio::sync::mpsc;

use super::{Runners, ScheduleOutcome, SchedulePolicy, Scheduler, SchedulerContext, WorkerSlots};
use crate::cluster::executor::{Event, Executor};
use crate::cluster::wire::{FailureClass, TaskFailure, TaskKey};
use crate::dataflow::Job;
use crate::jobs::terasort::{job, TerasortParams};
use crate::plan::TaskOutput;
use crate::progress::{Progress, ProgressMode};
use crate::EngineError;

#[derive(Debug)]
enum Op {
    Launch {
        worker: usize,
        key: TaskKey,
        shuffles: Vec<ShuffleId>,
    },
    Cancel {
        key: TaskKey,
    },
}

struct Scripted(mpsc::UnboundedSender<Op>);

impl Executor for Scripted {
    fn launch(&mut self, worker: usize, key: TaskKey, handles: &[ShuffleHandle]) {
        let shuffles = handles.iter().map(ShuffleHandle::shuffle).collect();
        let _ = self.0.send(Op::Launch {
            worker,
            key,
            shuffles,
        });
    }
    fn cancel(&mut self, _worker: usize, key: TaskKey) {
        let _ = self.0.send(Op::Cancel { key });
    }
}

/// A terasort plan: `maps` map tasks (stage 0), `partitions` reducers
/// (stage 1).
fn two_stages(maps: u32, partitions: u32) -> Job {
    job(&TerasortParams {
        size: 100 * 1000,
        maps,
        partitions,
        seed: 1,
    })
    .expect("plan")
}

struct Harness {
    ops: mpsc::UnboundedReceiver<Op>,
    events: mpsc::UnboundedSender<Event>,
}

impl Harness {
    async fn op(&mut self) -> Op {
        tokio::time::timeout(Duration::from_secs(10), self.ops.recv())
            .await
            .expect("the scheduler acts within 10 s")
            .expect("scheduler alive")
    }

    async fn launches(&mut self, n: usize) -> Vec<(usize, TaskKey, Vec<ShuffleId>)> {
        let mut out = Vec::new();
        while out.len() < n {
            if let Op::Launch {
                worker,
                key,
                shuffles,
            } = self.op().await
            {
                out.push((worker, key, shuffles));
            }
        }
        out
    }

    /// No launch happens within a short while (the scheduler is waiting).
    async fn quiet(&mut self) {
        let got = tokio::time::timeout(Duration::from_millis(50), self.ops.recv()).await;
        assert!(!matches!(got, Ok(Some(_))), "unexpected action: {got:?}");
    }

    fn finish(&self, key: TaskKey) {
        let _ = self.events.send(Event::Finished {
            key,
            output: TaskOutput::default(),
        });
    }

    fn fail(&self, key: TaskKey, class: FailureClass) {
        let _ = self.events.send(Event::Failed {
            key,
            failure: TaskFailure {
                class,
                message: "scripted".into(),
            },
        });
    }
}

async fn run(
    job: &Job,
    mode: ShuffleMode,
    slots: &[u32],
    script: impl AsyncFnOnce(Harness),
) -> Result<ScheduleOutcome, EngineError> {
    let tmp = tempfile::tempdir().expect("tmp");
    let client = EmbeddedShuffle::open(vec![tmp.path().to_path_buf()]).expect("store");
    let (ops_tx, ops) = mpsc::unbounded_channel();
    let (events, events_rx) = mpsc::unbounded_channel();
    let policy = SchedulePolicy {
        mode,
        max_attempts: 3,
        tick: Duration::from_millis(20),
    };
    let progress = Progress::new(ProgressMode::Off);
    let scheduler = Scheduler::new(SchedulerContext {
        job,
        client: &client,
        app: AppId::new("sched").expect("app"),
        policy,
        runners: Runners {
            exec: Scripted(ops_tx),
            events: events_rx,
            workers: slots.iter().map(|&s| WorkerSlots::new(s)).collect(),
        },
        progress: &progress,
    });
    let (outcome, ()) = tokio::join!(scheduler.run(), script(Harness { ops, events }));
    outcome
}

const BLOCKING: ShuffleMode = ShuffleMode::Blocking;
const HYBRID_FULL: ShuffleMode = ShuffleMode::Hybrid(SpillStrategy::Full);

#[tokio::test]
async fn blocking_runs_stage_after_stage_within_the_slots() {
    let job = two_stages(3, 2);
    let outcome = run(&job, BLOCKING, &[2], async |mut h| {
        let first = h.launches(2).await;
        assert!(first.iter().all(|(_, k, _)| k.stage.0 == 0));
        h.quiet().await; // two slots, both busy
        h.finish(first[0].1);
        let third = h.launches(1).await;
        assert_eq!(third[0].1.stage.0, 0);
        h.finish(first[1].1);
        h.quiet().await; // a map still runs: no reducer yet
        h.finish(third[0].1);
        let reducers = h.launches(2).await;
        assert!(reducers.iter().all(|(_, k, _)| k.stage.0 == 1));
        for (_, k, _) in reducers {
            h.finish(k);
        }
    })
    .await
    .expect("job");
    assert_eq!(outcome.outputs.iter().map(Vec::len).collect::<Vec<_>>(), [3, 2]);
    assert_eq!((outcome.retries, outcome.region_restarts), (0, 0));
}

#[tokio::test]
async fn hybrid_starts_consumers_once_every_producer_started() {
    let job = two_stages(3, 2);
    run(&job, HYBRID_FULL, &[4], async |mut h| {
        let started = h.launches(4).await;
        let stages: Vec<u32> = started.iter().map(|(_, k, _)| k.stage.0).collect();
        assert_eq!(stages, [0, 0, 0, 1], "a reducer starts while maps run");
        h.finish(started[0].1);
        let last = h.launches(1).await;
        assert_eq!(last[0].1.stage.0, 1);
        for (_, k, _) in started.iter().skip(1).chain(&last) {
            h.finish(*k);
        }
    })
    .await
    .expect("job");
}

#[tokio::test]
async fn pipelined_refuses_too_few_slots_before_starting_anything() {
    let job = two_stages(3, 2);
    let err = run(&job, ShuffleMode::Pipelined, &[2, 2], async |mut h| {
        h.quiet().await
    })
    .await
    .expect_err("4 slots for 5 tasks");
    assert!(
        matches!(
            err,
            EngineError::NotEnoughSlots {
                needed: 5,
                available: 4,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn a_pipelined_failure_restarts_the_region_on_fresh_shuffles() {
    let job = two_stages(2, 2);
    let outcome = run(&job, ShuffleMode::Pipelined, &[4], async |mut h| {
        let first = h.launches(4).await;
        h.finish(first[0].1); // a finished map runs again too
        h.fail(first[1].1, FailureClass::Transient);
        let mut cancelled = Vec::new();
        while cancelled.len() < 2 {
            if let Op::Cancel { key } = h.op().await {
                cancelled.push(key);
            }
        }
        let again = h.launches(4).await;
        assert!(again.iter().all(|(_, k, s)| k.attempt >= 4 && s != &first[0].2));
        for (_, k, _) in again {
            h.finish(k);
        }
    })
    .await
    .expect("job");
    assert_eq!(outcome.region_restarts, 1);
}

#[tokio::test]
async fn a_lost_workers_tasks_run_again_elsewhere_in_blocking_mode() {
    let job = two_stages(2, 1);
    let outcome = run(&job, BLOCKING, &[1, 1], async |mut h| {
        let first = h.launches(2).await;
        let (lost_worker, lost_key) = (first[0].0, first[0].1);
        let other = (first[1].0, first[1].1);
        let _ = h.events.send(Event::WorkerLost {
            worker: lost_worker,
            reason: "killed".into(),
        });
        let again = h.launches(0).await;
        assert!(again.is_empty());
        h.finish(other.1);
        let rerun = h.launches(1).await;
        assert_eq!((rerun[0].0, rerun[0].1.task), (other.0, lost_key.task));
        h.finish(rerun[0].1);
        let reducer = h.launches(1).await;
        assert_eq!(reducer[0].0, other.0, "only the live worker gets tasks");
        h.finish(reducer[0].1);
    })
    .await
    .expect("job");
    assert_eq!(outcome.retries, 1);
}

#[tokio::test]
async fn permanent_failures_and_exhausted_attempts_fail_the_job() {
    let job = two_stages(1, 1);
    let err = run(&job, BLOCKING, &[1], async |mut h| {
        let first = h.launches(1).await;
        h.fail(first[0].1, FailureClass::Permanent);
    })
    .await
    .expect_err("permanent");
    assert!(
        matches!(err, EngineError::JobTaskFailed { attempts: 1, .. }),
        "{err}"
    );

    let err = run(&job, BLOCKING, &[1], async |mut h| {
        for _ in 0..3 {
            let l = h.launches(1).await;
            h.fail(l[0].1, FailureClass::Transient);
        }
    })
    .await
    .expect_err("three strikes");
    assert!(
        matches!(err, EngineError::JobTaskFailed { attempts: 3, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn stale_reports_of_cancelled_attempts_are_ignored() {
    let job = two_stages(1, 1);
    let selective = ShuffleMode::Hybrid(SpillStrategy::Selective);
    let outcome = run(&job, selective, &[2], async |mut h| {
        let first = h.launches(2).await;
        h.fail(first[1].1, FailureClass::InputGone);
        let again = h.launches(2).await;
        // The old attempt's late report changes nothing.
        h.finish(first[0].1);
        h.quiet().await;
        for (_, k, _) in again {
            h.finish(k);
        }
    })
    .await
    .expect("job");
    assert_eq!(outcome.region_restarts, 1);
}
