//! The [`Store`] API of streaming shuffles: pushes, readers of every mode,
//! the spill sweep and the memory they hold.

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
        let lens: Vec<(u64, PartitionId)> = blocks
            .iter()
            .map(|b| (b.encoded_len() as u64, b.id().partition))
            .collect();
        let results = state.push_streaming(blocks, credit, &self.env, &self.files)?;
        let mut outcome = PushOutcome::default();
        for ((stored, on_disk), (len, partition)) in results.into_iter().zip(lens) {
            if stored {
                outcome.stored += 1;
                self.counters.blocks_stored.fetch_add(1, Ordering::Relaxed);
                self.counters.bytes_stored.fetch_add(len, Ordering::Relaxed);
                self.count_written(&state.app, state.id, partition, on_disk);
            } else {
                outcome.duplicates += 1;
                self.counters.duplicates_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(outcome)
    }

    fn count_written(&self, app: &AppId, shuffle: ShuffleId, partition: PartitionId, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let dir = self.layout.dir_index(app, shuffle, partition);
        if let Some(written) = self.written_by_dir.get(dir) {
            written.fetch_add(bytes, Ordering::Relaxed);
        }
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
        let from_disk = match state.spec.mode() {
            ShuffleMode::Blocking => true,
            ShuffleMode::Hybrid(SpillStrategy::Full) => state.is_sealed() || state.stream.is_none(),
            _ => false,
        };
        if from_disk {
            return self.read(app, shuffle, partition, maps).map(ShuffleRead::Sealed);
        }
        if maps.end().0 > state.spec.num_maps() {
            return Err(ServerError::MapOutOfRange {
                map: MapId(maps.end().0 - 1),
                num_maps: state.spec.num_maps(),
            });
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
            match state.sweep(now, &self.env, &self.files) {
                Ok(n) => written += n,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(written), Err)
    }

    /// Starts a thread that runs [`Store::sweep_streams`] several times per
    /// `spill_after`, until the store is dropped.
    pub fn start_sweeper(self: &Arc<Self>) {
        let period = (self.env.spill_after / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let weak: Weak<Store> = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("rss-spill-sweep".into())
            .spawn(move || loop {
                std::thread::sleep(period);
                let Some(store) = weak.upgrade() else { return };
                if let Err(e) = store.sweep_streams() {
                    tracing::warn!("spilling streaming blocks failed: {e}");
                }
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start the spill sweep: {e}");
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
