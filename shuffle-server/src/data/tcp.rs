//! The TCP data plane. One connection carries many requests, told apart by
//! request id: the reader takes frames off the socket (waiting for memory
//! credit before each body, see `framing.rs`), each request runs as its own
//! task, and one writer task puts replies on the socket in the order they
//! are ready.
//!
//! Connections are capped in all and per peer address
//! (`max_connections`, `max_connections_per_peer`): one over a cap gets a
//! `LimitExceeded` error frame and is closed. A connection with no request
//! in flight for `idle_timeout` is closed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use protocol::frame::{Frame, FrameCodec};
use protocol::ServiceError;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};

use super::{
    encode, error_frame, handle_push, hello_reply, read_frame, serve_fetch, write_segments, FrameSink, Idle,
    ReadError, Received, Transport,
};
use crate::budget::Credit;
use crate::state::{ConnSlot, Shared};

/// Replies queued per connection (each from a different request: a request
/// waits for its previous frame to be written before it sends the next).
const OUTBOX_DEPTH: usize = 16;
/// A client must say hello within this time.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Read buffer per connection: small (tokio zero-fills it, so every byte is
/// resident), so an idle connection costs little (about 10 KiB in all);
/// frame bodies larger than it are read straight into their own buffer.
const READ_BUFFER: usize = 2 << 10;
/// Longest time spent telling a refused connection why.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(2);

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
                Ok((stream, peer)) => match shared.connections.admit(peer.ip()) {
                    Ok(slot) => {
                        tokio::spawn(connection(shared.clone(), stream, peer, stop.clone(), slot));
                    }
                    Err(refusal) => {
                        shared.rejected(&refusal);
                        tracing::debug!(%peer, "refusing a connection: {refusal}");
                        tokio::spawn(refuse(stream, refusal));
                    }
                },
                Err(e) => {
                    tracing::warn!("tcp accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = &mut stopped => break,
        }
    }
}

/// Tells a connection over a cap why it is closed, then closes it.
async fn refuse(mut stream: TcpStream, refusal: ServiceError) {
    let mut segments = encode(&error_frame(0, refusal));
    let _ = tokio::time::timeout(REFUSAL_TIMEOUT, async {
        let _ = write_segments(&mut stream, &mut segments).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

async fn connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
    _slot: ConnSlot,
) {
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
    let mut reader = BufReader::with_capacity(READ_BUFFER, read_half);
    let codec = FrameCodec::new(shared.config.max_frame_len);
    let outbox = Outbox(tx);
    let result = tokio::select! {
        r = requests(&shared, &mut reader, &codec, &outbox) => r,
        _ = crate::state::stopped(stop) => Ok(()),
    };
    if let Err(e) = result {
        e.record(&shared, Transport::Tcp, peer);
        if let Some(frame) = e.frame() {
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
    let in_flight = Arc::new(AtomicUsize::new(0));
    let hello_wait = Idle {
        limit: HELLO_TIMEOUT,
        in_flight: &in_flight,
    };
    let hello = match read_frame(reader, shared, codec, Some(&hello_wait)).await {
        Err(ReadError::Idle(_)) => {
            return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no hello").into())
        }
        // The hello's credit is returned at once, not when the connection ends.
        other => other?.map(|received| received.frame),
    };
    match hello {
        Some(Frame::Hello(h)) => {
            let reply = hello_reply(shared, &h)?;
            outbox.clone().send(encode(&reply), None).await?;
        }
        Some(other) => {
            return Err(protocol::ProtocolError::Malformed {
                what: "connection",
                reason: format!("first frame must be hello, got {}", other.name()),
            }
            .into())
        }
        None => return Ok(()),
    }
    let idle = Idle {
        limit: shared.config.idle_timeout,
        in_flight: &in_flight,
    };
    while let Some(received) = read_frame(reader, shared, codec, Some(&idle)).await? {
        let Received {
            frame,
            credit,
            admitted,
        } = received;
        match frame {
            Frame::PushBlocks(push) => {
                let (shared, mut out) = (shared.clone(), outbox.clone());
                let request = Request::start(&in_flight);
                tokio::spawn(async move {
                    let reply = handle_push(&shared, push, credit, admitted, Transport::Tcp).await;
                    let _ = out.send(encode(&reply), None).await;
                    drop(request);
                });
            }
            Frame::Fetch(req) => {
                drop(credit);
                let (shared, mut out) = (shared.clone(), outbox.clone());
                let request = Request::start(&in_flight);
                tokio::spawn(async move {
                    let _ = serve_fetch(&shared, req, Transport::Tcp, &mut out).await;
                    drop(request);
                });
            }
            other => {
                return Err(protocol::ProtocolError::Malformed {
                    what: "request",
                    reason: format!("a client may not send {}", other.name()),
                }
                .into())
            }
        }
    }
    Ok(())
}

/// One request of a connection in flight (the connection is not idle).
struct Request(Arc<AtomicUsize>);

impl Request {
    fn start(in_flight: &Arc<AtomicUsize>) -> Self {
        in_flight.fetch_add(1, Ordering::AcqRel);
        Request(in_flight.clone())
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
