use std::io;
use std::path::PathBuf;

use protocol::{
    AppId, AttemptId, BlockId, MapId, PartitionId, ProtocolError, ShuffleId, ShuffleMode, ShuffleSpec,
};

/// Where a checksum mismatch was found.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ChecksumSite {
    /// In a block as it arrived, before it was written.
    Received,
    /// In a block read back from disk.
    Stored,
}

/// Every error of the shuffle server library. Fields are structured so the
/// caller (a network service, the embedded client) can map each variant to a
/// wire code or a client error without reading the message.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The shuffle was never registered, or has been unregistered.
    #[error("unknown shuffle {shuffle} of app {app}")]
    UnknownShuffle { app: AppId, shuffle: ShuffleId },
    /// The shuffle exists with another spec.
    #[error("shuffle {shuffle} of app {app} is already registered as {existing:?}")]
    ShuffleExists {
        app: AppId,
        shuffle: ShuffleId,
        existing: ShuffleSpec,
    },
    /// The mode is not served by this store yet.
    #[error("shuffle mode {mode} is not supported by this server yet")]
    UnsupportedMode { mode: ShuffleMode },
    /// A partition id is outside `0..num_partitions`.
    #[error("{partition} is out of range: the shuffle has {num_partitions} partitions")]
    PartitionOutOfRange {
        partition: PartitionId,
        num_partitions: u32,
    },
    /// A map id is outside `0..num_maps`.
    #[error("{map} is out of range: the shuffle has {num_maps} maps")]
    MapOutOfRange { map: MapId, num_maps: u32 },
    /// A pushed block names another shuffle than the request.
    #[error("block {block} was pushed to {shuffle}")]
    WrongShuffle { block: BlockId, shuffle: ShuffleId },
    /// Data failed its CRC32C.
    #[error(
        "checksum mismatch ({site:?}) in block {block}: expected {expected:#010x}, found {actual:#010x}"
    )]
    ChecksumMismatch {
        block: BlockId,
        expected: u32,
        actual: u32,
        site: ChecksumSite,
    },
    /// Another attempt of this map committed first; this attempt has lost.
    #[error("{map} was already committed by {committed}; {attempt} cannot commit")]
    CommitConflict {
        map: MapId,
        committed: AttemptId,
        attempt: AttemptId,
    },
    /// A push came from an attempt of a map that another attempt committed.
    #[error("{map} was committed by {committed}; blocks of {attempt} are refused")]
    AttemptSuperseded {
        map: MapId,
        committed: AttemptId,
        attempt: AttemptId,
    },
    /// The same attempt committed twice with different manifests.
    #[error("{map} {attempt} is already committed with another manifest")]
    ManifestMismatch { map: MapId, attempt: AttemptId },
    /// A commit names blocks the server never received.
    #[error("commit of {map} {attempt} names {expected} blocks for {partition}, but seq {missing_seq} never arrived")]
    MissingBlocks {
        map: MapId,
        attempt: AttemptId,
        partition: PartitionId,
        expected: u32,
        missing_seq: u32,
    },
    /// A blocking reader opened a partition before every map committed.
    #[error("shuffle {shuffle} of app {app} is not sealed: {committed} of {num_maps} maps committed")]
    NotSealed {
        app: AppId,
        shuffle: ShuffleId,
        committed: u32,
        num_maps: u32,
    },
    /// A streaming reader delivered blocks of `attempt` of `map`, and
    /// another attempt of the map committed: the reader cannot go on
    /// exactly once (its consumer must restart).
    #[error("{map}: the reader delivered blocks of {attempt}, and another attempt committed")]
    AttemptFailed { map: MapId, attempt: AttemptId },
    /// The memory-only blocks of `map` in `partition` (pipelined,
    /// hybrid-selective) were consumed by another reader: they are gone.
    #[error("in-memory blocks of {map} in {partition} were already consumed by another reader")]
    DataGone { partition: PartitionId, map: MapId },
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
    /// A configured limit would be exceeded (`limit` names the setting).
    #[error("limit {limit} is {max}; this request needs {requested}")]
    LimitExceeded {
        limit: &'static str,
        max: u64,
        requested: u64,
    },
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
