//! Partition storage: blocks aggregated by reduce partition on local disks.
//!
//! [`Store`] is the synchronous core that both the network services and the
//! embedded client drive. It never blocks on anything but the file system,
//! holds no lock across I/O on another shuffle's data, and validates every
//! input (ids, ranges, checksums) before it writes a byte.
//!
//! A sealed shuffle survives a restart: its commits and index are written to
//! a meta file when it seals, and [`Store::open`] restores it from there.
//! Shuffles that were not sealed are deleted at start-up
//! ([`Store::recovery`] says what was restored and what was discarded).
//!
//! Streaming shuffles (pipelined, hybrid-full, hybrid-selective) keep a
//! stream index per partition (`stream.rs`, driven by `streaming.rs`):
//! readers attach any time after register ([`Store::open_read`]) and
//! stream blocks while producers push; blocks held in memory are paid for
//! with the store's [`MemoryBudget`]. Only blocking and sealed hybrid-full
//! shuffles survive a restart.

mod layout;
mod meta;
mod modes;
mod partition;
mod persist;
mod reader;
mod shuffle;
mod stream;
mod streaming;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use protocol::{
    AppId, AttemptId, Block, CommitManifest, MapId, MapRange, PartitionId, ShuffleId, ShuffleSpec,
};

use self::layout::Layout;
pub use self::modes::ShuffleRead;
use self::partition::FileBudget;
pub use self::persist::RecoveryReport;
pub use self::reader::PartitionReader;
pub use self::shuffle::CommitOutcome;
use self::shuffle::{Placement, ShuffleState};
use self::stream::MemoryGauge;
use self::streaming::StreamEnv;
pub use self::streaming::{StreamBlock, StreamReader};
pub use crate::budget::{Credit, MemoryBudget};
use crate::{ChecksumSite, ServerError};

/// Storage settings.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Data directories; the partitions of each shuffle are spread over all
    /// of them. No default: at least one is required.
    pub data_dirs: Vec<PathBuf>,
    /// Most partition files held open for appending at once, over all
    /// shuffles. Beyond it a partition opens, appends and closes per block.
    /// Default: 4096.
    pub max_open_files: usize,
    /// When a shuffle seals, flush its partition files, its folders and its
    /// meta file to stable storage (fsync) before the sealing commit
    /// returns, so the sealed shuffle survives a power loss or kernel crash
    /// as well as a killed process. When `false` the meta is still written
    /// (atomically, by rename) but nothing is fsynced: a sealed shuffle
    /// survives a killed server (kill -9 included: the data is in the page
    /// cache) but maybe not a machine crash, after which a shuffle whose
    /// meta did not reach the disk is discarded and one whose data did not
    /// reads as corrupt. Default: `true`.
    pub fsync_on_seal: bool,
    /// The memory budget that pays for the blocks streaming shuffles hold
    /// in memory. The server passes the budget its data plane uses, so one
    /// limit covers everything buffered. Default: 256 MiB, unmetered.
    pub memory_budget: MemoryBudget,
    /// Hybrid-selective: a block not consumed within this time is spilled
    /// to disk (hybrid-full: its memory copy is dropped). Default: 1 s.
    pub spill_after: Duration,
    /// Hybrid: a memory copy is kept only if this much credit stays free
    /// afterwards (the server reserves its largest frame, so hybrid copies
    /// never make a push wait). Default: 0.
    pub stream_headroom: u64,
}

impl StoreConfig {
    /// Defaults with the given data directories.
    pub fn new(data_dirs: Vec<PathBuf>) -> Self {
        StoreConfig {
            data_dirs,
            max_open_files: 4096,
            fsync_on_seal: true,
            memory_budget: MemoryBudget::unmetered(256 << 20),
            spill_after: Duration::from_secs(1),
            stream_headroom: 0,
        }
    }
}

/// What a push did.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct PushOutcome {
    /// New blocks written.
    pub stored: u32,
    /// Blocks already stored (retried or duplicated pushes), dropped.
    pub duplicates: u32,
}

/// The state of one shuffle.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ShuffleStatus {
    /// Maps, partitions and mode.
    pub spec: ShuffleSpec,
    /// Maps committed so far.
    pub committed_maps: u32,
    /// Every map committed.
    pub sealed: bool,
    /// Bytes in the shuffle's partition files on disk (every attempt);
    /// blocks held only in memory are not counted.
    pub stored_bytes: u64,
}

/// Counters since the store was opened.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct StoreStats {
    /// New blocks accepted (in memory or on disk).
    pub blocks_stored: u64,
    /// Bytes of those blocks.
    pub bytes_stored: u64,
    /// Duplicate blocks dropped.
    pub duplicates_dropped: u64,
    /// Blocks that failed their CRC32C.
    pub checksum_mismatches: u64,
    /// Bytes of streaming blocks held in memory now.
    pub memory_bytes: u64,
    /// The most bytes of streaming blocks ever held in memory at once.
    pub peak_memory_bytes: u64,
    /// Bytes hybrid shuffles wrote to disk (full and selective).
    pub spilled_bytes: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    blocks_stored: AtomicU64,
    bytes_stored: AtomicU64,
    duplicates_dropped: AtomicU64,
    checksum_mismatches: AtomicU64,
}

impl Counters {
    pub(crate) fn checksum_mismatch(&self) {
        self.checksum_mismatches.fetch_add(1, Ordering::Relaxed);
    }
}

type ShuffleKey = (AppId, ShuffleId);

/// The partition store. Cheap to share behind an `Arc`; every method takes
/// `&self` and is safe to call from many threads.
#[derive(Debug)]
pub struct Store {
    layout: Layout,
    shuffles: RwLock<HashMap<ShuffleKey, Arc<ShuffleState>>>,
    files: FileBudget,
    counters: Arc<Counters>,
    fsync_on_seal: bool,
    recovery: RecoveryReport,
    /// Bytes appended to partition files, per data dir, since opening.
    written_by_dir: Box<[AtomicU64]>,
    /// Budget, memory gauge and spill counters of streaming shuffles.
    env: StreamEnv,
}

impl Store {
    /// Opens a store over the configured data directories, creating them.
    ///
    /// Recovers what an earlier run left: every sealed shuffle whose meta
    /// file is valid is served again; every other shuffle folder is deleted
    /// in every data directory (see [`Store::recovery`]). Fails if a data
    /// directory cannot be listed or a discarded folder cannot be deleted.
    pub fn open(config: StoreConfig) -> Result<Self, ServerError> {
        let layout = Layout::new(&config.data_dirs)?;
        let (restored, recovery) = persist::recover(&layout, config.fsync_on_seal)?;
        let shuffles = restored
            .into_iter()
            .map(|state| ((state.app.clone(), state.id), Arc::new(state)))
            .collect();
        Ok(Store {
            written_by_dir: layout.data_dirs().iter().map(|_| AtomicU64::new(0)).collect(),
            layout,
            shuffles: RwLock::new(shuffles),
            files: FileBudget::new(config.max_open_files),
            counters: Arc::default(),
            fsync_on_seal: config.fsync_on_seal,
            recovery,
            env: StreamEnv {
                budget: config.memory_budget,
                gauge: Arc::new(MemoryGauge::default()),
                headroom: config.stream_headroom,
                spill_after: config.spill_after,
                spilled_full: AtomicU64::new(0),
                spilled_selective: AtomicU64::new(0),
            },
        })
    }

    /// What [`Store::open`] restored, discarded and ignored.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// The data directories, canonicalized.
    pub fn data_dirs(&self) -> &[PathBuf] {
        self.layout.data_dirs()
    }

    /// Registers a shuffle. Registering again with the same spec is a no-op;
    /// with another spec it is refused.
    pub fn register_shuffle(
        &self,
        app: &AppId,
        shuffle: ShuffleId,
        spec: ShuffleSpec,
    ) -> Result<(), ServerError> {
        let key = (app.clone(), shuffle);
        let mut shuffles = self
            .shuffles
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(existing) = shuffles.get(&key) {
            if existing.spec == spec {
                return Ok(());
            }
            return Err(ServerError::ShuffleExists {
                app: app.clone(),
                shuffle,
                existing: existing.spec,
            });
        }
        for dir in self.layout.shuffle_dirs(app, shuffle) {
            std::fs::create_dir_all(&dir).map_err(ServerError::io("create shuffle dir", &dir))?;
        }
        let layout = &self.layout;
        let placement = Placement {
            dirs: layout.shuffle_dirs(app, shuffle),
            fsync_on_seal: self.fsync_on_seal,
        };
        let state = ShuffleState::new(app.clone(), shuffle, spec, placement, |p| {
            layout.partition_file(app, shuffle, p)
        });
        shuffles.insert(key, Arc::new(state));
        Ok(())
    }

    fn all_shuffles(&self) -> Vec<Arc<ShuffleState>> {
        self.shuffles
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    fn shuffle(&self, app: &AppId, shuffle: ShuffleId) -> Result<Arc<ShuffleState>, ServerError> {
        self.shuffles
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&(app.clone(), shuffle))
            .cloned()
            .ok_or_else(|| ServerError::UnknownShuffle {
                app: app.clone(),
                shuffle,
            })
    }

    /// Stores a batch of blocks for any partitions of one shuffle.
    ///
    /// The batch is validated whole first (ids, ranges, CRC32C of every
    /// payload); a bad batch stores nothing. Blocks already stored under the
    /// same (map, attempt, seq) are dropped and counted as duplicates.
    ///
    /// A pipelined push made here takes its memory credit with a
    /// try-acquire and fails with [`ServerError::NoCredit`] when the budget
    /// is full; callers that can wait use [`Store::push_credited`].
    pub fn push(
        &self,
        app: &AppId,
        shuffle: ShuffleId,
        blocks: &[Block],
    ) -> Result<PushOutcome, ServerError> {
        self.push_credited(app, shuffle, blocks.to_vec(), None)
    }

    /// [`Store::push`], with `credit` paying for the blocks a pipelined
    /// shuffle keeps in memory: each kept block takes its share, and holds
    /// it until a reader takes the block (the rest is returned on drop).
    /// Other modes ignore it (it is returned when dropped).
    pub fn push_credited(
        &self,
        app: &AppId,
        shuffle: ShuffleId,
        blocks: Vec<Block>,
        credit: Option<Credit>,
    ) -> Result<PushOutcome, ServerError> {
        let state = self.shuffle(app, shuffle)?;
        state.check_live()?;
        state.check_push(&blocks)?;
        for block in &blocks {
            if let Err(e) = block.verify() {
                self.counters.checksum_mismatch();
                return Err(match e {
                    protocol::ProtocolError::ChecksumMismatch {
                        block,
                        expected,
                        actual,
                    } => ServerError::ChecksumMismatch {
                        block,
                        expected,
                        actual,
                        site: ChecksumSite::Received,
                    },
                    other => other.into(),
                });
            }
        }
        if state.stream.is_some() {
            return self.push_stream(&state, blocks, credit);
        }
        // Held until the blocks are on disk.
        let _credit = credit;
        let mut outcome = PushOutcome::default();
        for block in &blocks {
            if state.append(block, &self.files)? {
                outcome.stored += 1;
                let len = block.encoded_len() as u64;
                self.counters.blocks_stored.fetch_add(1, Ordering::Relaxed);
                self.counters.bytes_stored.fetch_add(len, Ordering::Relaxed);
                let dir = self.layout.dir_index(app, shuffle, block.id().partition);
                if let Some(written) = self.written_by_dir.get(dir) {
                    written.fetch_add(len, Ordering::Relaxed);
                }
            } else {
                outcome.duplicates += 1;
                self.counters.duplicates_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(outcome)
    }

    /// Commits a map attempt (see [`CommitManifest`]). The first attempt of a
    /// map to commit wins; the last map's commit seals the shuffle.
    pub fn commit(
        &self,
        app: &AppId,
        shuffle: ShuffleId,
        map: MapId,
        attempt: AttemptId,
        manifest: CommitManifest,
    ) -> Result<CommitOutcome, ServerError> {
        let state = self.shuffle(app, shuffle)?;
        state.check_live()?;
        state.commit(map, attempt, manifest, &self.files)
    }

    /// Opens a sealed partition for reading, limited to `maps`.
    pub fn read(
        &self,
        app: &AppId,
        shuffle: ShuffleId,
        partition: PartitionId,
        maps: MapRange,
    ) -> Result<PartitionReader, ServerError> {
        let state = self.shuffle(app, shuffle)?;
        state.check_live()?;
        let (path, plan) = state.plan_read(partition, maps)?;
        PartitionReader::open(shuffle, partition, path, plan, self.counters.clone())
    }

    /// The state of a shuffle.
    pub fn status(&self, app: &AppId, shuffle: ShuffleId) -> Result<ShuffleStatus, ServerError> {
        let state = self.shuffle(app, shuffle)?;
        Ok(ShuffleStatus {
            spec: state.spec,
            committed_maps: state.committed_maps(),
            sealed: state.is_sealed(),
            stored_bytes: state.stored_bytes(),
        })
    }

    /// Forgets a shuffle and deletes its files.
    pub fn unregister_shuffle(&self, app: &AppId, shuffle: ShuffleId) -> Result<(), ServerError> {
        let removed = self
            .shuffles
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&(app.clone(), shuffle))
            .ok_or_else(|| ServerError::UnknownShuffle {
                app: app.clone(),
                shuffle,
            })?;
        removed.mark_removed();
        removed.close_files(&self.files);
        for dir in self.layout.shuffle_dirs(app, shuffle) {
            remove_dir_if_present(&dir)?;
        }
        for data_dir in self.layout.data_dirs() {
            // Drop the app folder once its last shuffle is gone; fails
            // harmlessly while other shuffles of the app remain.
            let _ = std::fs::remove_dir(self.layout.app_dir(data_dir, app));
        }
        Ok(())
    }

    /// Forgets every shuffle of an app and deletes the app's files.
    pub fn unregister_app(&self, app: &AppId) -> Result<(), ServerError> {
        let removed: Vec<Arc<ShuffleState>> = {
            let mut shuffles = self
                .shuffles
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let keys: Vec<ShuffleKey> = shuffles.keys().filter(|(a, _)| a == app).cloned().collect();
            keys.iter().filter_map(|k| shuffles.remove(k)).collect()
        };
        for state in &removed {
            state.mark_removed();
            state.close_files(&self.files);
        }
        for data_dir in self.layout.data_dirs() {
            remove_dir_if_present(&self.layout.app_dir(data_dir, app))?;
        }
        Ok(())
    }

    /// Apps with at least one registered (or restored) shuffle, sorted.
    pub fn app_ids(&self) -> Vec<AppId> {
        let shuffles = self
            .shuffles
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let apps: BTreeSet<&AppId> = shuffles.keys().map(|(app, _)| app).collect();
        apps.into_iter().cloned().collect()
    }

    /// Number of registered (or restored) shuffles.
    pub fn shuffle_count(&self) -> usize {
        self.shuffles
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    /// Bytes in the partition files of every live shuffle (every attempt),
    /// per data directory, in [`Store::data_dirs`] order. From memory, no
    /// I/O; walks every partition of every shuffle.
    pub fn stored_bytes_by_dir(&self) -> Vec<(PathBuf, u64)> {
        let mut totals = vec![0u64; self.layout.data_dirs().len()];
        for state in self.all_shuffles() {
            for (partition, bytes) in state.partition_bytes() {
                totals[self.layout.dir_index(&state.app, state.id, partition)] += bytes;
            }
        }
        self.layout.data_dirs().iter().cloned().zip(totals).collect()
    }

    /// Bytes appended to partition files since the store was opened, per
    /// data directory (for the flush metrics).
    pub fn written_bytes_by_dir(&self) -> Vec<(PathBuf, u64)> {
        self.layout
            .data_dirs()
            .iter()
            .zip(self.written_by_dir.iter())
            .map(|(d, w)| (d.clone(), w.load(Ordering::Relaxed)))
            .collect()
    }

    /// Flushes (fsync) every partition file currently open for appending,
    /// over all shuffles; used when draining. Tries every file and returns
    /// the first error. Sealed shuffles were flushed when they sealed (per
    /// [`StoreConfig::fsync_on_seal`]) and closed their files then.
    pub fn sync_all(&self) -> Result<(), ServerError> {
        let mut first_error = None;
        for state in self.all_shuffles() {
            if let Err(e) = state.sync_open_files() {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Counters since the store was opened.
    pub fn stats(&self) -> StoreStats {
        let c = &self.counters;
        StoreStats {
            blocks_stored: c.blocks_stored.load(Ordering::Relaxed),
            bytes_stored: c.bytes_stored.load(Ordering::Relaxed),
            duplicates_dropped: c.duplicates_dropped.load(Ordering::Relaxed),
            checksum_mismatches: c.checksum_mismatches.load(Ordering::Relaxed),
            memory_bytes: self.env.gauge.current(),
            peak_memory_bytes: self.env.gauge.peak(),
            spilled_bytes: self.env.spilled_full.load(Ordering::Relaxed)
                + self.env.spilled_selective.load(Ordering::Relaxed),
        }
    }
}

fn remove_dir_if_present(dir: &std::path::Path) -> Result<(), ServerError> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ServerError::io("remove", dir)(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
