//! Taking frames off a byte stream, the same for every transport: memory
//! credit before a body is buffered, and time limits so that no sender,
//! however slow or hostile, holds memory or a connection for long.
//!
//! Rules, each kept by the code below:
//!
//! * **Credit before body.** A push frame's body is buffered only once the
//!   memory budget granted credit for its whole length (see `budget.rs`).
//!   Waiting for it is backpressure: unbounded, counted in
//!   `rss_backpressure_seconds_total` while it lasts. Hello and fetch frames
//!   (at most 4 KiB, no block data) take no credit: a reader must be able to
//!   attach while the budget is full of pipelined blocks only it would
//!   consume.
//! * **A stalled sender holds only what it sent.** When a body brings less
//!   than [`STALL_MIN_BYTES`] in a `frame_stall` window, the credit of what
//!   it has not sent yet goes back to the budget at once (the frame is
//!   *parked*). When its bytes come again, the rest of the credit is taken
//!   only if it is free right now; otherwise the connection is refused with
//!   `Busy`. So no frame ever waits for credit while holding some, and
//!   frames cannot deadlock each other on the budget.
//! * **Bodies arrive in bounded time.** A frame's header must follow its
//!   first byte, and its body its credit, within `frame_timeout`; otherwise
//!   the connection is closed with `Busy` and its credit returned.
//! * **Idle connections close.** A connection with no request in flight and
//!   no byte of a new frame for `idle_timeout` is closed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use protocol::frame::{Frame, FrameCodec};
use protocol::{ProtocolError, ServiceError};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::{error_frame, Transport};
use crate::budget::Credit;
use crate::state::{InFlightGuard, Shared};

/// Bytes a push body must bring per `frame_stall` window to keep its credit.
pub(crate) const STALL_MIN_BYTES: usize = 64 << 10;
/// Most bytes read from a parked frame before its credit is taken back.
const PARKED_READ: usize = 64 << 10;

/// Why a stream of frames cannot go on.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Protocol(#[from] ProtocolError),
    /// The peer is too slow, or stalled with credit it could not get back:
    /// refused with `Busy`, the connection closed.
    #[error("{0}")]
    Slow(String),
    /// No request for `idle_timeout`: closed quietly.
    #[error("idle for {0:?}")]
    Idle(Duration),
}

/// When a connection counts as idle: no request of it in flight.
#[derive(Debug)]
pub(crate) struct Idle<'a> {
    pub limit: Duration,
    pub in_flight: &'a AtomicUsize,
}

/// The limits one frame is read under.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub frame_timeout: Duration,
    pub frame_stall: Duration,
}

impl Limits {
    pub(crate) fn of(shared: &Shared) -> Self {
        Limits {
            frame_timeout: shared.config.frame_timeout,
            frame_stall: shared.config.frame_stall,
        }
    }
}

/// One frame taken off a stream.
#[derive(Debug)]
pub(crate) struct Received {
    pub frame: Frame,
    /// The memory credit paying for the frame's data: keep it as long as
    /// the data lives.
    pub credit: Option<Credit>,
    /// A push whose header arrived before any drain began: it counts as in
    /// flight (the drain waits for it) and is served. `None` for a push
    /// that arrived while draining, which is refused.
    pub admitted: Option<InFlightGuard>,
}

/// Reads one frame. `Ok(None)` at a clean end of stream (between frames).
/// `idle`, when given, closes a connection that stays without a request.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    shared: &Shared,
    codec: &FrameCodec,
    idle: Option<&Idle<'_>>,
) -> Result<Option<Received>, ReadError> {
    let limits = Limits::of(shared);
    let Some(first) = first_byte(reader, idle).await? else {
        return Ok(None);
    };
    let header_deadline = Instant::now() + limits.frame_timeout;
    let mut header = [first, 0, 0, 0, 0];
    let mut got = 1;
    while got < header.len() {
        let n = within(header_deadline, reader.read(&mut header[got..]), || {
            format!("frame header not received within {:?}", limits.frame_timeout)
        })
        .await??;
        if n == 0 {
            return Err(ProtocolError::Truncated {
                what: "frame header",
                needed: header.len() as u64,
                available: got as u64,
            }
            .into());
        }
        got += n;
    }
    let len = codec.check_prefix([header[0], header[1], header[2], header[3]])?;
    let tag = header[4];
    // Decided at the header: a push already arriving when the drain starts
    // is let finish (even if its credit or body is slow to come).
    let admitted = (!shared.is_draining()).then(|| shared.pushes.enter());
    let (body, credit) = if protocol::frame::is_control_frame(tag, len) {
        let mut body = BytesMut::with_capacity(len as usize);
        body.put_u8(tag);
        read_control_body(reader, &mut body, len, limits).await?;
        (body, None)
    } else {
        let credit = shared.budget.acquire(len).await;
        let (body, credit) = read_push_body(reader, shared, tag, len, credit, limits).await?;
        (body, Some(credit))
    };
    let frame = codec.decode_payload(body.freeze())?;
    let admitted = admitted.filter(|_| matches!(frame, Frame::PushBlocks(_)));
    Ok(Some(Received {
        frame,
        credit,
        admitted,
    }))
}

/// The first byte of the next frame; `None` at a clean end of stream.
/// Cancel-safe waits (a `read` that times out took nothing), re-armed while
/// requests of the connection are in flight.
async fn first_byte<R: AsyncRead + Unpin>(
    reader: &mut R,
    idle: Option<&Idle<'_>>,
) -> Result<Option<u8>, ReadError> {
    let mut byte = [0u8; 1];
    loop {
        let n = match idle {
            None => reader.read(&mut byte).await?,
            Some(idle) => match tokio::time::timeout(idle.limit, reader.read(&mut byte)).await {
                Ok(n) => n?,
                Err(_) if idle.in_flight.load(Ordering::Acquire) > 0 => continue,
                Err(_) => return Err(ReadError::Idle(idle.limit)),
            },
        };
        return Ok((n == 1).then_some(byte[0]));
    }
}

async fn read_control_body<R: AsyncRead + Unpin>(
    reader: &mut R,
    body: &mut BytesMut,
    len: u32,
    limits: Limits,
) -> Result<(), ReadError> {
    let deadline = Instant::now() + limits.frame_timeout;
    while body.len() < len as usize {
        let want = (len as usize - body.len()) as u64;
        let n = within(deadline, (&mut *reader).take(want).read_buf(body), || {
            format!("frame not received within {:?}", limits.frame_timeout)
        })
        .await??;
        if n == 0 {
            return Err(truncated(len, body.len()));
        }
    }
    Ok(())
}

/// Reads a credited body (see the module docs for the stall and time
/// rules). Returns the body and the credit now held, which covers it all.
async fn read_push_body<R: AsyncRead + Unpin>(
    reader: &mut R,
    shared: &Shared,
    tag: u8,
    len: u32,
    credit: Credit,
    limits: Limits,
) -> Result<(BytesMut, Credit), ReadError> {
    let len_usize = len as usize;
    let deadline = Instant::now() + limits.frame_timeout;
    let late = || {
        format!(
            "frame body of {len} bytes not received within {:?} of its credit",
            limits.frame_timeout
        )
    };
    // Pages of the allocation become resident only as bytes land in them.
    let mut body = BytesMut::with_capacity(len_usize);
    body.put_u8(tag);
    let mut credit = credit;
    let mut parked = false;
    let mut window_end = Instant::now() + limits.frame_stall;
    let mut window_start_len = body.len();
    while body.len() < len_usize {
        let want = len_usize - body.len();
        if parked {
            // Only a little is read before the credit is back.
            let n = within(
                deadline,
                (&mut *reader)
                    .take(want.min(PARKED_READ) as u64)
                    .read_buf(&mut body),
                late,
            )
            .await??;
            if n == 0 {
                return Err(truncated(len, body.len()));
            }
            let missing = len.saturating_sub(credit.bytes());
            let Some(rest) = shared.budget.try_acquire(missing) else {
                return Err(ReadError::Slow(format!(
                    "a stalled {len}-byte frame resumed, but the {missing} bytes of memory credit it gave back are no longer free"
                )));
            };
            credit.merge(rest);
            parked = false;
            window_end = Instant::now() + limits.frame_stall;
            window_start_len = body.len();
            continue;
        }
        let until = window_end.min(deadline);
        let read =
            tokio::time::timeout_at(until.into(), (&mut *reader).take(want as u64).read_buf(&mut body)).await;
        match read {
            Ok(n) => {
                if n? == 0 {
                    return Err(truncated(len, body.len()));
                }
            }
            Err(_) if Instant::now() >= deadline => return Err(ReadError::Slow(late())),
            Err(_) => {}
        }
        if Instant::now() >= window_end && body.len() < len_usize {
            if body.len() - window_start_len < STALL_MIN_BYTES {
                // Stalled: keep credit only for what arrived.
                let unsent = u32::try_from(len_usize - body.len()).unwrap_or(u32::MAX);
                drop(credit.split_off(unsent));
                parked = true;
                tracing::debug!(
                    len,
                    received = body.len(),
                    "push frame stalled: its unsent credit returned"
                );
            }
            window_end = Instant::now() + limits.frame_stall;
            window_start_len = body.len();
        }
    }
    Ok((body, credit))
}

/// Runs `fut` until `deadline`; past it, a `Slow` error saying `what`.
async fn within<T>(
    deadline: Instant,
    fut: impl std::future::Future<Output = T>,
    what: impl FnOnce() -> String,
) -> Result<T, ReadError> {
    tokio::time::timeout_at(deadline.into(), fut)
        .await
        .map_err(|_| ReadError::Slow(what()))
}

fn truncated(len: u32, got: usize) -> ReadError {
    ProtocolError::Truncated {
        what: "frame",
        needed: u64::from(len),
        available: got as u64,
    }
    .into()
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
