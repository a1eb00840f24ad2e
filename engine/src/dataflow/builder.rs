//! [`JobBuilder`] and [`Stream`]: building a job's stages and shuffles.
//!
//! Errors found while building (a missing input file, zero partitions) are
//! kept and returned by [`JobBuilder::build`], so calls chain.

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

use super::csv::{CsvFiles, Select};
use super::job::{Finisher, Job, StageInput, StageOutput, StagePlan};
use super::ops::{Emitter, FilterOp, FnOp, KeyByFieldOp, KeyByOp, KeyPrefixOp, MapOp, Operator, ValuesOp};
use super::sink::{Format, Sink, Summary, SummaryFactory};
use super::source::{CursorFn, Generate, GenerateRows, RecordCursor, Source, TextFiles};
use super::wide::{Aggregator, Partitioner};
use crate::plan::{Edge, JobResult, StageId, StageInfo, TaskOutput};
use crate::EngineError;

struct EdgeDraft {
    from: StageId,
    to: Option<StageId>,
    partitions: u32,
}

#[derive(Default)]
struct State {
    stages: Vec<(StageInfo, StagePlan)>,
    edges: Vec<EdgeDraft>,
    errors: Vec<EngineError>,
}

/// Builds a [`Job`].
pub struct JobBuilder {
    name: String,
    state: Rc<RefCell<State>>,
    finisher: Option<Finisher>,
}

impl std::fmt::Debug for JobBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobBuilder")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The records of a stage being built. Narrow operators extend the stage;
/// wide ones end it (with a shuffle) and return the next stage's stream;
/// `sink` ends it for good.
pub struct Stream {
    state: Rc<RefCell<State>>,
    name: String,
    tasks: u32,
    input: StageInput,
    inputs: Vec<usize>,
    ops: Vec<Arc<dyn Operator>>,
    summary: Option<SummaryFactory>,
    /// What the records are known to be (the default sink format follows).
    records: Records,
}

/// What a stream's records are known to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Records {
    /// Pairs ([`crate::kv`]).
    Pairs,
    /// Bytes: lines, rows, or pairs not declared as such.
    Bytes,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("name", &self.name)
            .field("tasks", &self.tasks)
            .finish_non_exhaustive()
    }
}

/// A source that failed to build: one task, no record (the error is
/// reported by `build`).
struct Nothing;
impl Source for Nothing {
    fn tasks(&self) -> u32 {
        1
    }
    fn open(&self, _: u32) -> Result<Box<dyn RecordCursor>, EngineError> {
        Err(EngineError::InvalidPlan {
            reason: "a source that failed to build".into(),
        })
    }
}

/// A user reduce function as an aggregator: the state is the value.
struct ReduceFn<F>(F);
impl<F: Fn(&mut Vec<u8>, &[u8]) -> Result<(), EngineError> + Send + Sync> Aggregator for ReduceFn<F> {
    fn init(&self, value: &[u8], state: &mut Vec<u8>) -> Result<(), EngineError> {
        state.clear();
        state.extend_from_slice(value);
        Ok(())
    }
    fn merge(&self, state: &mut Vec<u8>, other: &[u8]) -> Result<(), EngineError> {
        (self.0)(state, other)
    }
    fn finish(&self, state: &[u8], out: &mut Vec<u8>) -> Result<(), EngineError> {
        out.extend_from_slice(state);
        Ok(())
    }
}

impl JobBuilder {
    pub fn new(name: impl Into<String>) -> Self {
        JobBuilder {
            name: name.into(),
            state: Rc::default(),
            finisher: None,
        }
    }

    fn stream(&self, name: &str, source: Result<Arc<dyn Source>, EngineError>) -> Stream {
        let source = source.unwrap_or_else(|e| {
            self.state.borrow_mut().errors.push(e);
            Arc::new(Nothing)
        });
        Stream {
            state: self.state.clone(),
            name: name.to_string(),
            tasks: source.tasks(),
            input: StageInput::Source(source),
            inputs: Vec::new(),
            ops: Vec::new(),
            summary: None,
            records: Records::Bytes,
        }
    }

    /// A custom source.
    pub fn source(&mut self, name: &str, source: Arc<dyn Source>) -> Stream {
        self.stream(name, Ok(source))
    }

    /// `rows` records over `tasks` tasks: `f(row, buf)` writes row `row`
    /// into the cleared `buf` (task `t` of `n` makes rows
    /// `rows*t/n .. rows*(t+1)/n`).
    pub fn generate_rows(
        &mut self,
        tasks: u32,
        rows: u64,
        f: impl Fn(u64, &mut Vec<u8>) + Send + Sync + 'static,
    ) -> Stream {
        self.stream(
            "generate",
            Ok(Arc::new(GenerateRows {
                tasks,
                rows,
                f: Arc::new(f),
            })),
        )
    }

    /// Records of task `t` from `f(t, tasks)`, a cursor.
    pub fn generate(&mut self, tasks: u32, f: CursorFn) -> Stream {
        self.stream("generate", Ok(Arc::new(Generate { tasks, f })))
    }

    /// The lines of text files (without line ends). Files are cut into
    /// splits at line boundaries: `maps` tasks' worth of bytes each, or
    /// 32 MiB without it (at least one split per file).
    pub fn text_files(&mut self, inputs: Vec<PathBuf>, maps: Option<u32>) -> Stream {
        let source = TextFiles::new(&inputs, maps, 32 << 20).map(|s| Arc::new(s) as Arc<dyn Source>);
        self.stream("read", source)
    }

    /// The lines of text files, cut into splits of about `split_size`
    /// bytes at line boundaries (at least one split per file).
    pub fn text_files_sized(&mut self, inputs: Vec<PathBuf>, split_size: u64) -> Stream {
        let source = TextFiles::new(&inputs, None, split_size).map(|s| Arc::new(s) as Arc<dyn Source>);
        self.stream("read", source)
    }

    /// Rows of CSV files, as `select` picks and types columns (see
    /// [`super::csv`]). One task per file, or `maps` tasks if fewer.
    pub fn csv(&mut self, inputs: Vec<PathBuf>, maps: Option<u32>, select: Vec<Select>) -> Stream {
        let source = CsvFiles::new(inputs, maps, select).map(|s| Arc::new(s) as Arc<dyn Source>);
        self.stream("csv", source)
    }

    /// How the job validates its output; by default it is valid and its
    /// `records_out` counts the sink stages' records.
    pub fn finish_with(
        &mut self,
        f: impl Fn(&Job, &[Vec<TaskOutput>]) -> Result<JobResult, EngineError> + Send + Sync + 'static,
    ) -> &mut Self {
        self.finisher = Some(Arc::new(f));
        self
    }

    /// The job. Fails with the first error met while building, or if a
    /// shuffle has no consumer (a stream left without a sink).
    pub fn build(self) -> Result<Job, EngineError> {
        let state = self.state.take();
        if let Some(e) = state.errors.into_iter().next() {
            return Err(e);
        }
        if state.stages.is_empty() {
            return Err(EngineError::InvalidPlan {
                reason: format!("job {} has no stage with a sink", self.name),
            });
        }
        let mut edges = Vec::with_capacity(state.edges.len());
        for (i, e) in state.edges.into_iter().enumerate() {
            let to = e.to.ok_or_else(|| EngineError::InvalidPlan {
                reason: format!("shuffle {i} has no consumer (a stream without a sink)"),
            })?;
            edges.push(Edge {
                from: e.from,
                to,
                partitions: e.partitions,
            });
        }
        let (stages, plans) = state.stages.into_iter().unzip();
        let finisher = self.finisher.unwrap_or_else(|| {
            Arc::new(|job: &Job, outputs: &[Vec<TaskOutput>]| {
                Ok(JobResult::from_problems(
                    job.sink_records(outputs),
                    Vec::new(),
                    serde_json::Map::new(),
                ))
            })
        });
        Ok(Job {
            name: self.name,
            stages,
            edges,
            plans,
            finisher,
        })
    }
}

impl Stream {
    fn op(mut self, op: impl Operator + 'static, records: Records) -> Self {
        self.ops.push(Arc::new(op));
        self.records = records;
        self
    }

    fn error(&self, e: EngineError) {
        self.state.borrow_mut().errors.push(e);
    }

    /// Names the current stage (reports, progress).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Tasks of the current stage.
    pub fn tasks(&self) -> u32 {
        self.tasks
    }

    /// One record in, one out.
    pub fn map(self, f: impl Fn(&[u8]) -> Vec<u8> + Send + Sync + 'static) -> Self {
        self.op(MapOp(f), Records::Bytes)
    }

    /// Keeps the records for which `f` holds.
    pub fn filter(self, f: impl Fn(&[u8]) -> bool + Send + Sync + 'static) -> Self {
        let records = self.records;
        self.op(FilterOp(f), records)
    }

    /// Any number of records out per record in, through the [`Emitter`].
    pub fn flat_map(self, f: impl Fn(&[u8], &mut Emitter<'_>) + Send + Sync + 'static) -> Self {
        self.op(
            FnOp(move |r: &[u8], e: &mut Emitter<'_>| {
                f(r, e);
                Ok(())
            }),
            Records::Bytes,
        )
    }

    /// `flat_map` whose function may fail (the task fails with its error).
    pub fn try_flat_map(
        self,
        f: impl Fn(&[u8], &mut Emitter<'_>) -> Result<(), EngineError> + Send + Sync + 'static,
    ) -> Self {
        self.op(FnOp(f), Records::Bytes)
    }

    /// Pairs keyed by `f(record)`, valued by the whole record.
    pub fn key_by(self, f: impl Fn(&[u8]) -> &[u8] + Send + Sync + 'static) -> Self {
        self.op(KeyByOp(f), Records::Pairs)
    }

    /// Pairs keyed by the first `n` bytes, valued by the rest.
    pub fn key_prefix(self, n: usize) -> Self {
        self.op(KeyPrefixOp(n), Records::Pairs)
    }

    /// Rows become pairs keyed by field `i`, valued by the other fields (a
    /// row of the remaining fields). Field 0 costs nothing.
    pub fn key_by_field(self, i: usize) -> Self {
        self.op(KeyByFieldOp(i), Records::Pairs)
    }

    /// Pairs become their values.
    pub fn values(self) -> Self {
        self.op(ValuesOp, Records::Bytes)
    }

    /// Declares the records pairs already (a source or `flat_map` that
    /// emits pairs), for the default sink format.
    pub fn keyed(mut self) -> Self {
        self.records = Records::Pairs;
        self
    }

    /// A summary of each task of the current stage, observing every record
    /// the stage outputs.
    pub fn summarize(mut self, f: impl Fn(u32, u32) -> Box<dyn Summary> + Send + Sync + 'static) -> Self {
        self.summary = Some(Arc::new(f));
        self
    }

    /// Ends the stage with `output`; returns its output edge.
    fn end(self, output: StageOutput) -> (Rc<RefCell<State>>, Option<usize>) {
        let mut state = self.state.borrow_mut();
        let id = StageId(state.stages.len() as u32);
        for &e in &self.inputs {
            state.edges[e].to = Some(id);
        }
        let edge = match &output {
            StageOutput::Shuffle { partitioner, .. } => {
                state.edges.push(EdgeDraft {
                    from: id,
                    to: None,
                    partitions: partitioner.partitions(),
                });
                Some(state.edges.len() - 1)
            }
            StageOutput::Sink { .. } => None,
        };
        let info = StageInfo {
            id,
            name: self.name,
            tasks: self.tasks,
            inputs: self.inputs,
            outputs: edge.into_iter().collect(),
        };
        let plan = StagePlan {
            input: self.input,
            ops: self.ops,
            output,
            summary: self.summary,
        };
        state.stages.push((info, plan));
        drop(state);
        (self.state, edge)
    }

    fn next_stage(
        state: Rc<RefCell<State>>,
        name: &str,
        tasks: u32,
        input: StageInput,
        inputs: Vec<usize>,
    ) -> Stream {
        Stream {
            state,
            name: name.to_string(),
            tasks,
            input,
            inputs,
            ops: Vec::new(),
            summary: None,
            records: Records::Pairs,
        }
    }

    fn check_partitions(&self, partitions: u32) -> u32 {
        if partitions == 0 {
            self.error(EngineError::InvalidArgument {
                what: "partitions",
                reason: "must be at least 1".into(),
            });
            return 1;
        }
        partitions
    }

    /// Aggregates pair values by key into `partitions` partitions, with a
    /// map-side combine; the next stage's records are `(key, output)`
    /// pairs in key order per partition.
    pub fn aggregate(self, partitions: u32, agg: impl Aggregator + 'static) -> Stream {
        let partitions = self.check_partitions(partitions);
        let agg: Arc<dyn Aggregator> = Arc::new(agg);
        let output = StageOutput::Shuffle {
            partitioner: Partitioner::Hash { partitions },
            combine: Some(agg.clone()),
        };
        let (state, edge) = self.end(output);
        Stream::next_stage(
            state,
            "aggregate",
            partitions,
            StageInput::Merge(agg),
            edge.into_iter().collect(),
        )
    }

    /// Reduces pair values by key with `f(acc, value)` (associative: it is
    /// also applied map-side).
    pub fn reduce(
        self,
        partitions: u32,
        f: impl Fn(&mut Vec<u8>, &[u8]) -> Result<(), EngineError> + Send + Sync + 'static,
    ) -> Stream {
        self.aggregate(partitions, ReduceFn(f))
    }

    /// Sorts pairs by key over `partitions` range partitions whose bounds
    /// are quantiles of `sample` (keys sampled at build time, e.g. from a
    /// seeded generator): partition `i`'s keys all precede `i + 1`'s, so
    /// the output is globally ordered.
    pub fn sort(self, partitions: u32, sample: Vec<Vec<u8>>) -> Stream {
        let partitions = self.check_partitions(partitions);
        self.sort_with(Partitioner::range_from_sample(sample, partitions))
    }

    /// [`Stream::sort`] with a ready-made partitioner.
    pub fn sort_with(self, partitioner: Partitioner) -> Stream {
        let tasks = partitioner.partitions();
        let output = StageOutput::Shuffle {
            partitioner,
            combine: None,
        };
        let (state, edge) = self.end(output);
        Stream::next_stage(state, "sort", tasks, StageInput::Sort, edge.into_iter().collect())
    }

    /// Moves pairs to `partitions` partitions by key hash, unchanged.
    pub fn repartition(self, partitions: u32) -> Stream {
        let partitions = self.check_partitions(partitions);
        let output = StageOutput::Shuffle {
            partitioner: Partitioner::Hash { partitions },
            combine: None,
        };
        let (state, edge) = self.end(output);
        Stream::next_stage(
            state,
            "repartition",
            partitions,
            StageInput::Pass,
            edge.into_iter().collect(),
        )
    }

    /// Inner join on key: both inputs (pairs) are shuffled by key hash into
    /// the same `partitions`; the next stage's records are
    /// `(key, kv(left value, right value))` pairs, by key.
    pub fn join(self, right: Stream, partitions: u32) -> Stream {
        let partitions = self.check_partitions(partitions);
        if !Rc::ptr_eq(&self.state, &right.state) {
            self.error(EngineError::InvalidPlan {
                reason: "a join of streams from two builders".into(),
            });
        }
        let hash = || StageOutput::Shuffle {
            partitioner: Partitioner::Hash { partitions },
            combine: None,
        };
        let (state, left_edge) = self.end(hash());
        let (_, right_edge) = right.end(hash());
        let inputs = left_edge.into_iter().chain(right_edge).collect();
        Stream::next_stage(state, "join", partitions, StageInput::Join, inputs)
    }

    /// Ends the job's branch in `sink`, formatted as pairs if the records
    /// are known to be pairs, as lines otherwise.
    pub fn sink(self, sink: Sink) {
        let format = match self.records {
            Records::Pairs => Format::Pairs,
            Records::Bytes => Format::Lines,
        };
        self.sink_with(sink, format);
    }

    /// Ends the job's branch in `sink` with `format`.
    pub fn sink_with(self, sink: Sink, format: Format) {
        self.end(StageOutput::Sink { sink, format });
    }
}
