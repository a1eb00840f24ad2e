//! Group-by aggregate over CSV files: `agg` (sum, count, min, max, avg) of
//! a numeric value column by a key column. A `map` stage reads the CSV
//! rows (a value that is not a number fails the task with the file and
//! line), combines map-side, and a `reduce` stage merges by key and writes
//! `key,value` CSV lines, sorted by key, to `part-NNNNN` files when an
//! output folder is given.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::dataflow::sink::push_csv_field;
use crate::dataflow::{Agg, Column, ColumnType, Format, Job, JobBuilder, Select, Sink};
use crate::jobs::params::at_least_one;
use crate::jobs::summary::{self, RowsSummary};
use crate::jobs::{parse_params, JobSpec};
use crate::plan::{JobResult, TaskOutput};
use crate::{kv, EngineError};

/// Group-by's parameters: JSON, a job file's `[params]`, or the flags of
/// `engine run groupby`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct GroupbyParams {
    /// Input CSV files, each with a header row (at least one).
    #[arg(long = "input", value_name = "INPUT", num_args = 1.., required = true)]
    pub inputs: Vec<PathBuf>,
    /// Key column: a header name or a 0-based index. Default in JSON and
    /// job files: 0.
    #[arg(long = "key", value_name = "KEY")]
    pub key_column: Column,
    /// Value column (numbers): a header name or a 0-based index; unused by
    /// count. Default in JSON and job files: 1.
    #[arg(long = "value", value_name = "VALUE")]
    pub value_column: Column,
    /// sum, count, min, max or avg. Default in JSON and job files: count.
    #[arg(long, default_value = "sum")]
    pub agg: Agg,
    /// Reduce partitions. Default: 16.
    #[arg(long, default_value_t = Self::DEFAULT.partitions, hide_default_value = true)]
    pub partitions: u32,
    /// Map tasks: one per file by default, fewer if given (not a flag).
    #[arg(skip)]
    pub maps: Option<u32>,
    /// Folder for `part-NNNNN` files of `key,value` lines. Default: none.
    #[arg(long)]
    pub output: Option<PathBuf>,
}

impl GroupbyParams {
    /// The defaults of JSON and job files, and of the flags that have one
    /// (but `--agg`, which defaults to `sum`).
    pub const DEFAULT: GroupbyParams = GroupbyParams {
        inputs: Vec::new(),
        key_column: Column::Index(0),
        value_column: Column::Index(1),
        agg: Agg::Count,
        partitions: 16,
        maps: None,
        output: None,
    };
}

impl Default for GroupbyParams {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The registry's factory.
pub fn build(spec: &JobSpec) -> Result<Job, EngineError> {
    job(&parse_params(&spec.name, &spec.params)?)
}

/// A `(key, value)` result as the job writes it: a CSV line.
pub fn format_line(record: &[u8], out: &mut Vec<u8>) -> Result<(), EngineError> {
    let (key, value) = kv::decode(record)?;
    push_csv_field(key, out);
    out.push(b',');
    push_csv_field(value, out);
    out.push(b'\n');
    Ok(())
}

/// Group-by as a plan.
pub fn job(p: &GroupbyParams) -> Result<Job, EngineError> {
    let partitions = at_least_one("partitions", p.partitions)?;
    if p.inputs.is_empty() {
        return Err(EngineError::InvalidArgument {
            what: "inputs",
            reason: "at least one CSV file is required".into(),
        });
    }
    let mut select = vec![Select::Column(p.key_column.clone(), ColumnType::Text)];
    if p.agg != Agg::Count {
        select.push(Select::Column(p.value_column.clone(), ColumnType::Number));
    }
    let mut b = JobBuilder::new("groupby");
    b.csv(p.inputs.clone(), p.maps, select)
        .name("map")
        .key_by_field(0)
        .summarize(|t, n| Box::new(RowsSummary::new(t, n, false)))
        .aggregate(partitions, p.agg)
        .name("reduce")
        .summarize(|t, n| Box::new(RowsSummary::new(t, n, true)))
        .sink_with(
            match &p.output {
                Some(dir) => Sink::Files(dir.clone()),
                None => Sink::Count,
            },
            Format::Custom(std::sync::Arc::new(format_line)),
        );
    b.finish_with(|_, outputs| finish(outputs));
    b.build()
}

fn finish(outputs: &[Vec<TaskOutput>]) -> Result<JobResult, EngineError> {
    let rows: Vec<RowsSummary> = summary::read(&outputs[0])?;
    let groups: Vec<RowsSummary> = summary::read(&outputs[1])?;
    let rows_in: u64 = rows.iter().map(|r| r.records).sum();
    let groups_out: u64 = groups.iter().map(|g| g.records).sum();
    let misplaced: u64 = groups.iter().map(|g| g.misplaced).sum();
    let checksum = groups.iter().fold(0u64, |s, g| s.wrapping_add(g.checksum));
    let mut problems = Vec::new();
    if misplaced > 0 {
        problems.push(format!("{misplaced} groups in the wrong partition"));
    }
    if groups_out > rows_in {
        problems.push(format!("{groups_out} groups from {rows_in} rows"));
    }
    let mut extra = serde_json::Map::new();
    extra.insert("rows".into(), rows_in.into());
    extra.insert("groups".into(), groups_out.into());
    extra.insert("checksum".into(), format!("{checksum:016x}").into());
    Ok(JobResult::from_problems(groups_out, problems, extra))
}
