//! WordCount over text files.
//!
//! **Tokenization rule.** Input is read as UTF-8 (invalid bytes become
//! U+FFFD). A word is a maximal run of Unicode alphanumeric characters
//! (`char::is_alphanumeric`: letters and digits of any script); every other
//! character (spaces, punctuation, apostrophes, hyphens, symbols,
//! U+FFFD) separates words. Words are lowercased with Unicode's
//! `to_lowercase`. So `Don't stop-2-stop!` counts `don`, `t`, `stop` (twice)
//! and `2`.
//!
//! Files are cut into splits of about `split_size` bytes at line boundaries;
//! each split is a map task that counts its words (a map-side combine) and
//! sends `(word, count)` to partition `fnv1a(word) % partitions`. Reducers
//! sum the counts and write `word<TAB>count` lines, sorted by word, to
//! `part-NNNNN` files.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use shuffle_client::protocol::{MapId, PartitionId, ShuffleId};
use shuffle_client::{ShuffleClient, ShuffleWriter, WriteStats};

use super::{read_partition, register, timed_stage, JobContext};
use crate::dataflow::source::{plan_splits, read_split};

mod plan;
use crate::report::JobReport;
use crate::{kv, EngineError};
pub use plan::{build, count_in_memory, job, WordcountParams};

/// What to count.
#[derive(Clone, Debug)]
pub struct WordcountConfig {
    pub inputs: Vec<PathBuf>,
    pub partitions: u32,
    /// Where to write `part-NNNNN` files; nothing is written without it.
    pub output: Option<PathBuf>,
    /// Target bytes per map task. Default 32 MiB.
    pub split_size: u64,
}

/// Calls `each` with every word of `text`, lowercased (see the module docs).
pub fn for_each_word(text: &str, mut each: impl FnMut(&str)) {
    let mut word = String::new();
    for piece in text.split(|c: char| !c.is_alphanumeric()) {
        if piece.is_empty() {
            continue;
        }
        if piece.chars().all(|c| !c.is_uppercase()) {
            each(piece);
        } else {
            word.clear();
            word.extend(piece.chars().flat_map(char::to_lowercase));
            each(&word);
        }
    }
}

/// The partition a word goes to.
pub fn partition_of(word: &[u8], partitions: u32) -> PartitionId {
    PartitionId(crate::dataflow::wide::hash_partition(word, partitions))
}

struct MapOutput {
    words: u64,
    written: WriteStats,
}

struct ReduceOutput {
    distinct: u64,
    total: u64,
    misplaced: u64,
    top: Vec<(String, u64)>,
    fetched_bytes: u64,
}

/// Runs WordCount through `ctx.client` (the older entry point; replaced by
/// the plan, [`build`]).
#[doc(hidden)]
pub async fn run<C: ShuffleClient>(
    ctx: &JobContext<C>,
    config: WordcountConfig,
) -> Result<JobReport, EngineError> {
    if config.inputs.is_empty() {
        return Err(EngineError::InvalidArgument {
            what: "input",
            reason: "at least one input file is required".into(),
        });
    }
    if let Some(dir) = &config.output {
        std::fs::create_dir_all(dir).map_err(EngineError::io("create", dir))?;
    }
    let started = Instant::now();
    let splits = Arc::new(plan_splits(&config.inputs, config.split_size)?);
    let maps = splits.len() as u32;
    let partitions = config.partitions;
    let handle = Arc::new(register(ctx, ShuffleId(0), maps, partitions).await?);

    let (map_out, map_stage) = {
        let (client, handle, splits) = (ctx.client.clone(), handle.clone(), splits.clone());
        let options = ctx.writer_options;
        timed_stage(ctx, "map", maps, move |map, attempt| {
            let (client, handle, splits) = (client.clone(), handle.clone(), splits.clone());
            async move {
                let bytes = read_split(&splits[map as usize])?;
                let text = String::from_utf8_lossy(&bytes);
                let mut counts: HashMap<String, u64> = HashMap::new();
                let mut words = 0u64;
                for_each_word(&text, |w| {
                    words += 1;
                    match counts.get_mut(w) {
                        Some(c) => *c += 1,
                        None => {
                            counts.insert(w.to_string(), 1);
                        }
                    }
                });
                let mut writer = client.open_writer(&handle, MapId(map), attempt, options).await?;
                let mut rec = Vec::new();
                for (word, count) in &counts {
                    rec.clear();
                    kv::encode(word.as_bytes(), &count.to_le_bytes(), &mut rec);
                    writer
                        .write(partition_of(word.as_bytes(), partitions), &rec)
                        .await?;
                }
                Ok(MapOutput {
                    words,
                    written: writer.commit().await?,
                })
            }
        })
        .await?
    };

    let (reduce_out, reduce_stage) = {
        let (client, handle) = (ctx.client.clone(), handle.clone());
        let output = config.output.clone();
        timed_stage(ctx, "reduce", partitions, move |p, _attempt| {
            let (client, handle, output) = (client.clone(), handle.clone(), output.clone());
            async move {
                let mut sums: HashMap<String, u64> = HashMap::new();
                let stats = read_partition(&*client, &handle, PartitionId(p), |rec| {
                    let (word, count) = kv::decode(rec)?;
                    let word = std::str::from_utf8(word).map_err(|_| EngineError::MalformedRecord {
                        reason: "word is not UTF-8".into(),
                    })?;
                    let count: [u8; 8] = count.try_into().map_err(|_| EngineError::MalformedRecord {
                        reason: format!("count of {} bytes", count.len()),
                    })?;
                    *sums.entry(word.to_string()).or_insert(0) += u64::from_le_bytes(count);
                    Ok(())
                })
                .await?;
                let mut sorted: Vec<(String, u64)> = sums.into_iter().collect();
                sorted.sort_unstable();
                if let Some(dir) = &output {
                    write_part(dir, p, &sorted)?;
                }
                let misplaced = sorted
                    .iter()
                    .filter(|(w, _)| partition_of(w.as_bytes(), partitions) != PartitionId(p))
                    .count() as u64;
                let total = sorted.iter().map(|(_, c)| c).sum();
                let distinct = sorted.len() as u64;
                sorted.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                sorted.truncate(10);
                Ok(ReduceOutput {
                    distinct,
                    total,
                    misplaced,
                    top: sorted,
                    fetched_bytes: stats.fetched_bytes,
                })
            }
        })
        .await?
    };

    let status = ctx.client.shuffle_status(&handle).await?;
    ctx.client.unregister_shuffle(&handle).await?;
    let wall_seconds = started.elapsed().as_secs_f64();

    let words_in: u64 = map_out.iter().map(|m| m.words).sum();
    let words_out: u64 = reduce_out.iter().map(|r| r.total).sum();
    let misplaced: u64 = reduce_out.iter().map(|r| r.misplaced).sum();
    let mut top: Vec<(String, u64)> = reduce_out.iter().flat_map(|r| r.top.iter().cloned()).collect();
    top.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    top.truncate(10);

    let mut extra = serde_json::Map::new();
    extra.insert("words".into(), words_in.into());
    extra.insert(
        "top_words".into(),
        serde_json::Value::Array(top.iter().map(|(w, c)| serde_json::json!([w, c])).collect()),
    );
    if let Some(dir) = &config.output {
        extra.insert("output".into(), dir.display().to_string().into());
    }
    Ok(JobReport {
        job: "wordcount".into(),
        mode: ctx.mode.to_string(),
        shuffle: ctx.shuffle_label.clone(),
        records_in: words_in,
        records_out: reduce_out.iter().map(|r| r.distinct).sum(),
        shuffle_bytes_written: map_out.iter().map(|m| m.written.pushed_bytes).sum(),
        shuffle_bytes_read: reduce_out.iter().map(|r| r.fetched_bytes).sum(),
        spilled_bytes: status.stored_bytes,
        wall_seconds,
        stages: vec![map_stage, reduce_stage],
        maps,
        partitions,
        parallelism: ctx.policy.parallelism,
        // Every counted word arrived exactly once, at the partition its
        // hash names.
        valid: words_in == words_out && misplaced == 0,
        extra,
    })
}

fn write_part(dir: &Path, partition: u32, sorted: &[(String, u64)]) -> Result<(), EngineError> {
    let path = dir.join(format!("part-{partition:05}"));
    let file = File::create(&path).map_err(EngineError::io("create", &path))?;
    let mut out = BufWriter::new(file);
    for (word, count) in sorted {
        writeln!(out, "{word}\t{count}").map_err(EngineError::io("write", &path))?;
    }
    out.flush().map_err(EngineError::io("write", &path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        for_each_word(text, |w| out.push(w.to_string()));
        out
    }

    #[test]
    fn tokenization_follows_the_documented_rule() {
        assert_eq!(words("Don't stop-2-stop!"), ["don", "t", "stop", "2", "stop"]);
        assert_eq!(words("  ÉCOLE école\tStraße "), ["école", "école", "straße"]);
        assert_eq!(words("a\u{FFFD}b…c"), ["a", "b", "c"]);
        assert!(words(" \n--\n").is_empty());
    }
}
