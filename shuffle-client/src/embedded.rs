//! `EmbeddedShuffle`: the shuffle service in process, over the server's
//! storage library. Same semantics as a remote server (commits, seal,
//! exactly-once, checksums), no network.
//!
//! Its file I/O runs inline on the calling task: pushes append to the page
//! cache and reads come from an mmap, both short, so they are not moved to a
//! blocking pool.
//!
//! Streaming modes (pipelined, hybrid) work as on a server: readers attach
//! any time after register and wait asynchronously for blocks; pipelined
//! writers wait asynchronously for the store's memory credit (never
//! blocking a runtime thread, which a reader may need to free it). The
//! memory budget and `spill_after` come from [`StoreConfig`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use protocol::ShuffleMode;
use protocol::{
    AppId, AttemptId, Block, CommitManifest, MapId, MapRange, PartitionId, ShuffleId, ShuffleSpec,
};
use shuffle_server::storage::{MemoryBudget, ShuffleRead, Store, StoreConfig};

use crate::batching::Batcher;
use crate::client::Placement;
use crate::{
    ClientError, CommitAck, PushAck, ReadStats, RecordBatch, ShuffleClient, ShuffleHandle, ShuffleReader,
    ShuffleStatus, ShuffleWriter, WriteStats, WriterOptions,
};

/// Settings of an [`EmbeddedShuffle`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmbeddedOptions {
    /// Where partition files go (created if missing).
    pub data_dirs: Vec<PathBuf>,
    /// Bytes of streaming (pipelined, hybrid) blocks held in memory at
    /// most; beyond it pipelined writers wait. Default 256 MiB.
    pub memory_budget: u64,
    /// Hybrid-selective: a block not read within this time is spilled to
    /// disk. Default 1 s.
    pub spill_after: Duration,
    /// fsync at seal. Default true.
    pub fsync_on_seal: bool,
    /// A data directory with less free space than this takes no new
    /// partition. Default 1 GiB.
    pub disk_reserve: u64,
}

impl EmbeddedOptions {
    /// Defaults with the given data directories.
    pub fn new(data_dirs: Vec<PathBuf>) -> Self {
        let store = StoreConfig::new(data_dirs);
        EmbeddedOptions {
            memory_budget: store.memory_budget.limit(),
            spill_after: store.spill_after,
            fsync_on_seal: store.fsync_on_seal,
            disk_reserve: store.disk_reserve,
            data_dirs: store.data_dirs,
        }
    }
}

/// What an [`EmbeddedShuffle`] counted since it opened.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct EmbeddedStats {
    /// New blocks accepted (in memory or on disk), and their bytes.
    pub blocks_stored: u64,
    pub bytes_stored: u64,
    /// Duplicate blocks dropped.
    pub duplicates_dropped: u64,
    /// Blocks that failed their CRC32C.
    pub checksum_mismatches: u64,
    /// Bytes of streaming blocks held in memory now, and the most ever
    /// (never above [`EmbeddedShuffle::memory_limit`]).
    pub memory_bytes: u64,
    pub peak_memory_bytes: u64,
    /// Bytes hybrid shuffles wrote to disk.
    pub spilled_bytes: u64,
}

/// The in-process shuffle service. Clone it freely: clones share one store.
#[derive(Clone, Debug)]
pub struct EmbeddedShuffle {
    store: Arc<Store>,
}

impl EmbeddedShuffle {
    /// Opens a store over `data_dirs` (created if missing), with defaults.
    pub fn open(data_dirs: Vec<PathBuf>) -> Result<Self, ClientError> {
        Self::with_options(EmbeddedOptions::new(data_dirs))
    }

    /// Opens a store with explicit settings. Starts the store's maintenance
    /// (spill sweep, disk probes).
    pub fn with_options(options: EmbeddedOptions) -> Result<Self, ClientError> {
        let mut config = StoreConfig::new(options.data_dirs);
        config.memory_budget = MemoryBudget::unmetered(options.memory_budget);
        config.spill_after = options.spill_after;
        config.fsync_on_seal = options.fsync_on_seal;
        config.disk_reserve = options.disk_reserve;
        let store = Arc::new(Store::open(config)?);
        store.start_maintenance();
        Ok(EmbeddedShuffle { store })
    }

    /// The store's data directories.
    pub fn data_dirs(&self) -> Vec<PathBuf> {
        self.store.data_dirs().to_vec()
    }

    /// The store's counters and the memory streaming blocks hold.
    pub fn stats(&self) -> EmbeddedStats {
        let s = self.store.stats();
        EmbeddedStats {
            blocks_stored: s.blocks_stored,
            bytes_stored: s.bytes_stored,
            duplicates_dropped: s.duplicates_dropped,
            checksum_mismatches: s.checksum_mismatches,
            memory_bytes: s.memory_bytes,
            peak_memory_bytes: s.peak_memory_bytes,
            spilled_bytes: s.spilled_bytes,
        }
    }

    /// The store's memory budget, in bytes.
    pub fn memory_limit(&self) -> u64 {
        self.store.budget().limit()
    }
}

/// Pushes blocks; a pipelined shuffle first waits (asynchronously) for the
/// memory credit each block will hold until a reader takes it: the
/// backpressure that slows a producer to its slowest reader.
async fn push_blocks(
    store: &Store,
    handle: &ShuffleHandle,
    blocks: Vec<Block>,
) -> Result<PushAck, ClientError> {
    let mut ack = PushAck::default();
    if handle.spec().mode() != ShuffleMode::Pipelined {
        let out = store.push_credited(handle.app(), handle.shuffle(), blocks, None)?;
        return Ok(PushAck {
            stored: out.stored,
            duplicates: out.duplicates,
        });
    }
    for block in blocks {
        let len = u32::try_from(block.encoded_len()).unwrap_or(u32::MAX);
        let credit = store.budget().acquire(len).await;
        let out = store.push_credited(handle.app(), handle.shuffle(), vec![block], Some(credit))?;
        ack.stored += out.stored;
        ack.duplicates += out.duplicates;
    }
    Ok(ack)
}

impl ShuffleClient for EmbeddedShuffle {
    type Writer = EmbeddedWriter;
    type Reader = EmbeddedReader;

    async fn register_shuffle(
        &self,
        app: &AppId,
        shuffle: ShuffleId,
        spec: ShuffleSpec,
    ) -> Result<ShuffleHandle, ClientError> {
        self.store.register_shuffle(app, shuffle, spec)?;
        Ok(ShuffleHandle::new(app.clone(), shuffle, spec, Placement::Local))
    }

    async fn open_writer(
        &self,
        handle: &ShuffleHandle,
        map: MapId,
        attempt: AttemptId,
        options: WriterOptions,
    ) -> Result<EmbeddedWriter, ClientError> {
        let status = self.store.status(handle.app(), handle.shuffle())?;
        if map.0 >= status.spec.num_maps() {
            return Err(ClientError::MapOutOfRange {
                map,
                num_maps: status.spec.num_maps(),
            });
        }
        Ok(EmbeddedWriter {
            store: self.store.clone(),
            handle: handle.clone(),
            batcher: Batcher::new(
                handle.shuffle(),
                map,
                attempt,
                handle.spec().num_partitions(),
                options,
            ),
            ready: Vec::new(),
        })
    }

    async fn push_blocks(&self, handle: &ShuffleHandle, blocks: Vec<Block>) -> Result<PushAck, ClientError> {
        if blocks.is_empty() {
            self.store.status(handle.app(), handle.shuffle())?;
        }
        push_blocks(&self.store, handle, blocks).await
    }

    async fn commit_map(
        &self,
        handle: &ShuffleHandle,
        map: MapId,
        attempt: AttemptId,
        manifest: CommitManifest,
    ) -> Result<CommitAck, ClientError> {
        let out = self
            .store
            .commit(handle.app(), handle.shuffle(), map, attempt, manifest)?;
        Ok(CommitAck { sealed: out.sealed })
    }

    async fn open_reader(
        &self,
        handle: &ShuffleHandle,
        partition: PartitionId,
        maps: MapRange,
    ) -> Result<EmbeddedReader, ClientError> {
        let inner = self
            .store
            .open_read(handle.app(), handle.shuffle(), partition, maps)?;
        Ok(EmbeddedReader {
            inner,
            stats: ReadStats::default(),
        })
    }

    async fn shuffle_status(&self, handle: &ShuffleHandle) -> Result<ShuffleStatus, ClientError> {
        let s = self.store.status(handle.app(), handle.shuffle())?;
        Ok(ShuffleStatus {
            committed_maps: s.committed_maps,
            num_maps: s.spec.num_maps(),
            sealed: s.sealed,
            stored_bytes: s.stored_bytes,
        })
    }

    async fn unregister_shuffle(&self, handle: &ShuffleHandle) -> Result<(), ClientError> {
        Ok(self.store.unregister_shuffle(handle.app(), handle.shuffle())?)
    }

    async fn unregister_app(&self, app: &AppId) -> Result<(), ClientError> {
        Ok(self.store.unregister_app(app)?)
    }
}

/// Writer of one map attempt into an [`EmbeddedShuffle`].
#[derive(Debug)]
pub struct EmbeddedWriter {
    store: Arc<Store>,
    handle: ShuffleHandle,
    batcher: Batcher,
    ready: Vec<Block>,
}

impl EmbeddedWriter {
    async fn push_ready(&mut self) -> Result<(), ClientError> {
        if !self.ready.is_empty() {
            let blocks = std::mem::take(&mut self.ready);
            push_blocks(&self.store, &self.handle, blocks).await?;
        }
        Ok(())
    }
}

impl ShuffleWriter for EmbeddedWriter {
    async fn write(&mut self, partition: PartitionId, record: &[u8]) -> Result<(), ClientError> {
        self.batcher.write(partition, record, &mut self.ready)?;
        self.push_ready().await
    }

    async fn commit(mut self) -> Result<WriteStats, ClientError> {
        self.batcher.finish(&mut self.ready)?;
        self.push_ready().await?;
        let (map, attempt) = (self.batcher.map(), self.batcher.attempt());
        self.store.commit(
            self.handle.app(),
            self.handle.shuffle(),
            map,
            attempt,
            self.batcher.manifest(),
        )?;
        Ok(self.batcher.stats())
    }
}

/// Reader of one partition of an [`EmbeddedShuffle`].
#[derive(Debug)]
pub struct EmbeddedReader {
    inner: ShuffleRead,
    stats: ReadStats,
}

impl ShuffleReader for EmbeddedReader {
    async fn next_batch(&mut self) -> Result<Option<RecordBatch>, ClientError> {
        let next = match &mut self.inner {
            ShuffleRead::Sealed(reader) => reader.next_block()?,
            // The block's memory credit is returned once it is handed over,
            // as a server returns it once the block is written out.
            ShuffleRead::Stream(reader) => reader.next_block().await?.map(|b| b.block),
        };
        let Some(block) = next else {
            return Ok(None);
        };
        // The storage reader verified the CRC: do not compute it twice.
        let batch = RecordBatch::from_verified_block(&block)?;
        self.stats.blocks += 1;
        self.stats.records += u64::from(block.header.record_count);
        self.stats.fetched_bytes += block.encoded_len() as u64;
        Ok(Some(batch))
    }

    fn stats(&self) -> ReadStats {
        self.stats
    }
}
