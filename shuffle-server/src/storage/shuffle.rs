//! State of one registered shuffle: its partitions and its commits.
//!
//! Memory rule: registering costs O(1). A partition's file (and, in the
//! streaming modes, its stream index) is created when something first
//! touches that partition, and a map's commit record when it commits, so a
//! shuffle of 10,000 maps x 50,000 partitions that nobody wrote to costs as
//! little as one of 1 x 1; what grows, grows with the data pushed.
//!
//! Lock order: `commits`, then the stream-part map, then a stream part, then
//! the file map, then a partition file. The push path never holds `commits`
//! while it appends; the commit path takes `commits`, then each partition in
//! turn. No lock here is ever held across an `.await` (this module is sync).
//!
//! Sealing is made durable before it is visible: the commit that seals
//! flushes the partition files (per the fsync policy) and writes the meta
//! file (see `persist.rs`) while it holds `commits`, and only then marks the
//! shuffle sealed.

use protocol::ServiceError;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use protocol::{
    AppId, AttemptId, Block, CommitManifest, MapId, MapRange, PartitionId, ShuffleId, ShuffleSpec,
};

use super::disks::Disks;
use super::index::{index_lost, PlannedBlock};
use super::locks::{lock, rlock, wlock};
use super::meta::{self, SealedMeta};
use super::partition::{PartitionFile, Place, Target};
use super::persist;
use super::stream_index::StreamPart;
use super::try_all::try_all;
use crate::ServerError;

#[derive(Debug)]
pub(crate) struct Committed {
    pub attempt: AttemptId,
    pub manifest: CommitManifest,
}

/// The committed attempt of each map that committed.
#[derive(Debug, Default)]
pub(crate) struct Commits {
    pub by_map: BTreeMap<MapId, Committed>,
}

impl Commits {
    fn count(&self) -> u32 {
        self.by_map.len() as u32
    }
}

/// The result of a commit.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct CommitOutcome {
    /// This commit (or an earlier one) sealed the shuffle.
    pub sealed: bool,
    /// The same attempt had already committed the same manifest.
    pub already_committed: bool,
}

/// What [`ShuffleState::committed_sizes`] found.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct CommittedSizes {
    /// The committed attempt, when one map was asked for and it committed.
    pub attempt: Option<AttemptId>,
    /// Bytes per partition (block headers plus stored payloads), only
    /// partitions with bytes, sorted.
    pub partitions: Vec<(PartitionId, u64)>,
}

type Shared<T> = Arc<Mutex<T>>;

#[derive(Debug)]
pub(crate) struct ShuffleState {
    pub app: AppId,
    pub id: ShuffleId,
    pub spec: ShuffleSpec,
    /// Flush data files, folders and the meta to stable storage at seal.
    fsync_on_seal: bool,
    /// Partition files, created on first use.
    files: RwLock<HashMap<PartitionId, Shared<PartitionFile>>>,
    /// Streaming modes only: each partition's stream index, created on
    /// first use (from the commits so far).
    stream: Option<RwLock<HashMap<PartitionId, Arc<StreamPart>>>>,
    commits: Mutex<Commits>,
    sealed: AtomicBool,
    removed: AtomicBool,
    /// Set when the shuffle was registered as replicated.
    pub copy_role: std::sync::OnceLock<super::CopyRole>,
}

impl ShuffleState {
    pub(crate) fn new(app: AppId, id: ShuffleId, spec: ShuffleSpec, fsync_on_seal: bool) -> Self {
        ShuffleState {
            fsync_on_seal,
            files: RwLock::default(),
            stream: spec.mode().streams().then(RwLock::default),
            commits: Mutex::default(),
            sealed: AtomicBool::new(false),
            removed: AtomicBool::new(false),
            copy_role: std::sync::OnceLock::new(),
            app,
            id,
            spec,
        }
    }

    /// A sealed shuffle as recorded in its meta; `files` gives where each
    /// partition's file was found and its length on disk.
    pub(crate) fn restore(
        meta: SealedMeta,
        mut files: HashMap<PartitionId, (Place, u64)>,
        fsync_on_seal: bool,
    ) -> Self {
        let mut restored = HashMap::new();
        for (p, blocks) in meta.partitions.iter().enumerate() {
            let partition = PartitionId(p as u32);
            let found = files.remove(&partition);
            if blocks.is_empty() && found.is_none() {
                continue;
            }
            let (place, len) = match found {
                Some((place, len)) => (Some(place), len),
                None => (None, 0),
            };
            restored.insert(
                partition,
                Arc::new(Mutex::new(PartitionFile::restored(place, len, blocks))),
            );
        }
        // Files of partitions the committed attempts never wrote to (a
        // losing attempt's): kept so their bytes are counted and deleted.
        for (partition, (place, len)) in files {
            restored.insert(
                partition,
                Arc::new(Mutex::new(PartitionFile::restored(Some(place), len, &[]))),
            );
        }
        let by_map = meta
            .commits
            .into_iter()
            .enumerate()
            .map(|(m, (attempt, manifest))| (MapId(m as u32), Committed { attempt, manifest }))
            .collect();
        ShuffleState {
            app: meta.app,
            id: meta.shuffle,
            spec: meta.spec,
            fsync_on_seal,
            files: RwLock::new(restored),
            // A restored (sealed, hybrid-full or blocking) shuffle is read
            // from disk only.
            stream: None,
            commits: Mutex::new(Commits { by_map }),
            sealed: AtomicBool::new(true),
            removed: AtomicBool::new(false),
            // Sealed: no push will come to count.
            copy_role: std::sync::OnceLock::new(),
        }
    }

    pub(crate) fn is_sealed(&self) -> bool {
        self.sealed.load(Ordering::Acquire)
    }

    /// Streaming state exists (a live pipelined or hybrid shuffle; not a
    /// restored one, which reads like blocking).
    pub(crate) fn streams(&self) -> bool {
        self.stream.is_some()
    }

    pub(crate) fn mark_removed(&self) {
        // Under `commits`: a seal in progress finishes first (the caller then
        // deletes its meta with the folder), and a later one sees the flag
        // and writes nothing, so no meta outlives an unregistered shuffle.
        let commits = lock(&self.commits);
        self.removed.store(true, Ordering::Release);
        drop(commits);
        // Streaming blocks in memory are dropped (their credit returned) and
        // live readers woken: they see the flag and fail `UnknownShuffle`.
        for part in self.stream_parts() {
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

    pub(crate) fn unknown(&self) -> ServerError {
        ServerError::Service(ServiceError::UnknownShuffle {
            app: self.app.clone(),
            shuffle: self.id,
        })
    }

    pub(crate) fn check_partition(&self, partition: PartitionId) -> Result<(), ServerError> {
        if partition.0 >= self.spec.num_partitions() {
            return Err(ServerError::Service(ServiceError::PartitionOutOfRange {
                partition,
                num_partitions: self.spec.num_partitions(),
            }));
        }
        Ok(())
    }

    pub(crate) fn check_map(&self, map: MapId) -> Result<(), ServerError> {
        if map.0 >= self.spec.num_maps() {
            return Err(ServerError::Service(ServiceError::MapOutOfRange {
                map,
                num_maps: self.spec.num_maps(),
            }));
        }
        Ok(())
    }

    /// The partition's file, if anything created it.
    pub(crate) fn file(&self, partition: PartitionId) -> Option<Shared<PartitionFile>> {
        rlock(&self.files).get(&partition).cloned()
    }

    /// The partition's file, created (empty, unplaced) if needed.
    fn file_or_new(&self, partition: PartitionId) -> Shared<PartitionFile> {
        if let Some(file) = self.file(partition) {
            return file;
        }
        wlock(&self.files).entry(partition).or_default().clone()
    }

    fn all_files(&self) -> Vec<Shared<PartitionFile>> {
        rlock(&self.files).values().cloned().collect()
    }

    /// Every stream part created so far.
    pub(crate) fn stream_parts(&self) -> Vec<Arc<StreamPart>> {
        self.stream
            .as_ref()
            .map(|s| rlock(s).values().cloned().collect())
            .unwrap_or_default()
    }

    /// The stream part of `partition`, created if needed: a new part learns
    /// every commit so far, as if it had been there all along.
    pub(crate) fn stream_part(&self, partition: PartitionId) -> Result<Arc<StreamPart>, ServerError> {
        self.check_partition(partition)?;
        let Some(parts) = &self.stream else {
            // Internal invariant: callers check the mode first.
            return Err(ServerError::Service(ServiceError::UnsupportedMode {
                mode: self.spec.mode(),
            }));
        };
        if let Some(part) = rlock(parts).get(&partition) {
            return Ok(part.clone());
        }
        // Lock order: `commits` before the map, so no commit slips between
        // the replay below and the part becoming visible to commits.
        let commits = lock(&self.commits);
        let mut map = wlock(parts);
        if let Some(part) = map.get(&partition) {
            return Ok(part.clone());
        }
        let part = Arc::new(StreamPart::default());
        {
            let mut index = lock(&part.index);
            for (map_id, c) in &commits.by_map {
                index.commit(*map_id, c.attempt, c.manifest.count(partition));
            }
        }
        map.insert(partition, part.clone());
        Ok(part)
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
            if let Some(c) = commits.by_map.get(&id.map) {
                if c.attempt != id.attempt {
                    return Err(ServerError::Service(ServiceError::AttemptSuperseded {
                        map: id.map,
                        committed: c.attempt,
                        attempt: id.attempt,
                    }));
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

    /// Appends one checked block to its partition's file; `false` when it
    /// was a duplicate.
    pub(crate) fn append(&self, block: &Block, disks: &Disks) -> Result<bool, ServerError> {
        let partition = block.id().partition;
        let file = self.file_or_new(partition);
        let target = Target {
            disks,
            app: &self.app,
            shuffle: self.id,
            partition,
        };
        let appended = lock(&file).append(block, target);
        appended
    }

    /// Commits a map attempt: the first attempt to commit wins, and only if
    /// every block its manifest names has arrived.
    pub(crate) fn commit(
        &self,
        map: MapId,
        attempt: AttemptId,
        manifest: CommitManifest,
        disks: &Disks,
    ) -> Result<CommitOutcome, ServerError> {
        self.check_map(map)?;
        manifest.check_against(&self.spec)?;
        let mut commits = lock(&self.commits);
        self.check_live()?;
        if let Some(c) = commits.by_map.get(&map) {
            if c.attempt != attempt {
                return Err(ServerError::Service(ServiceError::CommitConflict {
                    map,
                    committed: c.attempt,
                    attempt,
                }));
            }
            if c.manifest != manifest {
                return Err(ServerError::Service(ServiceError::ManifestMismatch {
                    map,
                    attempt,
                }));
            }
            return Ok(CommitOutcome {
                sealed: self.is_sealed(),
                already_committed: true,
            });
        }
        for &(partition, expected) in manifest.entries() {
            // Streaming modes: blocks consumed (and dropped) count as arrived.
            let missing = if let Some(parts) = &self.stream {
                let part = rlock(parts).get(&partition).cloned();
                match part {
                    Some(part) => lock(&part.index).first_missing(map, attempt, expected),
                    None => Some(0),
                }
            } else {
                match self.file(partition) {
                    Some(file) => lock(&file).first_missing(map, attempt, expected),
                    None => Some(0),
                }
            };
            if let Some(missing_seq) = missing {
                return Err(ServerError::Service(ServiceError::MissingBlocks {
                    map,
                    attempt,
                    partition,
                    expected,
                    missing_seq,
                }));
            }
        }
        commits.by_map.insert(
            map,
            Committed {
                attempt,
                manifest: manifest.clone(),
            },
        );
        let sealed = commits.count() == self.spec.num_maps();
        // Pipelined and hybrid-selective shuffles are never restored after a
        // restart (their data was in memory), so their seal writes no meta.
        let persisted = self.spec.mode().persists_seal();
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
            if let Err(e) = self.persist_seal(&commits, disks) {
                commits.by_map.remove(&map);
                return Err(e);
            }
            self.sealed.store(true, Ordering::Release);
        }
        // Every partition learns the winner (readers end on it) and drops
        // the losers' blocks, returning their memory. Still under `commits`,
        // so a push of a losing attempt cannot slip in after.
        if let Some(parts) = &self.stream {
            for (partition, part) in rlock(parts).iter() {
                lock(&part.index).commit(map, attempt, manifest.count(*partition));
                part.notify.notify_waiters();
            }
        }
        drop(commits);
        if sealed && persisted {
            // Nothing is appended after the seal: give the handles back.
            self.close_files(disks);
        }
        Ok(CommitOutcome {
            sealed,
            already_committed: false,
        })
    }

    /// Makes the seal durable: flushes every partition file holding data and
    /// the shuffle's folders (and their parents) when the policy says so,
    /// then writes the meta atomically into every folder of the shuffle.
    /// Called with `commits` held, every map committed.
    fn persist_seal(&self, commits: &Commits, disks: &Disks) -> Result<(), ServerError> {
        let fsync = self.fsync_on_seal;
        // The committed blocks of each partition in (map, seq) order:
        // walking maps in order and appending keeps every list sorted.
        let mut wanted: BTreeMap<PartitionId, Vec<(MapId, AttemptId, u32)>> = BTreeMap::new();
        let mut committed = Vec::with_capacity(commits.by_map.len());
        for (m, c) in &commits.by_map {
            if m.0 as usize != committed.len() {
                // Unreachable while the count is the spec's; refusing beats
                // writing a meta that names fewer maps than the spec.
                return Err(self.not_sealed(commits));
            }
            for &(partition, count) in c.manifest.entries() {
                let list = wanted.entry(partition).or_default();
                list.extend((0..count).map(|seq| (*m, c.attempt, seq)));
            }
            committed.push((c.attempt, c.manifest.clone()));
        }
        let mut partitions = vec![Vec::new(); self.spec.num_partitions() as usize];
        for (partition, keys) in wanted {
            let file = self
                .file(partition)
                .ok_or_else(|| index_lost(PathBuf::from("-"), partition, None))?;
            let file = lock(&file);
            let mut blocks = Vec::with_capacity(keys.len());
            for (map, attempt, seq) in keys {
                let entry = file
                    .lookup(map, attempt, seq)
                    .ok_or_else(|| index_lost(file.describe(), partition, Some((map, attempt, seq))))?;
                blocks.push(PlannedBlock {
                    map,
                    attempt,
                    seq,
                    entry,
                });
            }
            // A file on a failed directory is lost: reads say so; it is
            // neither flushed nor given a meta there.
            if fsync && !file.is_lost(disks) {
                file.sync(disks)?;
            }
            partitions[partition.index()] = blocks;
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
        let mut folders: BTreeSet<usize> = self
            .all_files()
            .iter()
            .filter_map(|f| {
                let f = lock(f);
                f.place().filter(|_| !f.is_lost(disks)).map(|p| p.dir)
            })
            .collect();
        if folders.is_empty() {
            // Nothing was written anywhere (or only to failed directories):
            // the meta alone says the shuffle is sealed.
            let preferred = disks.layout.preferred_dir(&self.app, self.id, PartitionId(0));
            folders.insert(disks.candidates(preferred).next().unwrap_or(preferred));
        }
        let mut written: Vec<PathBuf> = Vec::new();
        for dir in folders {
            let folder = disks.layout.shuffle_dir(dir, &self.app, self.id);
            let result = std::fs::create_dir_all(&folder)
                .map_err(|e| disks.failed(dir, "create shuffle dir", &folder, e))
                .and_then(|()| {
                    if fsync {
                        // The folder holds the files' entries; its parents
                        // hold the folders' own entries.
                        for d in folder.ancestors().take(3) {
                            persist::sync_dir(d).map_err(|e| disks.failed(dir, "fsync dir", d, e))?;
                        }
                    }
                    persist::write_meta(&folder, &bytes, fsync)
                        .map_err(|(op, path, e)| disks.failed(dir, op, &path, e))
                });
            if let Err(e) = result {
                for folder in &written {
                    persist::remove_meta(folder);
                }
                return Err(e);
            }
            written.push(folder);
        }
        Ok(())
    }

    fn not_sealed(&self, commits: &Commits) -> ServerError {
        ServerError::Service(ServiceError::NotReady {
            shuffle: self.id,
            committed: commits.count(),
            num_maps: self.spec.num_maps(),
        })
    }

    pub(crate) fn committed_maps(&self) -> u32 {
        lock(&self.commits).count()
    }

    /// The blocks a blocking reader of `partition` gets for `maps`, in
    /// (map, seq) order, and the file holding them (`None` when the
    /// partition holds nothing).
    pub(crate) fn plan_read(
        &self,
        partition: PartitionId,
        maps: MapRange,
    ) -> Result<(Option<Place>, Vec<PlannedBlock>), ServerError> {
        self.check_partition(partition)?;
        if maps.end().0 > self.spec.num_maps() {
            return Err(ServerError::Service(ServiceError::MapOutOfRange {
                map: MapId(maps.end().0 - 1),
                num_maps: self.spec.num_maps(),
            }));
        }
        let commits = lock(&self.commits);
        if !self.is_sealed() {
            return Err(self.not_sealed(&commits));
        }
        let file = self.file(partition);
        let file = file.as_ref().map(|f| lock(f));
        let mut plan = Vec::new();
        for (map, c) in commits.by_map.range(maps.start()..maps.end()) {
            for seq in 0..c.manifest.count(partition) {
                let entry = file
                    .as_ref()
                    .and_then(|f| f.lookup(*map, c.attempt, seq))
                    .ok_or_else(|| {
                        let path = file.as_ref().map_or_else(|| PathBuf::from("-"), |f| f.describe());
                        index_lost(path, partition, Some((*map, c.attempt, seq)))
                    })?;
                plan.push(PlannedBlock {
                    map: *map,
                    attempt: c.attempt,
                    seq,
                    entry,
                });
            }
        }
        let place = file.as_ref().and_then(|f| f.place().cloned());
        Ok((place, plan))
    }

    /// Bytes stored per partition by the committed attempt of `map` (of
    /// every committed map with `None`), sparse and sorted by partition,
    /// and which attempt committed (`None` when `map` has not). Counts
    /// what the write-time index holds: blocks on disk (a pipelined
    /// shuffle's memory-only blocks are not counted).
    pub(crate) fn committed_sizes(&self, map: Option<MapId>) -> Result<CommittedSizes, ServerError> {
        if let Some(map) = map {
            self.check_map(map)?;
        }
        let commits = lock(&self.commits);
        let chosen: Vec<(MapId, &Committed)> = match map {
            Some(map) => commits.by_map.get(&map).map(|c| (map, c)).into_iter().collect(),
            None => commits.by_map.iter().map(|(m, c)| (*m, c)).collect(),
        };
        let mut bytes: BTreeMap<PartitionId, u64> = BTreeMap::new();
        for (m, c) in &chosen {
            for &(partition, count) in c.manifest.entries() {
                let Some(file) = self.file(partition) else {
                    continue;
                };
                let file = lock(&file);
                let sum: u64 = (0..count)
                    .filter_map(|seq| file.lookup(*m, c.attempt, seq))
                    .map(|e| u64::from(e.len))
                    .sum();
                *bytes.entry(partition).or_insert(0) += sum;
            }
        }
        Ok(CommittedSizes {
            attempt: map.and_then(|_| chosen.first().map(|(_, c)| c.attempt)),
            partitions: bytes.into_iter().filter(|(_, b)| *b > 0).collect(),
        })
    }

    /// Bytes stored over all partitions (every attempt).
    pub(crate) fn stored_bytes(&self) -> u64 {
        self.all_files().iter().map(|f| lock(f).len()).sum()
    }

    /// Bytes of this shuffle's files per data directory.
    pub(crate) fn bytes_by_dir(&self) -> BTreeMap<usize, u64> {
        let mut out = BTreeMap::new();
        for f in self.all_files() {
            let f = lock(&f);
            if let Some(place) = f.place() {
                *out.entry(place.dir).or_insert(0) += f.len();
            }
        }
        out
    }

    /// Flushes every partition file that has an open append handle.
    pub(crate) fn sync_open_files(&self, disks: &Disks) -> Result<(), ServerError> {
        try_all(self.all_files(), |f| lock(&f).sync_open(disks))
    }

    pub(crate) fn close_files(&self, disks: &Disks) {
        for f in self.all_files() {
            lock(&f).close(disks);
        }
    }
}
