//! The shuffle service's vocabulary and byte formats.
//!
//! This crate is pure: it never touches a socket, a file or a clock, so every
//! format in it can be tested exhaustively and fuzzed in isolation.
//!
//! * [`ids`]: newtyped, validated identifiers ([`AppId`], [`ShuffleId`], ...).
//! * [`mode`]: the shuffle modes and the shuffle specification.
//! * [`records`]: how records are laid out inside a block's raw payload.
//! * [`block`]: the block format (header + compressed, checksummed payload).
//! * [`frame`]: the data-plane frame codec shared by every transport.
//! * [`ServiceError`]: errors as they cross the wire (frames and gRPC).
//! * `net` (feature `net`): what both ends of the network share: the
//!   control-plane gRPC types, the QUIC ALPN id, vectored frame writing.
//!
//! The byte layouts are documented in `protocol/FORMAT.md`.

pub mod block;
mod error;
pub mod frame;
mod hash;
pub mod ids;
pub mod mode;
#[cfg(feature = "net")]
pub mod net;
mod placement;
pub mod records;
mod service_error;
pub mod units;
mod wire;

pub use block::{Block, BlockHeader, BlockId, Codec};
pub use error::ProtocolError;
pub use hash::fnv1a64;
pub use ids::{AppId, AttemptId, MapId, MapRange, PartitionId, ShuffleId};
pub use mode::{CommitManifest, ShuffleMode, ShuffleSpec, SpillStrategy};
pub use placement::{copy_server, Replication};
pub use service_error::{ChecksumSite, ServiceError, StatusClass};
