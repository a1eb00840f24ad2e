//! Inner join of two sets of CSV files on key columns. Stages `left` and
//! `right` read their rows and shuffle them by key hash into the same
//! partitions; the `join` stage reads both inputs at once and emits, for
//! each key in both, every (left row, right row) combination as one output
//! row: the left row's fields then the right row's. Rows are written as
//! CSV lines to `part-NNNNN` files when an output folder is given; each
//! task's summary counts them and sums their checksum
//! ([`summary::checksum`] of the output rows as [`crate::kv`] rows).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::dataflow::{Column, ColumnType, Format, Job, JobBuilder, Select, Sink};
use crate::jobs::params::at_least_one;
use crate::jobs::summary::{self, RowsSummary};
use crate::jobs::{parse_params, JobSpec};
use crate::plan::{JobResult, TaskOutput};
use crate::{kv, EngineError};

/// Join's parameters: JSON, a job file's `[params]`, or the flags of
/// `engine run join`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct JoinParams {
    /// Left CSV files, each with a header row (at least one).
    #[arg(long, num_args = 1.., required = true)]
    pub left: Vec<PathBuf>,
    /// Right CSV files, each with a header row (at least one).
    #[arg(long, num_args = 1.., required = true)]
    pub right: Vec<PathBuf>,
    /// Key column of the left files: a header name or a 0-based index.
    /// Default in JSON and job files: 0.
    #[arg(long)]
    pub left_key: Column,
    /// Key column of the right files: a header name or a 0-based index.
    /// Default in JSON and job files: 0.
    #[arg(long)]
    pub right_key: Column,
    /// Join partitions. Default: 16.
    #[arg(long, default_value_t = Self::DEFAULT.partitions, hide_default_value = true)]
    pub partitions: u32,
    /// Tasks per side: one per file by default, fewer if given (not a flag).
    #[arg(skip)]
    pub maps: Option<u32>,
    /// Folder for `part-NNNNN` files of joined CSV rows. Default: none.
    #[arg(long)]
    pub output: Option<PathBuf>,
}

impl JoinParams {
    /// The defaults of JSON and job files, and of the flags that have one.
    pub const DEFAULT: JoinParams = JoinParams {
        left: Vec::new(),
        right: Vec::new(),
        left_key: Column::Index(0),
        right_key: Column::Index(0),
        partitions: 16,
        maps: None,
        output: None,
    };
}

impl Default for JoinParams {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The registry's factory.
pub fn build(spec: &JobSpec) -> Result<Job, EngineError> {
    job(&parse_params(&spec.name, &spec.params)?)
}

/// Join as a plan.
pub fn job(p: &JoinParams) -> Result<Job, EngineError> {
    let partitions = at_least_one("partitions", p.partitions)?;
    for (what, files) in [("left", &p.left), ("right", &p.right)] {
        if files.is_empty() {
            return Err(EngineError::InvalidArgument {
                what,
                reason: "at least one CSV file is required".into(),
            });
        }
    }
    let mut b = JobBuilder::new("join");
    // Rows of [key, every field]: a pair keyed by the key, valued by the row.
    let side = |b: &mut JobBuilder, files: &[PathBuf], key: &Column, name: &str| {
        let select = vec![Select::Column(key.clone(), ColumnType::Text), Select::All];
        b.csv(files.to_vec(), p.maps, select)
            .name(name)
            .key_by_field(0)
            .summarize(|t, n| Box::new(RowsSummary::new(t, n, false)))
    };
    let left = side(&mut b, &p.left, &p.left_key, "left");
    let right = side(&mut b, &p.right, &p.right_key, "right");
    left.join(right, partitions)
        .try_flat_map(|rec, out| {
            let (_, both) = kv::decode(rec)?;
            let (l, r) = kv::decode(both)?;
            let mut row = Vec::with_capacity(l.len() + r.len());
            row.extend_from_slice(l);
            row.extend_from_slice(r);
            out.emit(&row);
            Ok(())
        })
        .summarize(|t, n| Box::new(RowsSummary::new(t, n, false)))
        .sink_with(
            match &p.output {
                Some(dir) => Sink::Files(dir.clone()),
                None => Sink::Count,
            },
            Format::Csv,
        );
    b.finish_with(|_, outputs| finish(outputs));
    b.build()
}

fn finish(outputs: &[Vec<TaskOutput>]) -> Result<JobResult, EngineError> {
    let total = |stage: usize| -> Result<(u64, u64), EngineError> {
        let s: Vec<RowsSummary> = summary::read(&outputs[stage])?;
        Ok((
            s.iter().map(|r| r.records).sum(),
            s.iter().fold(0u64, |a, r| a.wrapping_add(r.checksum)),
        ))
    };
    let (left, _) = total(0)?;
    let (right, _) = total(1)?;
    let (rows, checksum) = total(2)?;
    let mut problems = Vec::new();
    if rows > left.saturating_mul(right) {
        problems.push(format!("{rows} rows from {left} x {right} input rows"));
    }
    let mut extra = serde_json::Map::new();
    extra.insert("left_rows".into(), left.into());
    extra.insert("right_rows".into(), right.into());
    extra.insert("rows".into(), rows.into());
    extra.insert("checksum".into(), format!("{checksum:016x}").into());
    Ok(JobResult::from_problems(rows, problems, extra))
}
