//! Pushes: a batch of blocks stored off the async threads, answered with
//! an ack or a typed refusal.

use std::sync::Arc;
use std::time::Instant;

use protocol::frame::{Frame, PushAck, PushBlocks};
use protocol::{Block, ServiceError};

use super::{error_frame, Transport};
use crate::budget::Credit;
use crate::state::{InFlightGuard, Shared};

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
            shared.metrics.replication_bytes.inc_by(outcome.replica_bytes);
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
