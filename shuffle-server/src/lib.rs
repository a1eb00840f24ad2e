//! The shuffle server as a library.
//!
//! * [`storage`]: partition files aggregated by reduce partition, the
//!   write-time index, map-attempt commits, the seal, mmap reads, and
//!   recovery of sealed shuffles after a restart.
//! * [`run`]: the daemon on bound [`Listeners`]: the TCP and QUIC data
//!   plane, the gRPC control plane, HTTP metrics and health, the memory
//!   budget, app expiry, and draining on shutdown.
//! * [`config`]: the daemon's settings (flags over TOML over defaults).
//! * [`LocalServer`]: a whole server in this process, on loopback ports,
//!   for tests, benchmarks and the engine's `ServedShuffle`.
//!
//! The public surface is what the daemon's binary, the tests and the
//! in-process `EmbeddedShuffle` of `shuffle-client` use; the generated
//! gRPC types are `protocol::net::proto`, shared with clients.

mod budget;
pub mod config;
mod data;
mod disk;
mod error;
mod grpc;
mod housekeeping;
mod http;
mod limits;
mod local;
mod metrics;
mod server;
mod state;
pub mod storage;
mod tls;
mod wire_errors;

pub use error::ServerError;
pub use local::LocalServer;
pub use server::{run, BoundAddrs, Listeners};

/// The control-plane gRPC types, shared with clients (`protocol::net`).
pub(crate) use protocol::net::proto;
