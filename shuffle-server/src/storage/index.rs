//! The write-time index's entries and the checks made with them: where a
//! block sits in its partition file, the blocks a reader will return, and
//! the one "index lost" error.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use protocol::{AttemptId, Block, BlockId, ChecksumSite, MapId, PartitionId, ServiceError};

use super::counters::Counters;
use crate::ServerError;

/// Where one block lives in its partition file.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct IndexEntry {
    pub offset: u64,
    /// Header plus payload.
    pub len: u32,
    /// CRC32C of the payload, as verified when the block was written.
    pub crc: u32,
}

/// One block a reader will return, in order (also what a sealed shuffle's
/// meta file records per partition).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct PlannedBlock {
    pub map: MapId,
    pub attempt: AttemptId,
    pub seq: u32,
    pub entry: IndexEntry,
}

/// Decodes the bytes of one stored block and checks them against the index:
/// identity, the CRC recorded at write time, and the payload's CRC32C.
pub(crate) fn verify_block(
    mut data: Bytes,
    expected: BlockId,
    entry: IndexEntry,
    path: &Path,
    counters: &Counters,
) -> Result<Block, ServerError> {
    let corrupt = |reason: String| ServerError::CorruptFile {
        path: path.to_path_buf(),
        reason,
    };
    let start = entry.offset;
    let block =
        Block::decode(&mut data).map_err(|e| corrupt(format!("block {expected} at offset {start}: {e}")))?;
    if block.id() != expected {
        return Err(corrupt(format!(
            "offset {start} holds block {} instead of {expected}",
            block.id()
        )));
    }
    let actual = crc32c::crc32c(&block.payload);
    if actual != entry.crc || actual != block.header.crc {
        counters.checksum_mismatch();
        return Err(ServerError::Service(ServiceError::ChecksumMismatch {
            block: expected,
            expected: entry.crc,
            actual,
            site: ChecksumSite::Stored,
        }));
    }
    Ok(block)
}

/// The index of a partition lacks a committed block (a bug or memory
/// corruption: every commit checked its blocks were there). The one form of
/// that error, wherever it is found.
pub(crate) fn index_lost(
    path: PathBuf,
    partition: PartitionId,
    block: Option<(MapId, AttemptId, u32)>,
) -> ServerError {
    ServerError::CorruptFile {
        path,
        reason: match block {
            Some((map, attempt, seq)) => format!("index lost {map} {attempt} seq {seq} of {partition}"),
            None => format!("index of {partition} lost"),
        },
    }
}
