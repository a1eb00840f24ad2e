//! The report a job prints (as one JSON object with `--json`), and how it
//! is made from what the scheduler saw.

use serde::Serialize;
use shuffle_client::protocol::ShuffleMode;
use shuffle_client::ShuffleClient;

use crate::cluster::scheduler::ScheduleOutcome;
use crate::dataflow::Job;
use crate::plan::JobResult;

/// What a job did. Field names are stable: scripts read them.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct JobReport {
    /// `terasort`, `wordcount`, `groupby`, `join` or a user job's name.
    pub job: String,
    /// Shuffle mode (`blocking`, `pipelined`, `hybrid-full`,
    /// `hybrid-selective`).
    pub mode: String,
    /// `embedded` or the shuffle server URLs.
    pub shuffle: String,
    /// Worker processes (0: tasks ran in the coordinator's process).
    pub workers: u32,
    /// Task slots over all workers.
    pub slots: u32,
    /// Records produced by the sources.
    pub records_in: u64,
    /// Records produced by the sinks.
    pub records_out: u64,
    /// Bytes pushed to the shuffle (block headers + stored payloads).
    pub shuffle_bytes_written: u64,
    /// Bytes fetched from the shuffle.
    pub shuffle_bytes_read: u64,
    /// Bytes the shuffle service holds on disk for the job's shuffles at
    /// the end (blocking and hybrid-full: everything; hybrid-selective:
    /// what spilled; pipelined: nothing).
    pub stored_bytes: u64,
    /// Wall time of the job, from scheduling the first task to the
    /// validated output (worker start-up excluded, see
    /// `startup_seconds`).
    pub wall_seconds: f64,
    /// Time to start the workers and set the job up on them.
    pub startup_seconds: f64,
    /// Each stage, in order.
    pub stages: Vec<StageReport>,
    /// Task attempts that failed and ran again alone.
    pub retries: u32,
    /// Times the whole region restarted (pipelined, hybrid-selective).
    pub region_restarts: u32,
    /// Producer tasks that ran again because a shuffle server holding
    /// their output was lost (blocking, hybrid-full).
    pub maps_rerun: u32,
    /// Reads of replicated partitions that went on from the other copy
    /// (replication 2: a copy lost, no map ran again).
    pub read_failovers: u64,
    /// Each recovery from a lost shuffle: the stage run again, how many
    /// tasks, and the time to recover.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub recoveries: Vec<crate::cluster::scheduler::Recovery>,
    /// Map tasks of the first shuffle.
    pub maps: u32,
    /// Partitions of the last shuffle.
    pub partitions: u32,
    /// The job's output passed its validation.
    pub valid: bool,
    /// What failed validation.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// Job-specific figures.
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// One stage's timing, in seconds since the job started.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct StageReport {
    pub name: String,
    pub tasks: u32,
    /// From its first task's start to its last task's end.
    pub seconds: f64,
    pub started: Option<f64>,
    /// When one of its tasks first reported input records (for a reduce
    /// stage: shuffle data received).
    pub first_input: Option<f64>,
    pub finished: Option<f64>,
}

/// Bytes the shuffle service holds for the job's final shuffles (what it
/// reports of each; a shuffle it cannot report counts nothing).
pub(crate) async fn stored_bytes<C: ShuffleClient>(client: &C, outcome: &ScheduleOutcome) -> u64 {
    let mut total = 0;
    for h in &outcome.handles {
        if let Ok(s) = client.shuffle_status(h).await {
            total += s.stored_bytes;
        }
    }
    total
}

/// The report of a job the scheduler ran to the end, validated as
/// `result`. The caller fills in what the scheduler does not know (wall
/// time, service, workers, stored bytes).
pub(crate) fn report_of(
    job: &Job,
    mode: ShuffleMode,
    outcome: &ScheduleOutcome,
    result: JobResult,
) -> JobReport {
    let all = outcome.outputs.iter().flatten();
    let sources: u64 = job
        .stages()
        .iter()
        .zip(&outcome.outputs)
        .filter(|(s, _)| s.inputs.is_empty())
        .flat_map(|(_, o)| o.iter().map(|t| t.records_in))
        .sum();
    let stages = job
        .stages()
        .iter()
        .zip(&outcome.timings)
        .map(|(s, t)| StageReport {
            name: s.name.clone(),
            tasks: s.tasks,
            seconds: match (t.started, t.finished) {
                (Some(a), Some(b)) => b - a,
                _ => 0.0,
            },
            started: t.started,
            first_input: t.first_input,
            finished: t.finished,
        })
        .collect();
    let edges = job.edges();
    JobReport {
        job: job.name().to_string(),
        mode: mode.name().to_string(),
        records_in: sources,
        records_out: result.records_out,
        shuffle_bytes_written: all.clone().map(|t| t.bytes_written).sum(),
        shuffle_bytes_read: all.clone().map(|t| t.bytes_read).sum(),
        read_failovers: all.map(|t| t.read_failovers).sum(),
        stages,
        retries: outcome.retries,
        region_restarts: outcome.region_restarts,
        maps_rerun: outcome.maps_rerun,
        recoveries: outcome.recoveries.clone(),
        maps: edges.first().map_or(0, |e| job.stages()[e.from.0 as usize].tasks),
        partitions: edges.last().map_or(0, |e| e.partitions),
        valid: result.valid,
        problems: result.problems,
        extra: result.extra,
        ..JobReport::default()
    }
}
