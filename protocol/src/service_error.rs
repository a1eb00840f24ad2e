//! Service errors as they cross the wire: in data-plane `Error` frames and
//! in the details of gRPC statuses. One encoding for both planes, so a
//! client rebuilds the exact typed error the server had (which map, which
//! attempt, which block), whatever the transport.
//!
//! Encoding: `kind u16 | message string | detail_len u16 | detail`. The
//! message is the human text; the detail holds the kind's fields, in the
//! order the table below declares them. An unknown kind from a newer peer
//! decodes as [`ServiceError::Other`].
//!
//! Every kind is defined once, in the [`service_errors!`] table: its wire
//! number, its fields, its message, its metric label, whether retrying can
//! help, whether data is lost, and its gRPC status class. The enum, the
//! codec, the labels and the flags are all generated from it.

use std::fmt;

use bytes::{Buf, BufMut, Bytes};

use crate::block::BlockId;
use crate::{wire, AppId, AttemptId, MapId, PartitionId, ProtocolError, ShuffleId, ShuffleMode, ShuffleSpec};

/// Where a checksum mismatch was found.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum ChecksumSite {
    /// In a block as it arrived, before it was written.
    Received,
    /// In a block read back from disk.
    Stored,
}

impl fmt::Display for ChecksumSite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChecksumSite::Received => "received",
            ChecksumSite::Stored => "stored",
        })
    }
}

/// The gRPC status class of a kind (the server maps each to a status code;
/// this crate knows no gRPC).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum StatusClass {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    Unimplemented,
    FailedPrecondition,
    DataLoss,
    ResourceExhausted,
    Unavailable,
    Internal,
}

/// One field of a kind's detail, in its wire form.
trait WireField: Sized {
    fn put(&self, d: &mut Vec<u8>);
    fn get(d: &mut Bytes) -> Result<Self, ProtocolError>;
    /// A value for examples of the kind.
    fn sample() -> Self;
}

impl WireField for String {
    fn put(&self, d: &mut Vec<u8>) {
        wire::put_string(d, self);
    }
    fn get(d: &mut Bytes) -> Result<Self, ProtocolError> {
        wire::string(d, "error detail")
    }
    fn sample() -> Self {
        "why it failed".into()
    }
}

impl WireField for u32 {
    fn put(&self, d: &mut Vec<u8>) {
        d.put_u32_le(*self);
    }
    fn get(d: &mut Bytes) -> Result<Self, ProtocolError> {
        wire::u32(d, "error detail")
    }
    fn sample() -> Self {
        7
    }
}

impl WireField for u64 {
    fn put(&self, d: &mut Vec<u8>) {
        d.put_u64_le(*self);
    }
    fn get(d: &mut Bytes) -> Result<Self, ProtocolError> {
        wire::u64(d, "error detail")
    }
    fn sample() -> Self {
        1 << 40
    }
}

impl WireField for AppId {
    fn put(&self, d: &mut Vec<u8>) {
        wire::put_string(d, self.as_str());
    }
    fn get(d: &mut Bytes) -> Result<Self, ProtocolError> {
        AppId::new(wire::string(d, "error app id")?)
    }
    fn sample() -> Self {
        AppId::new("app-1").expect("valid")
    }
}

macro_rules! u32_ids {
    ($($id:ident),*) => {$(
        impl WireField for $id {
            fn put(&self, d: &mut Vec<u8>) {
                d.put_u32_le(self.0);
            }
            fn get(d: &mut Bytes) -> Result<Self, ProtocolError> {
                Ok($id(wire::u32(d, "error detail")?))
            }
            fn sample() -> Self {
                $id(3)
            }
        }
    )*};
}
u32_ids!(ShuffleId, MapId, AttemptId, PartitionId);

impl WireField for ShuffleMode {
    fn put(&self, d: &mut Vec<u8>) {
        d.put_u8(self.code());
    }
    fn get(d: &mut Bytes) -> Result<Self, ProtocolError> {
        ShuffleMode::from_code(wire::u8(d, "error detail")?)
    }
    fn sample() -> Self {
        ShuffleMode::Pipelined
    }
}

impl WireField for ShuffleSpec {
    fn put(&self, d: &mut Vec<u8>) {
        d.put_u32_le(self.num_maps());
        d.put_u32_le(self.num_partitions());
        d.put_u8(self.mode().code());
    }
    fn get(d: &mut Bytes) -> Result<Self, ProtocolError> {
        let maps = wire::u32(d, "error detail")?;
        let partitions = wire::u32(d, "error detail")?;
        let mode = <ShuffleMode as WireField>::get(d)?;
        ShuffleSpec::new(maps, partitions, mode)
    }
    fn sample() -> Self {
        ShuffleSpec::new(2, 3, ShuffleMode::Blocking).expect("valid")
    }
}

impl WireField for BlockId {
    fn put(&self, d: &mut Vec<u8>) {
        for v in [
            self.shuffle.0,
            self.map.0,
            self.attempt.0,
            self.partition.0,
            self.seq,
        ] {
            d.put_u32_le(v);
        }
    }
    fn get(d: &mut Bytes) -> Result<Self, ProtocolError> {
        Ok(BlockId {
            shuffle: <ShuffleId as WireField>::get(d)?,
            map: <MapId as WireField>::get(d)?,
            attempt: <AttemptId as WireField>::get(d)?,
            partition: <PartitionId as WireField>::get(d)?,
            seq: <u32 as WireField>::get(d)?,
        })
    }
    fn sample() -> Self {
        BlockId {
            shuffle: ShuffleId(1),
            map: MapId(2),
            attempt: AttemptId(3),
            partition: PartitionId(4),
            seq: 5,
        }
    }
}

impl WireField for ChecksumSite {
    fn put(&self, d: &mut Vec<u8>) {
        d.put_u8(u8::from(*self == ChecksumSite::Stored));
    }
    fn get(d: &mut Bytes) -> Result<Self, ProtocolError> {
        Ok(match wire::u8(d, "error detail")? {
            0 => ChecksumSite::Received,
            _ => ChecksumSite::Stored,
        })
    }
    fn sample() -> Self {
        ChecksumSite::Stored
    }
}

/// The one table of service errors. Each row:
/// `number Name { fields } => "metric label", retryable, loses_data, class, ("message", args...)`.
macro_rules! service_errors {
    ($(
        $(#[$doc:meta])*
        $kind:literal $name:ident $({ $($field:ident : $ty:ty),* $(,)? })?
            => $reason:literal, retryable: $retry:literal, loses_data: $lost:literal, $class:ident,
               ($fmt:literal $(, $arg:expr)* $(,)?);
    )*) => {
        /// An error a shuffle server reports to a client.
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub enum ServiceError {
            $(
                $(#[$doc])*
                $name $({ $($field: $ty),* })?,
            )*
            /// A kind this version does not know (from a newer peer).
            Other { kind: u16, message: String },
        }

        impl ServiceError {
            /// Every known kind: (wire number, name, metric label,
            /// retryable, loses data).
            pub const KINDS: &'static [(u16, &'static str, &'static str, bool, bool)] =
                &[$(($kind, stringify!($name), $reason, $retry, $lost)),*];

            /// Every metric label a kind may have (with repeats), the
            /// unknown kind's `other` included.
            pub const REASONS: &'static [&'static str] = &[$($reason,)* "other"];

            /// The stable wire number of the kind.
            pub fn kind(&self) -> u16 {
                match self {
                    $(ServiceError::$name { .. } => $kind,)*
                    ServiceError::Other { kind, .. } => *kind,
                }
            }

            /// A short, stable, low-cardinality name (for metrics labels).
            pub fn reason(&self) -> &'static str {
                match self {
                    $(ServiceError::$name { .. } => $reason,)*
                    ServiceError::Other { .. } => "other",
                }
            }

            /// True when repeating the same request may succeed.
            pub fn is_retryable(&self) -> bool {
                match self {
                    $(ServiceError::$name { .. } => $retry,)*
                    ServiceError::Other { .. } => false,
                }
            }

            /// True when data already written cannot be read back as it
            /// was, and its producer must run again.
            pub fn loses_data(&self) -> bool {
                match self {
                    $(ServiceError::$name { .. } => $lost,)*
                    ServiceError::Other { .. } => false,
                }
            }

            /// The gRPC status class.
            pub fn status_class(&self) -> StatusClass {
                match self {
                    $(ServiceError::$name { .. } => StatusClass::$class,)*
                    ServiceError::Other { .. } => StatusClass::Internal,
                }
            }

            fn put_detail(&self, d: &mut Vec<u8>) {
                match self {
                    $(
                        #[allow(unused_variables)]
                        ServiceError::$name $({ $($field),* })? => {
                            $($( WireField::put($field, d); )*)?
                        }
                    )*
                    ServiceError::Other { .. } => {}
                }
            }

            fn get_detail(kind: u16, message: String, d: &mut Bytes) -> Result<Self, ProtocolError> {
                Ok(match kind {
                    $(
                        $kind => ServiceError::$name $({ $($field: <$ty as WireField>::get(d)?),* })?,
                    )*
                    kind => {
                        d.advance(d.remaining());
                        ServiceError::Other { kind, message }
                    }
                })
            }

            /// One value of every known kind, in table order: for tests of
            /// code that maps service errors (every kind must be handled).
            pub fn examples() -> Vec<ServiceError> {
                vec![$(ServiceError::$name $({ $($field: <$ty as WireField>::sample()),* })?),*]
            }
        }

        impl fmt::Display for ServiceError {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self {
                    $(
                        #[allow(unused_variables)]
                        ServiceError::$name $({ $($field),* })? => write!(f, $fmt $(, $arg)*),
                    )*
                    ServiceError::Other { kind, message } => write!(f, "error {kind}: {message}"),
                }
            }
        }
    };
}

service_errors! {
    /// The request could not be parsed or breaks the protocol.
    1 Malformed { reason: String }
        => "malformed", retryable: false, loses_data: false, InvalidArgument,
           ("malformed request: {reason}");
    /// The application is not registered, or has expired (its data was
    /// deleted).
    2 UnknownApp { app: AppId }
        => "unknown_app", retryable: false, loses_data: true, NotFound,
           ("unknown app {app}");
    /// The shuffle is not registered.
    3 UnknownShuffle { app: AppId, shuffle: ShuffleId }
        => "unknown_shuffle", retryable: false, loses_data: false, NotFound,
           ("unknown shuffle {shuffle} of app {app}");
    /// The shuffle id is taken by a shuffle of another shape.
    4 ShuffleExists { app: AppId, shuffle: ShuffleId, existing: ShuffleSpec }
        => "shuffle_exists", retryable: false, loses_data: false, AlreadyExists,
           ("shuffle {shuffle} of app {app} already exists as {existing:?}");
    /// An internal invariant: the store holds no stream state for a
    /// shuffle it was asked to stream (every mode is served).
    5 UnsupportedMode { mode: ShuffleMode }
        => "unsupported_mode", retryable: false, loses_data: false, Unimplemented,
           ("shuffle mode {mode} cannot be served this way");
    /// A partition id is outside `0..num_partitions`.
    6 PartitionOutOfRange { partition: PartitionId, num_partitions: u32 }
        => "out_of_range", retryable: false, loses_data: false, InvalidArgument,
           ("{partition} is out of range: the shuffle has {num_partitions} partitions");
    /// A map id is outside `0..num_maps`.
    7 MapOutOfRange { map: MapId, num_maps: u32 }
        => "out_of_range", retryable: false, loses_data: false, InvalidArgument,
           ("{map} is out of range: the shuffle has {num_maps} maps");
    /// A block failed its CRC32C, on receipt or when read back.
    8 ChecksumMismatch { block: BlockId, expected: u32, actual: u32, site: ChecksumSite }
        => "checksum_mismatch", retryable: false, loses_data: true, DataLoss,
           ("checksum mismatch in block {block} ({site}): expected {expected:#010x}, found {actual:#010x}");
    /// Another attempt of the map committed first; this one lost.
    9 CommitConflict { map: MapId, committed: AttemptId, attempt: AttemptId }
        => "commit_conflict", retryable: false, loses_data: false, FailedPrecondition,
           ("{map} was already committed by {committed}; {attempt} lost");
    /// A push came from an attempt of a map another attempt committed.
    10 AttemptSuperseded { map: MapId, committed: AttemptId, attempt: AttemptId }
        => "commit_conflict", retryable: false, loses_data: false, FailedPrecondition,
           ("{map} was committed by {committed}; {attempt} is superseded");
    /// The same attempt committed twice with different manifests.
    11 ManifestMismatch { map: MapId, attempt: AttemptId }
        => "commit_conflict", retryable: false, loses_data: false, FailedPrecondition,
           ("{map} {attempt} was committed before with other block counts");
    /// A commit names blocks the server never received.
    12 MissingBlocks { map: MapId, attempt: AttemptId, partition: PartitionId, expected: u32, missing_seq: u32 }
        => "missing_blocks", retryable: false, loses_data: true, FailedPrecondition,
           ("{map} {attempt}: block {missing_seq} of {expected} for {partition} never arrived");
    /// A blocking read before the seal.
    13 NotReady { shuffle: ShuffleId, committed: u32, num_maps: u32 }
        => "not_ready", retryable: true, loses_data: false, FailedPrecondition,
           ("{shuffle} is not sealed yet: {committed} of {num_maps} maps committed");
    /// Stored data does not match its index.
    14 Corrupt { reason: String }
        => "corrupt", retryable: false, loses_data: true, DataLoss,
           ("corrupt data: {reason}");
    /// Out of memory credit (or a sender too slow) for now; retry later.
    15 Busy { reason: String }
        => "busy", retryable: true, loses_data: false, ResourceExhausted,
           ("server busy: {reason}");
    /// The server is shutting down and takes no new work.
    16 Draining
        => "draining", retryable: true, loses_data: false, Unavailable,
           ("server is draining");
    /// A server-side failure (disk I/O...).
    17 Internal { reason: String }
        => "internal", retryable: true, loses_data: false, Internal,
           ("internal server error: {reason}");
    /// A streaming reader already delivered blocks of `attempt` of `map`,
    /// and another attempt committed: the reader cannot go on exactly once.
    18 AttemptFailed { map: MapId, attempt: AttemptId }
        => "attempt_failed", retryable: false, loses_data: false, FailedPrecondition,
           ("{map}: this reader delivered blocks of {attempt}, which did not commit; restart the consumer");
    /// Memory-only blocks of `map` in `partition` were consumed by another
    /// reader (pipelined, hybrid-selective): they cannot be read again.
    19 DataGone { partition: PartitionId, map: MapId }
        => "data_gone", retryable: false, loses_data: true, DataLoss,
           ("the in-memory blocks of {map} in {partition} were already consumed by another reader");
    /// A server limit (apps, shuffles, maps x partitions, connections)
    /// would be exceeded: `limit` names the setting, `max` is its value and
    /// `requested` what the request would have needed. Not retryable as is.
    20 LimitExceeded { limit: String, max: u64, requested: u64 }
        => "limit_exceeded", retryable: false, loses_data: false, ResourceExhausted,
           ("limit {limit} is {max}; this request needs {requested}");
    /// `partition` was on data directory `dir`, which failed (I/O errors,
    /// read-only, removed) and was taken out of service: what it held is
    /// lost, even once the directory is back in service.
    21 DiskFailed { partition: PartitionId, dir: String }
        => "disk_failed", retryable: false, loses_data: true, DataLoss,
           ("{partition} was on data directory {dir}, which failed and was taken out of service: its data is lost");
}

impl ServiceError {
    /// Appends the encoding.
    pub fn encode(&self, out: &mut impl BufMut) {
        out.put_u16_le(self.kind());
        wire::put_string(out, &self.to_string());
        let mut d = Vec::new();
        self.put_detail(&mut d);
        let len = d.len().min(usize::from(u16::MAX));
        out.put_u16_le(len as u16);
        out.put_slice(&d[..len]);
    }

    /// The encoding as bytes (for gRPC status details).
    pub fn to_bytes(&self) -> Bytes {
        let mut out = Vec::new();
        self.encode(&mut out);
        Bytes::from(out)
    }

    /// Reads one encoded error.
    pub fn decode(buf: &mut impl Buf) -> Result<Self, ProtocolError> {
        let kind = wire::u16(buf, "error kind")?;
        let message = wire::string(buf, "error message")?;
        let len = usize::from(wire::u16(buf, "error detail")?);
        let mut d = wire::bytes(buf, len, "error detail")?;
        let err = Self::get_detail(kind, message, &mut d)?;
        if d.has_remaining() {
            return Err(ProtocolError::TrailingBytes {
                what: "error detail",
                count: d.remaining() as u64,
            });
        }
        Ok(err)
    }
}

impl std::error::Error for ServiceError {}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_kind_round_trips_and_is_in_the_table() {
        let samples = ServiceError::examples();
        assert_eq!(samples.len(), ServiceError::KINDS.len());
        for (e, (kind, _, reason, retryable, lost)) in samples.iter().zip(ServiceError::KINDS) {
            let mut wire = Bytes::from(e.to_bytes().to_vec());
            let back = ServiceError::decode(&mut wire).expect("decode");
            assert!(!wire.has_remaining());
            assert_eq!(&back, e);
            assert_eq!((e.kind(), e.reason()), (*kind, *reason));
            assert_eq!((e.is_retryable(), e.loses_data()), (*retryable, *lost));
            assert!(ServiceError::REASONS.contains(&e.reason()));
        }
        let mut kinds: Vec<u16> = ServiceError::KINDS.iter().map(|k| k.0).collect();
        kinds.dedup();
        assert_eq!(
            kinds.len(),
            ServiceError::KINDS.len(),
            "unique, increasing numbers"
        );
    }

    #[test]
    fn the_wire_layout_of_a_kind_is_its_field_order() {
        // ChecksumMismatch: the block's five u32s, expected, actual, site u8.
        let e = ServiceError::ChecksumMismatch {
            block: BlockId::sample(),
            expected: 0x11,
            actual: 0x22,
            site: ChecksumSite::Received,
        };
        let bytes = e.to_bytes();
        let detail = &bytes[bytes.len() - 29..];
        let mut want = Vec::new();
        for v in [1u32, 2, 3, 4, 5, 0x11, 0x22] {
            want.extend(v.to_le_bytes());
        }
        want.push(0);
        assert_eq!(detail, &want[..]);
    }

    #[test]
    fn an_unknown_kind_keeps_its_message() {
        let e = ServiceError::Other {
            kind: 999,
            message: "from the future".into(),
        };
        let back = ServiceError::decode(&mut e.to_bytes()).expect("decode");
        match back {
            ServiceError::Other { kind: 999, message } => assert!(message.contains("from the future")),
            other => panic!("{other:?}"),
        }
    }

    proptest! {
        #[test]
        fn streaming_kinds_round_trip(a in any::<u32>(), b in any::<u32>(), gone in any::<bool>()) {
            let e = if gone {
                ServiceError::DataGone { partition: PartitionId(a), map: MapId(b) }
            } else {
                ServiceError::AttemptFailed { map: MapId(a), attempt: AttemptId(b) }
            };
            let mut wire = e.to_bytes();
            prop_assert_eq!(ServiceError::decode(&mut wire).expect("decode"), e);
            prop_assert!(!wire.has_remaining());
        }

        #[test]
        fn arbitrary_bytes_never_panic(kind in 0u16..24, data in proptest::collection::vec(any::<u8>(), 0..80)) {
            let mut raw = Vec::new();
            raw.put_u16_le(kind);
            raw.put_u16_le(0);
            raw.put_u16_le(data.len() as u16);
            raw.extend_from_slice(&data);
            let _ = ServiceError::decode(&mut Bytes::from(raw));
            let _ = ServiceError::decode(&mut Bytes::from(data));
        }
    }
}
