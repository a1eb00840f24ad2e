//! The data plane: pushes and fetches, the same over every transport.
//!
//! [`read_frame`] takes one frame off any byte stream, waiting for memory
//! credit between the length prefix and the body, under time limits (see
//! `framing.rs`).
//! [`handle_push`] and [`serve_fetch`] implement the two requests; the
//! transports (`tcp.rs`, `quic.rs`) only move frames.

mod framing;
pub(crate) mod quic;
mod stream;
pub(crate) mod tcp;

pub(crate) use self::framing::{read_frame, Idle, ReadError, Received};

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use protocol::frame::{
    ErrorFrame, FetchBlocks, FetchEnd, FetchRequest, Frame, FrameCodec, PushAck, PushBlocks,
};
use protocol::{Block, ServiceError};

pub(crate) use protocol::net::write_segments;

use crate::budget::Credit;
use crate::state::{InFlightGuard, Shared};
use crate::storage::ShuffleRead;

/// Bytes of blocks sent per `FetchBlocks` frame (one larger block is sent
/// alone).
pub(crate) const FETCH_CHUNK_BYTES: usize = 1 << 20;

/// Which transport a request came over (a metrics label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    Tcp,
    Quic,
}

impl Transport {
    pub fn label(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Quic => "quic",
        }
    }
}

impl ReadError {
    /// Logs and counts a connection closed for this error.
    pub(crate) fn record(&self, shared: &Shared, transport: Transport, peer: std::net::SocketAddr) {
        let reason = match self {
            ReadError::Protocol(_) => "malformed",
            ReadError::Io(_) => "connection",
            ReadError::Slow(_) => "busy",
            ReadError::Idle(_) => {
                tracing::debug!(%peer, transport = transport.label(), "closing connection: {self}");
                return;
            }
        };
        tracing::warn!(%peer, transport = transport.label(), "closing connection: {self}");
        shared
            .metrics
            .rejected_requests
            .with_label_values(&[reason])
            .inc();
    }

    /// The error frame the peer gets before the connection closes, if any.
    pub(crate) fn frame(&self) -> Option<Frame> {
        match self {
            ReadError::Protocol(p) => Some(error_frame(
                0,
                ServiceError::Malformed {
                    reason: p.to_string(),
                },
            )),
            ReadError::Slow(reason) => Some(error_frame(
                0,
                ServiceError::Busy {
                    reason: reason.clone(),
                },
            )),
            ReadError::Io(_) | ReadError::Idle(_) => None,
        }
    }
}

pub(crate) fn error_frame(request_id: u64, error: ServiceError) -> Frame {
    Frame::Error(ErrorFrame { request_id, error })
}

/// Encodes a frame the server built, as segments for vectored writes
/// (block payloads are not copied: they stay slices of the partition
/// file's mmap). Replies are encoded against the protocol's default limit
/// (64 MiB), which a fetch chunk (1 MiB plus at most one 32 MiB block)
/// always fits, whatever limit requests have.
pub(crate) fn encode(frame: &Frame) -> Vec<Bytes> {
    match FrameCodec::default().encode_segments(frame) {
        Ok(segments) => segments,
        Err(e) => {
            tracing::error!("encoding a reply failed: {e}");
            let fallback = error_frame(
                0,
                ServiceError::Internal {
                    reason: e.to_string(),
                },
            );
            vec![FrameCodec::default()
                .encode_to_bytes(&fallback)
                .unwrap_or_default()]
        }
    }
}

/// Stores a push; returns the reply frame. The push's credit is released
/// when its blocks are on disk (or refused).
///
/// Pipelined shuffles keep the blocks in memory: the store splits this
/// credit per block and each block holds its share until a reader takes it
/// (so a full budget stops the next push frame in `read_frame`: credit
/// backpressure). Other modes return it when the push is done.
///
/// `admitted` is the push's place among those in flight (taken when its
/// header arrived); a push that arrived while draining has none and is
/// refused with `Draining`.
pub(crate) async fn handle_push(
    shared: &Arc<Shared>,
    push: PushBlocks,
    credit: Option<Credit>,
    admitted: Option<InFlightGuard>,
    transport: Transport,
) -> Frame {
    let started = Instant::now();
    let request_id = push.request_id;
    let Some(_in_flight) = admitted else {
        let e = ServiceError::Draining;
        shared.rejected(&e);
        shared
            .metrics
            .push_requests
            .with_label_values(&["rejected"])
            .inc();
        return error_frame(request_id, e);
    };
    let bytes: u64 = push.blocks.iter().map(|b| b.encoded_len() as u64).sum();
    shared
        .metrics
        .push_bytes
        .with_label_values(&[transport.label()])
        .inc_by(bytes);
    let store = shared.store.clone();
    let app = push.app.clone();
    let shuffle = push.shuffle;
    let blocks: Vec<Block> = push.blocks;
    let outcome =
        tokio::task::spawn_blocking(move || store.push_credited(&app, shuffle, blocks, credit)).await;
    shared
        .metrics
        .push_duration
        .observe(started.elapsed().as_secs_f64());
    let result = match outcome {
        Ok(Ok(outcome)) => {
            shared.apps.heartbeat(&push.app);
            shared.metrics.push_requests.with_label_values(&["ok"]).inc();
            shared
                .metrics
                .duplicate_blocks_dropped
                .inc_by(u64::from(outcome.duplicates));
            return Frame::PushAck(PushAck {
                request_id,
                stored: outcome.stored,
                duplicates: outcome.duplicates,
            });
        }
        Ok(Err(e)) => e.to_service_error(),
        Err(join) => ServiceError::Internal {
            reason: format!("push task failed: {join}"),
        },
    };
    if matches!(result, ServiceError::ChecksumMismatch { .. }) {
        shared.metrics.checksum_mismatches.inc();
    }
    shared
        .metrics
        .push_requests
        .with_label_values(&["rejected"])
        .inc();
    shared.rejected(&result);
    tracing::debug!(request_id, %result, "push refused");
    error_frame(request_id, result)
}

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
            return stream::serve_stream(shared, req, transport, sink, reader).await;
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
