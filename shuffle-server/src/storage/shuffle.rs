//! State of one registered shuffle: its partitions and its commits.
//!
//! Lock order: `commits` before any partition. The push path never holds
//! both; the commit path takes `commits`, then each partition in turn.
//! No lock here is ever held across an `.await` (this module is sync).
//!
//! Sealing is made durable before it is visible: the commit that seals
//! flushes the partition files (per the fsync policy) and writes the meta
//! file (see `persist.rs`) while it holds `commits`, and only then marks the
//! shuffle sealed.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use protocol::{
    AppId, AttemptId, Block, CommitManifest, MapId, MapRange, PartitionId, ShuffleId, ShuffleMode,
    ShuffleSpec,
};

use super::meta::{self, SealedMeta};
use super::partition::{FileBudget, PartitionFile};
use super::persist;
use super::reader::PlannedBlock;
use super::streaming::StreamPart;
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

/// Where a shuffle's files live and how its seal is made durable.
#[derive(Debug)]
pub(crate) struct Placement {
    /// The shuffle's folder in every data dir; the first holds the meta.
    pub dirs: Vec<PathBuf>,
    /// Flush data files, folders and the meta to stable storage at seal.
    pub fsync_on_seal: bool,
}

#[derive(Debug)]
pub(crate) struct ShuffleState {
    pub app: AppId,
    pub id: ShuffleId,
    pub spec: ShuffleSpec,
    placement: Placement,
    pub(super) partitions: Box<[Mutex<PartitionFile>]>,
    /// Streaming modes only: each partition's stream index. Lock order:
    /// `commits`, then a stream part, then a partition file.
    pub(super) stream: Option<Box<[StreamPart]>>,
    commits: Mutex<Commits>,
    sealed: AtomicBool,
    removed: AtomicBool,
}

impl ShuffleState {
    pub(crate) fn new(
        app: AppId,
        id: ShuffleId,
        spec: ShuffleSpec,
        placement: Placement,
        path_of: impl Fn(PartitionId) -> PathBuf,
    ) -> Self {
        ShuffleState {
            placement,
            partitions: (0..spec.num_partitions())
                .map(|p| Mutex::new(PartitionFile::new(path_of(PartitionId(p)))))
                .collect(),
            stream: (spec.mode() != ShuffleMode::Blocking).then(|| {
                (0..spec.num_partitions())
                    .map(|_| StreamPart::default())
                    .collect()
            }),
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

    /// A sealed shuffle as recorded in its meta; `file_of` gives each
    /// partition's path and its length on disk.
    pub(crate) fn restore(
        meta: SealedMeta,
        placement: Placement,
        file_of: impl Fn(PartitionId) -> (PathBuf, u64),
    ) -> Self {
        let partitions = meta
            .partitions
            .iter()
            .enumerate()
            .map(|(p, blocks)| {
                let (path, len) = file_of(PartitionId(p as u32));
                Mutex::new(PartitionFile::restored(path, len, blocks))
            })
            .collect();
        let count = meta.commits.len() as u32;
        let by_map = meta
            .commits
            .into_iter()
            .map(|(attempt, manifest)| Some(Committed { attempt, manifest }))
            .collect();
        ShuffleState {
            app: meta.app,
            id: meta.shuffle,
            spec: meta.spec,
            placement,
            partitions,
            // A restored (sealed, hybrid-full or blocking) shuffle is read
            // from disk only.
            stream: None,
            commits: Mutex::new(Commits { by_map, count }),
            sealed: AtomicBool::new(true),
            removed: AtomicBool::new(false),
        }
    }

    pub(crate) fn is_sealed(&self) -> bool {
        self.sealed.load(Ordering::Acquire)
    }

    pub(crate) fn mark_removed(&self) {
        // Under `commits`: a seal in progress finishes first (the caller then
        // deletes its meta with the folder), and a later one sees the flag
        // and writes nothing, so no meta outlives an unregistered shuffle.
        let _commits = lock(&self.commits);
        self.removed.store(true, Ordering::Release);
        drop(_commits);
        // Streaming blocks in memory are dropped (their credit returned) and
        // live readers woken: they see the flag and fail `UnknownShuffle`.
        for part in self.stream.iter().flat_map(|s| s.iter()) {
            lock(&part.index).clear();
            part.notify.notify_waiters();
        }
    }

    pub(crate) fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
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
                // A retried push of a committed block is a duplicate and
                // harmless; a block past the manifest would sit unserved
                // (in memory, holding credit, for streaming modes).
                let committed = c.manifest.count(id.partition);
                if id.seq >= committed {
                    return Err(ServerError::BeyondManifest { block: id, committed });
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
        self.check_live()?;
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
            // Streaming modes: blocks consumed (and dropped) count as arrived.
            let missing = match &self.stream {
                Some(parts) => lock(&parts[partition.index()].index).first_missing(map, attempt, expected),
                None => lock(&self.partitions[partition.index()]).first_missing(map, attempt, expected),
            };
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
        let counts: Vec<u32> = match &self.stream {
            Some(parts) => (0..parts.len() as u32)
                .map(|p| manifest.count(PartitionId(p)))
                .collect(),
            None => Vec::new(),
        };
        commits.by_map[map.index()] = Some(Committed { attempt, manifest });
        commits.count += 1;
        let sealed = commits.count == self.spec.num_maps();
        // Pipelined and hybrid-selective shuffles are never restored after a
        // restart (their data was in memory), so their seal writes no meta.
        let persisted = matches!(
            self.spec.mode(),
            ShuffleMode::Blocking | ShuffleMode::Hybrid(protocol::SpillStrategy::Full)
        );
        if sealed && !persisted {
            self.sealed.store(true, Ordering::Release);
        } else if sealed {
            // A shuffle is sealed only once its meta is on disk: serving it
            // as sealed without one would break promise 5 (a restart would
            // silently drop a shuffle readers were already told is
            // complete). So a failed write undoes this commit, under the same
            // lock, as if it never happened: the caller gets the I/O error
            // (retryable), readers keep getting `NotSealed`, and retrying the
            // commit (or a newer attempt of the map committing) seals again.
            if let Err(e) = self.persist_seal(&commits) {
                commits.by_map[map.index()] = None;
                commits.count -= 1;
                return Err(e);
            }
            self.sealed.store(true, Ordering::Release);
        }
        if let Some(parts) = &self.stream {
            // Every partition learns the winner (readers end on it) and
            // drops the losers' blocks, returning their memory. Still under
            // `commits`, so a push of a losing attempt cannot slip in after.
            for (part, count) in parts.iter().zip(counts) {
                lock(&part.index).commit(map, attempt, count);
                part.notify.notify_waiters();
            }
        }
        drop(commits);
        if sealed && persisted {
            // Nothing is appended after the seal: give the handles back.
            self.close_files(files);
        }
        Ok(CommitOutcome {
            sealed,
            already_committed: false,
        })
    }

    /// Makes the seal durable: flushes every partition file holding data and
    /// the shuffle's folders (and their parents) when the policy says so,
    /// then writes the meta atomically. Called with `commits` held, every
    /// map committed.
    fn persist_seal(&self, commits: &Commits) -> Result<(), ServerError> {
        let fsync = self.placement.fsync_on_seal;
        // The committed blocks of each partition in (map, seq) order:
        // walking maps in order and appending keeps every list sorted.
        let mut wanted: Vec<Vec<(MapId, AttemptId, u32)>> = vec![Vec::new(); self.partitions.len()];
        let mut committed = Vec::with_capacity(commits.by_map.len());
        for (m, c) in commits.by_map.iter().enumerate() {
            // Unreachable while `count` counts the filled slots; refusing
            // beats writing a meta that names fewer maps than the spec.
            let Some(c) = c else {
                return Err(ServerError::NotSealed {
                    app: self.app.clone(),
                    shuffle: self.id,
                    committed: commits.count,
                    num_maps: self.spec.num_maps(),
                });
            };
            for &(partition, count) in c.manifest.entries() {
                let list = &mut wanted[partition.index()];
                list.extend((0..count).map(|seq| (MapId(m as u32), c.attempt, seq)));
            }
            committed.push((c.attempt, c.manifest.clone()));
        }
        let mut partitions = Vec::with_capacity(wanted.len());
        for (part, keys) in self.partitions.iter().zip(wanted) {
            let part = lock(part);
            let blocks = keys
                .into_iter()
                .map(|(map, attempt, seq)| {
                    let entry = part
                        .lookup(map, attempt, seq)
                        .ok_or_else(|| ServerError::CorruptFile {
                            path: part.path().to_path_buf(),
                            reason: format!("index lost {map} {attempt} seq {seq}"),
                        })?;
                    Ok(PlannedBlock {
                        map,
                        attempt,
                        seq,
                        entry,
                    })
                })
                .collect::<Result<Vec<_>, ServerError>>()?;
            if fsync {
                part.sync()?;
            }
            partitions.push(blocks);
        }
        if fsync {
            // The shuffle folders hold the partition files' entries; their
            // parents hold the folders' own entries (created at register).
            for dir in &self.placement.dirs {
                for d in dir.ancestors().take(3) {
                    persist::sync_dir(d)?;
                }
            }
        }
        let meta = SealedMeta {
            app: self.app.clone(),
            shuffle: self.id,
            spec: self.spec,
            commits: committed,
            partitions,
        };
        let mut bytes = Vec::new();
        meta::encode(&meta, &mut bytes)?;
        persist::write_meta(&self.placement.dirs[0], &bytes, fsync)
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

    /// Bytes stored in each partition's file, by partition.
    pub(crate) fn partition_bytes(&self) -> impl Iterator<Item = (PartitionId, u64)> + '_ {
        self.partitions
            .iter()
            .enumerate()
            .map(|(p, part)| (PartitionId(p as u32), lock(part).len()))
    }

    /// Flushes every partition file that has an open append handle.
    pub(crate) fn sync_open_files(&self) -> Result<(), ServerError> {
        let mut first_error = None;
        for p in self.partitions.iter() {
            if let Err(e) = lock(p).sync_open() {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    pub(crate) fn close_files(&self, files: &FileBudget) {
        for p in self.partitions.iter() {
            lock(p).close(files);
        }
    }
}
