//! Runs the tasks of one stage on the runtime's threads: at most
//! `parallelism` at once, each failed attempt retried (with a new attempt
//! id) up to `max_attempts` times when its error is transient.

use std::future::Future;
use std::sync::Arc;

use shuffle_client::protocol::AttemptId;
use tokio::task::JoinSet;

use crate::progress::StageProgress;
use crate::EngineError;

/// How a stage runs its tasks.
#[derive(Clone, Copy, Debug)]
pub struct StagePolicy {
    /// Tasks running at once. At least 1.
    pub parallelism: usize,
    /// Attempts per task, the first included. At least 1.
    pub max_attempts: u32,
}

/// Runs `count` tasks `task(index, attempt)` and returns their results in
/// index order. The first task that fails on its last attempt fails the
/// stage; tasks still running are cancelled.
pub async fn run_stage<T, F, Fut>(
    stage: &'static str,
    count: u32,
    policy: StagePolicy,
    progress: &StageProgress,
    task: F,
) -> Result<Vec<T>, EngineError>
where
    T: Send + 'static,
    F: Fn(u32, AttemptId) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, EngineError>> + Send + 'static,
{
    let task = Arc::new(task);
    let mut results: Vec<Option<T>> = (0..count).map(|_| None).collect();
    let mut running = JoinSet::new();
    let spawn = |running: &mut JoinSet<_>, index: u32, attempt: u32| {
        let task = task.clone();
        running.spawn(async move { (index, attempt, task(index, AttemptId(attempt)).await) });
    };
    let mut next = 0u32;
    let parallelism = policy.parallelism.max(1);
    while next < count && running.len() < parallelism {
        spawn(&mut running, next, 0);
        next += 1;
    }
    while let Some(joined) = running.join_next().await {
        let (index, attempt, result) = joined.map_err(|e| EngineError::TaskAborted {
            stage,
            task: u32::MAX,
            reason: e.to_string(),
        })?;
        match result {
            Ok(value) => {
                results[index as usize] = Some(value);
                progress.task_done();
                if next < count {
                    spawn(&mut running, next, 0);
                    next += 1;
                }
            }
            Err(e) if e.is_transient() && attempt + 1 < policy.max_attempts.max(1) => {
                progress.note(format!(
                    "{stage} task {index} attempt {attempt} failed, retrying: {e}"
                ));
                spawn(&mut running, index, attempt + 1);
            }
            Err(e) => {
                running.abort_all();
                return Err(EngineError::TaskFailed {
                    stage,
                    task: index,
                    attempts: attempt + 1,
                    source: Box::new(e),
                });
            }
        }
    }
    results
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            r.ok_or_else(|| EngineError::TaskAborted {
                stage,
                task: i as u32,
                reason: "no result".into(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::{Progress, ProgressMode};
    use std::sync::atomic::{AtomicU32, Ordering};

    fn quiet() -> Arc<StageProgress> {
        Progress::new(ProgressMode::Off).stage("test", 0)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn results_come_back_in_task_order_within_the_parallelism() {
        let live = Arc::new(AtomicU32::new(0));
        let peak = Arc::new(AtomicU32::new(0));
        let (l, p) = (live.clone(), peak.clone());
        let policy = StagePolicy {
            parallelism: 3,
            max_attempts: 1,
        };
        let out = run_stage("t", 20, policy, &quiet(), move |i, _| {
            let (l, p) = (l.clone(), p.clone());
            async move {
                let now = l.fetch_add(1, Ordering::SeqCst) + 1;
                p.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                l.fetch_sub(1, Ordering::SeqCst);
                Ok(i * 10)
            }
        })
        .await
        .expect("stage");
        assert_eq!(out, (0..20).map(|i| i * 10).collect::<Vec<_>>());
        assert!(peak.load(Ordering::SeqCst) <= 3);
    }

    #[tokio::test]
    async fn transient_failures_are_retried_with_new_attempt_ids() {
        let policy = StagePolicy {
            parallelism: 2,
            max_attempts: 3,
        };
        let out = run_stage("t", 2, policy, &quiet(), |i, attempt| async move {
            if i == 1 && attempt.0 < 2 {
                return Err(EngineError::Io {
                    op: "read",
                    path: "x".into(),
                    source: std::io::Error::other("flaky"),
                });
            }
            Ok(attempt.0)
        })
        .await
        .expect("stage");
        assert_eq!(out, vec![0, 2]);
    }

    #[tokio::test]
    async fn permanent_failures_fail_the_stage() {
        let policy = StagePolicy {
            parallelism: 2,
            max_attempts: 5,
        };
        let err = run_stage("t", 3, policy, &quiet(), |i, _| async move {
            if i == 2 {
                return Err(EngineError::InvalidArgument {
                    what: "x",
                    reason: "bad".into(),
                });
            }
            Ok(())
        })
        .await
        .expect_err("fails");
        assert!(matches!(
            err,
            EngineError::TaskFailed {
                task: 2,
                attempts: 1,
                ..
            }
        ));
    }
}
