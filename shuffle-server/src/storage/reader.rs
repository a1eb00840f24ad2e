//! Reading a sealed partition: the planned blocks, served from an mmap of
//! the partition file and verified one by one.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use protocol::{Block, BlockId, PartitionId, ShuffleId};

use super::counters::Counters;
use super::index::{verify_block, PlannedBlock};
use crate::ServerError;

/// Streams one partition's committed blocks, for a range of maps, in
/// (map, seq) order. Every block is checked against the index (identity,
/// CRC recorded at write time) and its payload against its CRC32C.
#[derive(Debug)]
pub struct PartitionReader {
    shuffle: ShuffleId,
    partition: PartitionId,
    path: PathBuf,
    data: Bytes,
    plan: Vec<PlannedBlock>,
    next: usize,
    counters: Arc<Counters>,
}

impl PartitionReader {
    /// `path` is the partition's file, `None` when it has none (then the
    /// plan must be empty).
    pub(crate) fn open(
        shuffle: ShuffleId,
        partition: PartitionId,
        path: Option<PathBuf>,
        plan: Vec<PlannedBlock>,
        counters: Arc<Counters>,
    ) -> Result<Self, ServerError> {
        let needed = plan
            .iter()
            .map(|b| b.entry.offset + u64::from(b.entry.len))
            .max()
            .unwrap_or(0);
        let data = if needed == 0 {
            Bytes::new()
        } else {
            let Some(path) = &path else {
                return Err(ServerError::CorruptFile {
                    path: PathBuf::from("-"),
                    reason: format!("{partition} has no file but its index needs {needed} bytes"),
                });
            };
            let file = match File::open(path) {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(ServerError::CorruptFile {
                        path: path.clone(),
                        reason: format!("file is missing but the index needs {needed} bytes"),
                    });
                }
                Err(e) => return Err(ServerError::io("open", path)(e)),
            };
            let on_disk = file.metadata().map_err(ServerError::io("stat", path))?.len();
            // Checked before mapping: touching a page past the end of the
            // file would raise SIGBUS instead of an error.
            if on_disk < needed {
                return Err(ServerError::CorruptFile {
                    path: path.clone(),
                    reason: format!("file has {on_disk} bytes but the index needs {needed}"),
                });
            }
            // SAFETY: the file is private to this server, which only ever
            // appends to it (appending never changes mapped bytes) and never
            // truncates it while the shuffle is sealed; its length was
            // checked above. A process outside the server truncating it
            // while mapped is outside what the server can defend against.
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(ServerError::io("mmap", path))?;
            #[cfg(unix)]
            let _ = map.advise(memmap2::Advice::Sequential);
            Bytes::from_owner(map)
        };
        Ok(PartitionReader {
            shuffle,
            partition,
            path: path.unwrap_or_else(|| PathBuf::from("-")),
            data,
            plan,
            next: 0,
            counters,
        })
    }

    /// Number of blocks in the whole stream.
    pub fn total_blocks(&self) -> u64 {
        self.plan.len() as u64
    }

    /// Stream position of the next block.
    pub fn position(&self) -> u64 {
        self.next as u64
    }

    /// Continues from stream position `index` (for a resumed fetch).
    pub fn seek(&mut self, index: u64) {
        self.next = usize::try_from(index).unwrap_or(usize::MAX).min(self.plan.len());
    }

    /// The next block, verified; `None` at the end.
    pub fn next_block(&mut self) -> Result<Option<Block>, ServerError> {
        let Some(planned) = self.plan.get(self.next).copied() else {
            return Ok(None);
        };
        let expected = BlockId {
            shuffle: self.shuffle,
            map: planned.map,
            attempt: planned.attempt,
            partition: self.partition,
            seq: planned.seq,
        };
        let start = planned.entry.offset as usize;
        let slice = self.data.slice(start..start + planned.entry.len as usize);
        let block = verify_block(slice, expected, planned.entry, &self.path, &self.counters)?;
        self.next += 1;
        Ok(Some(block))
    }
}
