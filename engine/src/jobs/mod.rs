//! Built-in jobs, built on the dataflow layer ([`crate::dataflow`]): each is
//! a factory from a [`JobSpec`] (a name and JSON parameters) to a
//! [`Job`], deterministic so that every worker rebuilds the same plan. A
//! [`Registry`] maps names to factories: [`Registry::builtin`] has
//! `terasort`, `wordcount`, `groupby` and `join`; users add their own.
//!
//! Each job's parameters are one typed struct (`TerasortParams`, ...):
//! unknown fields are refused, missing ones take their documented default,
//! sizes are an integer or a string such as `"1GiB"`.

pub mod groupby;
pub mod join;
mod params;
pub mod summary;
pub mod terasort;
pub mod wordcount;

pub use params::{parse_params, size};

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::dataflow::Job;
use crate::EngineError;

/// A job to run, as sent to worker processes (JSON).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct JobSpec {
    pub name: String,
    /// The job's parameters; `null` for every default.
    #[serde(default)]
    pub params: serde_json::Value,
}

impl JobSpec {
    pub fn new(name: impl Into<String>, params: serde_json::Value) -> Self {
        JobSpec {
            name: name.into(),
            params,
        }
    }
}

/// Builds a job from its spec.
pub type JobFactory = fn(&JobSpec) -> Result<Job, EngineError>;

/// Job factories by name.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    factories: BTreeMap<String, JobFactory>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry::default()
    }

    /// The built-in jobs: terasort, wordcount, groupby, join.
    pub fn builtin() -> Self {
        let mut r = Registry::new();
        r.register("terasort", terasort::build);
        r.register("wordcount", wordcount::build);
        r.register("groupby", groupby::build);
        r.register("join", join::build);
        r
    }

    /// Adds (or replaces) a job.
    pub fn register(&mut self, name: impl Into<String>, factory: JobFactory) -> &mut Self {
        self.factories.insert(name.into(), factory);
        self
    }

    /// The registered names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.factories.keys().map(String::as_str)
    }

    /// Builds the job `spec` names.
    pub fn build(&self, spec: &JobSpec) -> Result<Job, EngineError> {
        let factory = self
            .factories
            .get(&spec.name)
            .ok_or_else(|| EngineError::UnknownJob {
                name: spec.name.clone(),
                known: self.names().collect::<Vec<_>>().join(", "),
            })?;
        factory(spec)
    }
}
