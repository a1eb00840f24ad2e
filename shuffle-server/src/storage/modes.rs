//! The [`Store`] API of streaming shuffles: pushes, readers of every mode,
//! the spill sweep and the memory they hold.

use protocol::ServiceError;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use protocol::{AppId, Block, MapId, MapRange, PartitionId, ShuffleId, ShuffleMode, SpillStrategy};

use super::shuffle::ShuffleState;
use super::streaming::StreamReader;
use super::{PartitionReader, PushOutcome, Store};
use crate::budget::{Credit, MemoryBudget};
use crate::ServerError;

/// A reader of one partition, as [`Store::open_read`] opens it for the
/// shuffle's mode.
#[derive(Debug)]
pub enum ShuffleRead {
    /// Blocking, or a sealed hybrid-full shuffle: the committed blocks from
    /// disk in (map, seq) order; resumable by position.
    Sealed(PartitionReader),
    /// A streaming shuffle: blocks as they become available.
    Stream(StreamReader),
}

impl Store {
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
        let lens: Vec<u64> = blocks.iter().map(|b| b.encoded_len() as u64).collect();
        let results = state.push_streaming(blocks, credit, &self.env, &self.disks)?;
        let mut outcome = PushOutcome::default();
        for ((stored, _on_disk), len) in results.into_iter().zip(lens) {
            if stored {
                outcome.stored += 1;
                self.counters.blocks_stored.fetch_add(1, Ordering::Relaxed);
                self.counters.bytes_stored.fetch_add(len, Ordering::Relaxed);
            } else {
                outcome.duplicates += 1;
                self.counters.duplicates_dropped.fetch_add(1, Ordering::Relaxed);
            }
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
        let mut first_error = None;
        for state in self.all_shuffles() {
            match state.sweep(now, &self.env, &self.disks) {
                Ok(n) => written += n,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(written), Err)
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
