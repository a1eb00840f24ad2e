//! [`Store`]: the registered shuffles and every operation on them, for
//! all modes. The state of one shuffle is in `shuffle.rs`; the streaming
//! modes' push and read sides in `stream_push.rs` and `stream_read.rs`.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use protocol::{
    AppId, AttemptId, Block, ChecksumSite, CommitManifest, MapId, MapRange, PartitionId, ServiceError,
    ShuffleId, ShuffleMode, ShuffleSpec, SpillStrategy,
};

use super::counters::Counters;
use super::disks::{DiskStatus, Disks};
use super::layout::Layout;
use super::locks::{rlock, wlock};
use super::persist::{self, RecoveryReport};
use super::reader::PartitionReader;
use super::shuffle::{CommitOutcome, CommittedSizes, ShuffleState};
use super::stream_index::MemoryGauge;
use super::stream_push::StreamEnv;
use super::stream_read::{ShuffleRead, StreamReader};
use super::try_all::try_all;
use super::{CopyRole, PushOutcome, ShuffleStatus, StoreConfig, StoreLimits, StoreStats};
use crate::budget::{Credit, MemoryBudget};
use crate::ServerError;

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
    pub(super) disks: Disks,
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
        let recovered = persist::recover(&layout)?;
        let disks = Disks::new(layout, config.disk_reserve, config.max_open_files);
        for (dir, bytes) in &recovered.bytes_by_dir {
            disks.restored(*dir, *bytes);
        }
        disks.probe_all();
        let mut registry = Registry::default();
        for found in recovered.shuffles {
            let state = ShuffleState::restore(found.meta, found.files, config.fsync_on_seal);
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
        self.register_shuffle_as(app, shuffle, spec, None)
    }

    /// [`Store::register_shuffle`] of a shuffle replicated over several
    /// servers, with this server's place among them (`role`, first
    /// registration wins), by which it counts the replica bytes it stores.
    pub fn register_shuffle_as(
        &self,
        app: &AppId,
        shuffle: ShuffleId,
        spec: ShuffleSpec,
        role: Option<CopyRole>,
    ) -> Result<(), ServerError> {
        let key = (app.clone(), shuffle);
        let mut shuffles = wlock(&self.shuffles);
        if let Some(existing) = shuffles.by_key.get(&key) {
            if existing.spec == spec {
                if let Some(role) = role {
                    let _ = existing.copy_role.set(role);
                }
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
        let state = ShuffleState::new(app.clone(), shuffle, spec, self.fsync_on_seal);
        if let Some(role) = role {
            let _ = state.copy_role.set(role);
        }
        shuffles.insert(Arc::new(state));
        Ok(())
    }

    fn all_shuffles(&self) -> Vec<Arc<ShuffleState>> {
        rlock(&self.shuffles).by_key.values().cloned().collect()
    }

    pub(super) fn shuffle(&self, app: &AppId, shuffle: ShuffleId) -> Result<Arc<ShuffleState>, ServerError> {
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
            let stored = state.append(block, &self.disks)?;
            self.count_block(
                &mut outcome,
                &state,
                block.id().partition,
                stored,
                block.encoded_len() as u64,
            );
        }
        Ok(outcome)
    }

    /// Counts one pushed block of `partition`, new (`stored`) or a dropped
    /// duplicate.
    fn count_block(
        &self,
        outcome: &mut PushOutcome,
        state: &ShuffleState,
        partition: PartitionId,
        stored: bool,
        len: u64,
    ) {
        if stored {
            if state.copy_role.get().is_some_and(|r| r.holds_replica(partition)) {
                outcome.replica_bytes += len;
            }
            outcome.stored += 1;
            self.counters.blocks_stored.fetch_add(1, Ordering::Relaxed);
            self.counters.bytes_stored.fetch_add(len, Ordering::Relaxed);
        } else {
            outcome.duplicates += 1;
            self.counters.duplicates_dropped.fetch_add(1, Ordering::Relaxed);
        }
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
        let (place, plan) = state.plan_read(partition, maps)?;
        if let Some(place) = &place {
            self.disks.lost(place.dir, place.failures, partition)?;
        }
        let path = place.map(|p| p.path);
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

    /// Bytes stored per partition by the committed attempt of `map`, or by
    /// every committed map with `None` (see [`CommittedSizes`]): a map
    /// output's size, for an engine whose map ran again after an earlier
    /// attempt committed, and a shuffle's size per partition, for adaptive
    /// planning. Served on this store's partitions only.
    pub fn committed_sizes(
        &self,
        app: &AppId,
        shuffle: ShuffleId,
        map: Option<MapId>,
    ) -> Result<CommittedSizes, ServerError> {
        self.shuffle(app, shuffle)?.committed_sizes(map)
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
        let deleted = try_all(&removed, |state| self.delete(state));
        self.remove_empty_app_dirs(app);
        deleted
    }

    /// Marks an unregistered shuffle removed and deletes its folder in
    /// every data directory.
    fn delete(&self, state: &ShuffleState) -> Result<(), ServerError> {
        state.mark_removed();
        state.close_files(&self.disks);
        for (dir, bytes) in state.bytes_by_dir() {
            self.disks.removed(dir, bytes);
        }
        try_all(0..self.disks.len(), |dir| {
            remove_dir_if_present(&self.disks.layout.shuffle_dir(dir, &state.app, state.id))
        })
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
        try_all(self.all_shuffles(), |state| state.sync_open_files(&self.disks))
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

    /// The memory budget streaming blocks are paid from.
    pub fn budget(&self) -> &MemoryBudget {
        &self.env.budget
    }

    pub(super) fn push_stream(
        &self,
        state: &ShuffleState,
        blocks: Vec<Block>,
        credit: Option<Credit>,
    ) -> Result<PushOutcome, ServerError> {
        let lens: Vec<(PartitionId, u64)> = blocks
            .iter()
            .map(|b| (b.id().partition, b.encoded_len() as u64))
            .collect();
        let results = state.push_streaming(blocks, credit, &self.env, &self.disks)?;
        let mut outcome = PushOutcome::default();
        for ((stored, _on_disk), (partition, len)) in results.into_iter().zip(lens) {
            self.count_block(&mut outcome, state, partition, stored, len);
        }
        Ok(outcome)
    }

    /// Opens a reader of `partition` for `maps`, in any mode. Blocking
    /// shuffles (and sealed hybrid-full ones) read from disk once sealed
    /// and are refused with `NotSealed` before; streaming shuffles attach
    /// any time after register (see [`StreamReader`]) and fail with
    /// `DataGone` when another reader already consumed memory-only blocks
    /// of a map in range.
    pub fn open_read(
        &self,
        app: &AppId,
        shuffle: ShuffleId,
        partition: PartitionId,
        maps: MapRange,
    ) -> Result<ShuffleRead, ServerError> {
        let state = self.shuffle(app, shuffle)?;
        state.check_live()?;
        // Blocking shuffles, and hybrid-full ones once sealed (or restored,
        // without stream state), read like blocking.
        let from_disk = !state.spec.mode().streams()
            || (state.spec.mode().persists_seal() && (state.is_sealed() || !state.streams()));
        if from_disk {
            return self.read(app, shuffle, partition, maps).map(ShuffleRead::Sealed);
        }
        if maps.end().0 > state.spec.num_maps() {
            return Err(ServerError::Service(ServiceError::MapOutOfRange {
                map: MapId(maps.end().0 - 1),
                num_maps: state.spec.num_maps(),
            }));
        }
        StreamReader::open(state, partition, maps, self.counters.clone()).map(ShuffleRead::Stream)
    }

    /// Spills hybrid-selective blocks and drops hybrid-full memory copies
    /// older than `spill_after`, over every shuffle. Returns bytes written.
    pub fn sweep_streams(&self) -> Result<u64, ServerError> {
        let now = Instant::now();
        let mut written = 0;
        try_all(self.all_shuffles(), |state| {
            written += state.sweep(now, &self.env, &self.disks)?;
            Ok(())
        })?;
        Ok(written)
    }

    /// Starts the store's maintenance thread, until the store is dropped:
    /// it runs [`Store::sweep_streams`] several times per `spill_after`,
    /// and probes the data directories every `check_interval`
    /// ([`Store::probe_disks`]).
    pub fn start_maintenance(self: &Arc<Self>) {
        let period = (self.env.spill_after / 4)
            .min(self.check_interval)
            .clamp(Duration::from_millis(10), Duration::from_secs(1));
        let check_every = self.check_interval;
        let weak: Weak<Store> = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("rss-store-maintenance".into())
            .spawn(move || {
                let mut last_probe = Instant::now();
                loop {
                    std::thread::sleep(period);
                    let Some(store) = weak.upgrade() else { return };
                    if let Err(e) = store.sweep_streams() {
                        tracing::warn!("spilling streaming blocks failed: {e}");
                    }
                    if last_probe.elapsed() >= check_every {
                        store.probe_disks();
                        last_probe = Instant::now();
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start the store's maintenance thread: {e}");
        }
    }

    /// Bytes written to disk by hybrid shuffles since opening, by mode.
    pub fn spilled_bytes_by_mode(&self) -> [(ShuffleMode, u64); 2] {
        [
            (
                ShuffleMode::Hybrid(SpillStrategy::Full),
                self.env.spilled_full.load(Ordering::Relaxed),
            ),
            (
                ShuffleMode::Hybrid(SpillStrategy::Selective),
                self.env.spilled_selective.load(Ordering::Relaxed),
            ),
        ]
    }
}

fn remove_dir_if_present(dir: &std::path::Path) -> Result<(), ServerError> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ServerError::io("remove", dir)(e)),
        _ => Ok(()),
    }
}
