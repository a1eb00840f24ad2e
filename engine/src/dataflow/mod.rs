//! The dataflow layer: jobs as DAGs of stages joined by shuffles.
//!
//! A [`JobBuilder`] makes [`Stream`]s from sources and chains operators on
//! them; each wide operator ends a stage with a shuffle and starts the next:
//!
//! ```no_run
//! use engine::dataflow::{Agg, JobBuilder, Sink};
//! # fn main() -> Result<(), engine::EngineError> {
//! let mut b = JobBuilder::new("wordcount");
//! b.text_files(vec!["in.txt".into()], None)
//!     .flat_map(|line, out| {
//!         for w in line.split(|c| c.is_ascii_whitespace()).filter(|w| !w.is_empty()) {
//!             out.emit_pair(w, b"");
//!         }
//!     })
//!     .aggregate(16, Agg::Count)
//!     .sink(Sink::Files("out".into()));
//! let job = b.build()?;
//! # let _ = job; Ok(()) }
//! ```
//!
//! * records are bytes; keyed records are pairs, rows are framed fields
//!   ([`crate::kv`]);
//! * sources ([`source`]): generators, text files (lines), CSV ([`csv`]);
//! * narrow operators ([`ops`]): `map`, `filter`, `flat_map`, `key_by`...;
//! * wide operators ([`wide`]): `aggregate`/`reduce` (map-side combine),
//!   `sort` (range-partitioned: globally ordered), `join` (inner, on key);
//! * sinks ([`sink`]): files, stdout, count; a [`Summary`] per task feeds the
//!   job's validation.

pub mod builder;
pub mod csv;
pub mod ops;
pub(crate) mod run;
pub mod sink;
pub mod source;
pub mod wide;

use std::sync::Arc;

pub use builder::{JobBuilder, Stream};
pub use csv::{Column, ColumnType, Select};
pub use ops::{Emitter, Operator};
pub use sink::{Format, Sink, Summary, SummaryFactory};
pub use source::{RecordCursor, Source};
pub use wide::{Agg, Aggregator, Partitioner};

/// How a stage gets its records.
pub(crate) enum StageInput {
    /// From a source (a stage without input edges).
    Source(Arc<dyn Source>),
    /// Its input shuffle's records as they come.
    Pass,
    /// Aggregation states merged by key, emitted by key once all are read.
    Merge(Arc<dyn Aggregator>),
    /// Its partition sorted by key.
    Sort,
    /// The inner join of its two inputs.
    Join,
}

/// Where a stage's records go.
pub(crate) enum StageOutput {
    /// To the stage's one output edge.
    Shuffle {
        partitioner: Partitioner,
        /// Map-side combine: pairs are folded into states before the push.
        combine: Option<Arc<dyn Aggregator>>,
    },
    /// To a sink.
    Sink { sink: Sink, format: Format },
}

/// How one stage runs.
pub(crate) struct StagePlan {
    pub input: StageInput,
    pub ops: Vec<Arc<dyn Operator>>,
    pub output: StageOutput,
    pub summary: Option<SummaryFactory>,
}
