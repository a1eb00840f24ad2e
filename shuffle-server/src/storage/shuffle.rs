//! State of one registered shuffle: its partitions and its commits.
//!
//! Lock order: `commits` before any partition. The push path never holds
//! both; the commit path takes `commits`, then each partition in turn.
//! No lock here is ever held across an `.await` (this module is sync).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use protocol::{
    AppId, AttemptId, Block, CommitManifest, MapId, MapRange, PartitionId, ShuffleId, ShuffleSpec,
};

use super::partition::{FileBudget, PartitionFile};
use super::reader::PlannedBlock;
use crate::ServerError;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock leaves plain data behind (indexes, counts)
    // that is still consistent at every await-free step; keep serving.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Debug)]
struct Committed {
    attempt: AttemptId,
    manifest: CommitManifest,
}

#[derive(Debug)]
struct Commits {
    by_map: Vec<Option<Committed>>,
    count: u32,
}

/// The result of a commit.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct CommitOutcome {
    /// This commit (or an earlier one) sealed the shuffle.
    pub sealed: bool,
    /// The same attempt had already committed the same manifest.
    pub already_committed: bool,
}

#[derive(Debug)]
pub(crate) struct ShuffleState {
    pub app: AppId,
    pub id: ShuffleId,
    pub spec: ShuffleSpec,
    partitions: Box<[Mutex<PartitionFile>]>,
    commits: Mutex<Commits>,
    sealed: AtomicBool,
    removed: AtomicBool,
}

impl ShuffleState {
    pub(crate) fn new(
        app: AppId,
        id: ShuffleId,
        spec: ShuffleSpec,
        path_of: impl Fn(PartitionId) -> PathBuf,
    ) -> Self {
        ShuffleState {
            partitions: (0..spec.num_partitions())
                .map(|p| Mutex::new(PartitionFile::new(path_of(PartitionId(p)))))
                .collect(),
            commits: Mutex::new(Commits {
                by_map: (0..spec.num_maps()).map(|_| None).collect(),
                count: 0,
            }),
            sealed: AtomicBool::new(false),
            removed: AtomicBool::new(false),
            app,
            id,
            spec,
        }
    }

    pub(crate) fn is_sealed(&self) -> bool {
        self.sealed.load(Ordering::Acquire)
    }

    pub(crate) fn mark_removed(&self) {
        self.removed.store(true, Ordering::Release);
    }

    pub(crate) fn check_live(&self) -> Result<(), ServerError> {
        if self.removed.load(Ordering::Acquire) {
            return Err(self.unknown());
        }
        Ok(())
    }

    fn unknown(&self) -> ServerError {
        ServerError::UnknownShuffle {
            app: self.app.clone(),
            shuffle: self.id,
        }
    }

    pub(crate) fn check_partition(&self, partition: PartitionId) -> Result<(), ServerError> {
        if partition.0 >= self.spec.num_partitions() {
            return Err(ServerError::PartitionOutOfRange {
                partition,
                num_partitions: self.spec.num_partitions(),
            });
        }
        Ok(())
    }

    pub(crate) fn check_map(&self, map: MapId) -> Result<(), ServerError> {
        if map.0 >= self.spec.num_maps() {
            return Err(ServerError::MapOutOfRange {
                map,
                num_maps: self.spec.num_maps(),
            });
        }
        Ok(())
    }

    /// Validates a whole push before anything of it is written, so a bad
    /// request stores nothing.
    pub(crate) fn check_push(&self, blocks: &[Block]) -> Result<(), ServerError> {
        let commits = lock(&self.commits);
        for block in blocks {
            let id = block.id();
            if id.shuffle != self.id {
                return Err(ServerError::WrongShuffle {
                    block: id,
                    shuffle: self.id,
                });
            }
            self.check_partition(id.partition)?;
            self.check_map(id.map)?;
            if let Some(c) = &commits.by_map[id.map.index()] {
                if c.attempt != id.attempt {
                    return Err(ServerError::AttemptSuperseded {
                        map: id.map,
                        committed: c.attempt,
                        attempt: id.attempt,
                    });
                }
            }
        }
        Ok(())
    }

    /// Appends one checked block; `false` when it was a duplicate.
    pub(crate) fn append(&self, block: &Block, files: &FileBudget) -> Result<bool, ServerError> {
        lock(&self.partitions[block.id().partition.index()]).append(block, files)
    }

    /// Commits a map attempt: the first attempt to commit wins, and only if
    /// every block its manifest names has arrived.
    pub(crate) fn commit(
        &self,
        map: MapId,
        attempt: AttemptId,
        manifest: CommitManifest,
        files: &FileBudget,
    ) -> Result<CommitOutcome, ServerError> {
        self.check_map(map)?;
        manifest.check_against(&self.spec)?;
        let mut commits = lock(&self.commits);
        if let Some(c) = &commits.by_map[map.index()] {
            if c.attempt != attempt {
                return Err(ServerError::CommitConflict {
                    map,
                    committed: c.attempt,
                    attempt,
                });
            }
            if c.manifest != manifest {
                return Err(ServerError::ManifestMismatch { map, attempt });
            }
            return Ok(CommitOutcome {
                sealed: self.is_sealed(),
                already_committed: true,
            });
        }
        for &(partition, expected) in manifest.entries() {
            let missing = lock(&self.partitions[partition.index()]).first_missing(map, attempt, expected);
            if let Some(missing_seq) = missing {
                return Err(ServerError::MissingBlocks {
                    map,
                    attempt,
                    partition,
                    expected,
                    missing_seq,
                });
            }
        }
        commits.by_map[map.index()] = Some(Committed { attempt, manifest });
        commits.count += 1;
        let sealed = commits.count == self.spec.num_maps();
        if sealed {
            self.sealed.store(true, Ordering::Release);
            drop(commits);
            // Nothing is appended after the seal: give the handles back.
            self.close_files(files);
        }
        Ok(CommitOutcome {
            sealed,
            already_committed: false,
        })
    }

    pub(crate) fn committed_maps(&self) -> u32 {
        lock(&self.commits).count
    }

    /// The blocks a blocking reader of `partition` gets for `maps`, in
    /// (map, seq) order, and the file holding them.
    pub(crate) fn plan_read(
        &self,
        partition: PartitionId,
        maps: MapRange,
    ) -> Result<(PathBuf, Vec<PlannedBlock>), ServerError> {
        self.check_partition(partition)?;
        if maps.end().0 > self.spec.num_maps() {
            return Err(ServerError::MapOutOfRange {
                map: MapId(maps.end().0 - 1),
                num_maps: self.spec.num_maps(),
            });
        }
        let commits = lock(&self.commits);
        if !self.is_sealed() {
            return Err(ServerError::NotSealed {
                app: self.app.clone(),
                shuffle: self.id,
                committed: commits.count,
                num_maps: self.spec.num_maps(),
            });
        }
        let part = lock(&self.partitions[partition.index()]);
        let mut plan = Vec::new();
        for map in maps.iter() {
            let Some(c) = &commits.by_map[map.index()] else {
                continue; // unreachable once sealed; an empty map reads as nothing
            };
            for seq in 0..c.manifest.count(partition) {
                let entry = part
                    .lookup(map, c.attempt, seq)
                    .ok_or_else(|| ServerError::CorruptFile {
                        path: part.path().to_path_buf(),
                        reason: format!("index lost {map} {} seq {seq}", c.attempt),
                    })?;
                plan.push(PlannedBlock {
                    map,
                    attempt: c.attempt,
                    seq,
                    entry,
                });
            }
        }
        Ok((part.path().to_path_buf(), plan))
    }

    /// Bytes stored over all partitions (every attempt).
    pub(crate) fn stored_bytes(&self) -> u64 {
        self.partitions.iter().map(|p| lock(p).len()).sum()
    }

    pub(crate) fn close_files(&self, files: &FileBudget) {
        for p in self.partitions.iter() {
            lock(p).close(files);
        }
    }
}
