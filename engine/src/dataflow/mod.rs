//! The dataflow layer: jobs as DAGs of stages joined by shuffles.
//!
//! A [`Job`] (`job.rs`) is what a scheduler runs, task by task
//! ([`Job::run_task`], in `run.rs`). A [`JobBuilder`] makes one: it makes
//! [`Stream`]s from sources and chains operators on them; each wide
//! operator ends a stage with a shuffle and starts the next:
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
mod job;
pub mod ops;
mod run;
pub mod sink;
pub mod source;
pub mod wide;

pub use builder::{JobBuilder, Stream};
pub use csv::{Column, ColumnType, Select};
pub use job::{Finisher, Job};
pub use ops::{Emitter, Operator};
pub use sink::{Format, Sink, Summary, SummaryFactory};
pub use source::{RecordCursor, Source};
pub use wide::{Agg, Aggregator, Partitioner};
