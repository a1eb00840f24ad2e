//! Service errors as they cross the wire: in data-plane `Error` frames and
//! in the details of gRPC statuses. One encoding for both planes, so a
//! client rebuilds the exact typed error the server had (which map, which
//! attempt, which block), whatever the transport.
//!
//! Encoding: `kind u16 | message string | detail_len u16 | detail`. The
//! message is the human text; the detail holds the kind's structured fields.
//! An unknown kind from a newer peer decodes as [`ServiceError::Other`].

use std::fmt;

use bytes::{Buf, BufMut, Bytes};

use crate::block::BlockId;
use crate::{wire, AppId, AttemptId, MapId, PartitionId, ProtocolError, ShuffleId, ShuffleMode, ShuffleSpec};

/// An error a shuffle server reports to a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceError {
    /// The request could not be parsed or breaks the protocol.
    Malformed {
        reason: String,
    },
    /// The application is not registered, or has expired.
    UnknownApp {
        app: AppId,
    },
    /// The shuffle is not registered.
    UnknownShuffle {
        app: AppId,
        shuffle: ShuffleId,
    },
    /// The shuffle id is taken by a shuffle of another shape.
    ShuffleExists {
        app: AppId,
        shuffle: ShuffleId,
        existing: ShuffleSpec,
    },
    /// The server does not serve this mode.
    UnsupportedMode {
        mode: ShuffleMode,
    },
    PartitionOutOfRange {
        partition: PartitionId,
        num_partitions: u32,
    },
    MapOutOfRange {
        map: MapId,
        num_maps: u32,
    },
    /// A block failed its CRC32C, on receipt (`stored == false`) or on read.
    ChecksumMismatch {
        block: BlockId,
        expected: u32,
        actual: u32,
        stored: bool,
    },
    CommitConflict {
        map: MapId,
        committed: AttemptId,
        attempt: AttemptId,
    },
    AttemptSuperseded {
        map: MapId,
        committed: AttemptId,
        attempt: AttemptId,
    },
    ManifestMismatch {
        map: MapId,
        attempt: AttemptId,
    },
    MissingBlocks {
        map: MapId,
        attempt: AttemptId,
        partition: PartitionId,
        expected: u32,
        missing_seq: u32,
    },
    /// A blocking read before the seal.
    NotReady {
        shuffle: ShuffleId,
        committed: u32,
        num_maps: u32,
    },
    /// Stored data does not match its index.
    Corrupt {
        reason: String,
    },
    /// Out of memory credit for now; retry later.
    Busy {
        reason: String,
    },
    /// The server is shutting down and takes no new work.
    Draining,
    /// A server-side failure (disk I/O...).
    Internal {
        reason: String,
    },
    /// A streaming reader already delivered blocks of `attempt` of `map`,
    /// and another attempt committed: the reader cannot go on exactly once.
    AttemptFailed {
        map: MapId,
        attempt: AttemptId,
    },
    /// Memory-only blocks of `map` in `partition` were consumed by another
    /// reader (pipelined, hybrid-selective): they cannot be read again.
    DataGone {
        partition: PartitionId,
        map: MapId,
    },
    /// A server limit (apps, shuffles, maps x partitions, connections)
    /// would be exceeded: `limit` names the setting, `max` is its value and
    /// `requested` what the request would have needed. Not retryable as is.
    LimitExceeded {
        limit: String,
        max: u64,
        requested: u64,
    },
    /// A kind this version does not know.
    Other {
        kind: u16,
        message: String,
    },
}

impl ServiceError {
    /// The stable wire number of the kind.
    pub fn kind(&self) -> u16 {
        match self {
            ServiceError::Malformed { .. } => 1,
            ServiceError::UnknownApp { .. } => 2,
            ServiceError::UnknownShuffle { .. } => 3,
            ServiceError::ShuffleExists { .. } => 4,
            ServiceError::UnsupportedMode { .. } => 5,
            ServiceError::PartitionOutOfRange { .. } => 6,
            ServiceError::MapOutOfRange { .. } => 7,
            ServiceError::ChecksumMismatch { .. } => 8,
            ServiceError::CommitConflict { .. } => 9,
            ServiceError::AttemptSuperseded { .. } => 10,
            ServiceError::ManifestMismatch { .. } => 11,
            ServiceError::MissingBlocks { .. } => 12,
            ServiceError::NotReady { .. } => 13,
            ServiceError::Corrupt { .. } => 14,
            ServiceError::Busy { .. } => 15,
            ServiceError::Draining => 16,
            ServiceError::Internal { .. } => 17,
            ServiceError::AttemptFailed { .. } => 18,
            ServiceError::DataGone { .. } => 19,
            ServiceError::LimitExceeded { .. } => 20,
            ServiceError::Other { kind, .. } => *kind,
        }
    }

    /// A short, stable, low-cardinality name (for metrics labels).
    pub fn reason(&self) -> &'static str {
        match self {
            ServiceError::Malformed { .. } => "malformed",
            ServiceError::UnknownApp { .. } => "unknown_app",
            ServiceError::UnknownShuffle { .. } => "unknown_shuffle",
            ServiceError::ShuffleExists { .. } => "shuffle_exists",
            ServiceError::UnsupportedMode { .. } => "unsupported_mode",
            ServiceError::PartitionOutOfRange { .. } | ServiceError::MapOutOfRange { .. } => "out_of_range",
            ServiceError::ChecksumMismatch { .. } => "checksum_mismatch",
            ServiceError::CommitConflict { .. }
            | ServiceError::AttemptSuperseded { .. }
            | ServiceError::ManifestMismatch { .. } => "commit_conflict",
            ServiceError::MissingBlocks { .. } => "missing_blocks",
            ServiceError::NotReady { .. } => "not_ready",
            ServiceError::Corrupt { .. } => "corrupt",
            ServiceError::Busy { .. } => "busy",
            ServiceError::Draining => "draining",
            ServiceError::Internal { .. } => "internal",
            ServiceError::AttemptFailed { .. } => "attempt_failed",
            ServiceError::DataGone { .. } => "data_gone",
            ServiceError::LimitExceeded { .. } => "limit_exceeded",
            ServiceError::Other { .. } => "other",
        }
    }

    /// Appends the encoding.
    pub fn encode(&self, out: &mut impl BufMut) {
        out.put_u16_le(self.kind());
        wire::put_string(out, &self.to_string());
        let mut d = Vec::new();
        match self {
            ServiceError::Malformed { reason }
            | ServiceError::Corrupt { reason }
            | ServiceError::Busy { reason }
            | ServiceError::Internal { reason } => wire::put_string(&mut d, reason),
            ServiceError::UnknownApp { app } => wire::put_string(&mut d, app.as_str()),
            ServiceError::UnknownShuffle { app, shuffle } => {
                wire::put_string(&mut d, app.as_str());
                d.put_u32_le(shuffle.0);
            }
            ServiceError::ShuffleExists {
                app,
                shuffle,
                existing,
            } => {
                wire::put_string(&mut d, app.as_str());
                d.put_u32_le(shuffle.0);
                d.put_u32_le(existing.num_maps());
                d.put_u32_le(existing.num_partitions());
                d.put_u8(existing.mode().code());
            }
            ServiceError::UnsupportedMode { mode } => d.put_u8(mode.code()),
            ServiceError::PartitionOutOfRange {
                partition,
                num_partitions,
            } => put_u32s(&mut d, &[partition.0, *num_partitions]),
            ServiceError::MapOutOfRange { map, num_maps } => put_u32s(&mut d, &[map.0, *num_maps]),
            ServiceError::ChecksumMismatch {
                block,
                expected,
                actual,
                stored,
            } => {
                put_block_id(&mut d, block);
                put_u32s(&mut d, &[*expected, *actual]);
                d.put_u8(u8::from(*stored));
            }
            ServiceError::CommitConflict {
                map,
                committed,
                attempt,
            }
            | ServiceError::AttemptSuperseded {
                map,
                committed,
                attempt,
            } => put_u32s(&mut d, &[map.0, committed.0, attempt.0]),
            ServiceError::ManifestMismatch { map, attempt } => put_u32s(&mut d, &[map.0, attempt.0]),
            ServiceError::MissingBlocks {
                map,
                attempt,
                partition,
                expected,
                missing_seq,
            } => put_u32s(&mut d, &[map.0, attempt.0, partition.0, *expected, *missing_seq]),
            ServiceError::NotReady {
                shuffle,
                committed,
                num_maps,
            } => put_u32s(&mut d, &[shuffle.0, *committed, *num_maps]),
            ServiceError::AttemptFailed { map, attempt } => put_u32s(&mut d, &[map.0, attempt.0]),
            ServiceError::DataGone { partition, map } => put_u32s(&mut d, &[partition.0, map.0]),
            ServiceError::LimitExceeded {
                limit,
                max,
                requested,
            } => {
                wire::put_string(&mut d, limit);
                d.put_u64_le(*max);
                d.put_u64_le(*requested);
            }
            ServiceError::Draining | ServiceError::Other { .. } => {}
        }
        out.put_u16_le(d.len().min(usize::from(u16::MAX)) as u16);
        out.put_slice(&d[..d.len().min(usize::from(u16::MAX))]);
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
        let d = &mut d;
        let app =
            |d: &mut Bytes| -> Result<AppId, ProtocolError> { AppId::new(wire::string(d, "error app id")?) };
        let u32s = |d: &mut Bytes, n: usize| -> Result<Vec<u32>, ProtocolError> {
            (0..n).map(|_| wire::u32(d, "error detail")).collect()
        };
        let err = match kind {
            1 => ServiceError::Malformed {
                reason: wire::string(d, "error reason")?,
            },
            2 => ServiceError::UnknownApp { app: app(d)? },
            3 => ServiceError::UnknownShuffle {
                app: app(d)?,
                shuffle: ShuffleId(wire::u32(d, "error detail")?),
            },
            4 => {
                let app = app(d)?;
                let v = u32s(d, 3)?;
                let mode = ShuffleMode::from_code(wire::u8(d, "error detail")?)?;
                ServiceError::ShuffleExists {
                    app,
                    shuffle: ShuffleId(v[0]),
                    existing: ShuffleSpec::new(v[1], v[2], mode)?,
                }
            }
            5 => ServiceError::UnsupportedMode {
                mode: ShuffleMode::from_code(wire::u8(d, "error detail")?)?,
            },
            6 => {
                let v = u32s(d, 2)?;
                ServiceError::PartitionOutOfRange {
                    partition: PartitionId(v[0]),
                    num_partitions: v[1],
                }
            }
            7 => {
                let v = u32s(d, 2)?;
                ServiceError::MapOutOfRange {
                    map: MapId(v[0]),
                    num_maps: v[1],
                }
            }
            8 => {
                let block = get_block_id(d)?;
                let v = u32s(d, 2)?;
                let stored = wire::u8(d, "error detail")? != 0;
                ServiceError::ChecksumMismatch {
                    block,
                    expected: v[0],
                    actual: v[1],
                    stored,
                }
            }
            9 | 10 => {
                let v = u32s(d, 3)?;
                let (map, committed, attempt) = (MapId(v[0]), AttemptId(v[1]), AttemptId(v[2]));
                if kind == 9 {
                    ServiceError::CommitConflict {
                        map,
                        committed,
                        attempt,
                    }
                } else {
                    ServiceError::AttemptSuperseded {
                        map,
                        committed,
                        attempt,
                    }
                }
            }
            11 => {
                let v = u32s(d, 2)?;
                ServiceError::ManifestMismatch {
                    map: MapId(v[0]),
                    attempt: AttemptId(v[1]),
                }
            }
            12 => {
                let v = u32s(d, 5)?;
                ServiceError::MissingBlocks {
                    map: MapId(v[0]),
                    attempt: AttemptId(v[1]),
                    partition: PartitionId(v[2]),
                    expected: v[3],
                    missing_seq: v[4],
                }
            }
            13 => {
                let v = u32s(d, 3)?;
                ServiceError::NotReady {
                    shuffle: ShuffleId(v[0]),
                    committed: v[1],
                    num_maps: v[2],
                }
            }
            14 => ServiceError::Corrupt {
                reason: wire::string(d, "error reason")?,
            },
            15 => ServiceError::Busy {
                reason: wire::string(d, "error reason")?,
            },
            16 => ServiceError::Draining,
            17 => ServiceError::Internal {
                reason: wire::string(d, "error reason")?,
            },
            18 => {
                let v = u32s(d, 2)?;
                ServiceError::AttemptFailed {
                    map: MapId(v[0]),
                    attempt: AttemptId(v[1]),
                }
            }
            19 => {
                let v = u32s(d, 2)?;
                ServiceError::DataGone {
                    partition: PartitionId(v[0]),
                    map: MapId(v[1]),
                }
            }
            20 => ServiceError::LimitExceeded {
                limit: wire::string(d, "error limit")?,
                max: wire::u64(d, "error detail")?,
                requested: wire::u64(d, "error detail")?,
            },
            kind => {
                d.advance(d.remaining());
                ServiceError::Other { kind, message }
            }
        };
        if d.has_remaining() {
            return Err(ProtocolError::TrailingBytes {
                what: "error detail",
                count: d.remaining() as u64,
            });
        }
        Ok(err)
    }
}

fn put_u32s(d: &mut Vec<u8>, values: &[u32]) {
    for v in values {
        d.put_u32_le(*v);
    }
}

fn put_block_id(d: &mut Vec<u8>, b: &BlockId) {
    put_u32s(d, &[b.shuffle.0, b.map.0, b.attempt.0, b.partition.0, b.seq]);
}

fn get_block_id(d: &mut Bytes) -> Result<BlockId, ProtocolError> {
    let mut v = [0u32; 5];
    for slot in &mut v {
        *slot = wire::u32(d, "error block id")?;
    }
    Ok(BlockId {
        shuffle: ShuffleId(v[0]),
        map: MapId(v[1]),
        attempt: AttemptId(v[2]),
        partition: PartitionId(v[3]),
        seq: v[4],
    })
}

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceError::Malformed { reason } => write!(f, "malformed request: {reason}"),
            ServiceError::UnknownApp { app } => write!(f, "unknown app {app}"),
            ServiceError::UnknownShuffle { app, shuffle } => {
                write!(f, "unknown shuffle {shuffle} of app {app}")
            }
            ServiceError::ShuffleExists {
                app,
                shuffle,
                existing,
            } => {
                write!(f, "shuffle {shuffle} of app {app} already exists as {existing:?}")
            }
            ServiceError::UnsupportedMode { mode } => {
                write!(f, "shuffle mode {mode} is not supported by this server")
            }
            ServiceError::PartitionOutOfRange {
                partition,
                num_partitions,
            } => {
                write!(
                    f,
                    "{partition} is out of range: the shuffle has {num_partitions} partitions"
                )
            }
            ServiceError::MapOutOfRange { map, num_maps } => {
                write!(f, "{map} is out of range: the shuffle has {num_maps} maps")
            }
            ServiceError::ChecksumMismatch {
                block,
                expected,
                actual,
                stored,
            } => write!(
                f,
                "checksum mismatch in block {block} ({}): expected {expected:#010x}, found {actual:#010x}",
                if *stored { "stored" } else { "received" }
            ),
            ServiceError::CommitConflict {
                map,
                committed,
                attempt,
            } => {
                write!(f, "{map} was already committed by {committed}; {attempt} lost")
            }
            ServiceError::AttemptSuperseded {
                map,
                committed,
                attempt,
            } => {
                write!(f, "{map} was committed by {committed}; {attempt} is superseded")
            }
            ServiceError::ManifestMismatch { map, attempt } => {
                write!(f, "{map} {attempt} was committed before with other block counts")
            }
            ServiceError::MissingBlocks {
                map,
                attempt,
                partition,
                expected,
                missing_seq,
            } => write!(
                f,
                "{map} {attempt}: block {missing_seq} of {expected} for {partition} never arrived"
            ),
            ServiceError::NotReady {
                shuffle,
                committed,
                num_maps,
            } => {
                write!(
                    f,
                    "{shuffle} is not sealed yet: {committed} of {num_maps} maps committed"
                )
            }
            ServiceError::Corrupt { reason } => write!(f, "corrupt data: {reason}"),
            ServiceError::Busy { reason } => write!(f, "server busy: {reason}"),
            ServiceError::Draining => f.write_str("server is draining"),
            ServiceError::Internal { reason } => write!(f, "internal server error: {reason}"),
            ServiceError::AttemptFailed { map, attempt } => write!(
                f,
                "{map}: this reader delivered blocks of {attempt}, which did not commit; restart the consumer"
            ),
            ServiceError::DataGone { partition, map } => write!(
                f,
                "the in-memory blocks of {map} in {partition} were already consumed by another reader"
            ),
            ServiceError::LimitExceeded {
                limit,
                max,
                requested,
            } => write!(f, "limit {limit} is {max}; this request needs {requested}"),
            ServiceError::Other { kind, message } => write!(f, "error {kind}: {message}"),
        }
    }
}

impl std::error::Error for ServiceError {}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn samples() -> Vec<ServiceError> {
        let app = AppId::new("app").expect("valid");
        let block = BlockId {
            shuffle: ShuffleId(1),
            map: MapId(2),
            attempt: AttemptId(3),
            partition: PartitionId(4),
            seq: 5,
        };
        vec![
            ServiceError::Malformed { reason: "x".into() },
            ServiceError::UnknownApp { app: app.clone() },
            ServiceError::UnknownShuffle {
                app: app.clone(),
                shuffle: ShuffleId(9),
            },
            ServiceError::ShuffleExists {
                app,
                shuffle: ShuffleId(1),
                existing: ShuffleSpec::new(2, 3, ShuffleMode::Blocking).expect("spec"),
            },
            ServiceError::UnsupportedMode {
                mode: ShuffleMode::Pipelined,
            },
            ServiceError::PartitionOutOfRange {
                partition: PartitionId(7),
                num_partitions: 3,
            },
            ServiceError::MapOutOfRange {
                map: MapId(7),
                num_maps: 3,
            },
            ServiceError::ChecksumMismatch {
                block,
                expected: 1,
                actual: 2,
                stored: true,
            },
            ServiceError::CommitConflict {
                map: MapId(1),
                committed: AttemptId(1),
                attempt: AttemptId(0),
            },
            ServiceError::AttemptSuperseded {
                map: MapId(1),
                committed: AttemptId(1),
                attempt: AttemptId(0),
            },
            ServiceError::ManifestMismatch {
                map: MapId(1),
                attempt: AttemptId(2),
            },
            ServiceError::MissingBlocks {
                map: MapId(0),
                attempt: AttemptId(0),
                partition: PartitionId(1),
                expected: 3,
                missing_seq: 1,
            },
            ServiceError::NotReady {
                shuffle: ShuffleId(5),
                committed: 1,
                num_maps: 2,
            },
            ServiceError::Corrupt {
                reason: "short".into(),
            },
            ServiceError::Busy {
                reason: "credit".into(),
            },
            ServiceError::Draining,
            ServiceError::Internal {
                reason: "disk".into(),
            },
            ServiceError::AttemptFailed {
                map: MapId(3),
                attempt: AttemptId(1),
            },
            ServiceError::DataGone {
                partition: PartitionId(2),
                map: MapId(4),
            },
            ServiceError::LimitExceeded {
                limit: "max_apps".into(),
                max: 10,
                requested: 11,
            },
            ServiceError::Other {
                kind: 999,
                message: "from the future".into(),
            },
        ]
    }

    #[test]
    fn every_kind_round_trips() {
        for e in samples() {
            let mut wire = Bytes::from(e.to_bytes().to_vec());
            let back = ServiceError::decode(&mut wire).expect("decode");
            assert!(!wire.has_remaining());
            match (&e, &back) {
                (ServiceError::Other { kind, .. }, ServiceError::Other { kind: k2, message }) => {
                    assert_eq!(kind, k2);
                    assert!(message.contains("from the future"));
                }
                _ => assert_eq!(back, e),
            }
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
