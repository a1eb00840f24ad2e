//! The shuffle server as a library.
//!
//! * [`storage`]: partition files aggregated by reduce partition, the
//!   write-time index, map-attempt commits, the seal (made durable by a meta
//!   file, from which sealed shuffles are restored at start-up), and mmap
//!   reads.
//!
//! The network services (TCP/QUIC data plane, gRPC control plane, metrics)
//! are built on top of [`storage::Store`]; the in-process
//! `EmbeddedShuffle` of the `shuffle-client` crate uses the same store.

mod error;
pub mod storage;

pub use error::{ChecksumSite, ServerError};
