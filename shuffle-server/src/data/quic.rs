//! The QUIC data plane (quinn). Each request is one bidirectional stream:
//! the client writes one frame (hello, push or fetch) and finishes its side;
//! the server writes the reply (one frame, or a fetch stream) and finishes.
//!
//! Memory outside the budget: quinn buffers what a peer sent before the
//! server reads it, at most `STREAM_WINDOW` per stream and `CONNECTION_WINDOW`
//! per connection (a frame waiting for credit is not read, so its sender
//! stalls in QUIC flow control there); connections are capped in all and per
//! peer address like TCP ones, and closed after `idle_timeout` without a
//! stream in flight.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use protocol::frame::{Frame, FrameCodec};
use protocol::ServiceError;
use quinn::crypto::rustls::QuicServerConfig;
use tokio::sync::watch;

use super::{
    encode, error_frame, handle_push, hello_reply, read_frame, serve_fetch, FrameSink, Idle, ReadError,
    Received, Transport,
};
use crate::budget::Credit;
use crate::state::Shared;
use crate::tls::QuicIdentity;
use crate::ServerError;

/// Streams a client may have open at once on one connection.
const MAX_STREAMS: u32 = 256;
/// Unread bytes quinn buffers per stream.
const STREAM_WINDOW: u32 = 1 << 20;
/// Unread bytes quinn buffers per connection, over its streams.
const CONNECTION_WINDOW: u32 = 4 << 20;

/// A QUIC endpoint on an already bound UDP socket.
pub(crate) fn endpoint(
    socket: std::net::UdpSocket,
    identity: &QuicIdentity,
) -> Result<quinn::Endpoint, ServerError> {
    let crypto =
        QuicServerConfig::try_from(identity.server_crypto()?).map_err(|e| ServerError::InvalidConfig {
            field: "quic_cert",
            reason: e.to_string(),
        })?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(MAX_STREAMS.into())
        .stream_receive_window(STREAM_WINDOW.into())
        .receive_window(CONNECTION_WINDOW.into())
        .max_concurrent_uni_streams(0u32.into())
        .keep_alive_interval(Some(Duration::from_secs(5)));
    if let Ok(timeout) = Duration::from_secs(30).try_into() {
        transport.max_idle_timeout(Some(timeout));
    }
    server.transport_config(Arc::new(transport));
    let local = socket
        .local_addr()
        .map_err(ServerError::io("bind quic", "udp socket"))?;
    socket
        .set_nonblocking(true)
        .map_err(ServerError::io("bind quic", local.to_string()))?;
    let runtime = quinn::default_runtime().ok_or_else(|| ServerError::InvalidConfig {
        field: "quic_listen",
        reason: "no async runtime for QUIC".into(),
    })?;
    quinn::Endpoint::new(quinn::EndpointConfig::default(), Some(server), socket, runtime)
        .map_err(ServerError::io("start quic endpoint", local.to_string()))
}

/// Accepts connections until `stop` turns true.
pub(crate) async fn serve(shared: Arc<Shared>, endpoint: quinn::Endpoint, stop: watch::Receiver<bool>) {
    let stopped = crate::state::stopped(stop.clone());
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => {
                    tokio::spawn(connection(shared.clone(), incoming, stop.clone()));
                }
                None => break,
            },
            _ = &mut stopped => break,
        }
    }
    endpoint.close(0u32.into(), b"shutting down");
}

async fn connection(shared: Arc<Shared>, incoming: quinn::Incoming, stop: watch::Receiver<bool>) {
    let admitted = shared.connections.admit(incoming.remote_address().ip());
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!("quic handshake failed: {e}");
            return;
        }
    };
    let _slot = match admitted {
        Ok(slot) => slot,
        Err(refusal) => {
            shared.rejected(&refusal);
            tracing::debug!(peer = %conn.remote_address(), "refusing a connection: {refusal}");
            conn.close(2u32.into(), refusal.to_string().as_bytes());
            return;
        }
    };
    let gauge = shared.metrics.open_connections.with_label_values(&["quic"]);
    gauge.inc();
    let stopped = crate::state::stopped(stop);
    tokio::pin!(stopped);
    let in_flight = Arc::new(AtomicUsize::new(0));
    let idle_limit = shared.config.idle_timeout;
    loop {
        let stream = tokio::select! {
            s = conn.accept_bi() => s,
            _ = &mut stopped => break,
            _ = tokio::time::sleep(idle_limit) => {
                if in_flight.load(Ordering::Acquire) == 0 {
                    conn.close(0u32.into(), b"idle");
                    break;
                }
                continue;
            }
        };
        match stream {
            Ok((send, recv)) => {
                let (shared, conn) = (shared.clone(), conn.clone());
                in_flight.fetch_add(1, Ordering::AcqRel);
                let in_flight = in_flight.clone();
                tokio::spawn(async move {
                    if let Err(e) = request(&shared, send, recv).await {
                        e.record(&shared, Transport::Quic, conn.remote_address());
                        if let ReadError::Protocol(_) = e {
                            conn.close(1u32.into(), b"malformed frame");
                        }
                    }
                    in_flight.fetch_sub(1, Ordering::AcqRel);
                });
            }
            Err(_) => break,
        }
    }
    gauge.dec();
}

struct StreamSink(quinn::SendStream);

impl FrameSink for StreamSink {
    async fn send(&mut self, mut segments: Vec<Bytes>, credit: Option<Credit>) -> std::io::Result<()> {
        let result = self
            .0
            .write_all_chunks(&mut segments)
            .await
            .map_err(std::io::Error::from);
        drop(credit);
        result
    }
}

async fn request(
    shared: &Arc<Shared>,
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> Result<(), ReadError> {
    let codec = FrameCodec::new(shared.config.max_frame_len);
    let mut sink = StreamSink(send);
    // A stream is one request: its frame must start within the idle time.
    let nothing_in_flight = AtomicUsize::new(0);
    let idle = Idle {
        limit: shared.config.idle_timeout,
        in_flight: &nothing_in_flight,
    };
    let read = read_frame(&mut recv, shared, &codec, Some(&idle)).await;
    let Received {
        frame,
        credit,
        admitted,
    } = match read {
        Ok(Some(read)) => read,
        Ok(None) => return Ok(()),
        Err(e) => {
            if let Some(frame) = e.frame() {
                let _ = sink.send(encode(&frame), None).await;
            }
            return Err(e);
        }
    };
    match frame {
        Frame::Hello(h) => {
            drop(credit);
            let reply = hello_reply(shared, &h).unwrap_or_else(|e| {
                error_frame(
                    0,
                    ServiceError::Malformed {
                        reason: e.to_string(),
                    },
                )
            });
            sink.send(encode(&reply), None).await?;
        }
        Frame::PushBlocks(push) => {
            let reply = handle_push(shared, push, credit, admitted, Transport::Quic).await;
            sink.send(encode(&reply), None).await?;
        }
        Frame::Fetch(req) => {
            drop(credit);
            serve_fetch(shared, req, Transport::Quic, &mut sink).await?;
        }
        other => {
            let err = protocol::ProtocolError::Malformed {
                what: "request",
                reason: format!("a client may not send {}", other.name()),
            };
            let frame = error_frame(
                0,
                ServiceError::Malformed {
                    reason: err.to_string(),
                },
            );
            let _ = sink.send(encode(&frame), None).await;
            return Err(err.into());
        }
    }
    let _ = sink.0.finish();
    Ok(())
}
