//! The shuffle server as a library.
//!
//! * [`storage`]: partition files aggregated by reduce partition, the
//!   write-time index, map-attempt commits, the seal, mmap reads, and
//!   recovery of sealed shuffles after a restart.
//! * [`run`]: the daemon on bound [`Listeners`]: the TCP and QUIC data
//!   plane, the gRPC control plane, HTTP metrics and health, the memory
//!   budget, app expiry, and draining on shutdown.
//! * [`proto`]: the generated gRPC types (server and client stubs).
//!
//! The in-process `EmbeddedShuffle` of `shuffle-client` drives the same
//! [`storage::Store`].

pub mod budget;
pub mod config;
pub mod data;
pub mod disk;
mod error;
mod grpc;
mod http;
mod limits;
mod local;
pub mod metrics;
mod server;
mod state;
pub mod storage;
pub mod tls;
mod wire_errors;

pub use error::ServerError;
pub use local::LocalServer;
pub use server::{run, BoundAddrs, Listeners, Opened};
pub use wire_errors::to_status;

/// The control-plane gRPC types, shared with clients (`protocol::net`).
pub(crate) use protocol::net::proto;
