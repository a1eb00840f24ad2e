//! The TCP data plane. One connection carries many requests, told apart by
//! request id: the reader takes frames off the socket (waiting for memory
//! credit before each body), each request runs as its own task, and one
//! writer task puts replies on the socket in the order they are ready.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use protocol::frame::{Frame, FrameCodec, Hello, PROTOCOL_VERSION};
use protocol::ServiceError;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};

use super::{
    encode, error_frame, handle_push, read_frame, serve_fetch, write_segments, FrameSink, ReadError,
    Transport,
};
use crate::budget::Credit;
use crate::state::Shared;

/// Replies queued per connection (each from a different request: a request
/// waits for its previous frame to be written before it sends the next).
const OUTBOX_DEPTH: usize = 16;
/// A client must say hello within this time.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

struct Outgoing {
    segments: Vec<Bytes>,
    _credit: Option<Credit>,
    /// Told once the bytes are on the socket.
    written: oneshot::Sender<()>,
}

#[derive(Clone)]
struct Outbox(mpsc::Sender<Outgoing>);

impl FrameSink for Outbox {
    /// Returns once the writer task has put the bytes on the socket, so a
    /// fetch stream has at most one chunk queued: a reader that stops
    /// reading pins one chunk of credit, and its fetch task waits here, not
    /// in the budget's queue where it would hold up everyone else.
    async fn send(&mut self, segments: Vec<Bytes>, credit: Option<Credit>) -> std::io::Result<()> {
        let closed = || std::io::Error::new(std::io::ErrorKind::BrokenPipe, "connection closed");
        let (written, done) = oneshot::channel();
        self.0
            .send(Outgoing {
                segments,
                _credit: credit,
                written,
            })
            .await
            .map_err(|_| closed())?;
        done.await.map_err(|_| closed())
    }
}

/// Accepts connections until `stop` turns true.
pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener, stop: watch::Receiver<bool>) {
    let stopped = crate::state::stopped(stop.clone());
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    tokio::spawn(connection(shared.clone(), stream, peer, stop.clone()));
                }
                Err(e) => {
                    tracing::warn!("tcp accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = &mut stopped => break,
        }
    }
}

async fn connection(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr, stop: watch::Receiver<bool>) {
    let gauge = shared.metrics.open_connections.with_label_values(&["tcp"]);
    gauge.inc();
    let _ = stream.set_nodelay(true);
    let (read_half, mut write_half) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Outgoing>(OUTBOX_DEPTH);
    let writer = tokio::spawn(async move {
        while let Some(mut out) = rx.recv().await {
            if let Err(e) = write_segments(&mut write_half, &mut out.segments).await {
                tracing::debug!(%peer, "tcp write failed: {e}");
                break;
            }
            let _ = out.written.send(());
        }
        let _ = write_half.shutdown().await;
    });
    let mut reader = BufReader::with_capacity(64 << 10, read_half);
    let codec = FrameCodec::new(shared.config.max_frame_len);
    let outbox = Outbox(tx);
    let result = tokio::select! {
        r = requests(&shared, &mut reader, &codec, &outbox) => r,
        _ = crate::state::stopped(stop) => Ok(()),
    };
    if let Err(e) = result {
        e.record(&shared, Transport::Tcp, peer);
        if let ReadError::Protocol(p) = &e {
            let frame = error_frame(
                0,
                ServiceError::Malformed {
                    reason: p.to_string(),
                },
            );
            let mut out = outbox.clone();
            let _ = out.send(encode(&frame), None).await;
        }
    }
    drop(outbox);
    // The writer drains what request tasks still send, then closes.
    let _ = writer.await;
    gauge.dec();
}

async fn requests(
    shared: &Arc<Shared>,
    reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    codec: &FrameCodec,
    outbox: &Outbox,
) -> Result<(), ReadError> {
    let hello = tokio::time::timeout(HELLO_TIMEOUT, read_frame(reader, shared, codec))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no hello"))??
        // The hello's credit is returned at once, not when the connection ends.
        .map(|(frame, _credit)| frame);
    match hello {
        Some(Frame::Hello(h)) if h.protocol_version == PROTOCOL_VERSION => {
            let reply = Frame::Hello(Hello {
                protocol_version: PROTOCOL_VERSION,
                grpc_port: shared.grpc_port,
                max_frame_len: shared.config.max_frame_len,
            });
            outbox.clone().send(encode(&reply), None).await?;
        }
        Some(Frame::Hello(h)) => {
            return Err(protocol::ProtocolError::Malformed {
                what: "hello",
                reason: format!(
                    "protocol version {} is not {PROTOCOL_VERSION}",
                    h.protocol_version
                ),
            }
            .into())
        }
        Some(other) => {
            return Err(protocol::ProtocolError::Malformed {
                what: "connection",
                reason: format!("first frame must be hello, got {}", frame_name(&other)),
            }
            .into())
        }
        None => return Ok(()),
    }
    while let Some((frame, credit)) = read_frame(reader, shared, codec).await? {
        match frame {
            Frame::PushBlocks(push) => {
                let (shared, mut out) = (shared.clone(), outbox.clone());
                tokio::spawn(async move {
                    let reply = handle_push(&shared, push, credit, Transport::Tcp).await;
                    let _ = out.send(encode(&reply), None).await;
                });
            }
            Frame::Fetch(req) => {
                drop(credit);
                let (shared, mut out) = (shared.clone(), outbox.clone());
                tokio::spawn(async move {
                    let _ = serve_fetch(&shared, req, Transport::Tcp, &mut out).await;
                });
            }
            other => {
                return Err(protocol::ProtocolError::Malformed {
                    what: "request",
                    reason: format!("a client may not send {}", frame_name(&other)),
                }
                .into())
            }
        }
    }
    Ok(())
}

pub(crate) fn frame_name(frame: &Frame) -> &'static str {
    match frame {
        Frame::Hello(_) => "hello",
        Frame::PushBlocks(_) => "push",
        Frame::PushAck(_) => "push ack",
        Frame::Fetch(_) => "fetch",
        Frame::FetchBlocks(_) => "fetch blocks",
        Frame::FetchEnd(_) => "fetch end",
        Frame::Error(_) => "error",
    }
}
