//! Record batching shared by every writer: records accumulate per partition
//! and leave as sealed (compressed, checksummed, sequenced) blocks.
//!
//! Memory rule: at most `buffer_limit` bytes of records are held. When a
//! write crosses it, the largest partition buffers are sealed until half the
//! limit is free, so a writer with 10,000 partitions stays bounded and still
//! produces blocks as large as its memory allows.

use protocol::block::MAX_BLOCK_RAW_LEN;
use protocol::{records, AttemptId, Block, BlockId, CommitManifest, MapId, PartitionId, ShuffleId};

use crate::{ClientError, WriteStats};

/// How a writer batches records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriterOptions {
    /// A partition's buffer is sealed into a block once it holds this many
    /// bytes. Default: 1 MiB. At most 32 MiB (the block limit).
    pub block_size: usize,
    /// Most record bytes buffered over all partitions. Default: 64 MiB.
    pub buffer_limit: usize,
    /// LZ4-compress blocks (kept raw when that does not shrink them).
    /// Default: on.
    pub compress: bool,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            block_size: 1 << 20,
            buffer_limit: 64 << 20,
            compress: true,
        }
    }
}

#[derive(Debug, Default)]
struct PartitionBuffer {
    raw: Vec<u8>,
    records: u32,
}

/// Per-partition buffers of one map attempt: records in, sealed blocks out.
/// Writers use it; so can engines that push blocks themselves
/// ([`crate::ShuffleClient::push_blocks`], [`crate::ShuffleClient::commit_map`]).
#[derive(Debug)]
pub struct Batcher {
    shuffle: ShuffleId,
    map: MapId,
    attempt: AttemptId,
    options: WriterOptions,
    buffers: Vec<PartitionBuffer>,
    next_seq: Vec<u32>,
    /// Bytes of the blocks sealed per partition (headers included).
    sealed_bytes: Vec<u64>,
    buffered: usize,
    stats: WriteStats,
}

impl Batcher {
    pub fn new(
        shuffle: ShuffleId,
        map: MapId,
        attempt: AttemptId,
        num_partitions: u32,
        mut options: WriterOptions,
    ) -> Self {
        options.block_size = options.block_size.clamp(1, MAX_BLOCK_RAW_LEN as usize);
        Batcher {
            shuffle,
            map,
            attempt,
            options,
            buffers: (0..num_partitions).map(|_| PartitionBuffer::default()).collect(),
            next_seq: vec![0; num_partitions as usize],
            sealed_bytes: vec![0; num_partitions as usize],
            buffered: 0,
            stats: WriteStats::default(),
        }
    }

    /// Buffers one record; sealed blocks are appended to `ready`.
    pub fn write(
        &mut self,
        partition: PartitionId,
        record: &[u8],
        ready: &mut Vec<Block>,
    ) -> Result<(), ClientError> {
        let num_partitions = self.buffers.len() as u32;
        let Some(buf) = self.buffers.get_mut(partition.index()) else {
            return Err(ClientError::PartitionOutOfRange {
                partition,
                num_partitions,
            });
        };
        let framed = records::framed_len(record.len());
        if buf.raw.len() + framed > MAX_BLOCK_RAW_LEN as usize && buf.records > 0 {
            self.seal(partition, ready)?;
        }
        let buf = &mut self.buffers[partition.index()];
        records::append(&mut buf.raw, record)?;
        buf.records += 1;
        self.buffered += framed;
        self.stats.records += 1;
        if buf.raw.len() >= self.options.block_size {
            self.seal(partition, ready)?;
        }
        if self.buffered > self.options.buffer_limit {
            self.relieve(ready)?;
        }
        Ok(())
    }

    /// Seals the largest buffers until at most half the limit is held.
    fn relieve(&mut self, ready: &mut Vec<Block>) -> Result<(), ClientError> {
        let mut sizes: Vec<(usize, u32)> = self
            .buffers
            .iter()
            .enumerate()
            .filter(|(_, b)| b.records > 0)
            .map(|(p, b)| (b.raw.len(), p as u32))
            .collect();
        sizes.sort_unstable_by(|a, b| b.cmp(a));
        for (_, p) in sizes {
            if self.buffered <= self.options.buffer_limit / 2 {
                break;
            }
            self.seal(PartitionId(p), ready)?;
        }
        Ok(())
    }

    fn seal(&mut self, partition: PartitionId, ready: &mut Vec<Block>) -> Result<(), ClientError> {
        if self.buffers[partition.index()].records == 0 {
            return Ok(());
        }
        // The next buffer starts with the room this one needed (up to a
        // block), so it does not grow by doubling and copying again.
        let room = self.buffers[partition.index()]
            .raw
            .len()
            .min(self.options.block_size + 64);
        let buf = std::mem::replace(
            &mut self.buffers[partition.index()],
            PartitionBuffer {
                raw: Vec::with_capacity(room),
                records: 0,
            },
        );
        let seq = &mut self.next_seq[partition.index()];
        let id = BlockId {
            shuffle: self.shuffle,
            map: self.map,
            attempt: self.attempt,
            partition,
            seq: *seq,
        };
        let raw_len = buf.raw.len();
        let block = Block::seal(id, buf.raw, buf.records, self.options.compress)?;
        *seq += 1;
        self.buffered -= raw_len;
        self.stats.blocks += 1;
        self.stats.raw_bytes += raw_len as u64;
        self.stats.pushed_bytes += block.encoded_len() as u64;
        self.sealed_bytes[partition.index()] += block.encoded_len() as u64;
        ready.push(block);
        Ok(())
    }

    /// Seals every non-empty buffer.
    pub fn finish(&mut self, ready: &mut Vec<Block>) -> Result<(), ClientError> {
        for p in 0..self.buffers.len() {
            self.seal(PartitionId(p as u32), ready)?;
        }
        Ok(())
    }

    /// Blocks sealed per partition so far.
    pub fn manifest(&self) -> CommitManifest {
        CommitManifest::from_dense(&self.next_seq)
    }

    pub fn stats(&self) -> WriteStats {
        self.stats
    }

    /// Bytes of the blocks sealed so far, per partition: block headers plus
    /// stored (compressed) payloads, what the service stores. They sum to
    /// [`WriteStats::pushed_bytes`].
    pub fn partition_bytes(&self) -> &[u64] {
        &self.sealed_bytes
    }

    pub fn map(&self) -> MapId {
        self.map
    }

    pub fn attempt(&self) -> AttemptId {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batcher(partitions: u32, block_size: usize, buffer_limit: usize) -> Batcher {
        let options = WriterOptions {
            block_size,
            buffer_limit,
            compress: true,
        };
        Batcher::new(ShuffleId(1), MapId(2), AttemptId(3), partitions, options)
    }

    #[test]
    fn blocks_are_sealed_at_block_size_with_consecutive_sequence_numbers() {
        let mut b = batcher(2, 100, 1 << 20);
        let mut ready = Vec::new();
        for _ in 0..25 {
            b.write(PartitionId(1), &[9u8; 19], &mut ready).expect("write");
        }
        // 20 framed bytes per record: a block every 5 records.
        assert_eq!(ready.len(), 5);
        assert!(ready
            .iter()
            .enumerate()
            .all(|(i, blk)| blk.id().seq == i as u32 && blk.header.record_count == 5));
        b.write(PartitionId(0), b"x", &mut ready).expect("write");
        b.finish(&mut ready).expect("finish");
        assert_eq!(b.manifest(), CommitManifest::from_dense(&[1, 5]));
    }

    #[test]
    fn the_buffer_limit_bounds_memory_across_many_partitions() {
        let mut b = batcher(1000, 1 << 20, 10_000);
        let mut ready = Vec::new();
        for i in 0..5000u32 {
            b.write(PartitionId(i % 1000), &[1u8; 20], &mut ready)
                .expect("write");
            assert!(b.buffered <= 10_000 + 21);
        }
        b.finish(&mut ready).expect("finish");
        let records: u64 = ready.iter().map(|blk| u64::from(blk.header.record_count)).sum();
        assert_eq!(records, 5000);
        assert_eq!(b.manifest().total_blocks(), ready.len() as u64);
        // Per-partition bytes are each partition's sealed blocks, and add
        // up to what was pushed.
        let mut by_partition = vec![0u64; 1000];
        for blk in &ready {
            by_partition[blk.id().partition.index()] += blk.encoded_len() as u64;
        }
        assert_eq!(b.partition_bytes(), &by_partition[..]);
        assert_eq!(by_partition.iter().sum::<u64>(), b.stats().pushed_bytes);
    }

    #[test]
    fn out_of_range_partitions_and_oversized_records_are_typed_errors() {
        let mut b = batcher(2, 100, 1000);
        let mut ready = Vec::new();
        assert!(matches!(
            b.write(PartitionId(2), b"x", &mut ready),
            Err(ClientError::PartitionOutOfRange {
                num_partitions: 2,
                ..
            })
        ));
        let huge = vec![0u8; MAX_BLOCK_RAW_LEN as usize];
        assert!(matches!(
            b.write(PartitionId(0), &huge, &mut ready),
            Err(ClientError::InvalidArgument(_))
        ));
    }
}
