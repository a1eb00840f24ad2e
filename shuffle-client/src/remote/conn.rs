//! Data-plane connections to one server. A request owns a stream for its
//! whole life: a pooled TCP connection (returned to the pool after a clean
//! reply) or a fresh QUIC bidirectional stream. So a slow reader never
//! holds up another request (no head-of-line blocking between fetches).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::BytesMut;
use protocol::frame::{Frame, FrameCodec, Hello, PROTOCOL_VERSION};
use protocol::ProtocolError;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use super::tls::{client_crypto, QuicTrust};
use super::url::{ServerUrl, Transport};
use crate::ClientError;

/// ALPN id of the QUIC data plane (matches the server's).
const ALPN: &[u8] = b"rss/1";
/// Idle TCP connections kept per server.
const MAX_IDLE: usize = 16;

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
        shuffle_server::data::write_segments(&mut self.writer, &mut segments).await?;
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
    #[error("{0}")]
    Quic(String),
    #[error("timed out")]
    Timeout,
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
    idle: Mutex<Vec<TcpConn>>,
    quic: Option<QuicClient>,
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

    /// Says hello on a new stream; returns the server's gRPC port.
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
                match stream
                    .recv(self.connect_timeout)
                    .await
                    .map_err(|e| self.error(e))?
                {
                    Some(Frame::Hello(h)) if h.protocol_version == PROTOCOL_VERSION => Ok(h),
                    Some(Frame::Hello(h)) => Err(self.error(format!(
                        "server speaks protocol version {}, not {PROTOCOL_VERSION}",
                        h.protocol_version
                    ))),
                    other => Err(self.error(format!("expected hello, got {other:?}"))),
                }
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
            match conn.recv().await? {
                Some(Frame::Hello(h)) if h.protocol_version == PROTOCOL_VERSION => Ok((conn, h)),
                Some(Frame::Error(e)) => Err(StreamError::Quic(e.error.to_string())),
                other => Err(StreamError::Quic(format!("expected hello, got {other:?}"))),
            }
        };
        tokio::time::timeout(self.connect_timeout, setup)
            .await
            .map_err(|_| self.error("connect timed out"))?
            .map_err(|e| self.error(e))
    }

    /// A stream for one request.
    pub async fn open(&self) -> Result<Stream, ClientError> {
        match &self.quic {
            None => {
                let pooled = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
                match pooled {
                    Some(conn) => Ok(Stream::Tcp(conn)),
                    None => Ok(Stream::Tcp(self.connect_tcp().await?.0)),
                }
            }
            Some(q) => {
                let conn = self.quic_connection(q).await?;
                match conn.open_bi().await {
                    Ok((send, recv)) => Ok(Stream::Quic(FrameConn::new(recv, send))),
                    Err(e) => {
                        // Forget a dead connection; the next request reconnects.
                        q.conn.lock().unwrap_or_else(PoisonError::into_inner).take();
                        Err(self.error(e))
                    }
                }
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
                idle.push(conn);
            }
        }
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
