use std::path::PathBuf;

use protocol::{
    AppId, AttemptId, BlockId, ChecksumSite, MapId, PartitionId, ProtocolError, ServiceError, ShuffleId,
    ShuffleMode, ShuffleSpec,
};
#[cfg(feature = "embedded")]
use shuffle_server::ServerError;

/// Every error a [`crate::ShuffleClient`] returns.
///
/// Each variant says whether retrying the same call can succeed
/// ([`ClientError::is_retryable`]) and whether data written so far is lost
/// ([`ClientError::loses_data`]), so an engine decides by matching.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// An argument is invalid (a spec, a manifest, a record too large, a
    /// request the server could not parse...). Not retryable. No data lost.
    #[error("invalid argument: {0}")]
    InvalidArgument(#[source] ProtocolError),
    /// A partition id is outside the shuffle. Not retryable. No data lost.
    #[error("{partition} is out of range: the shuffle has {num_partitions} partitions")]
    PartitionOutOfRange {
        partition: PartitionId,
        num_partitions: u32,
    },
    /// A map id is outside the shuffle. Not retryable. No data lost.
    #[error("{map} is out of range: the shuffle has {num_maps} maps")]
    MapOutOfRange { map: MapId, num_maps: u32 },
    /// The app is unknown to a server: it expired (no heartbeat) and its
    /// data was deleted. Not retryable. Its data is lost.
    #[error("app {app} is unknown to the server (expired?)")]
    UnknownApp { app: AppId },
    /// The shuffle is not registered (or was unregistered). Not retryable.
    /// Its data, if it had any, is gone.
    #[error("unknown shuffle {shuffle} of app {app}")]
    UnknownShuffle { app: AppId, shuffle: ShuffleId },
    /// The shuffle id is taken by a shuffle of another shape. Not
    /// retryable. No data lost.
    #[error("shuffle {shuffle} of app {app} already exists as {existing:?}")]
    ShuffleExists {
        app: AppId,
        shuffle: ShuffleId,
        existing: ShuffleSpec,
    },
    /// An internal invariant of the service broke: it was asked to stream
    /// a shuffle it keeps no stream state for (every mode is served). Not
    /// retryable. No data lost.
    #[error("shuffle mode {mode} cannot be served this way (an internal invariant)")]
    UnsupportedMode { mode: ShuffleMode },
    /// A blocking read before every map committed. Retryable once the
    /// remaining maps commit. No data lost.
    #[error("shuffle {shuffle} is not sealed yet: {committed} of {num_maps} maps committed")]
    NotReady {
        shuffle: ShuffleId,
        committed: u32,
        num_maps: u32,
    },
    /// Another attempt of the map committed first. Not retryable: this
    /// attempt lost, its blocks are discarded by design (the winner's are
    /// served). No committed data lost.
    #[error("{map} was already committed by {committed}; {attempt} lost")]
    CommitConflict {
        map: MapId,
        committed: AttemptId,
        attempt: AttemptId,
    },
    /// Same as [`ClientError::CommitConflict`], found while pushing.
    #[error("{map} was committed by {committed}; {attempt} is superseded")]
    AttemptSuperseded {
        map: MapId,
        committed: AttemptId,
        attempt: AttemptId,
    },
    /// A commit named blocks the service never received. Not retryable as
    /// is: this attempt's output is incomplete, run the map again (a new
    /// attempt). Data of this attempt is lost; nothing committed is.
    #[error("{map} {attempt}: block {missing_seq} of {expected} for {partition} never arrived")]
    MissingBlocks {
        map: MapId,
        attempt: AttemptId,
        partition: PartitionId,
        expected: u32,
        missing_seq: u32,
    },
    /// The same attempt committed twice with different block counts. Not
    /// retryable (a bug in the caller). No data lost.
    #[error("{map} {attempt} was committed before with other block counts")]
    ManifestMismatch { map: MapId, attempt: AttemptId },
    /// A block failed its CRC32C, when it was received or read back. Not
    /// retryable against the same copy: the block's data is lost; re-run the
    /// map that wrote it.
    #[error(
        "checksum mismatch in block {block} ({site:?}): expected {expected:#010x}, found {actual:#010x}"
    )]
    ChecksumMismatch {
        block: BlockId,
        expected: u32,
        actual: u32,
        site: ChecksumSite,
    },
    /// A streaming reader (pipelined, hybrid) already delivered blocks of
    /// `attempt` of `map`, and another attempt of the map committed: the
    /// records it returned for that map are from a losing attempt. Not
    /// retryable by the reader: the caller restarts the consumer (a new
    /// reader then gets the committed attempt, where it is still
    /// available). No committed data lost.
    #[error("{map}: the reader delivered blocks of {attempt}, which lost the commit; restart the consumer")]
    AttemptFailed { map: MapId, attempt: AttemptId },
    /// Memory-only blocks of `map` in `partition` (pipelined,
    /// hybrid-selective) were already consumed by another reader and are
    /// gone. Not retryable: the producing region must run again.
    #[error("in-memory blocks of {map} in {partition} were already consumed by another reader")]
    DataGone { partition: PartitionId, map: MapId },
    /// The data directory holding `partition` on `server` failed and was
    /// taken out of service. Not retryable; the partition's data there is
    /// lost (the producers run again, or a replica serves it).
    #[error("{server}: {partition} was on data directory {dir}, which failed: its data is lost")]
    DiskFailed {
        server: String,
        partition: PartitionId,
        dir: String,
    },
    /// Stored data does not match its index (truncated or overwritten file,
    /// undecodable block). Not retryable; the partition's data is lost.
    #[error("corrupt data ({location}): {reason}")]
    Corrupt { location: String, reason: String },
    /// A file-system failure in process. Retryable: the operation is
    /// idempotent. No committed data lost.
    /// (The cause is part of the message, not also a `source()`, which
    /// would print it twice in an error chain.)
    #[error("{op} {}: {error}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    /// A server could not be reached, or the connection broke (refused,
    /// reset, timed out, TLS failure, a peer that spoke garbage). Retryable:
    /// pushes and commits are idempotent and fetches resume. No committed
    /// data lost.
    #[error("connection to {server}: {reason}")]
    Connection { server: String, reason: String },
    /// `server` stayed unreachable for the whole retry window (see the
    /// `retry` module for the bounds) during a call about `shuffle`, or
    /// did not answer when this client connected: it is taken as lost,
    /// with every partition of the shuffle it held. Not retryable; the
    /// shuffle's data there is lost (the producers run again on a fresh
    /// shuffle placed over the live servers).
    #[error("{server} is lost ({reason}): {shuffle}'s partitions there are gone")]
    ServerLost {
        server: String,
        shuffle: ShuffleId,
        reason: String,
    },
    /// A server limit (apps, shuffles, maps x partitions, connections)
    /// would be exceeded; `limit` names the setting. Not retryable as is
    /// (unregister something, or raise the limit). No data lost.
    #[error("{server}: limit {limit} is {max}; the request needs {requested}")]
    LimitExceeded {
        server: String,
        limit: String,
        max: u64,
        requested: u64,
    },
    /// A server is out of memory credit. Retryable later. No data lost.
    #[error("{server} is busy: {reason}")]
    Busy { server: String, reason: String },
    /// A server is shutting down and takes no new work. Retryable (later,
    /// or once it is back). No committed data lost.
    #[error("{server} is draining")]
    Draining { server: String },
    /// A server failed internally (a disk error...). Retryable. No
    /// committed data lost.
    #[error("{server} failed: {reason}")]
    Internal { server: String, reason: String },
}

impl ClientError {
    /// True when repeating the same call may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ClientError::NotReady { .. }
                | ClientError::Io { .. }
                | ClientError::Connection { .. }
                | ClientError::Busy { .. }
                | ClientError::Draining { .. }
                | ClientError::Internal { .. }
        )
    }

    /// True when data already written cannot be read back as it was, and
    /// the producing map must run again.
    pub fn loses_data(&self) -> bool {
        matches!(
            self,
            ClientError::ChecksumMismatch { .. }
                | ClientError::Corrupt { .. }
                | ClientError::MissingBlocks { .. }
                | ClientError::UnknownApp { .. }
                | ClientError::DataGone { .. }
                | ClientError::DiskFailed { .. }
                | ClientError::ServerLost { .. }
        )
    }

    /// The shuffle whose stored data this error says is lost with a
    /// server, if it says so: the engine then runs that shuffle's
    /// producers again on a fresh shuffle.
    pub fn lost_shuffle(&self) -> Option<ShuffleId> {
        match self {
            ClientError::ServerLost { shuffle, .. } => Some(*shuffle),
            _ => None,
        }
    }

    /// True when this error, from one copy of a replicated partition, says
    /// that copy cannot serve (its server lost or restarted without the
    /// shuffle, its disk failed, its data unreadable): the writer goes on
    /// with the other copy (degraded) and the reader fails over to it.
    pub fn loses_copy(&self) -> bool {
        matches!(
            self,
            ClientError::ServerLost { .. }
                | ClientError::DiskFailed { .. }
                | ClientError::UnknownShuffle { .. }
                | ClientError::UnknownApp { .. }
                | ClientError::DataGone { .. }
                | ClientError::Corrupt { .. }
                | ClientError::ChecksumMismatch { .. }
        )
    }

    /// A connection error that outlasted the retry window of a call about
    /// `shuffle` becomes [`ClientError::ServerLost`]; others pass.
    pub(crate) fn into_lost(self, shuffle: ShuffleId) -> Self {
        match self {
            ClientError::Connection { server, reason } => ClientError::ServerLost {
                server,
                shuffle,
                reason,
            },
            other => other,
        }
    }

    /// Rebuilds the typed error a server sent (`server` names it).
    pub fn from_service(err: ServiceError, server: &str) -> Self {
        let server = server.to_string();
        match err {
            ServiceError::Malformed { reason } => ClientError::InvalidArgument(ProtocolError::Malformed {
                what: "request",
                reason,
            }),
            ServiceError::UnknownApp { app } => ClientError::UnknownApp { app },
            ServiceError::UnknownShuffle { app, shuffle } => ClientError::UnknownShuffle { app, shuffle },
            ServiceError::ShuffleExists {
                app,
                shuffle,
                existing,
            } => ClientError::ShuffleExists {
                app,
                shuffle,
                existing,
            },
            ServiceError::UnsupportedMode { mode } => ClientError::UnsupportedMode { mode },
            ServiceError::PartitionOutOfRange {
                partition,
                num_partitions,
            } => ClientError::PartitionOutOfRange {
                partition,
                num_partitions,
            },
            ServiceError::MapOutOfRange { map, num_maps } => ClientError::MapOutOfRange { map, num_maps },
            ServiceError::ChecksumMismatch {
                block,
                expected,
                actual,
                site,
            } => ClientError::ChecksumMismatch {
                block,
                expected,
                actual,
                site,
            },
            ServiceError::CommitConflict {
                map,
                committed,
                attempt,
            } => ClientError::CommitConflict {
                map,
                committed,
                attempt,
            },
            ServiceError::AttemptSuperseded {
                map,
                committed,
                attempt,
            } => ClientError::AttemptSuperseded {
                map,
                committed,
                attempt,
            },
            ServiceError::ManifestMismatch { map, attempt } => ClientError::ManifestMismatch { map, attempt },
            ServiceError::MissingBlocks {
                map,
                attempt,
                partition,
                expected,
                missing_seq,
            } => ClientError::MissingBlocks {
                map,
                attempt,
                partition,
                expected,
                missing_seq,
            },
            ServiceError::NotReady {
                shuffle,
                committed,
                num_maps,
            } => ClientError::NotReady {
                shuffle,
                committed,
                num_maps,
            },
            ServiceError::Corrupt { reason } => ClientError::Corrupt {
                location: server,
                reason,
            },
            ServiceError::Busy { reason } => ClientError::Busy { server, reason },
            ServiceError::Draining => ClientError::Draining { server },
            ServiceError::Internal { reason } => ClientError::Internal { server, reason },
            ServiceError::AttemptFailed { map, attempt } => ClientError::AttemptFailed { map, attempt },
            ServiceError::DataGone { partition, map } => ClientError::DataGone { partition, map },
            ServiceError::DiskFailed { partition, dir } => ClientError::DiskFailed {
                server,
                partition,
                dir,
            },
            ServiceError::LimitExceeded {
                limit,
                max,
                requested,
            } => ClientError::LimitExceeded {
                server,
                limit,
                max,
                requested,
            },
            ServiceError::Other { kind, message } => ClientError::Internal {
                server,
                reason: format!("error {kind}: {message}"),
            },
        }
    }
}

impl From<ProtocolError> for ClientError {
    fn from(e: ProtocolError) -> Self {
        match e {
            ProtocolError::ChecksumMismatch {
                block,
                expected,
                actual,
            } => ClientError::ChecksumMismatch {
                block,
                expected,
                actual,
                site: ChecksumSite::Stored,
            },
            ProtocolError::Decompress { block, reason } => ClientError::Corrupt {
                location: block.to_string(),
                reason,
            },
            other => ClientError::InvalidArgument(other),
        }
    }
}

#[cfg(feature = "embedded")]
impl From<ServerError> for ClientError {
    fn from(e: ServerError) -> Self {
        match e {
            ServerError::Service(e) => ClientError::from_service(e, "embedded"),
            ServerError::Io { op, path, error } => ClientError::Io { op, path, error },
            ServerError::CorruptFile { path, reason } => ClientError::Corrupt {
                location: path.display().to_string(),
                reason,
            },
            ServerError::Protocol(p) => p.into(),
            other => ClientError::from_service(other.to_service_error(), "embedded"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The client's flags of an error that came over the wire are the
    /// error table's, for every kind.
    #[test]
    fn wire_errors_keep_the_tables_retry_and_loss_flags() {
        for e in ServiceError::examples() {
            let c = ClientError::from_service(e.clone(), "s");
            assert_eq!(c.is_retryable(), e.is_retryable(), "{e:?}: retryable");
            assert_eq!(c.loses_data(), e.loses_data(), "{e:?}: loses data");
        }
    }
}
