//! The remote reader: one fetch stream per partition. A blocking fetch is
//! resumed from the next block if the connection breaks; a streaming one
//! (pipelined, hybrid) is not (maps interleave in arrival order, a position
//! cannot be replayed): it returns the connection error, and the engine
//! restarts the consumer. A blocking fetch's resumes follow the client's
//! retry policy (see `retry`), counted per interruption: every frame that
//! arrives gives the next one a whole window again.
//!
//! A replicated partition (blocking, hybrid-full) has two copies: the read
//! starts on the primary and, when a copy fails (connection lost, server
//! gone, a corrupt block, a data-lost error, or not sealed there while the
//! other copy is), goes on at once on the other one. The copies may hold
//! their blocks in different orders, so the reader remembers what it
//! returned by (map, attempt, sequence) and skips those blocks in the other
//! copy's stream: no duplicate, no gap. A map whose attempt differs on the
//! other copy after some of its blocks were returned ends the read with
//! `AttemptFailed` (the consumer restarts), never a mix of attempts. When
//! every copy fails, connection errors are retried by the policy before
//! the partition is reported lost.
//!
//! Every block received must belong to the request (its shuffle, its
//! partition, a map of its range); one that does not is
//! [`ClientError::Corrupt`] and ends the read (or that copy), with no retry.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use protocol::frame::{FetchRequest, Frame};
use protocol::{AttemptId, Block, MapId, MapRange, PartitionId};

use super::conn::Stream;
use super::copies::CopyFailures;
use super::retry::Backoff;
use super::{Inner, Server};
use crate::{ClientError, ReadStats, RecordBatch, ShuffleHandle, ShuffleReader};

/// Reader of one partition on remote servers.
#[derive(Debug)]
pub struct RemoteReader {
    inner: Arc<Inner>,
    /// The partition's copies, the one to try first first.
    copies: Vec<Arc<Server>>,
    /// The copy being read.
    current: usize,
    /// Per copy: it failed so that it cannot serve this read.
    failed: Vec<bool>,
    /// Why, for the error when every copy failed.
    failures: CopyFailures,
    /// Per copy: the stream position reached on it (blocking resumes there).
    saved: Vec<u64>,
    /// Replicated only: what was returned, per map (attempt, sequences).
    returned: Option<HashMap<MapId, (AttemptId, HashSet<u32>)>>,
    /// Copies tried since the last frame arrived.
    tries: usize,
    request: FetchRequest,
    stream: Option<Stream>,
    pending: VecDeque<Block>,
    /// Stream position of the next block taken from `pending`.
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
        copies: Vec<Arc<Server>>,
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
        let n = copies.len();
        let mut reader = RemoteReader {
            inner,
            copies,
            current: 0,
            failed: vec![false; n],
            failures: CopyFailures::default(),
            saved: vec![0; n],
            returned: (n > 1).then(HashMap::new),
            tries: 0,
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
        if reader.resumable {
            reader.fill().await.map_err(|e| reader.give_up(e))?;
        } else {
            loop {
                match reader.step().await {
                    Ok(()) => break,
                    Err(e) if reader.replicated() => reader.fail_over(e).await?,
                    Err(e) => {
                        reader.stream = None;
                        reader.server().data.reset();
                        if let Err(e) = reader.backoff.wait("fetch", e).await {
                            return Err(reader.give_up(e));
                        }
                    }
                }
            }
            reader.backoff.reset();
        }
        Ok(reader)
    }

    fn replicated(&self) -> bool {
        self.returned.is_some()
    }

    fn server(&self) -> Arc<Server> {
        self.copies[self.current].clone()
    }

    /// The error this read ends with (see `Inner::lost`).
    fn give_up(&self, e: ClientError) -> ClientError {
        let server = &self.copies[self.current].name;
        self.inner
            .lost(server, &self.request.app, self.request.shuffle, e)
    }

    /// Receives frames until blocks are pending or the stream ended.
    async fn fill(&mut self) -> Result<(), ClientError> {
        while self.pending.is_empty() && !self.done {
            if let Some(reason) = &self.corrupt {
                return Err(ClientError::Corrupt {
                    location: self.server().name.clone(),
                    reason: reason.clone(),
                });
            }
            match self.step().await {
                Ok(_) => {
                    self.backoff.reset();
                    self.tries = 0;
                }
                Err(e) if self.replicated() => self.fail_over(e).await?,
                Err(e) => {
                    // Mid-stream the connection's state is unknown: drop it.
                    self.stream = None;
                    if !self.resumable {
                        return Err(e);
                    }
                    self.server().data.reset();
                    if let Err(e) = self.backoff.wait("fetch", e).await {
                        return Err(self.give_up(e));
                    }
                    tracing::debug!(position = self.position, "resuming the fetch");
                }
            }
        }
        Ok(())
    }

    /// After the copy being read failed with `e`: goes on with the next
    /// copy that has not failed for good (at once the first time round,
    /// after the policy's backoff once every live copy failed since the
    /// last frame), or returns the error when none is left or the policy
    /// gives up.
    async fn fail_over(&mut self, e: ClientError) -> Result<(), ClientError> {
        let shuffle = self.request.shuffle;
        let server = self.server();
        self.stream = None;
        server.data.reset();
        self.pending.clear();
        self.saved[self.current] = self.position;
        let e = e.into_lost(shuffle);
        // What the other copy may not share: its server unreachable or
        // busy, not sealed there yet, or this copy's data lost. Anything
        // else (a losing attempt, a bad request) is the same on both.
        let other_copy_may_serve = e.loses_copy() || e.is_retryable();
        if !other_copy_may_serve {
            return Err(e);
        }
        let lost = e.loses_copy();
        if lost {
            self.inner.lost.mark(&server.name, &self.request.app, shuffle, &e);
            self.failed[self.current] = true;
        }
        let n = self.copies.len();
        let Some(next) = (1..=n).map(|k| (self.current + k) % n).find(|&i| !self.failed[i]) else {
            self.failures.failed(e);
            let names: Vec<&str> = self.copies.iter().map(|s| s.name.as_str()).collect();
            return Err(std::mem::take(&mut self.failures).into_error(&names, shuffle));
        };
        self.tries += 1;
        let live = self.failed.iter().filter(|f| !**f).count();
        if !lost && self.tries >= live {
            self.backoff
                .wait("fetch", e)
                .await
                .map_err(|e| e.into_lost(shuffle))?;
        } else {
            tracing::info!(from = %server.name, to = %self.copies[next].name, "reading the other copy: {e}");
            if lost {
                self.failures.failed(e);
            }
        }
        if next != self.current {
            self.stats.failovers += 1;
        }
        self.current = next;
        // A blocking copy resumes where this read left it; a stream
        // starts again (what was returned is skipped).
        self.position = if self.resumable { self.saved[next] } else { 0 };
        Ok(())
    }

    /// Receives one frame of the stream (opening it first if needed).
    async fn step(&mut self) -> Result<(), ClientError> {
        let server = self.server();
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
                    if !self.replicated() {
                        self.corrupt = Some(reason.clone());
                    }
                    return Err(ClientError::Corrupt {
                        location: server.name.clone(),
                        reason,
                    });
                }
                self.pending.extend(f.blocks);
                Ok(())
            }
            Some(Frame::FetchEnd(end)) => {
                let received = self.position + self.pending.len() as u64;
                if end.total_blocks != received {
                    return Err(ClientError::Corrupt {
                        location: server.name.clone(),
                        reason: format!("stream ended at block {received} of {}", end.total_blocks),
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

    /// Whether `block` was returned already (read again from another
    /// copy). A map returned under another attempt is `AttemptFailed`.
    fn returned_already(&self, block: &Block) -> Result<bool, ClientError> {
        let Some(returned) = &self.returned else {
            return Ok(false);
        };
        let id = block.id();
        match returned.get(&id.map) {
            Some((attempt, _)) if *attempt != id.attempt => Err(ClientError::AttemptFailed {
                map: id.map,
                attempt: *attempt,
            }),
            Some((_, seqs)) => Ok(seqs.contains(&id.seq)),
            None => Ok(false),
        }
    }

    /// Records `block` as returned (replicated reads only).
    fn record_returned(&mut self, block: &Block) {
        if let Some(returned) = &mut self.returned {
            let id = block.id();
            returned
                .entry(id.map)
                .or_insert_with(|| (id.attempt, HashSet::new()))
                .1
                .insert(id.seq);
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
        loop {
            self.fill().await?;
            let Some(block) = self.pending.pop_front() else {
                return Ok(None);
            };
            if self.returned_already(&block)? {
                self.position += 1;
                continue;
            }
            let batch = match RecordBatch::from_block(&block) {
                Ok(batch) => batch,
                Err(e) if self.replicated() => {
                    // Corrupt on this copy: read it from the other.
                    self.fail_over(e).await?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            self.position += 1;
            self.record_returned(&block);
            self.stats.blocks += 1;
            self.stats.records += u64::from(block.header.record_count);
            self.stats.fetched_bytes += block.encoded_len() as u64;
            return Ok(Some(batch));
        }
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
