//! Client wrappers the engine runs tasks through.
//!
//! * [`SlowReads`]: readers wait before every block — a deliberately slow
//!   consumer, to see backpressure hold (`engine run --slow-reads 5ms`).
//!   With no delay it adds nothing but a branch.
//! * [`DryWrites`]: writes are batched and counted but never sent — to
//!   recompute what a map task produced (its summary) when an earlier
//!   attempt of it committed and then its worker died before saying so.

use std::time::Duration;

use shuffle_client::protocol::{
    AppId, AttemptId, Block, CommitManifest, MapId, MapRange, PartitionId, ShuffleId, ShuffleSpec,
};
use shuffle_client::{
    Batcher, ClientError, CommitAck, PushAck, ReadStats, RecordBatch, ShuffleClient, ShuffleHandle,
    ShuffleReader, ShuffleStatus, ShuffleWriter, WriteStats, WriterOptions,
};

/// Wraps a client; its readers sleep `delay` before each block.
#[derive(Debug)]
pub struct SlowReads<C> {
    inner: C,
    delay: Duration,
}

impl<C> SlowReads<C> {
    pub fn new(inner: C, delay: Duration) -> Self {
        SlowReads { inner, delay }
    }
}

/// A reader that waits before each block.
#[derive(Debug)]
pub struct SlowReader<R> {
    inner: R,
    delay: Duration,
}

impl<R: ShuffleReader> ShuffleReader for SlowReader<R> {
    async fn next_batch(&mut self) -> Result<Option<RecordBatch>, ClientError> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        self.inner.next_batch().await
    }

    fn stats(&self) -> ReadStats {
        self.inner.stats()
    }
}

impl<C: ShuffleClient> ShuffleClient for SlowReads<C> {
    type Writer = C::Writer;
    type Reader = SlowReader<C::Reader>;

    async fn register_shuffle(
        &self,
        app: &AppId,
        shuffle: ShuffleId,
        spec: ShuffleSpec,
    ) -> Result<ShuffleHandle, ClientError> {
        self.inner.register_shuffle(app, shuffle, spec).await
    }

    async fn open_writer(
        &self,
        handle: &ShuffleHandle,
        map: MapId,
        attempt: AttemptId,
        options: WriterOptions,
    ) -> Result<Self::Writer, ClientError> {
        self.inner.open_writer(handle, map, attempt, options).await
    }

    async fn push_blocks(&self, handle: &ShuffleHandle, blocks: Vec<Block>) -> Result<PushAck, ClientError> {
        self.inner.push_blocks(handle, blocks).await
    }

    async fn commit_map(
        &self,
        handle: &ShuffleHandle,
        map: MapId,
        attempt: AttemptId,
        manifest: CommitManifest,
    ) -> Result<CommitAck, ClientError> {
        self.inner.commit_map(handle, map, attempt, manifest).await
    }

    async fn open_reader(
        &self,
        handle: &ShuffleHandle,
        partition: PartitionId,
        maps: MapRange,
    ) -> Result<Self::Reader, ClientError> {
        Ok(SlowReader {
            inner: self.inner.open_reader(handle, partition, maps).await?,
            delay: self.delay,
        })
    }

    async fn shuffle_status(&self, handle: &ShuffleHandle) -> Result<ShuffleStatus, ClientError> {
        self.inner.shuffle_status(handle).await
    }

    async fn unregister_shuffle(&self, handle: &ShuffleHandle) -> Result<(), ClientError> {
        self.inner.unregister_shuffle(handle).await
    }

    async fn unregister_app(&self, app: &AppId) -> Result<(), ClientError> {
        self.inner.unregister_app(app).await
    }
}

/// Wraps a client; writers batch records into blocks and drop them, and
/// commit nothing. Reads, registration and status pass through.
#[derive(Debug)]
pub struct DryWrites<C> {
    inner: std::sync::Arc<C>,
}

impl<C> DryWrites<C> {
    pub fn new(inner: std::sync::Arc<C>) -> Self {
        DryWrites { inner }
    }
}

/// A writer that only counts.
#[derive(Debug)]
pub struct DryWriter {
    batcher: Batcher,
    blocks: Vec<Block>,
}

impl ShuffleWriter for DryWriter {
    async fn write(&mut self, partition: PartitionId, record: &[u8]) -> Result<(), ClientError> {
        self.batcher.write(partition, record, &mut self.blocks)?;
        self.blocks.clear();
        Ok(())
    }

    async fn commit(mut self) -> Result<WriteStats, ClientError> {
        self.batcher.finish(&mut self.blocks)?;
        Ok(self.batcher.stats())
    }
}

impl<C: ShuffleClient> ShuffleClient for DryWrites<C> {
    type Writer = DryWriter;
    type Reader = C::Reader;

    async fn register_shuffle(
        &self,
        app: &AppId,
        shuffle: ShuffleId,
        spec: ShuffleSpec,
    ) -> Result<ShuffleHandle, ClientError> {
        self.inner.register_shuffle(app, shuffle, spec).await
    }

    async fn open_writer(
        &self,
        handle: &ShuffleHandle,
        map: MapId,
        attempt: AttemptId,
        options: WriterOptions,
    ) -> Result<DryWriter, ClientError> {
        Ok(DryWriter {
            batcher: Batcher::new(
                handle.shuffle(),
                map,
                attempt,
                handle.spec().num_partitions(),
                options,
            ),
            blocks: Vec::new(),
        })
    }

    async fn push_blocks(&self, _handle: &ShuffleHandle, blocks: Vec<Block>) -> Result<PushAck, ClientError> {
        Ok(PushAck {
            stored: 0,
            duplicates: blocks.len() as u32,
        })
    }

    async fn commit_map(
        &self,
        handle: &ShuffleHandle,
        _map: MapId,
        _attempt: AttemptId,
        _manifest: CommitManifest,
    ) -> Result<CommitAck, ClientError> {
        let status = self.inner.shuffle_status(handle).await?;
        Ok(CommitAck {
            sealed: status.sealed,
        })
    }

    async fn open_reader(
        &self,
        handle: &ShuffleHandle,
        partition: PartitionId,
        maps: MapRange,
    ) -> Result<C::Reader, ClientError> {
        self.inner.open_reader(handle, partition, maps).await
    }

    async fn shuffle_status(&self, handle: &ShuffleHandle) -> Result<ShuffleStatus, ClientError> {
        self.inner.shuffle_status(handle).await
    }

    async fn unregister_shuffle(&self, _handle: &ShuffleHandle) -> Result<(), ClientError> {
        Ok(())
    }

    async fn unregister_app(&self, _app: &AppId) -> Result<(), ClientError> {
        Ok(())
    }
}
