//! The bundled dataflow engine. It knows the shuffle service only through
//! the [`shuffle_client::ShuffleClient`] trait.
//!
//! * [`jobs`]: the built-in jobs (terasort, wordcount) and their validation.
//! * [`exec`]: runs the tasks of a stage with bounded parallelism and
//!   retries failed attempts.
//! * [`report`]: the job report printed as JSON.

pub mod cluster;
mod error;
pub mod exec;
pub mod jobfile;
pub mod jobs;
pub mod kv;
pub mod plan;
pub mod progress;
pub mod report;
pub mod units;

pub use error::EngineError;
