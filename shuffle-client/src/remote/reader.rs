//! The remote reader: one fetch stream per partition. A blocking fetch is
//! resumed from the next block if the connection breaks; a streaming one
//! (pipelined, hybrid) is not (maps interleave in arrival order, a position
//! cannot be replayed): it returns the connection error, and the engine
//! restarts the consumer. A blocking fetch's resumes follow the client's
//! retry policy (see `retry`), counted per interruption: every frame that
//! arrives gives the next one a whole window again.

use std::collections::VecDeque;
use std::sync::Arc;

use protocol::frame::{FetchRequest, Frame};
use protocol::{Block, MapRange, PartitionId, ShuffleMode};

use super::conn::Stream;
use super::retry::Backoff;
use super::Inner;
use crate::{ClientError, ReadStats, RecordBatch, ShuffleHandle, ShuffleReader};

/// Reader of one partition on a remote server.
#[derive(Debug)]
pub struct RemoteReader {
    inner: Arc<Inner>,
    server: usize,
    request: FetchRequest,
    stream: Option<Stream>,
    pending: VecDeque<Block>,
    /// Stream position of the next block handed out.
    position: u64,
    done: bool,
    /// Blocking: resumable after a broken connection.
    resumable: bool,
    backoff: Backoff,
    stats: ReadStats,
}

enum Step {
    Blocks,
    End,
}

impl RemoteReader {
    pub(crate) async fn open(
        inner: Arc<Inner>,
        server: usize,
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
            resumable: handle.spec().mode() == ShuffleMode::Blocking,
            backoff,
            stats: ReadStats::default(),
        };
        // Read the first frame now, so that a refusal (not sealed, unknown
        // shuffle, data gone...) is reported by `open_reader`, as in
        // process. A streaming fetch answers at once with an empty
        // `FetchBlocks` once attached, so this does not wait for producers.
        if reader.resumable {
            reader.fill().await?;
        } else {
            reader.step().await?;
        }
        Ok(reader)
    }

    /// Receives frames until blocks are pending or the stream ended.
    async fn fill(&mut self) -> Result<(), ClientError> {
        while self.pending.is_empty() && !self.done {
            match self.step().await {
                Ok(_) => self.backoff.reset(),
                Err(e) => {
                    // Mid-stream the connection's state is unknown: drop it.
                    self.stream = None;
                    if !self.resumable {
                        return Err(e);
                    }
                    self.inner.servers[self.server].data.reset();
                    self.backoff.wait("fetch", e).await?;
                    tracing::debug!(position = self.position, "resuming the fetch");
                }
            }
        }
        Ok(())
    }

    async fn step(&mut self) -> Result<Step, ClientError> {
        let server = self.inner.servers[self.server].clone();
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
                self.pending.extend(f.blocks);
                Ok(Step::Blocks)
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
                Ok(Step::End)
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
