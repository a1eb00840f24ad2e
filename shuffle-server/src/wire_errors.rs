//! How server errors cross the wire: as a [`ServiceError`] in data-plane
//! `Error` frames, and as a gRPC status carrying the same bytes in its
//! details.

use protocol::ServiceError;
use tonic::Code;

use crate::{ChecksumSite, ServerError};

impl ServerError {
    /// The wire form of this error.
    pub fn to_service_error(&self) -> ServiceError {
        match self {
            ServerError::UnknownShuffle { app, shuffle } => ServiceError::UnknownShuffle {
                app: app.clone(),
                shuffle: *shuffle,
            },
            ServerError::ShuffleExists {
                app,
                shuffle,
                existing,
            } => ServiceError::ShuffleExists {
                app: app.clone(),
                shuffle: *shuffle,
                existing: *existing,
            },
            ServerError::UnsupportedMode { mode } => ServiceError::UnsupportedMode { mode: *mode },
            ServerError::PartitionOutOfRange {
                partition,
                num_partitions,
            } => ServiceError::PartitionOutOfRange {
                partition: *partition,
                num_partitions: *num_partitions,
            },
            ServerError::MapOutOfRange { map, num_maps } => ServiceError::MapOutOfRange {
                map: *map,
                num_maps: *num_maps,
            },
            ServerError::WrongShuffle { .. }
            | ServerError::Protocol(_)
            | ServerError::InvalidConfig { .. } => ServiceError::Malformed {
                reason: self.to_string(),
            },
            ServerError::ChecksumMismatch {
                block,
                expected,
                actual,
                site,
            } => ServiceError::ChecksumMismatch {
                block: *block,
                expected: *expected,
                actual: *actual,
                stored: *site == ChecksumSite::Stored,
            },
            ServerError::CommitConflict {
                map,
                committed,
                attempt,
            } => ServiceError::CommitConflict {
                map: *map,
                committed: *committed,
                attempt: *attempt,
            },
            ServerError::AttemptSuperseded {
                map,
                committed,
                attempt,
            } => ServiceError::AttemptSuperseded {
                map: *map,
                committed: *committed,
                attempt: *attempt,
            },
            ServerError::ManifestMismatch { map, attempt } => ServiceError::ManifestMismatch {
                map: *map,
                attempt: *attempt,
            },
            ServerError::MissingBlocks {
                map,
                attempt,
                partition,
                expected,
                missing_seq,
            } => ServiceError::MissingBlocks {
                map: *map,
                attempt: *attempt,
                partition: *partition,
                expected: *expected,
                missing_seq: *missing_seq,
            },
            ServerError::NotSealed {
                shuffle,
                committed,
                num_maps,
                ..
            } => ServiceError::NotReady {
                shuffle: *shuffle,
                committed: *committed,
                num_maps: *num_maps,
            },
            ServerError::CorruptFile { .. } => ServiceError::Corrupt {
                reason: self.to_string(),
            },
            ServerError::NoRoom { .. } => ServiceError::Internal {
                reason: self.to_string(),
            },
            ServerError::LimitExceeded {
                limit,
                max,
                requested,
            } => ServiceError::LimitExceeded {
                limit: (*limit).to_string(),
                max: *max,
                requested: *requested,
            },
            ServerError::Io { .. } => ServiceError::Internal {
                reason: self.to_string(),
            },
            ServerError::AttemptFailed { map, attempt } => ServiceError::AttemptFailed {
                map: *map,
                attempt: *attempt,
            },
            ServerError::DataGone { partition, map } => ServiceError::DataGone {
                partition: *partition,
                map: *map,
            },
            ServerError::NoCredit { .. } => ServiceError::Busy {
                reason: self.to_string(),
            },
            ServerError::ResumeUnsupported { .. } | ServerError::BeyondManifest { .. } => {
                ServiceError::Malformed {
                    reason: self.to_string(),
                }
            }
        }
    }
}

/// The gRPC status for a service error; its details carry the encoded
/// error so the client can rebuild it exactly.
pub fn to_status(err: &ServiceError) -> tonic::Status {
    let code = match err {
        ServiceError::Malformed { .. }
        | ServiceError::PartitionOutOfRange { .. }
        | ServiceError::MapOutOfRange { .. } => Code::InvalidArgument,
        ServiceError::UnknownApp { .. } | ServiceError::UnknownShuffle { .. } => Code::NotFound,
        ServiceError::ShuffleExists { .. } => Code::AlreadyExists,
        ServiceError::UnsupportedMode { .. } => Code::Unimplemented,
        ServiceError::ChecksumMismatch { .. } | ServiceError::Corrupt { .. } => Code::DataLoss,
        ServiceError::CommitConflict { .. }
        | ServiceError::AttemptSuperseded { .. }
        | ServiceError::ManifestMismatch { .. }
        | ServiceError::MissingBlocks { .. }
        | ServiceError::NotReady { .. }
        | ServiceError::AttemptFailed { .. } => Code::FailedPrecondition,
        ServiceError::DataGone { .. } => Code::DataLoss,
        ServiceError::Busy { .. } | ServiceError::LimitExceeded { .. } => Code::ResourceExhausted,
        ServiceError::Draining => Code::Unavailable,
        ServiceError::Internal { .. } | ServiceError::Other { .. } => Code::Internal,
    };
    tonic::Status::with_details(code, err.to_string(), err.to_bytes())
}
