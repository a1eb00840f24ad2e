//! WordCount on the plan: a `map` stage reading lines of the input files
//! (split at line boundaries), emitting `(word, "")` pairs (tokenization:
//! [`super::for_each_word`]), combined map-side into counts; a `reduce`
//! stage merging counts by word and writing `word<TAB>count` lines, sorted
//! by word, to `part-NNNNN` files when an output folder is given. `finish`
//! checks that every counted word arrived exactly once, in the partition
//! its hash names, and reports distinct words, totals and the top words.

use std::collections::HashMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use shuffle_client::protocol::units::parse_size;

use super::for_each_word;
use crate::dataflow::wide::hash_partition;
use crate::dataflow::{Agg, Job, JobBuilder, Sink, Summary};
use crate::jobs::params::at_least_one;
use crate::jobs::{parse_params, summary, JobSpec};
use crate::plan::{JobResult, TaskOutput};
use crate::{kv, EngineError};

/// WordCount's parameters: JSON, a job file's `[params]`, or the flags of
/// `engine run wordcount`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct WordcountParams {
    /// Input text files (at least one).
    #[arg(long = "input", value_name = "INPUT", num_args = 1.., required = true)]
    pub inputs: Vec<PathBuf>,
    /// Reduce partitions. Default: 16.
    #[arg(long, default_value_t = Self::DEFAULT.partitions, hide_default_value = true)]
    pub partitions: u32,
    /// Map tasks: the input is cut at line boundaries into about this many
    /// splits (at least one per file). Overrides the split size. Default:
    /// one per split size of input.
    #[arg(long)]
    pub maps: Option<u32>,
    /// Bytes of input per map task (an integer, or a size like 32MiB) when
    /// the map tasks are not given: each file is cut into splits of this
    /// size, at least one per file. Default: 32MiB.
    #[serde(with = "crate::jobs::size")]
    #[arg(long, value_parser = parse_size, default_value_t = Self::DEFAULT.split_size, hide_default_value = true)]
    pub split_size: u64,
    /// Folder for the result files, `part-NNNNN` (`word<TAB>count`, sorted
    /// by word). Default: none, nothing is written.
    #[arg(long)]
    pub output: Option<PathBuf>,
}

impl WordcountParams {
    /// The defaults of JSON and job files, and of the flags that have one.
    pub const DEFAULT: WordcountParams = WordcountParams {
        inputs: Vec::new(),
        partitions: 16,
        maps: None,
        split_size: 32 << 20,
        output: None,
    };
}

impl Default for WordcountParams {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The registry's factory.
pub fn build(spec: &JobSpec) -> Result<Job, EngineError> {
    job(&parse_params(&spec.name, &spec.params)?)
}

/// Words a map task emitted.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct MapSummary {
    words: u64,
}

impl Summary for MapSummary {
    fn observe(&mut self, _: &[u8]) -> Result<(), EngineError> {
        self.words += 1;
        Ok(())
    }

    fn finish(self: Box<Self>) -> serde_json::Value {
        serde_json::to_value(*self).unwrap_or_default()
    }
}

/// What a reducer counted.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct ReduceSummary {
    distinct: u64,
    total: u64,
    misplaced: u64,
    /// The task's most frequent words.
    top: Vec<(String, u64)>,
    #[serde(skip)]
    task: (u32, u32),
}

const TOP: usize = 10;

fn by_count(a: &(String, u64), b: &(String, u64)) -> std::cmp::Ordering {
    b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0))
}

impl Summary for ReduceSummary {
    fn observe(&mut self, record: &[u8]) -> Result<(), EngineError> {
        let (word, count) = kv::decode(record)?;
        let count: u64 = std::str::from_utf8(count)
            .ok()
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| EngineError::MalformedRecord {
                reason: format!("word count {:?}", String::from_utf8_lossy(count)),
            })?;
        self.distinct += 1;
        self.total += count;
        if hash_partition(word, self.task.1) != self.task.0 {
            self.misplaced += 1;
        }
        if self.top.len() < TOP || self.top.last().is_some_and(|l| count > l.1) {
            self.top.push((String::from_utf8_lossy(word).into_owned(), count));
            self.top.sort_by(by_count);
            self.top.truncate(TOP);
        }
        Ok(())
    }

    fn finish(self: Box<Self>) -> serde_json::Value {
        serde_json::to_value(*self).unwrap_or_default()
    }
}

/// WordCount as a plan.
pub fn job(p: &WordcountParams) -> Result<Job, EngineError> {
    let partitions = at_least_one("partitions", p.partitions)?;
    if p.inputs.is_empty() {
        return Err(EngineError::InvalidArgument {
            what: "inputs",
            reason: "at least one input file is required".into(),
        });
    }
    let mut b = JobBuilder::new("wordcount");
    let lines = match p.maps {
        Some(maps) => b.text_files(p.inputs.clone(), Some(maps)),
        None => b.text_files_sized(p.inputs.clone(), p.split_size),
    };
    let counted = lines
        .name("map")
        .flat_map(|line, out| {
            let text = String::from_utf8_lossy(line);
            for_each_word(&text, |w| out.emit_pair(w.as_bytes(), b""));
        })
        .summarize(|_, _| Box::new(MapSummary::default()))
        .aggregate(partitions, Agg::Count)
        .name("reduce")
        .summarize(|task, tasks| {
            Box::new(ReduceSummary {
                task: (task, tasks),
                ..ReduceSummary::default()
            })
        });
    counted.sink(match &p.output {
        Some(dir) => Sink::Files(dir.clone()),
        None => Sink::Count,
    });
    let output = p.output.clone();
    b.finish_with(move |_, outputs| finish(output.as_deref(), outputs));
    b.build()
}

fn finish(output: Option<&std::path::Path>, outputs: &[Vec<TaskOutput>]) -> Result<JobResult, EngineError> {
    let maps: Vec<MapSummary> = summary::read(&outputs[0])?;
    let reduces: Vec<ReduceSummary> = summary::read(&outputs[1])?;
    let words_in: u64 = maps.iter().map(|m| m.words).sum();
    let words_out: u64 = reduces.iter().map(|r| r.total).sum();
    let distinct: u64 = reduces.iter().map(|r| r.distinct).sum();
    let misplaced: u64 = reduces.iter().map(|r| r.misplaced).sum();
    let mut top: Vec<(String, u64)> = reduces.iter().flat_map(|r| r.top.iter().cloned()).collect();
    top.sort_by(by_count);
    top.truncate(TOP);
    let mut problems = Vec::new();
    if words_in != words_out {
        problems.push(format!(
            "{words_in} words counted by maps, {words_out} by reducers"
        ));
    }
    if misplaced > 0 {
        problems.push(format!("{misplaced} words in the wrong partition"));
    }
    let mut extra = serde_json::Map::new();
    extra.insert("words".into(), words_in.into());
    extra.insert("distinct_words".into(), distinct.into());
    extra.insert(
        "top_words".into(),
        serde_json::Value::Array(top.iter().map(|(w, c)| serde_json::json!([w, c])).collect()),
    );
    if let Some(dir) = output {
        extra.insert("output".into(), dir.display().to_string().into());
    }
    Ok(JobResult::from_problems(distinct, problems, extra))
}

/// Counts words in memory, the way the job does (for tests and checks).
pub fn count_in_memory(texts: &[&str]) -> HashMap<String, u64> {
    let mut counts = HashMap::new();
    for t in texts {
        for_each_word(t, |w| *counts.entry(w.to_string()).or_insert(0) += 1);
    }
    counts
}
