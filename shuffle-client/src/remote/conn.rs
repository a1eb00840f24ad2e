//! Data-plane connections to one server. A request owns a stream for its
//! whole life: a pooled TCP connection (returned to the pool after a clean
//! reply) or a fresh QUIC bidirectional stream. So a slow reader never
//! holds up another request (no head-of-line blocking between fetches).
//!
//! Pooled TCP connections can die while idle (the server restarted, or
//! closed them after its idle timeout): the pool forgets connections idle
//! for longer than [`MAX_IDLE_AGE`], and a request whose pooled connection
//! turns out dead before any reply ([`DataClient::exchange`]) is sent again
//! at once on a fresh connection, costing no retry of the policy.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use protocol::frame::{Frame, FrameCodec, Hello, PROTOCOL_VERSION};
use protocol::ProtocolError;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use super::tls::{client_crypto, QuicTrust};
use super::url::{ServerUrl, Transport};
use crate::ClientError;

use protocol::net::ALPN;
/// Idle TCP connections kept per server.
const MAX_IDLE: usize = 16;
/// Longest time a TCP connection waits in the pool before it is dropped
/// instead of reused. Servers close connections idle for longer than their
/// idle timeout (120 s by default); staying well below it means a pooled
/// connection is almost never closed by the server under our feet, and the
/// rare one that is gets replaced (see [`DataClient::exchange`]).
pub(crate) const MAX_IDLE_AGE: Duration = Duration::from_secs(30);

/// Frames over a byte stream, with the shared codec.
#[derive(Debug)]
pub(crate) struct FrameConn<R, W> {
    reader: R,
    writer: W,
    buf: BytesMut,
    codec: FrameCodec,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> FrameConn<R, W> {
    fn new(reader: R, writer: W) -> Self {
        FrameConn {
            reader,
            writer,
            buf: BytesMut::with_capacity(64 << 10),
            codec: FrameCodec::default(),
        }
    }

    /// Writes a frame; block payloads go out without being copied.
    async fn send(&mut self, frame: &Frame) -> Result<(), StreamError> {
        let mut segments = self.codec.encode_segments(frame)?;
        protocol::net::write_segments(&mut self.writer, &mut segments).await?;
        Ok(())
    }

    /// The next frame; `None` when the peer closed between frames.
    async fn recv(&mut self) -> Result<Option<Frame>, StreamError> {
        loop {
            if let Some(frame) = self.codec.decode(&mut self.buf)? {
                return Ok(Some(frame));
            }
            if self.reader.read_buf(&mut self.buf).await? == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(ProtocolError::Truncated {
                    what: "frame",
                    needed: self.buf.len() as u64 + 1,
                    available: self.buf.len() as u64,
                }
                .into());
            }
        }
    }
}

/// Why a stream failed (turned into [`ClientError::Connection`]).
#[derive(Debug, thiserror::Error)]
pub(crate) enum StreamError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("peer sent bad data: {0}")]
    Protocol(#[from] ProtocolError),
    /// The QUIC transport failed (a stream could not be finished).
    #[error("{0}")]
    Quic(String),
    /// The server did not answer the hello with a hello of our version.
    #[error("{0}")]
    Handshake(String),
    #[error("timed out")]
    Timeout,
    #[error("connection closed before a reply")]
    Closed,
}

impl StreamError {
    /// True when the connection was already gone: closed or reset by the
    /// peer, or a broken pipe (not a timeout, not bad data).
    fn is_dead_connection(&self) -> bool {
        use std::io::ErrorKind;
        match self {
            StreamError::Closed => true,
            StreamError::Io(e) => matches!(
                e.kind(),
                ErrorKind::ConnectionReset
                    | ErrorKind::ConnectionAborted
                    | ErrorKind::BrokenPipe
                    | ErrorKind::UnexpectedEof
                    | ErrorKind::NotConnected
            ),
            _ => false,
        }
    }
}

type TcpConn = FrameConn<OwnedReadHalf, OwnedWriteHalf>;
type QuicConn = FrameConn<quinn::RecvStream, quinn::SendStream>;

/// One request's stream.
#[derive(Debug)]
pub(crate) enum Stream {
    Tcp(TcpConn),
    Quic(QuicConn),
}

impl Stream {
    pub async fn send(&mut self, frame: &Frame) -> Result<(), StreamError> {
        match self {
            Stream::Tcp(c) => c.send(frame).await,
            Stream::Quic(c) => {
                c.send(frame).await?;
                // One request per QUIC stream: close our side.
                c.writer.finish().map_err(|e| StreamError::Quic(e.to_string()))
            }
        }
    }

    pub async fn recv(&mut self, timeout: Duration) -> Result<Option<Frame>, StreamError> {
        let fut = async {
            match self {
                Stream::Tcp(c) => c.recv().await,
                Stream::Quic(c) => c.recv().await,
            }
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| StreamError::Timeout)?
    }
}

/// How to reach one server's data plane.
#[derive(Debug)]
pub(crate) struct DataClient {
    pub url: ServerUrl,
    connect_timeout: Duration,
    /// Connections of completed requests, oldest first.
    idle: Mutex<Vec<Idle>>,
    quic: Option<QuicClient>,
}

/// A pooled connection and when it was returned.
#[derive(Debug)]
struct Idle {
    conn: TcpConn,
    since: Instant,
}

#[derive(Debug)]
struct QuicClient {
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    conn: Mutex<Option<quinn::Connection>>,
}

impl DataClient {
    pub fn new(url: ServerUrl, connect_timeout: Duration, trust: &QuicTrust) -> Result<Self, ClientError> {
        let quic = match url.transport {
            Transport::Tcp => None,
            Transport::Quic => {
                let conn_err = |reason: String| ClientError::Connection {
                    server: url.to_string(),
                    reason,
                };
                let crypto = client_crypto(trust, ALPN).map_err(conn_err)?;
                let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(crypto)
                    .map_err(|e| conn_err(e.to_string()))?;
                let mut config = quinn::ClientConfig::new(Arc::new(crypto));
                let mut transport = quinn::TransportConfig::default();
                transport.keep_alive_interval(Some(Duration::from_secs(5)));
                config.transport_config(Arc::new(transport));
                let bind: SocketAddr = if url.host.contains(':') {
                    "[::]:0"
                        .parse()
                        .map_err(|_| conn_err("bad bind address".into()))?
                } else {
                    "0.0.0.0:0"
                        .parse()
                        .map_err(|_| conn_err("bad bind address".into()))?
                };
                let endpoint = quinn::Endpoint::client(bind).map_err(|e| conn_err(e.to_string()))?;
                Some(QuicClient {
                    endpoint,
                    config,
                    conn: Mutex::new(None),
                })
            }
        };
        Ok(DataClient {
            url,
            connect_timeout,
            idle: Mutex::new(Vec::new()),
            quic,
        })
    }

    pub fn error(&self, e: impl std::fmt::Display) -> ClientError {
        ClientError::Connection {
            server: self.url.to_string(),
            reason: e.to_string(),
        }
    }

    async fn resolve(&self) -> Result<SocketAddr, ClientError> {
        let authority = self.url.authority();
        let mut addrs = tokio::net::lookup_host(authority.as_str())
            .await
            .map_err(|e| self.error(e))?;
        addrs
            .next()
            .ok_or_else(|| self.error(format!("{authority} resolves to no address")))
    }

    /// Says hello on a new connection (TCP) or stream (QUIC); returns the
    /// server's hello: its protocol version (checked), gRPC port and
    /// largest frame.
    pub async fn hello(&self) -> Result<Hello, ClientError> {
        match self.url.transport {
            Transport::Tcp => {
                let (conn, hello) = self.connect_tcp().await?;
                self.give_back(Stream::Tcp(conn));
                Ok(hello)
            }
            Transport::Quic => {
                let mut stream = self.open().await?;
                stream.send(&hello_frame()).await.map_err(|e| self.error(e))?;
                let reply = stream.recv(self.connect_timeout).await;
                reply.and_then(check_hello).map_err(|e| self.error(e))
            }
        }
    }

    async fn connect_tcp(&self) -> Result<(TcpConn, Hello), ClientError> {
        let addr = self.resolve().await?;
        let setup = async {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let (r, w) = stream.into_split();
            let mut conn = FrameConn::new(r, w);
            conn.send(&hello_frame()).await?;
            let hello = check_hello(conn.recv().await?)?;
            Ok::<_, StreamError>((conn, hello))
        };
        tokio::time::timeout(self.connect_timeout, setup)
            .await
            .map_err(|_| self.error("connect timed out"))?
            .map_err(|e| self.error(e))
    }

    /// A stream for one request: a pooled TCP connection when there is one
    /// (then `true`), else a new one.
    async fn open_tracked(&self) -> Result<(Stream, bool), ClientError> {
        match &self.quic {
            None => match self.take_pooled(Instant::now()) {
                Some(conn) => Ok((Stream::Tcp(conn), true)),
                None => Ok((Stream::Tcp(self.connect_tcp().await?.0), false)),
            },
            Some(q) => {
                let conn = self.quic_connection(q).await?;
                match conn.open_bi().await {
                    Ok((send, recv)) => Ok((Stream::Quic(FrameConn::new(recv, send)), false)),
                    Err(e) => {
                        // Forget a dead connection; the next request reconnects.
                        q.conn.lock().unwrap_or_else(PoisonError::into_inner).take();
                        Err(self.error(e))
                    }
                }
            }
        }
    }

    /// A stream for one request.
    pub async fn open(&self) -> Result<Stream, ClientError> {
        Ok(self.open_tracked().await?.0)
    }

    /// The newest pooled connection idle for at most [`MAX_IDLE_AGE`] at
    /// `now`; older ones are dropped.
    fn take_pooled(&self, now: Instant) -> Option<TcpConn> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        idle.retain(|i| now.saturating_duration_since(i.since) <= MAX_IDLE_AGE);
        idle.pop().map(|i| i.conn)
    }

    /// Sends `request` on a stream of its own and waits up to `timeout` for
    /// the first reply frame. When the stream was a pooled connection that
    /// turns out dead (closed or reset before any reply), the request is
    /// sent once more at once on a fresh connection: the server never saw
    /// it on the dead one, so this is not a retry. Any stream failure
    /// empties the pool (its other connections are likely dead too).
    pub async fn exchange(&self, request: &Frame, timeout: Duration) -> Result<(Stream, Frame), ClientError> {
        let (mut stream, pooled) = self.open_tracked().await?;
        match send_and_recv(&mut stream, request, timeout).await {
            Ok(reply) => return Ok((stream, reply)),
            Err(e) if pooled && e.is_dead_connection() => {
                tracing::debug!(server = %self.url, "pooled connection was dead ({e}); using a fresh one");
                self.reset();
            }
            Err(e) => {
                self.reset();
                return Err(self.error(e));
            }
        }
        let mut stream = Stream::Tcp(self.connect_tcp().await?.0);
        match send_and_recv(&mut stream, request, timeout).await {
            Ok(reply) => Ok((stream, reply)),
            Err(e) => {
                self.reset();
                Err(self.error(e))
            }
        }
    }

    async fn quic_connection(&self, q: &QuicClient) -> Result<quinn::Connection, ClientError> {
        let current = q.conn.lock().unwrap_or_else(PoisonError::into_inner).clone();
        if let Some(conn) = current {
            if conn.close_reason().is_none() {
                return Ok(conn);
            }
        }
        let addr = self.resolve().await?;
        let connecting = q
            .endpoint
            .connect_with(q.config.clone(), addr, &self.url.host)
            .map_err(|e| self.error(e))?;
        let conn = tokio::time::timeout(self.connect_timeout, connecting)
            .await
            .map_err(|_| self.error("QUIC connect timed out"))?
            .map_err(|e| self.error(e))?;
        *q.conn.lock().unwrap_or_else(PoisonError::into_inner) = Some(conn.clone());
        Ok(conn)
    }

    /// Forgets pooled connections after a failure: they may all be dead
    /// (the server restarted), and a retry should not pick them up.
    pub fn reset(&self) {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }

    /// Returns a stream whose request completed cleanly.
    pub fn give_back(&self, stream: Stream) {
        if let Stream::Tcp(conn) = stream {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            if idle.len() < MAX_IDLE && conn.buf.is_empty() {
                idle.push(Idle {
                    conn,
                    since: Instant::now(),
                });
            }
        }
    }
}

/// Sends `request` and receives the first reply; a close before it is an
/// error ([`StreamError::Closed`]).
async fn send_and_recv(
    stream: &mut Stream,
    request: &Frame,
    timeout: Duration,
) -> Result<Frame, StreamError> {
    stream.send(request).await?;
    stream.recv(timeout).await?.ok_or(StreamError::Closed)
}

/// The server's reply to our hello, which must be a hello of our protocol
/// version.
fn check_hello(reply: Option<Frame>) -> Result<Hello, StreamError> {
    match reply {
        Some(Frame::Hello(h)) if h.protocol_version == PROTOCOL_VERSION => Ok(h),
        Some(Frame::Hello(h)) => Err(StreamError::Handshake(format!(
            "server speaks protocol version {}, not {PROTOCOL_VERSION}",
            h.protocol_version
        ))),
        Some(Frame::Error(e)) => Err(StreamError::Handshake(e.error.to_string())),
        Some(other) => Err(StreamError::Handshake(format!(
            "expected hello, got {}",
            other.name()
        ))),
        None => Err(StreamError::Closed),
    }
}

fn hello_frame() -> Frame {
    Frame::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        grpc_port: 0,
        // Replies are read with the protocol's default limit.
        max_frame_len: protocol::frame::DEFAULT_MAX_FRAME_LEN,
    })
}

#[cfg(test)]
mod tests {
    use shuffle_server::config::ServerConfig;
    use shuffle_server::LocalServer;

    use super::*;

    #[tokio::test]
    async fn the_pool_drops_connections_idle_for_longer_than_the_max_age() {
        let tmp = tempfile::tempdir().expect("tmp");
        let mut config = ServerConfig::new(vec![tmp.path().to_path_buf()]);
        config.fsync_on_seal = false;
        let server = LocalServer::start(config).await.expect("server");
        let url: ServerUrl = server.tcp_url().parse().expect("url");
        let data = DataClient::new(url, Duration::from_secs(5), &QuicTrust::None).expect("client");
        let returned = Instant::now();
        // The hello's connection goes back to the pool.
        data.hello().await.expect("hello");
        let young = returned + MAX_IDLE_AGE / 2;
        let conn = data.take_pooled(young).expect("a young connection is reused");
        data.give_back(Stream::Tcp(conn));
        let old = Instant::now() + MAX_IDLE_AGE + Duration::from_secs(1);
        assert!(data.take_pooled(old).is_none(), "an old connection is dropped");
        assert!(
            data.idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_empty(),
            "and forgotten"
        );
    }
}
