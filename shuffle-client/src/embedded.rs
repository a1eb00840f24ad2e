//! `EmbeddedShuffle`: the shuffle service in process, over the server's
//! storage library. Same semantics as a remote server (commits, seal,
//! exactly-once, checksums), no network.
//!
//! Its file I/O runs inline on the calling task: pushes append to the page
//! cache and reads come from an mmap, both short, so they are not moved to a
//! blocking pool.

use std::path::PathBuf;
use std::sync::Arc;

use protocol::{
    AppId, AttemptId, Block, CommitManifest, MapId, MapRange, PartitionId, ShuffleId, ShuffleSpec,
};
use shuffle_server::storage::{PartitionReader, Store, StoreConfig, StoreStats};

use crate::batching::Batcher;
use crate::client::Placement;
use crate::{
    ClientError, CommitAck, PushAck, ReadStats, RecordBatch, ShuffleClient, ShuffleHandle, ShuffleReader,
    ShuffleStatus, ShuffleWriter, WriteStats, WriterOptions,
};

/// The in-process shuffle service. Clone it freely: clones share one store.
#[derive(Clone, Debug)]
pub struct EmbeddedShuffle {
    store: Arc<Store>,
}

impl EmbeddedShuffle {
    /// Opens a store over `data_dirs` (created if missing).
    pub fn open(data_dirs: Vec<PathBuf>) -> Result<Self, ClientError> {
        Self::with_config(StoreConfig::new(data_dirs))
    }

    /// Opens a store with explicit settings.
    pub fn with_config(config: StoreConfig) -> Result<Self, ClientError> {
        Ok(EmbeddedShuffle {
            store: Arc::new(Store::open(config)?),
        })
    }

    /// The store's data directories.
    pub fn data_dirs(&self) -> Vec<PathBuf> {
        self.store.data_dirs().to_vec()
    }

    /// The store's counters (blocks and bytes stored, duplicates dropped,
    /// checksum mismatches).
    pub fn stats(&self) -> StoreStats {
        self.store.stats()
    }
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
        let out = self.store.push(handle.app(), handle.shuffle(), &blocks)?;
        Ok(PushAck {
            stored: out.stored,
            duplicates: out.duplicates,
        })
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
        let inner = self.store.read(handle.app(), handle.shuffle(), partition, maps)?;
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
    fn push_ready(&mut self) -> Result<(), ClientError> {
        if !self.ready.is_empty() {
            self.store
                .push(self.handle.app(), self.handle.shuffle(), &self.ready)?;
            self.ready.clear();
        }
        Ok(())
    }
}

impl ShuffleWriter for EmbeddedWriter {
    async fn write(&mut self, partition: PartitionId, record: &[u8]) -> Result<(), ClientError> {
        self.batcher.write(partition, record, &mut self.ready)?;
        self.push_ready()
    }

    async fn commit(mut self) -> Result<WriteStats, ClientError> {
        self.batcher.finish(&mut self.ready)?;
        self.push_ready()?;
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
    inner: PartitionReader,
    stats: ReadStats,
}

impl ShuffleReader for EmbeddedReader {
    async fn next_batch(&mut self) -> Result<Option<RecordBatch>, ClientError> {
        let Some(block) = self.inner.next_block()? else {
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
