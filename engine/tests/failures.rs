//! A map task that fails halfway on its first attempt, after some of its
//! blocks reached the shuffle, in every mode, tasks in process over the
//! embedded service: the job still counts every record exactly once, by
//! running the task again (blocking, hybrid-full) or its region
//! (pipelined, hybrid-selective).

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use engine::cluster::{run_job, Executors, RunConfig, ServiceChoice};
use engine::dataflow::{Agg, Format, Job, JobBuilder, RecordCursor, Sink};
use engine::jobs::{groupby, parse_params, JobSpec, Registry};
use engine::progress::{Progress, ProgressMode};
use engine::report::JobReport;
use engine::EngineError;
use serde::{Deserialize, Serialize};
use shuffle_client::protocol::ShuffleMode;
use shuffle_client::WriterOptions;

const ROWS: u64 = 40_000;

/// Keys (named by the test) whose first map attempt already failed.
static FAILED_ONCE: Mutex<Option<HashSet<String>>> = Mutex::new(None);

fn first_time(key: &str) -> bool {
    let mut set = FAILED_ONCE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    set.get_or_insert_with(HashSet::new).insert(key.to_string())
}

#[derive(Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Params {
    /// Names this run's one failure.
    fail_key: String,
    output: String,
}

/// Rows `task, task + tasks, ...`; the first attempt of task 0 fails after
/// its first chunk.
struct Rows {
    next: u64,
    step: u64,
    chunks: u32,
    fail_key: Option<String>,
}

impl RecordCursor for Rows {
    fn fill(&mut self, emit: &mut engine::dataflow::ops::Downstream<'_>) -> Result<bool, EngineError> {
        if self.chunks == 1 {
            if let Some(key) = self.fail_key.take() {
                if first_time(&key) {
                    return Err(EngineError::Io {
                        op: "read",
                        path: "flaky source".into(),
                        error: std::io::Error::other("injected failure"),
                    });
                }
            }
        }
        self.chunks += 1;
        for _ in 0..1000 {
            if self.next >= ROWS {
                return Ok(false);
            }
            emit(format!("{}", self.next % 10).as_bytes())?;
            self.next += self.step;
        }
        Ok(true)
    }
}

fn flaky(spec: &JobSpec) -> Result<Job, EngineError> {
    let p: Params = parse_params(&spec.name, &spec.params)?;
    let key = p.fail_key.clone();
    let mut b = JobBuilder::new("flaky");
    b.generate(
        4,
        Arc::new(move |task, tasks| {
            Ok(Box::new(Rows {
                next: u64::from(task),
                step: u64::from(tasks),
                chunks: 0,
                fail_key: (task == 0).then(|| key.clone()),
            }) as Box<dyn RecordCursor>)
        }),
    )
    .key_by(|r| r)
    .aggregate(3, Agg::Count)
    .sink_with(
        Sink::Files(p.output.into()),
        Format::Custom(Arc::new(groupby::format_line)),
    );
    b.build()
}

fn counts(dir: &Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).expect("output") {
        let text = std::fs::read_to_string(entry.expect("entry").path()).expect("part");
        for line in text.lines() {
            let (k, v) = line.split_once(',').expect("key,count");
            out.insert(k.to_string(), v.parse().expect("count"));
        }
    }
    out
}

async fn run(mode: ShuffleMode) -> (JobReport, BTreeMap<String, u64>) {
    let tmp = tempfile::tempdir().expect("tmp");
    let output = tmp.path().join("out");
    let mut registry = Registry::builtin();
    registry.register("flaky", flaky);
    let spec = JobSpec::new(
        "flaky",
        serde_json::json!({"fail_key": mode.name(), "output": output}),
    );
    let config = RunConfig {
        mode,
        executors: Executors::InProcess { slots: 16 },
        service: ServiceChoice::Embedded {
            data_dir: Some(tmp.path().join("shuffle")),
            memory_budget: 64 << 20,
            spill_after: Duration::from_secs(30),
        },
        max_attempts: 3,
        // Small blocks: the failing attempt pushes some before it fails.
        writer_options: WriterOptions {
            block_size: 1024,
            ..WriterOptions::default()
        },
        progress: Progress::new(ProgressMode::Off),
        progress_every: Duration::from_millis(20),
        read_delay: Duration::ZERO,
    };
    let report = run_job(&registry, spec, &config).await.expect("the job recovers");
    let counts = counts(&output);
    (report, counts)
}

fn assert_exactly_once(mode: ShuffleMode, report: &JobReport, counts: &BTreeMap<String, u64>) {
    assert!(report.valid, "{mode}: {report:?}");
    assert_eq!(counts.len(), 10, "{mode}: {counts:?}");
    for (k, n) in counts {
        assert_eq!(*n, ROWS / 10, "{mode}: key {k} counted {n} times");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_map_runs_again_alone_in_blocking_and_hybrid_full() {
    for mode in [
        ShuffleMode::Blocking,
        ShuffleMode::Hybrid(shuffle_client::protocol::SpillStrategy::Full),
    ] {
        let (report, counts) = run(mode).await;
        assert_exactly_once(mode, &report, &counts);
        assert!(report.retries >= 1, "{mode}: {report:?}");
        assert_eq!(report.region_restarts, 0, "{mode}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_map_restarts_the_region_in_pipelined_and_hybrid_selective() {
    for mode in [
        ShuffleMode::Pipelined,
        ShuffleMode::Hybrid(shuffle_client::protocol::SpillStrategy::Selective),
    ] {
        let (report, counts) = run(mode).await;
        assert_exactly_once(mode, &report, &counts);
        assert_eq!(report.region_restarts, 1, "{mode}: {report:?}");
    }
}
