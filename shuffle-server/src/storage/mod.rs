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

mod disks;
mod layout;
mod meta;
mod modes;
mod partition;
mod persist;
mod reader;
mod shuffle;
mod stream;
mod streaming;

use protocol::ServiceError;
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use protocol::{
    AppId, AttemptId, Block, CommitManifest, MapId, MapRange, PartitionId, ShuffleId, ShuffleSpec,
};

use self::disks::Disks;
pub use self::disks::{DiskErrorKind, DiskStatus};
use self::layout::Layout;
pub use self::modes::ShuffleRead;
pub use self::persist::{RecoveryReport, SetAside};
pub use self::reader::PartitionReader;
pub use self::shuffle::CommitOutcome;
use self::shuffle::{rlock, wlock, ShuffleState};
use self::stream::MemoryGauge;
use self::streaming::StreamEnv;
pub use self::streaming::{StreamBlock, StreamReader};
pub use crate::budget::{Credit, MemoryBudget};
use crate::ServerError;
use protocol::ChecksumSite;

/// Storage settings.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Data directories; the partitions of each shuffle are spread over all
    /// of them. No default: at least one is required.
    pub data_dirs: Vec<PathBuf>,
    /// Create data directories that do not exist. When `false`, a missing
    /// one is refused at open (an unmounted disk must not silently become a
    /// folder on the root file system). Default: `true` here, for embedded
    /// use; the daemon's default is `false`.
    pub create_data_dirs: bool,
    /// A data directory with less free space than this takes no new
    /// partition (partitions already there go on being appended to until
    /// the disk is really full). Default: 1 GiB, like Celeborn's disk
    /// reservation.
    pub disk_reserve: u64,
    /// How often the store probes its data directories (free space and a
    /// write test) and, for hybrid shuffles, how often at most it sweeps.
    /// Default: 5 s.
    pub check_interval: Duration,
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
    /// Limits on what registrations may ask for.
    pub limits: StoreLimits,
}

impl StoreConfig {
    /// Defaults with the given data directories.
    pub fn new(data_dirs: Vec<PathBuf>) -> Self {
        StoreConfig {
            data_dirs,
            create_data_dirs: true,
            disk_reserve: 1 << 30,
            check_interval: Duration::from_secs(5),
            max_open_files: 4096,
            fsync_on_seal: true,
            memory_budget: MemoryBudget::unmetered(256 << 20),
            spill_after: Duration::from_secs(1),
            stream_headroom: 0,
            limits: StoreLimits::default(),
        }
    }
}

/// Limits on registered shuffles. A registration beyond one is refused with
/// [`ServerError::LimitExceeded`] naming it. Registering costs a few hundred
/// bytes whatever the shape (state grows with the data pushed), so these
/// bound what idle registrations can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreLimits {
    /// Shuffles registered at once, over all apps. Default 65,536.
    pub max_shuffles: usize,
    /// Shuffles one app may have registered at once. Default 10,000 (a
    /// long Spark application creates thousands over its life; its cleaner
    /// unregisters them as they go out of use).
    pub max_shuffles_per_app: usize,
    /// `num_maps x num_partitions` of one shuffle. Default 10^9, which
    /// admits 10,000 maps x 50,000 partitions with room to spare.
    pub max_maps_x_partitions: u64,
}

impl Default for StoreLimits {
    fn default() -> Self {
        StoreLimits {
            max_shuffles: 65_536,
            max_shuffles_per_app: 10_000,
            max_maps_x_partitions: 1_000_000_000,
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

/// The registered shuffles.
#[derive(Debug, Default)]
struct Registry {
    by_key: HashMap<ShuffleKey, Arc<ShuffleState>>,
    per_app: HashMap<AppId, usize>,
    /// Shuffles on disk that this store does not serve (a meta of a newer
    /// format): their ids are refused, so nothing overwrites them. The
    /// value says why.
    held: HashMap<ShuffleKey, String>,
}

impl Registry {
    fn insert(&mut self, state: Arc<ShuffleState>) {
        *self.per_app.entry(state.app.clone()).or_insert(0) += 1;
        self.by_key.insert((state.app.clone(), state.id), state);
    }

    fn remove(&mut self, key: &ShuffleKey) -> Option<Arc<ShuffleState>> {
        let state = self.by_key.remove(key)?;
        if let Some(n) = self.per_app.get_mut(&key.0) {
            *n -= 1;
            if *n == 0 {
                self.per_app.remove(&key.0);
            }
        }
        Some(state)
    }
}

/// The partition store. Cheap to share behind an `Arc`; every method takes
/// `&self` and is safe to call from many threads.
#[derive(Debug)]
pub struct Store {
    disks: Disks,
    shuffles: RwLock<Registry>,
    counters: Arc<Counters>,
    fsync_on_seal: bool,
    limits: StoreLimits,
    check_interval: Duration,
    recovery: RecoveryReport,
    /// Budget, memory gauge and spill counters of streaming shuffles.
    env: StreamEnv,
}

impl Store {
    /// Opens a store over the configured data directories (see
    /// [`StoreConfig::create_data_dirs`]).
    ///
    /// Recovers what an earlier run left (see [`Store::recovery`]): sealed
    /// shuffles are served again, unsealed ones deleted, unreadable ones
    /// quarantined, newer ones left alone. Fails if a data directory is
    /// missing or cannot be listed, or a discarded folder cannot be deleted.
    pub fn open(config: StoreConfig) -> Result<Self, ServerError> {
        let layout = Layout::new(&config.data_dirs, config.create_data_dirs)?;
        let recovered = persist::recover(&layout, config.fsync_on_seal)?;
        let disks = Disks::new(layout, config.disk_reserve, config.max_open_files);
        for (dir, bytes) in &recovered.bytes_by_dir {
            disks.restored(*dir, *bytes);
        }
        disks.probe_all();
        let mut registry = Registry::default();
        for state in recovered.shuffles {
            registry.insert(Arc::new(state));
        }
        for held in &recovered.report.held {
            registry
                .held
                .insert((held.app.clone(), held.shuffle), held.reason.clone());
        }
        Ok(Store {
            disks,
            shuffles: RwLock::new(registry),
            counters: Arc::default(),
            fsync_on_seal: config.fsync_on_seal,
            limits: config.limits,
            check_interval: config.check_interval,
            recovery: recovered.report,
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

    /// What [`Store::open`] restored, discarded, quarantined and ignored.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// The data directories, canonicalized.
    pub fn data_dirs(&self) -> &[PathBuf] {
        self.disks.layout.data_dirs()
    }

    /// Registers a shuffle. Registering again with the same spec is a no-op;
    /// with another spec it is refused. Costs no disk I/O and O(1) memory:
    /// files and folders appear with the first block.
    pub fn register_shuffle(
        &self,
        app: &AppId,
        shuffle: ShuffleId,
        spec: ShuffleSpec,
    ) -> Result<(), ServerError> {
        let key = (app.clone(), shuffle);
        let mut shuffles = wlock(&self.shuffles);
        if let Some(existing) = shuffles.by_key.get(&key) {
            if existing.spec == spec {
                return Ok(());
            }
            return Err(ServerError::Service(ServiceError::ShuffleExists {
                app: app.clone(),
                shuffle,
                existing: existing.spec,
            }));
        }
        if let Some(reason) = shuffles.held.get(&key) {
            return Err(ServerError::CorruptFile {
                path: self.disks.layout.shuffle_dir(0, app, shuffle),
                reason: format!("held on disk and not served: {reason}"),
            });
        }
        let cells = u64::from(spec.num_maps()) * u64::from(spec.num_partitions());
        let limits = &self.limits;
        let app_count = shuffles.per_app.get(app).copied().unwrap_or(0);
        let over = if cells > limits.max_maps_x_partitions {
            Some(("max_maps_x_partitions", limits.max_maps_x_partitions, cells))
        } else if shuffles.by_key.len() >= limits.max_shuffles {
            Some((
                "max_shuffles",
                limits.max_shuffles as u64,
                shuffles.by_key.len() as u64 + 1,
            ))
        } else if app_count >= limits.max_shuffles_per_app {
            Some((
                "max_shuffles_per_app",
                limits.max_shuffles_per_app as u64,
                app_count as u64 + 1,
            ))
        } else {
            None
        };
        if let Some((limit, max, requested)) = over {
            return Err(ServerError::Service(ServiceError::LimitExceeded {
                limit: limit.to_string(),
                max,
                requested,
            }));
        }
        shuffles.insert(Arc::new(ShuffleState::new(
            app.clone(),
            shuffle,
            spec,
            self.fsync_on_seal,
        )));
        Ok(())
    }

    fn all_shuffles(&self) -> Vec<Arc<ShuffleState>> {
        rlock(&self.shuffles).by_key.values().cloned().collect()
    }

    fn shuffle(&self, app: &AppId, shuffle: ShuffleId) -> Result<Arc<ShuffleState>, ServerError> {
        rlock(&self.shuffles)
            .by_key
            .get(&(app.clone(), shuffle))
            .cloned()
            .ok_or_else(|| {
                ServerError::Service(ServiceError::UnknownShuffle {
                    app: app.clone(),
                    shuffle,
                })
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
                    } => ServerError::Service(ServiceError::ChecksumMismatch {
                        block,
                        expected,
                        actual,
                        site: ChecksumSite::Received,
                    }),
                    other => other.into(),
                });
            }
        }
        if state.streams() {
            return self.push_stream(&state, blocks, credit);
        }
        // Held until the blocks are on disk.
        let _credit = credit;
        let mut outcome = PushOutcome::default();
        for block in &blocks {
            if state.append(block, &self.disks)? {
                outcome.stored += 1;
                let len = block.encoded_len() as u64;
                self.counters.blocks_stored.fetch_add(1, Ordering::Relaxed);
                self.counters.bytes_stored.fetch_add(len, Ordering::Relaxed);
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
        state.commit(map, attempt, manifest, &self.disks)
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
        let removed = wlock(&self.shuffles)
            .remove(&(app.clone(), shuffle))
            .ok_or_else(|| {
                ServerError::Service(ServiceError::UnknownShuffle {
                    app: app.clone(),
                    shuffle,
                })
            })?;
        self.delete(&removed)?;
        self.remove_empty_app_dirs(app);
        Ok(())
    }

    /// Forgets every shuffle of an app and deletes their files. Only what
    /// this store registered or restored is deleted: anything else in the
    /// app's folders (a shuffle held for a newer server) stays.
    pub fn unregister_app(&self, app: &AppId) -> Result<(), ServerError> {
        let removed: Vec<Arc<ShuffleState>> = {
            let mut shuffles = wlock(&self.shuffles);
            let keys: Vec<ShuffleKey> = shuffles
                .by_key
                .keys()
                .filter(|(a, _)| a == app)
                .cloned()
                .collect();
            keys.iter().filter_map(|k| shuffles.remove(k)).collect()
        };
        let mut first_error = None;
        for state in &removed {
            if let Err(e) = self.delete(state) {
                first_error.get_or_insert(e);
            }
        }
        self.remove_empty_app_dirs(app);
        first_error.map_or(Ok(()), Err)
    }

    /// Marks an unregistered shuffle removed and deletes its folder in
    /// every data directory.
    fn delete(&self, state: &ShuffleState) -> Result<(), ServerError> {
        state.mark_removed();
        state.close_files(&self.disks);
        for (dir, bytes) in state.bytes_by_dir() {
            self.disks.removed(dir, bytes);
        }
        let mut first_error = None;
        for dir in 0..self.disks.len() {
            let folder = self.disks.layout.shuffle_dir(dir, &state.app, state.id);
            if let Err(e) = remove_dir_if_present(&folder) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn remove_empty_app_dirs(&self, app: &AppId) {
        for dir in 0..self.disks.len() {
            // Fails harmlessly while other shuffles of the app remain.
            let _ = std::fs::remove_dir(self.disks.layout.app_dir(dir, app));
        }
    }

    /// Apps with at least one registered (or restored) shuffle, sorted.
    pub fn app_ids(&self) -> Vec<AppId> {
        let shuffles = rlock(&self.shuffles);
        let apps: BTreeSet<&AppId> = shuffles.per_app.keys().collect();
        apps.into_iter().cloned().collect()
    }

    /// Number of registered (or restored) shuffles.
    pub fn shuffle_count(&self) -> usize {
        rlock(&self.shuffles).by_key.len()
    }

    /// Every data directory's state (free space, whether it takes new
    /// partitions and why not, bytes stored and written, errors), in
    /// [`Store::data_dirs`] order. From memory, no I/O: the store probes
    /// its disks every [`StoreConfig::check_interval`].
    pub fn disk_status(&self) -> Vec<DiskStatus> {
        self.disks.status()
    }

    /// Probes every data directory now (free space, a write test): blocking
    /// I/O, run by the store's maintenance thread.
    pub fn probe_disks(&self) {
        self.disks.probe_all();
    }

    /// Flushes (fsync) every partition file currently open for appending,
    /// over all shuffles; used when draining. Tries every file and returns
    /// the first error. Sealed shuffles were flushed when they sealed (per
    /// [`StoreConfig::fsync_on_seal`]) and closed their files then.
    pub fn sync_all(&self) -> Result<(), ServerError> {
        let mut first_error = None;
        for state in self.all_shuffles() {
            if let Err(e) = state.sync_open_files(&self.disks) {
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
