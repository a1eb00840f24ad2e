//! How server errors cross the wire: as a [`ServiceError`] in data-plane
//! `Error` frames, and as a gRPC status carrying the same bytes in its
//! details. Wire errors are carried as they are; only the server's own
//! errors are mapped here.

use protocol::{ServiceError, StatusClass};
use tonic::Code;

use crate::ServerError;

impl ServerError {
    /// The wire form of this error.
    pub fn to_service_error(&self) -> ServiceError {
        let reason = self.to_string();
        match self {
            ServerError::Service(e) => e.clone(),
            ServerError::WrongShuffle { .. }
            | ServerError::Protocol(_)
            | ServerError::InvalidConfig { .. }
            | ServerError::ResumeUnsupported { .. }
            | ServerError::BeyondManifest { .. } => ServiceError::Malformed { reason },
            ServerError::NoCredit { .. } => ServiceError::Busy { reason },
            ServerError::CorruptFile { .. } => ServiceError::Corrupt { reason },
            ServerError::Io { .. } | ServerError::NoRoom { .. } => ServiceError::Internal { reason },
        }
    }
}

/// The gRPC status for a service error; its details carry the encoded
/// error so the client can rebuild it exactly.
pub fn to_status(err: &ServiceError) -> tonic::Status {
    let code = match err.status_class() {
        StatusClass::InvalidArgument => Code::InvalidArgument,
        StatusClass::NotFound => Code::NotFound,
        StatusClass::AlreadyExists => Code::AlreadyExists,
        StatusClass::Unimplemented => Code::Unimplemented,
        StatusClass::FailedPrecondition => Code::FailedPrecondition,
        StatusClass::DataLoss => Code::DataLoss,
        StatusClass::ResourceExhausted => Code::ResourceExhausted,
        StatusClass::Unavailable => Code::Unavailable,
        StatusClass::Internal => Code::Internal,
    };
    tonic::Status::with_details(code, err.to_string(), err.to_bytes())
}
