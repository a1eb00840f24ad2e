//! The remote reader: one fetch stream per partition. A blocking fetch is
//! resumed from the next block if the connection breaks; a streaming one
//! (pipelined, hybrid) is not (maps interleave in arrival order, a position
//! cannot be replayed): it returns the connection error, and the engine
//! restarts the consumer. A blocking fetch's resumes follow the client's
//! retry policy (see `retry`), counted per interruption: every frame that
//! arrives gives the next one a whole window again.
//!
//! Every block received must belong to the request (its shuffle, its
//! partition, a map of its range); one that does not is
//! [`ClientError::Corrupt`] and ends the read, with no retry.

use std::collections::VecDeque;
use std::sync::Arc;

use protocol::frame::{FetchRequest, Frame};
use protocol::{Block, MapRange, PartitionId};

use super::conn::Stream;
use super::retry::Backoff;
use super::{Inner, Server};
use crate::{ClientError, ReadStats, RecordBatch, ShuffleHandle, ShuffleReader};

/// Reader of one partition on a remote server.
#[derive(Debug)]
pub struct RemoteReader {
    inner: Arc<Inner>,
    server: Arc<Server>,
    request: FetchRequest,
    stream: Option<Stream>,
    pending: VecDeque<Block>,
    /// Stream position of the next block handed out.
    position: u64,
    done: bool,
    /// Blocking: resumable after a broken connection.
    resumable: bool,
    backoff: Backoff,
    /// Set when the server sent a block of another request: the read is
    /// over, every later call returns the same `Corrupt` error.
    corrupt: Option<String>,
    stats: ReadStats,
}

impl RemoteReader {
    pub(crate) async fn open(
        inner: Arc<Inner>,
        server: Arc<Server>,
        handle: &ShuffleHandle,
        partition: PartitionId,
        maps: MapRange,
    ) -> Result<Self, ClientError> {
        let request = FetchRequest {
            request_id: inner.request_id(),
            app: handle.app().clone(),
            shuffle: handle.shuffle(),
            partition,
            maps,
            resume_from: 0,
        };
        let backoff = Backoff::new(inner.retry_policy());
        let mut reader = RemoteReader {
            inner,
            server,
            request,
            stream: None,
            pending: VecDeque::new(),
            position: 0,
            done: false,
            resumable: handle.spec().mode().resumes_by_position(),
            backoff,
            corrupt: None,
            stats: ReadStats::default(),
        };
        // Read the first frame now, so that a refusal (not sealed, unknown
        // shuffle, data gone...) is reported by `open_reader`, as in
        // process. A streaming fetch answers at once with an empty
        // `FetchBlocks` once attached, so this does not wait for producers.
        // A server that stays unreachable for the retry window is lost.
        let shuffle = handle.shuffle();
        if reader.resumable {
            reader.fill().await.map_err(|e| e.into_lost(shuffle))?;
        } else {
            loop {
                match reader.step().await {
                    Ok(()) => break,
                    Err(e) => {
                        reader.stream = None;
                        reader.server.data.reset();
                        reader
                            .backoff
                            .wait("fetch", e)
                            .await
                            .map_err(|e| e.into_lost(shuffle))?;
                    }
                }
            }
            reader.backoff.reset();
        }
        Ok(reader)
    }

    /// Receives frames until blocks are pending or the stream ended.
    async fn fill(&mut self) -> Result<(), ClientError> {
        while self.pending.is_empty() && !self.done {
            if let Some(reason) = &self.corrupt {
                return Err(ClientError::Corrupt {
                    location: self.server.name.clone(),
                    reason: reason.clone(),
                });
            }
            match self.step().await {
                Ok(_) => self.backoff.reset(),
                Err(e) => {
                    // Mid-stream the connection's state is unknown: drop it.
                    self.stream = None;
                    if !self.resumable {
                        return Err(e);
                    }
                    self.server.data.reset();
                    let shuffle = self.request.shuffle;
                    self.backoff
                        .wait("fetch", e)
                        .await
                        .map_err(|e| e.into_lost(shuffle))?;
                    tracing::debug!(position = self.position, "resuming the fetch");
                }
            }
        }
        Ok(())
    }

    /// Receives one frame of the stream (opening it first if needed).
    async fn step(&mut self) -> Result<(), ClientError> {
        let server = self.server.clone();
        let timeout = self.inner.options.request_timeout;
        let frame = match self.stream.as_mut() {
            Some(stream) => stream.recv(timeout).await.map_err(|e| server.data.error(e))?,
            None => {
                self.request.resume_from = self.position;
                let (stream, first) = server
                    .data
                    .exchange(&Frame::Fetch(self.request.clone()), timeout)
                    .await?;
                self.stream = Some(stream);
                Some(first)
            }
        };
        match frame {
            Some(Frame::FetchBlocks(f)) => {
                if f.first_index != self.position {
                    return Err(server.data.error(format!(
                        "fetch stream skipped: expected block {}, got {}",
                        self.position, f.first_index
                    )));
                }
                if let Some(reason) = f.blocks.iter().find_map(|b| stray_block(&self.request, b)) {
                    self.corrupt = Some(reason.clone());
                    return Err(ClientError::Corrupt {
                        location: server.name.clone(),
                        reason,
                    });
                }
                self.pending.extend(f.blocks);
                Ok(())
            }
            Some(Frame::FetchEnd(end)) => {
                if end.total_blocks != self.position {
                    return Err(ClientError::Corrupt {
                        location: server.name.clone(),
                        reason: format!("stream ended at block {} of {}", self.position, end.total_blocks),
                    });
                }
                self.done = true;
                if let Some(stream) = self.stream.take() {
                    server.data.give_back(stream);
                }
                Ok(())
            }
            Some(Frame::Error(e)) => {
                self.stream = None;
                Err(ClientError::from_service(e.error, &server.name))
            }
            Some(other) => Err(server
                .data
                .error(format!("unexpected frame in a fetch stream: {other:?}"))),
            None => Err(server.data.error("connection closed mid-stream")),
        }
    }
}

/// Why `block` does not belong in the stream of `request`, if it does not.
fn stray_block(request: &FetchRequest, block: &Block) -> Option<String> {
    let id = block.id();
    let maps = &request.maps;
    let wrong = if id.shuffle != request.shuffle {
        "another shuffle"
    } else if id.partition != request.partition {
        "another partition"
    } else if id.map < maps.start() || id.map >= maps.end() {
        "a map outside the requested range"
    } else {
        return None;
    };
    Some(format!(
        "block {id} ({wrong}) arrived in the stream of {} of {}, maps {}..{}",
        request.partition,
        request.shuffle,
        maps.start().0,
        maps.end().0
    ))
}

impl ShuffleReader for RemoteReader {
    async fn next_batch(&mut self) -> Result<Option<RecordBatch>, ClientError> {
        self.fill().await?;
        let Some(block) = self.pending.pop_front() else {
            return Ok(None);
        };
        let batch = RecordBatch::from_block(&block)?;
        self.position += 1;
        self.stats.blocks += 1;
        self.stats.records += u64::from(block.header.record_count);
        self.stats.fetched_bytes += block.encoded_len() as u64;
        Ok(Some(batch))
    }

    fn stats(&self) -> ReadStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use protocol::{AppId, AttemptId, BlockId, MapId, ShuffleId};

    use super::*;

    fn request() -> FetchRequest {
        FetchRequest {
            request_id: 1,
            app: AppId::new("app").expect("app id"),
            shuffle: ShuffleId(3),
            partition: PartitionId(2),
            maps: MapRange::new(MapId(1), MapId(4)).expect("range"),
            resume_from: 0,
        }
    }

    fn block(shuffle: u32, map: u32, partition: u32) -> Block {
        let id = BlockId {
            shuffle: ShuffleId(shuffle),
            map: MapId(map),
            attempt: AttemptId(0),
            partition: PartitionId(partition),
            seq: 0,
        };
        Block::seal(id, vec![1, 2, 3], 1, false).expect("block")
    }

    #[test]
    fn only_blocks_of_the_request_belong_in_its_stream() {
        let r = request();
        assert_eq!(stray_block(&r, &block(3, 1, 2)), None);
        assert_eq!(stray_block(&r, &block(3, 3, 2)), None);
        for (b, wrong) in [
            (block(4, 1, 2), "another shuffle"),
            (block(3, 1, 0), "another partition"),
            (block(3, 0, 2), "outside the requested range"),
            (block(3, 4, 2), "outside the requested range"),
        ] {
            let reason = stray_block(&r, &b).expect("stray");
            assert!(reason.contains(wrong), "{reason}");
            assert!(reason.contains(&b.id().to_string()), "{reason}");
            assert!(reason.contains("arrived in the stream of partition"), "{reason}");
        }
    }
}
