//! Fetches of streaming shuffles (pipelined, hybrid): blocks are sent as
//! producers push them, until every map in range committed and was
//! delivered.

use std::sync::Arc;
use std::task::Poll;

use protocol::frame::{FetchBlocks, FetchRequest, Frame};
use protocol::ServiceError;

use super::{encode, FrameSink, Transport, FETCH_CHUNK_BYTES};
use crate::budget::Credit;
use crate::state::Shared;
use crate::storage::{StreamBlock, StreamReader};
use crate::ServerError;

/// Streams a partition of a streaming shuffle into `sink`: an empty
/// `FetchBlocks` at once (the reader is attached), then chunks of blocks as
/// they become available, an empty `FetchBlocks` keep-alive after every
/// `stream_keepalive` without one (the client's request timeout must not
/// fire while producers are slow). The inner result is the service
/// outcome (the number of blocks delivered), the outer one the sink's.
pub(super) async fn serve_stream<S: FrameSink>(
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
