//! Shuffle modes, the shuffle specification and the commit manifest.

use std::fmt;
use std::str::FromStr;

use crate::{PartitionId, ProtocolError};

/// Largest number of map tasks one shuffle may have.
pub const MAX_MAPS: u32 = 1 << 20;
/// Largest number of reduce partitions one shuffle may have.
pub const MAX_PARTITIONS: u32 = 1 << 20;

/// What a hybrid shuffle writes to disk.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum SpillStrategy {
    /// Every block also goes to disk, so any consumer can re-read.
    Full,
    /// Only blocks that would overflow memory, or are not consumed in time,
    /// go to disk.
    Selective,
}

/// How data moves from producers to consumers, as in Apache Flink.
///
/// Spill strategies exist only for hybrid shuffles, so a "pipelined shuffle
/// with full spilling" cannot be built.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum ShuffleMode {
    /// Every map commits before any reader opens; data is persisted.
    Blocking,
    /// Producers and consumers run together through bounded memory; nothing
    /// is persisted.
    Pipelined,
    /// Consumers may read while producers write, from memory or disk.
    Hybrid(SpillStrategy),
}

impl ShuffleMode {
    /// Every mode, in wire order.
    pub const ALL: [ShuffleMode; 4] = [
        ShuffleMode::Blocking,
        ShuffleMode::Pipelined,
        ShuffleMode::Hybrid(SpillStrategy::Full),
        ShuffleMode::Hybrid(SpillStrategy::Selective),
    ];

    /// The one-byte wire code.
    pub fn code(self) -> u8 {
        match self {
            ShuffleMode::Blocking => 0,
            ShuffleMode::Pipelined => 1,
            ShuffleMode::Hybrid(SpillStrategy::Full) => 2,
            ShuffleMode::Hybrid(SpillStrategy::Selective) => 3,
        }
    }

    /// Parses a wire code.
    pub fn from_code(code: u8) -> Result<Self, ProtocolError> {
        Self::ALL
            .get(usize::from(code))
            .copied()
            .ok_or_else(|| ProtocolError::malformed("shuffle mode", format!("unknown code {code}")))
    }

    /// Readers may attach while producers still write (pipelined, hybrid);
    /// blocking readers open only after the seal.
    pub fn streams(self) -> bool {
        !matches!(self, ShuffleMode::Blocking)
    }

    /// Every block is on disk and the seal is persisted, so a sealed
    /// shuffle survives a restart and any reader can read it again
    /// (blocking, hybrid-full).
    pub fn persists_seal(self) -> bool {
        matches!(
            self,
            ShuffleMode::Blocking | ShuffleMode::Hybrid(SpillStrategy::Full)
        )
    }

    /// A shuffle of this mode may keep a replica of each partition on a
    /// second server (blocking, hybrid-full: the copies that persist). A
    /// pipelined or hybrid-selective block lives in memory until its one
    /// reader takes it, so an unread replica would hold the memory budget
    /// forever: those modes keep one copy and restart a lost region.
    pub fn replicates(self) -> bool {
        self.persists_seal()
    }

    /// Blocks live in memory only and never reach a disk (pipelined): a
    /// block is gone once a reader took it, so a lost reader restarts its
    /// region.
    pub fn memory_only(self) -> bool {
        matches!(self, ShuffleMode::Pipelined)
    }

    /// A partition reads as one fixed sequence of blocks, so a cut fetch
    /// resumes at a block position (blocking). Streaming modes deliver in
    /// arrival order and do not resume by position.
    pub fn resumes_by_position(self) -> bool {
        matches!(self, ShuffleMode::Blocking)
    }

    /// The name used on command lines and in reports.
    pub fn name(self) -> &'static str {
        match self {
            ShuffleMode::Blocking => "blocking",
            ShuffleMode::Pipelined => "pipelined",
            ShuffleMode::Hybrid(SpillStrategy::Full) => "hybrid-full",
            ShuffleMode::Hybrid(SpillStrategy::Selective) => "hybrid-selective",
        }
    }
}

impl fmt::Display for ShuffleMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ShuffleMode {
    type Err = ProtocolError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|m| m.name() == s).ok_or_else(|| {
            ProtocolError::malformed(
                "shuffle mode",
                format!("{s:?} is not one of blocking, pipelined, hybrid-full, hybrid-selective"),
            )
        })
    }
}

/// The shape of one shuffle, fixed when it is registered.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ShuffleSpec {
    num_maps: u32,
    num_partitions: u32,
    mode: ShuffleMode,
}

impl ShuffleSpec {
    /// A spec with `1..=MAX_MAPS` maps and `1..=MAX_PARTITIONS` partitions.
    pub fn new(num_maps: u32, num_partitions: u32, mode: ShuffleMode) -> Result<Self, ProtocolError> {
        check_range("num_maps", num_maps, MAX_MAPS)?;
        check_range("num_partitions", num_partitions, MAX_PARTITIONS)?;
        Ok(ShuffleSpec {
            num_maps,
            num_partitions,
            mode,
        })
    }

    /// Number of map tasks.
    pub fn num_maps(&self) -> u32 {
        self.num_maps
    }

    /// Number of reduce partitions.
    pub fn num_partitions(&self) -> u32 {
        self.num_partitions
    }

    /// The shuffle mode.
    pub fn mode(&self) -> ShuffleMode {
        self.mode
    }
}

fn check_range(what: &'static str, value: u32, max: u32) -> Result<(), ProtocolError> {
    if value == 0 || value > max {
        return Err(ProtocolError::OutOfRange {
            what,
            value: u64::from(value),
            allowed: format!("1..={max}"),
        });
    }
    Ok(())
}

/// What a map attempt declares when it commits: how many blocks it pushed to
/// each partition. Partitions it did not write to are absent.
///
/// The server refuses a commit whose blocks have not all arrived, and a
/// reader gets exactly blocks `0..count` of the committed attempt, so a lost
/// or extra push can never go unnoticed.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct CommitManifest {
    /// Sorted by partition, no duplicates, no zero counts.
    counts: Vec<(PartitionId, u32)>,
}

impl CommitManifest {
    /// Builds a manifest from dense per-partition counts (index = partition).
    pub fn from_dense(counts: &[u32]) -> Self {
        CommitManifest {
            counts: counts
                .iter()
                .enumerate()
                .filter(|(_, c)| **c > 0)
                .map(|(p, c)| (PartitionId(p as u32), *c))
                .collect(),
        }
    }

    /// Builds a manifest from sparse entries; they must be sorted by
    /// partition, unique, and non-zero.
    pub fn from_sparse(counts: Vec<(PartitionId, u32)>) -> Result<Self, ProtocolError> {
        for pair in counts.windows(2) {
            if pair[0].0 >= pair[1].0 {
                return Err(ProtocolError::malformed(
                    "commit manifest",
                    format!("partitions not strictly increasing at {}", pair[1].0),
                ));
            }
        }
        if let Some((p, _)) = counts.iter().find(|(_, c)| *c == 0) {
            return Err(ProtocolError::malformed(
                "commit manifest",
                format!("zero block count for {p}"),
            ));
        }
        Ok(CommitManifest { counts })
    }

    /// The number of blocks committed for `partition`.
    pub fn count(&self, partition: PartitionId) -> u32 {
        self.counts
            .binary_search_by_key(&partition, |(p, _)| *p)
            .map(|i| self.counts[i].1)
            .unwrap_or(0)
    }

    /// Sparse entries, sorted by partition.
    pub fn entries(&self) -> &[(PartitionId, u32)] {
        &self.counts
    }

    /// Total blocks over all partitions.
    pub fn total_blocks(&self) -> u64 {
        self.counts.iter().map(|(_, c)| u64::from(*c)).sum()
    }

    /// Refuses a manifest naming a partition outside the spec.
    pub fn check_against(&self, spec: &ShuffleSpec) -> Result<(), ProtocolError> {
        match self.counts.last() {
            Some((p, _)) if p.0 >= spec.num_partitions() => Err(ProtocolError::OutOfRange {
                what: "partition in commit manifest",
                value: u64::from(p.0),
                allowed: format!("0..{}", spec.num_partitions()),
            }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_names_and_codes_round_trip() {
        for mode in ShuffleMode::ALL {
            assert_eq!(mode.name().parse::<ShuffleMode>(), Ok(mode));
            assert_eq!(ShuffleMode::from_code(mode.code()), Ok(mode));
        }
        assert!("hybrid".parse::<ShuffleMode>().is_err());
        assert!(ShuffleMode::from_code(4).is_err());
    }

    #[test]
    fn spec_limits_are_enforced() {
        assert!(ShuffleSpec::new(0, 1, ShuffleMode::Blocking).is_err());
        assert!(ShuffleSpec::new(1, 0, ShuffleMode::Blocking).is_err());
        assert!(ShuffleSpec::new(1, MAX_PARTITIONS + 1, ShuffleMode::Blocking).is_err());
        assert!(ShuffleSpec::new(MAX_MAPS, MAX_PARTITIONS, ShuffleMode::Pipelined).is_ok());
    }

    #[test]
    fn manifest_is_sparse_and_checked() {
        let m = CommitManifest::from_dense(&[0, 3, 0, 1]);
        assert_eq!(m.entries(), &[(PartitionId(1), 3), (PartitionId(3), 1)]);
        assert_eq!(m.count(PartitionId(0)), 0);
        assert_eq!(m.count(PartitionId(1)), 3);
        assert_eq!(m.total_blocks(), 4);
        let spec = ShuffleSpec::new(1, 3, ShuffleMode::Blocking).expect("spec");
        assert!(m.check_against(&spec).is_err());
        assert!(CommitManifest::from_sparse(vec![(PartitionId(2), 1), (PartitionId(1), 1)]).is_err());
        assert!(CommitManifest::from_sparse(vec![(PartitionId(2), 0)]).is_err());
    }
}
