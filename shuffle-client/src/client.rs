//! The `ShuffleClient` trait and the types it speaks.

use std::future::Future;

use bytes::Bytes;
use protocol::records::RecordIter;
use protocol::{
    AppId, AttemptId, Block, BlockId, CommitManifest, MapId, MapRange, PartitionId, ShuffleId, ShuffleSpec,
};

use crate::{ClientError, WriterOptions};

/// A registered shuffle, as returned by [`ShuffleClient::register_shuffle`].
/// Pass it to every later call; it carries what the implementation needs
/// (for a remote client, where each partition lives).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShuffleHandle {
    app: AppId,
    shuffle: ShuffleId,
    spec: ShuffleSpec,
    placement: Placement,
}

/// Where a shuffle's partitions live, decided at registration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// In this process ([`crate::EmbeddedShuffle`]).
    Local,
    /// Copy `c` of partition `p` lives on
    /// `servers[(p + offset + c) % servers.len()]` ([`protocol::copy_server`]):
    /// the primary (`c = 0`) and, with replication 2, the replica on the
    /// next server.
    Spread {
        servers: std::sync::Arc<[String]>,
        offset: u32,
        replication: protocol::Replication,
    },
}

impl Placement {
    /// The index of the server holding `partition`'s primary copy, for a
    /// spread placement.
    pub fn server_of(&self, partition: PartitionId) -> Option<usize> {
        self.copies_of(partition).first().copied()
    }

    /// The indexes of the servers holding `partition`'s copies, primary
    /// first (empty for a local placement).
    pub fn copies_of(&self, partition: PartitionId) -> Vec<usize> {
        match self {
            Placement::Local => Vec::new(),
            Placement::Spread {
                servers,
                offset,
                replication,
            } => (0..replication.copies())
                .map(|c| protocol::copy_server(partition, c, servers.len(), *offset))
                .collect(),
        }
    }

    /// The replication factor (one copy for a local placement).
    pub fn replication(&self) -> protocol::Replication {
        match self {
            Placement::Local => protocol::Replication::ONE,
            Placement::Spread { replication, .. } => *replication,
        }
    }
}

impl ShuffleHandle {
    pub(crate) fn new(app: AppId, shuffle: ShuffleId, spec: ShuffleSpec, placement: Placement) -> Self {
        Self::from_parts(app, shuffle, spec, placement)
    }

    /// Rebuilds a handle from its parts, as another process received them
    /// (an engine's worker, given the handle its coordinator registered).
    /// A handle naming a shuffle that was never registered, or the wrong
    /// servers, fails on use with the service's error, not silently.
    pub fn from_parts(app: AppId, shuffle: ShuffleId, spec: ShuffleSpec, placement: Placement) -> Self {
        ShuffleHandle {
            app,
            shuffle,
            spec,
            placement,
        }
    }

    /// Where the partitions live.
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// The owning application.
    pub fn app(&self) -> &AppId {
        &self.app
    }

    /// The shuffle's id.
    pub fn shuffle(&self) -> ShuffleId {
        self.shuffle
    }

    /// Maps, partitions and mode.
    pub fn spec(&self) -> &ShuffleSpec {
        &self.spec
    }

    /// Every map of the shuffle.
    pub fn all_maps(&self) -> MapRange {
        MapRange::all(self.spec.num_maps())
    }
}

/// What the service did with pushed blocks.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct PushAck {
    /// Blocks stored for the first time.
    pub stored: u32,
    /// Blocks already stored, dropped (a retried or duplicated push).
    pub duplicates: u32,
}

/// The result of a map commit.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct CommitAck {
    /// Every map of the shuffle has committed: blocking readers may open.
    pub sealed: bool,
}

/// The state of a shuffle, from [`ShuffleClient::shuffle_status`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ShuffleStatus {
    pub committed_maps: u32,
    pub num_maps: u32,
    /// Every map has committed.
    pub sealed: bool,
    /// Bytes the service holds on disk for the shuffle, every attempt
    /// included.
    pub stored_bytes: u64,
}

/// What a writer produced, returned by [`ShuffleWriter::commit`].
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct WriteStats {
    pub records: u64,
    pub blocks: u64,
    /// Record bytes as framed, before compression.
    pub raw_bytes: u64,
    /// Bytes pushed: block headers plus stored (compressed) payloads.
    pub pushed_bytes: u64,
}

/// What a reader consumed so far.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct ReadStats {
    pub records: u64,
    pub blocks: u64,
    /// Bytes fetched: block headers plus stored payloads.
    pub fetched_bytes: u64,
    /// Times a replicated read went on from the other copy.
    pub failovers: u64,
}

/// The records of one block, in write order; each is a zero-copy slice.
#[derive(Debug)]
pub struct RecordBatch {
    block: BlockId,
    record_count: u32,
    records: RecordIter,
}

impl RecordBatch {
    /// Verifies and decompresses `block`.
    pub fn from_block(block: &Block) -> Result<Self, ClientError> {
        Ok(RecordBatch {
            block: block.id(),
            record_count: block.header.record_count,
            records: block.records()?,
        })
    }

    /// Decompresses a block whose CRC was verified since it was read.
    #[cfg(feature = "embedded")]
    pub(crate) fn from_verified_block(block: &Block) -> Result<Self, ClientError> {
        Ok(RecordBatch {
            block: block.id(),
            record_count: block.header.record_count,
            records: RecordIter::new(block.decompress_verified()?),
        })
    }

    /// Calls `f` with each remaining record, borrowed from the block: the
    /// fast way to consume a batch (no reference counting per record).
    pub fn for_each_record<E: From<ClientError>>(
        self,
        mut f: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let block = self.block;
        let mut rest = self.records.remaining();
        while let Some(record) = protocol::records::next_record(&mut rest) {
            let record = record.map_err(|e| ClientError::Corrupt {
                location: block.to_string(),
                reason: e.to_string(),
            })?;
            f(record)?;
        }
        Ok(())
    }

    /// The block the records came from.
    pub fn block(&self) -> BlockId {
        self.block
    }

    /// Number of records, as written in the block header.
    pub fn record_count(&self) -> u32 {
        self.record_count
    }
}

impl Iterator for RecordBatch {
    type Item = Result<Bytes, ClientError>;

    fn next(&mut self) -> Option<Self::Item> {
        let block = self.block;
        self.records.next().map(|r| {
            r.map_err(|e| ClientError::Corrupt {
                location: block.to_string(),
                reason: e.to_string(),
            })
        })
    }
}

/// A shuffle service, as an engine sees it.
///
/// All methods are idempotent where the service is: registering the same
/// shuffle twice, pushing the same block twice, committing the same attempt
/// twice. Futures are `Send`, so calls can run on any runtime thread.
pub trait ShuffleClient: Send + Sync + 'static {
    /// The record-level writer of one map attempt.
    type Writer: ShuffleWriter;
    /// The record-level reader of one partition.
    type Reader: ShuffleReader;

    /// Registers a shuffle of `spec.num_maps()` maps and
    /// `spec.num_partitions()` partitions in `spec.mode()`.
    fn register_shuffle(
        &self,
        app: &AppId,
        shuffle: ShuffleId,
        spec: ShuffleSpec,
    ) -> impl Future<Output = Result<ShuffleHandle, ClientError>> + Send;

    /// Opens a writer for one attempt of one map. Records go to partitions
    /// chosen by the caller. In blocking mode nothing is served until the
    /// writer commits; in streaming modes (pipelined, hybrid) readers get
    /// blocks as they are pushed, and a pipelined writer waits for memory
    /// credit when readers are slow (backpressure).
    fn open_writer(
        &self,
        handle: &ShuffleHandle,
        map: MapId,
        attempt: AttemptId,
        options: WriterOptions,
    ) -> impl Future<Output = Result<Self::Writer, ClientError>> + Send;

    /// Pushes ready-made blocks (any partitions of one shuffle). Blocks
    /// already stored are dropped and counted in [`PushAck::duplicates`].
    fn push_blocks(
        &self,
        handle: &ShuffleHandle,
        blocks: Vec<Block>,
    ) -> impl Future<Output = Result<PushAck, ClientError>> + Send;

    /// Commits a map attempt, declaring how many blocks it pushed to each
    /// partition. The first attempt of a map to commit wins.
    fn commit_map(
        &self,
        handle: &ShuffleHandle,
        map: MapId,
        attempt: AttemptId,
        manifest: CommitManifest,
    ) -> impl Future<Output = Result<CommitAck, ClientError>> + Send;

    /// Opens a reader of one partition, for the maps in `maps` (all maps
    /// with [`ShuffleHandle::all_maps`]; fewer to split a skewed partition).
    /// In blocking mode this fails with [`ClientError::NotReady`] until the
    /// shuffle is sealed. In streaming modes (pipelined, hybrid) a reader
    /// may open any time after register and streams blocks as they arrive:
    /// per map the blocks of one attempt in sequence order, maps
    /// interleaved in any order; it ends once every map in range committed
    /// and was delivered. It fails with [`ClientError::AttemptFailed`] if it
    /// delivered blocks of an attempt that then lost the commit, and with
    /// [`ClientError::DataGone`] if memory-only blocks it needs (pipelined,
    /// hybrid-selective) were consumed by another reader; neither is
    /// retryable (restart the consumer, or the region).
    fn open_reader(
        &self,
        handle: &ShuffleHandle,
        partition: PartitionId,
        maps: MapRange,
    ) -> impl Future<Output = Result<Self::Reader, ClientError>> + Send;

    /// Commits so far, seal, and bytes stored.
    fn shuffle_status(
        &self,
        handle: &ShuffleHandle,
    ) -> impl Future<Output = Result<ShuffleStatus, ClientError>> + Send;

    /// Deletes a shuffle and its data.
    fn unregister_shuffle(
        &self,
        handle: &ShuffleHandle,
    ) -> impl Future<Output = Result<(), ClientError>> + Send;

    /// Deletes every shuffle of an application and its data.
    fn unregister_app(&self, app: &AppId) -> impl Future<Output = Result<(), ClientError>> + Send;
}

/// Writes the records of one map attempt. Dropping a writer without
/// committing abandons the attempt: its blocks are never served.
pub trait ShuffleWriter: Send {
    /// Adds one record to `partition`.
    fn write(
        &mut self,
        partition: PartitionId,
        record: &[u8],
    ) -> impl Future<Output = Result<(), ClientError>> + Send;

    /// Pushes what is buffered and commits the attempt.
    fn commit(self) -> impl Future<Output = Result<WriteStats, ClientError>> + Send;
}

/// Reads one partition's records: every block of every committed map
/// attempt in range, exactly once. Within a map, blocks come in sequence
/// order. Blocking shuffles (and sealed hybrid-full ones) return maps in
/// order, one after the other; the streaming modes interleave maps in
/// arrival order.
pub trait ShuffleReader: Send {
    /// The next block's records; `None` when the partition is exhausted.
    fn next_batch(&mut self) -> impl Future<Output = Result<Option<RecordBatch>, ClientError>> + Send;

    /// What was read so far.
    fn stats(&self) -> ReadStats;
}
