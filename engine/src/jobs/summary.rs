//! Summaries shared by the built-in jobs, and reading summaries back in
//! `finish`.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::dataflow::wide::hash_partition;
use crate::dataflow::Summary;
use crate::plan::TaskOutput;
use crate::{kv, EngineError};

/// The order-independent checksum of a set of records: the wrapping sum of
/// their CRC32C.
pub fn checksum<'a>(records: impl IntoIterator<Item = &'a [u8]>) -> u64 {
    records
        .into_iter()
        .fold(0u64, |s, r| s.wrapping_add(u64::from(crc32c::crc32c(r))))
}

/// Records, their checksum and (for pairs) how many sit in the wrong hash
/// partition.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RowsSummary {
    pub records: u64,
    pub checksum: u64,
    /// Pairs whose key hashes to another task (checked when `partitions`).
    pub misplaced: u64,
    #[serde(skip)]
    check: Option<(u32, u32)>,
}

impl RowsSummary {
    /// A summary; with `check_partition`, pairs are checked to belong to
    /// task `task` of `tasks` by key hash.
    pub fn new(task: u32, tasks: u32, check_partition: bool) -> Self {
        RowsSummary {
            check: check_partition.then_some((task, tasks)),
            ..RowsSummary::default()
        }
    }
}

impl Summary for RowsSummary {
    fn observe(&mut self, record: &[u8]) -> Result<(), EngineError> {
        self.records += 1;
        self.checksum = self.checksum.wrapping_add(u64::from(crc32c::crc32c(record)));
        if let Some((task, tasks)) = self.check {
            if hash_partition(kv::decode(record)?.0, tasks) != task {
                self.misplaced += 1;
            }
        }
        Ok(())
    }

    fn finish(self: Box<Self>) -> serde_json::Value {
        serde_json::to_value(*self).unwrap_or_default()
    }
}

/// The typed summaries of one stage's tasks.
pub fn read<T: DeserializeOwned>(stage: &[TaskOutput]) -> Result<Vec<T>, EngineError> {
    stage
        .iter()
        .enumerate()
        .map(|(i, t)| {
            serde_json::from_value(t.summary.clone()).map_err(|e| EngineError::MalformedRecord {
                reason: format!("summary of task {i}: {e}"),
            })
        })
        .collect()
}
