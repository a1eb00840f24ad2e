use std::io;
use std::path::PathBuf;

use protocol::{BlockId, ProtocolError, ServiceError, ShuffleId, ShuffleMode};

/// Every error of the shuffle server library. Fields are structured so the
/// caller (a network service, the embedded client) can map each variant to a
/// wire code or a client error without reading the message.
///
/// Errors that have a wire form of their own (an unknown shuffle, a commit
/// conflict, a checksum mismatch...) are a [`ServiceError`], wrapped: the
/// client gets exactly it. The other variants are the server's own (I/O,
/// configuration, corrupt files...), turned into a wire error by
/// [`ServerError::to_service_error`].
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// An error with a wire form of its own (see `protocol::ServiceError`
    /// for what each kind means, and whether it is retryable).
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// A pushed block names another shuffle than the request.
    #[error("block {block} was pushed to {shuffle}")]
    WrongShuffle { block: BlockId, shuffle: ShuffleId },
    /// A pipelined push found no free memory credit (only when pushed
    /// without credit, e.g. by [`crate::storage::Store::push`]).
    #[error("no memory credit for {bytes} bytes of pipelined blocks; retry later")]
    NoCredit { bytes: u64 },
    /// A fetch asked to resume a stream that cannot be resumed (streaming
    /// reads interleave maps in arrival order).
    #[error("a {mode} fetch cannot resume from block {resume_from}: restart the reader")]
    ResumeUnsupported { mode: ShuffleMode, resume_from: u64 },
    /// A block of a committed attempt beyond what its manifest declared:
    /// it could never be served, so it is not stored.
    #[error("{block} is beyond the {committed} block(s) its committed manifest declared for the partition")]
    BeyondManifest { block: BlockId, committed: u32 },
    /// No data directory takes a new partition now: each is full, under
    /// its free-space reserve, or not writable (`reason` names each).
    /// Retryable once space is freed.
    #[error("no data directory can take a new partition: {reason}")]
    NoRoom { reason: String },
    /// A stored file does not match its index (truncated, overwritten...).
    #[error("corrupt partition file {path}: {reason}")]
    CorruptFile { path: PathBuf, reason: String },
    /// A block could not be parsed.
    #[error("malformed block: {0}")]
    Protocol(#[from] ProtocolError),
    /// The configuration is unusable.
    #[error("invalid configuration: {field}: {reason}")]
    InvalidConfig { field: &'static str, reason: String },
    /// A file-system operation failed. The cause is part of the message
    /// (and deliberately not also a `source()`, which would print it twice
    /// in an error chain).
    #[error("{op} {path}: {error}")]
    Io {
        op: &'static str,
        path: PathBuf,
        error: io::Error,
    },
}

impl ServerError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> ServerError {
        let path = path.into();
        move |error| ServerError::Io { op, path, error }
    }
}
