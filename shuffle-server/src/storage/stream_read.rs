//! The read side of streaming shuffles: [`StreamReader`], which attaches
//! any time after register and streams blocks while producers push; and
//! [`ShuffleRead`], the reader [`super::Store::open_read`] opens for any
//! mode.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use protocol::{AttemptId, Block, BlockId, MapId, MapRange, PartitionId, ServiceError};

use super::counters::Counters;
use super::index::{index_lost, verify_block};
use super::locks::lock;
use super::reader::PartitionReader;
use super::shuffle::ShuffleState;
use super::stream_index::{Cursor, Source, Step, StreamPart};
use crate::budget::Credit;
use crate::ServerError;

/// A reader of one partition, as [`super::Store::open_read`] opens it for
/// the shuffle's mode.
#[derive(Debug)]
pub enum ShuffleRead {
    /// Blocking, or a sealed hybrid-full shuffle: the committed blocks from
    /// disk in (map, seq) order; resumable by position.
    Sealed(PartitionReader),
    /// A streaming shuffle: blocks as they become available.
    Stream(StreamReader),
}

/// A block handed out by a [`StreamReader`], with the budget credit that
/// paid for it in memory (drop it once the block is written out).
#[derive(Debug)]
pub struct StreamBlock {
    pub block: Block,
    pub credit: Option<Credit>,
}

/// Reads one partition of a streaming shuffle while producers still push:
/// per map, the blocks of one attempt in seq order (see `stream.rs`), from
/// memory or from the partition file; ends once every map in range
/// committed and was delivered.
#[derive(Debug)]
pub struct StreamReader {
    state: Arc<ShuffleState>,
    part: Arc<StreamPart>,
    partition: PartitionId,
    cursor: Cursor,
    file: Option<File>,
    counters: Arc<Counters>,
}

impl StreamReader {
    pub(crate) fn open(
        state: Arc<ShuffleState>,
        partition: PartitionId,
        maps: MapRange,
        counters: Arc<Counters>,
    ) -> Result<Self, ServerError> {
        let part = state.stream_part(partition)?;
        lock(&part.index).check_open(partition, maps)?;
        Ok(StreamReader {
            cursor: Cursor::new(maps),
            part,
            state,
            partition,
            file: None,
            counters,
        })
    }

    /// Blocks delivered so far.
    pub fn delivered(&self) -> u64 {
        self.cursor.delivered()
    }

    /// The next block if one is deliverable now; `Ready(None)` at the end.
    pub fn try_next(&mut self) -> Result<Poll<Option<StreamBlock>>, ServerError> {
        let state = self.state.clone();
        let part = self.part.clone();
        let step = {
            let mut index = lock(&part.index);
            if state.is_removed() {
                return Err(ServerError::Service(ServiceError::UnknownShuffle {
                    app: state.app.clone(),
                    shuffle: state.id,
                }));
            }
            index.next(self.partition, &mut self.cursor)?
        };
        match step {
            Step::End => Ok(Poll::Ready(None)),
            Step::Wait => Ok(Poll::Pending),
            Step::Deliver {
                map,
                attempt,
                seq,
                source,
            } => {
                let block = match source {
                    Source::Memory(block, credit) => {
                        // Other readers of the map may now find it gone.
                        part.notify.notify_waiters();
                        return Ok(Poll::Ready(Some(StreamBlock { block, credit })));
                    }
                    Source::Disk => self.read_disk(map, attempt, seq)?,
                };
                Ok(Poll::Ready(Some(StreamBlock { block, credit: None })))
            }
        }
    }

    /// The next block, waiting for producers as long as needed; `None` at
    /// the end. Cancel-safe: it only waits between steps.
    pub async fn next_block(&mut self) -> Result<Option<StreamBlock>, ServerError> {
        let part = self.part.clone();
        loop {
            let notified = part.notify.notified();
            tokio::pin!(notified);
            // Registered before looking, so a change in between wakes us.
            notified.as_mut().enable();
            if let Poll::Ready(next) = self.try_next()? {
                return Ok(next);
            }
            notified.await;
        }
    }

    fn read_disk(&mut self, map: MapId, attempt: AttemptId, seq: u32) -> Result<Block, ServerError> {
        let file = self
            .state
            .file(self.partition)
            .ok_or_else(|| index_lost("-".into(), self.partition, Some((map, attempt, seq))))?;
        let (path, entry) = {
            let file = lock(&file);
            let found = file.lookup(map, attempt, seq).zip(file.place());
            let Some((entry, place)) = found else {
                return Err(index_lost(
                    file.describe(),
                    self.partition,
                    Some((map, attempt, seq)),
                ));
            };
            (place.path.clone(), entry)
        };
        let file = match &mut self.file {
            Some(file) => file,
            slot @ None => slot.insert(File::open(&path).map_err(ServerError::io("open", &path))?),
        };
        // The file still grows while it is read: a positioned read of the
        // indexed range, not an mmap of a length fixed at open.
        let mut buf = vec![0u8; entry.len as usize];
        file.read_exact_at(&mut buf, entry.offset).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                ServerError::CorruptFile {
                    path: path.clone(),
                    reason: format!("file ends before block {map} {attempt} seq {seq}"),
                }
            } else {
                ServerError::io("read", &path)(e)
            }
        })?;
        let expected = BlockId {
            shuffle: self.state.id,
            map,
            attempt,
            partition: self.partition,
            seq,
        };
        verify_block(Bytes::from(buf), expected, entry, &path, &self.counters)
    }
}
