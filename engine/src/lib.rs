//! The bundled dataflow engine. It knows the shuffle service only through
//! the [`shuffle_client::ShuffleClient`] trait.
//!
//! * [`plan`]: a job as a DAG of stages joined by shuffles, the contract
//!   with the scheduler ([`plan::Job`], [`plan::Job::run_task`]).
//! * [`dataflow`]: the builder, sources, operators and sinks jobs are made
//!   of.
//! * [`jobs`]: the built-in jobs (terasort, wordcount, groupby, join), their
//!   parameters and the [`jobs::Registry`].
//! * [`report`]: the job report printed as JSON.

pub mod cluster;
pub mod dataflow;
mod error;
pub mod jobfile;
pub mod jobs;
pub mod kv;
pub mod plan;
pub mod progress;
pub mod report;
pub mod units;

pub use error::EngineError;
