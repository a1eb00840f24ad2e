//! The bundled dataflow engine. It knows the shuffle service only through
//! the [`shuffle_client::ShuffleClient`] trait.
//!
//! * [`dataflow`]: a job as a DAG of stages joined by shuffles
//!   ([`dataflow::Job`], [`dataflow::Job::run_task`]), and the builder,
//!   sources, operators and sinks jobs are made of.
//! * [`plan`]: the values the scheduler runs a job by (stages, edges, a
//!   task's context, counters and output), the contract with the dataflow
//!   layer.
//! * [`cluster`]: the coordinator (scheduler, executors) and its workers.
//! * [`jobs`]: the built-in jobs (terasort, wordcount, groupby, join), their
//!   parameters and the [`jobs::Registry`].
//! * [`report`]: the job report printed as JSON, and how it is made from
//!   what the scheduler saw.

pub mod cluster;
pub mod dataflow;
mod error;
pub mod jobfile;
pub mod jobs;
pub mod kv;
pub mod plan;
pub mod progress;
pub mod report;

pub use error::EngineError;
