//! A job of your own, on worker processes, in any shuffle mode.
//!
//! ```sh
//! cargo run --release -p engine --example user_job -- 1000000 hybrid-full
//! ```
//!
//! The program is its own worker: `run_job` starts copies of it as
//! `user_job worker --coordinator ADDR`, and `serve_if_worker` turns those
//! into workers that rebuild the job from the same registry.

use std::process::ExitCode;
use std::time::Duration;

use engine::cluster::worker::serve_if_worker;
use engine::cluster::{run_job, Executors, RunConfig, ServiceChoice, WorkerSource};
use engine::dataflow::{Agg, Job, JobBuilder, Sink};
use engine::jobs::{parse_params, JobSpec, Registry};
use engine::plan::JobResult;
use engine::progress::{Progress, ProgressMode};
use engine::EngineError;
use serde::{Deserialize, Serialize};
use shuffle_client::protocol::ShuffleMode;
use shuffle_client::WriterOptions;

/// The job's parameters (JSON from the coordinator, TOML in a job file).
#[derive(Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Params {
    /// Numbers to generate.
    n: u64,
}

/// How many of the numbers below `n` end in each digit: generate, key by
/// last digit, count. Deterministic, as every job factory must be.
fn digits(spec: &JobSpec) -> Result<Job, EngineError> {
    let p: Params = parse_params(&spec.name, &spec.params)?;
    let n = p.n;
    let mut b = JobBuilder::new("digits");
    b.generate_rows(4, n, |row, buf| buf.extend_from_slice(row.to_string().as_bytes()))
        .key_by(|r| &r[r.len() - 1..])
        .aggregate(5, Agg::Count)
        .sink(Sink::Stdout);
    b.finish_with(move |job, outputs| {
        let digits = job.sink_records(outputs);
        let expected = n.min(10);
        let problems = if digits == expected {
            vec![]
        } else {
            vec![format!("{digits} distinct last digits, expected {expected}")]
        };
        Ok(JobResult::from_problems(digits, problems, serde_json::Map::new()))
    });
    b.build()
}

fn main() -> ExitCode {
    let mut registry = Registry::builtin();
    registry.register("digits", digits);
    if let Some(worker) = serve_if_worker(&registry) {
        return match worker {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("worker: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let args: Vec<String> = std::env::args().collect();
    let n: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let mode = match args
        .get(2)
        .map_or(Ok(ShuffleMode::Blocking), |m| m.parse::<ShuffleMode>())
    {
        Ok(m) => m,
        Err(e) => {
            eprintln!("mode: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = RunConfig {
        mode,
        executors: Executors::Workers {
            source: WorkerSource::Spawn {
                count: 2,
                slots: 16,
                exe: match std::env::current_exe() {
                    Ok(exe) => exe,
                    Err(e) => {
                        eprintln!("locating this program: {e}");
                        return ExitCode::FAILURE;
                    }
                },
            },
            listen: ([127, 0, 0, 1], 0).into(),
        },
        service: ServiceChoice::Embedded {
            data_dir: None,
            memory_budget: 256 << 20,
            spill_after: Duration::from_secs(1),
        },
        max_attempts: 3,
        writer_options: WriterOptions::default(),
        progress: Progress::new(ProgressMode::Auto),
        progress_every: Duration::from_millis(200),
        read_delay: Duration::ZERO,
    };
    let spec = JobSpec::new("digits", serde_json::json!({ "n": n }));
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run_job(&registry, spec, &config)) {
        Ok(report) => {
            println!(
                "{} in {} mode: {} digits, valid: {}, {:.2}s",
                report.job, report.mode, report.records_out, report.valid, report.wall_seconds
            );
            if report.valid {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
