//! Fetches: one partition streamed to the client in chunks of about
//! [`FETCH_CHUNK_BYTES`], each paid with budget credit until it is written
//! out. A sealed partition is read from its file and resumes from a block
//! position; a streaming one (pipelined, hybrid) sends blocks as producers
//! push them, until every map in range committed and was delivered.

use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use bytes::Bytes;
use protocol::frame::{FetchBlocks, FetchEnd, FetchRequest, Frame};
use protocol::ServiceError;

use super::{encode, error_frame, Transport};
use crate::budget::Credit;
use crate::state::Shared;
use crate::storage::{ShuffleRead, StreamBlock, StreamReader};
use crate::ServerError;

/// Bytes of blocks sent per `FetchBlocks` frame (one larger block is sent
/// alone).
const FETCH_CHUNK_BYTES: usize = 1 << 20;

/// Where a fetch stream's frames go. `send` returns once the bytes are
/// written to the transport; the credit travels with them and is dropped
/// then. A stream therefore holds at most one chunk's credit at a time.
pub(crate) trait FrameSink: Send {
    fn send(
        &mut self,
        segments: Vec<Bytes>,
        credit: Option<Credit>,
    ) -> impl std::future::Future<Output = std::io::Result<()>> + Send;
}

/// Streams one partition: `FetchBlocks` frames from `resume_from` on, then
/// `FetchEnd`, or an `Error` frame (after the blocks that were good).
pub(crate) async fn serve_fetch<S: FrameSink>(
    shared: &Arc<Shared>,
    req: FetchRequest,
    transport: Transport,
    sink: &mut S,
) -> std::io::Result<()> {
    let _in_flight = shared.fetches.enter();
    let started = Instant::now();
    let request_id = req.request_id;
    let result = stream_partition(shared, &req, transport, sink).await;
    let frame = match result {
        Ok(Ok(total_blocks)) => {
            shared
                .metrics
                .fetch_duration
                .observe(started.elapsed().as_secs_f64());
            Frame::FetchEnd(FetchEnd {
                request_id,
                total_blocks,
            })
        }
        Ok(Err(e)) => {
            if matches!(e, ServiceError::ChecksumMismatch { .. }) {
                shared.metrics.checksum_mismatches.inc();
            }
            shared
                .metrics
                .fetch_failures
                .with_label_values(&[e.reason()])
                .inc();
            tracing::debug!(request_id, %e, "fetch failed");
            error_frame(request_id, e)
        }
        Err(io) => {
            shared
                .metrics
                .fetch_failures
                .with_label_values(&["connection"])
                .inc();
            return Err(io);
        }
    };
    sink.send(encode(&frame), None).await
}

/// The blocks of a fetch; the inner result is the service outcome, the
/// outer one the sink's.
async fn stream_partition<S: FrameSink>(
    shared: &Arc<Shared>,
    req: &FetchRequest,
    transport: Transport,
    sink: &mut S,
) -> std::io::Result<Result<u64, ServiceError>> {
    // Fetches go on while draining: sealed data stays readable until the
    // drain ends.
    let store = shared.store.clone();
    let (app, shuffle, partition, maps) = (req.app.clone(), req.shuffle, req.partition, req.maps);
    let opened = tokio::task::spawn_blocking(move || store.open_read(&app, shuffle, partition, maps)).await;
    let mut reader = match opened {
        Ok(Ok(ShuffleRead::Sealed(reader))) => reader,
        Ok(Ok(ShuffleRead::Stream(reader))) => {
            return serve_stream(shared, req, transport, sink, reader).await;
        }
        Ok(Err(e)) => return Ok(Err(e.to_service_error())),
        Err(join) => {
            return Ok(Err(ServiceError::Internal {
                reason: join.to_string(),
            }))
        }
    };
    let total = reader.total_blocks();
    if req.resume_from > total {
        return Ok(Err(ServiceError::Malformed {
            reason: format!(
                "resume index {} is past the stream's {total} blocks",
                req.resume_from
            ),
        }));
    }
    reader.seek(req.resume_from);
    shared.apps.heartbeat(&req.app);
    loop {
        let first_index = reader.position();
        // Reading touches the mmap (page faults may hit the disk): off the
        // async threads.
        let chunk = tokio::task::spawn_blocking(move || {
            let mut blocks = Vec::new();
            let mut bytes = 0usize;
            let mut failure = None;
            while bytes < FETCH_CHUNK_BYTES {
                match reader.next_block() {
                    Ok(Some(block)) => {
                        bytes += block.encoded_len();
                        blocks.push(block);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            (reader, blocks, bytes, failure)
        })
        .await;
        let (r, blocks, bytes, failure) = match chunk {
            Ok(c) => c,
            Err(join) => {
                return Ok(Err(ServiceError::Internal {
                    reason: join.to_string(),
                }))
            }
        };
        reader = r;
        if !blocks.is_empty() {
            let frame_len = bytes + 32;
            let credit = shared
                .budget
                .acquire(u32::try_from(frame_len).unwrap_or(u32::MAX))
                .await;
            let frame = Frame::FetchBlocks(FetchBlocks {
                request_id: req.request_id,
                first_index,
                blocks,
            });
            let encoded = encode(&frame);
            shared
                .metrics
                .fetch_bytes
                .with_label_values(&[transport.label()])
                .inc_by(bytes as u64);
            sink.send(encoded, Some(credit)).await?;
        }
        if let Some(e) = failure {
            return Ok(Err(e.to_service_error()));
        }
        if reader.position() >= total {
            return Ok(Ok(total));
        }
    }
}

/// Streams a partition of a streaming shuffle into `sink`: an empty
/// `FetchBlocks` at once (the reader is attached), then chunks of blocks as
/// they become available, an empty `FetchBlocks` keep-alive after every
/// `stream_keepalive` without one (the client's request timeout must not
/// fire while producers are slow). The inner result is the service
/// outcome (the number of blocks delivered), the outer one the sink's.
async fn serve_stream<S: FrameSink>(
    shared: &Arc<Shared>,
    req: &FetchRequest,
    transport: Transport,
    sink: &mut S,
    mut reader: StreamReader,
) -> std::io::Result<Result<u64, ServiceError>> {
    if req.resume_from != 0 {
        // Maps interleave in arrival order: a position cannot be replayed.
        let mode = shared
            .store
            .status(&req.app, req.shuffle)
            .map(|s| s.spec.mode())
            .unwrap_or(protocol::ShuffleMode::Pipelined);
        return Ok(Err(ServerError::ResumeUnsupported {
            mode,
            resume_from: req.resume_from,
        }
        .to_service_error()));
    }
    let empty = |first_index| {
        encode(&Frame::FetchBlocks(FetchBlocks {
            request_id: req.request_id,
            first_index,
            blocks: Vec::new(),
        }))
    };
    sink.send(empty(0), None).await?;
    let keepalive = shared.config.stream_keepalive;
    loop {
        shared.apps.heartbeat(&req.app);
        let first = match tokio::time::timeout(keepalive, reader.next_block()).await {
            Err(_) => {
                sink.send(empty(reader.delivered()), None).await?;
                continue;
            }
            Ok(Err(e)) => return Ok(Err(e.to_service_error())),
            Ok(Ok(None)) => return Ok(Ok(reader.delivered())),
            Ok(Ok(Some(block))) => block,
        };
        let first_index = reader.delivered() - 1;
        let mut chunk = Chunk::default();
        chunk.add(first);
        let mut failure = None;
        while chunk.bytes < FETCH_CHUNK_BYTES {
            match reader.try_next() {
                Ok(Poll::Ready(Some(block))) => chunk.add(block),
                Ok(Poll::Ready(None)) | Ok(Poll::Pending) => break,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        shared
            .metrics
            .fetch_bytes
            .with_label_values(&[transport.label()])
            .inc_by(chunk.bytes as u64);
        let frame = Frame::FetchBlocks(FetchBlocks {
            request_id: req.request_id,
            first_index,
            blocks: chunk.blocks,
        });
        // DEADLOCK RULE: no new credit is taken for these blocks; the credit
        // they held in memory travels to the socket write and is dropped
        // after it. Waiting for credit here, with the budget full of blocks
        // only this reader would consume, would never end.
        sink.send(encode(&frame), chunk.credit).await?;
        if let Some(e) = failure {
            return Ok(Err(e.to_service_error()));
        }
    }
}

#[derive(Default)]
struct Chunk {
    blocks: Vec<protocol::Block>,
    bytes: usize,
    credit: Option<Credit>,
}

impl Chunk {
    fn add(&mut self, b: StreamBlock) {
        self.bytes += b.block.encoded_len();
        self.blocks.push(b.block);
        match (&mut self.credit, b.credit) {
            (Some(mine), Some(theirs)) => mine.merge(theirs),
            (mine @ None, theirs) => *mine = theirs,
            (Some(_), None) => {}
        }
    }
}
