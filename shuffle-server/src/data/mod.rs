//! The data plane: pushes and fetches, the same over every transport.
//!
//! [`read_frame`] takes one frame off any byte stream, waiting for memory
//! credit between the length prefix and the body, under time limits (see
//! `framing.rs`).
//! [`handle_push`] (`push.rs`) and [`serve_fetch`] (`fetch.rs`, sealed
//! and streaming partitions) implement the two requests; the transports
//! (`tcp.rs`, `quic.rs`) only move frames, and answer a hello with
//! [`hello_reply`].

mod fetch;
mod framing;
mod push;
pub(crate) mod quic;
pub(crate) mod tcp;

pub(crate) use self::fetch::{serve_fetch, FrameSink};
pub(crate) use self::framing::{read_frame, Idle, ReadError, Received};
pub(crate) use self::push::handle_push;

use bytes::Bytes;
use protocol::frame::{ErrorFrame, Frame, FrameCodec, Hello, PROTOCOL_VERSION};
use protocol::{ProtocolError, ServiceError};

pub(crate) use protocol::net::write_segments;

use crate::state::Shared;

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

/// The server's answer to a client's hello: its own hello (protocol
/// version, gRPC port, largest frame), or why the client's protocol
/// version is refused.
pub(crate) fn hello_reply(shared: &Shared, hello: &Hello) -> Result<Frame, ProtocolError> {
    if hello.protocol_version != PROTOCOL_VERSION {
        return Err(ProtocolError::Malformed {
            what: "hello",
            reason: format!(
                "protocol version {} is not {PROTOCOL_VERSION}",
                hello.protocol_version
            ),
        });
    }
    Ok(Frame::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        grpc_port: shared.grpc_port,
        max_frame_len: shared.config.max_frame_len,
    }))
}
