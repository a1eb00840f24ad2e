//! Job files: the settings of `engine run` in TOML, so a job can be kept
//! and re-run. Flags given on the command line override the file.
//!
//! ```toml
//! job = "terasort"            # required: a registered job's name
//! mode = "hybrid-full"        # blocking | pipelined | hybrid-full | hybrid-selective
//! workers = 2                 # worker processes; 0 runs tasks in process
//! slots = 64                  # tasks per worker at once
//! shuffle_servers = ["tcp://127.0.0.1:19000"]   # default: embedded
//! max_attempts = 3
//!
//! [params]                    # the job's own parameters
//! size = "1GiB"
//! partitions = 64
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;
use shuffle_client::protocol::units::parse_size;

use crate::EngineError;

/// A parsed job file. Every field but `job` is optional; the command line
/// fills in what is missing, then the defaults.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JobFile {
    /// The job's registered name (`terasort`, `wordcount`, `groupby`,
    /// `join`, or a user job).
    pub job: String,
    pub mode: Option<String>,
    pub workers: Option<u32>,
    pub slots: Option<u32>,
    #[serde(default)]
    pub shuffle_servers: Vec<String>,
    #[serde(default)]
    pub quic_pins: Vec<String>,
    pub quic_ca: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub memory_budget: Option<toml::Value>,
    /// Hybrid-selective spill delay of the embedded service (`"1s"`).
    pub spill_after: Option<String>,
    /// How long connection errors to a shuffle server are retried before
    /// it is taken as lost (`"30s"`).
    pub retry_window: Option<String>,
    /// Copies of each partition on the shuffle servers (1 or 2).
    pub replication: Option<u32>,
    pub max_attempts: Option<u32>,
    pub block_size: Option<toml::Value>,
    pub compress: Option<bool>,
    /// The job's parameters, passed to its factory as they are.
    #[serde(default)]
    pub params: toml::Table,
}

impl JobFile {
    /// Reads and parses `path`; errors name the file and the field.
    pub fn load(path: &Path) -> Result<Self, EngineError> {
        let text = std::fs::read_to_string(path).map_err(EngineError::io("read job file", path))?;
        Self::parse(&text).map_err(|reason| EngineError::InvalidArgument {
            what: "job file",
            reason: format!("{}: {reason}", path.display()),
        })
    }

    /// Parses a job file's text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: JobFile = toml::from_str(text).map_err(|e| e.to_string())?;
        if file.job.is_empty() {
            return Err("`job` must name a job".into());
        }
        Ok(file)
    }

    /// The parameters as JSON, the form a job factory takes.
    pub fn params_json(&self) -> serde_json::Value {
        toml_to_json(toml::Value::Table(self.params.clone()))
    }
}

/// A byte size given as an integer or a string such as `"1GiB"`.
pub fn size_value(field: &'static str, v: &toml::Value) -> Result<u64, EngineError> {
    let bad = |reason: String| EngineError::InvalidArgument { what: field, reason };
    match v {
        toml::Value::Integer(i) => u64::try_from(*i).map_err(|_| bad(format!("{i} is negative"))),
        toml::Value::String(s) => parse_size(s).map_err(bad),
        other => Err(bad(format!("a {} is not a size", other.type_str()))),
    }
}

fn toml_to_json(v: toml::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        toml::Value::String(s) => J::String(s),
        toml::Value::Integer(i) => J::from(i),
        toml::Value::Float(f) => J::from(f),
        toml::Value::Boolean(b) => J::Bool(b),
        toml::Value::Datetime(d) => J::String(d.to_string()),
        toml::Value::Array(a) => J::Array(a.into_iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => J::Object(t.into_iter().map(|(k, v)| (k, toml_to_json(v))).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_file_parses_and_params_become_json() {
        let f = JobFile::parse(
            r#"
            job = "terasort"
            mode = "pipelined"
            workers = 3
            shuffle_servers = ["tcp://127.0.0.1:1"]
            block_size = "512KiB"
            [params]
            size = "2MB"
            partitions = 8
            "#,
        )
        .expect("parses");
        assert_eq!(f.job, "terasort");
        assert_eq!(f.workers, Some(3));
        assert_eq!(
            f.params_json(),
            serde_json::json!({"size": "2MB", "partitions": 8})
        );
        let bs = f.block_size.as_ref().map(|v| size_value("block_size", v));
        assert_eq!(bs.map(Result::ok), Some(Some(512 << 10)));
    }

    #[test]
    fn unknown_keys_and_missing_job_are_refused_by_name() {
        let e = JobFile::parse("job = \"x\"\nworkerz = 2\n").expect_err("unknown key");
        assert!(e.contains("workerz"), "{e}");
        let e = JobFile::parse("mode = \"blocking\"\n").expect_err("no job");
        assert!(e.contains("job"), "{e}");
        let e = size_value("block_size", &toml::Value::Integer(-1)).expect_err("negative");
        assert!(e.to_string().contains("block_size"), "{e}");
    }
}
