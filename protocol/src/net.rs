//! What both ends of the network share beyond the byte formats (the `net`
//! feature): the control-plane gRPC types, the QUIC ALPN id, and vectored
//! frame writing. Servers and clients use these; nothing here opens a
//! socket by itself.

use std::io::IoSlice;

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// ALPN id of the QUIC data plane.
pub const ALPN: &[u8] = b"rss/1";

/// Generated control-plane types, server and client stubs
/// (`protocol/proto/rss/v1/control.proto`).
#[allow(missing_docs, missing_debug_implementations, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("rss.v1");
}

/// Writes `segments` in order with vectored writes (up to 64 at a time),
/// then flushes. Block payloads go out without being copied.
pub async fn write_segments<W: AsyncWrite + Unpin>(
    writer: &mut W,
    segments: &mut [Bytes],
) -> std::io::Result<()> {
    let mut first = 0;
    while first < segments.len() {
        let slices: Vec<IoSlice<'_>> = segments[first..]
            .iter()
            .take(64)
            .map(|s| IoSlice::new(s))
            .collect();
        let mut written = writer.write_vectored(&slices).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while written > 0 && first < segments.len() {
            let len = segments[first].len();
            if written >= len {
                written -= len;
                first += 1;
            } else {
                bytes::Buf::advance(&mut segments[first], written);
                written = 0;
            }
        }
        while first < segments.len() && segments[first].is_empty() {
            first += 1;
        }
    }
    writer.flush().await
}
