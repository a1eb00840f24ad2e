//! How engines talk to the shuffle service.
//!
//! [`ShuffleClient`] is the one trait an engine needs. It has two layers:
//!
//! * records: [`ShuffleClient::open_writer`] gives a [`ShuffleWriter`] that
//!   batches records per partition into compressed, checksummed blocks, and
//!   commits them; [`ShuffleClient::open_reader`] gives a [`ShuffleReader`]
//!   that yields a partition's records;
//! * blocks: [`ShuffleClient::push_blocks`] and [`ShuffleClient::commit_map`]
//!   for engines that build blocks themselves.
//!
//! Implementations: `EmbeddedShuffle` (feature `embedded`, on by default:
//! in process, over the server's
//! storage library) and [`RemoteShuffle`] (shuffle servers over TCP or
//! QUIC, one or many). Every implementation passes the conformance suite in
//! `tests/conformance`.

mod batching;
mod client;
#[cfg(feature = "embedded")]
pub mod embedded;
mod error;
pub mod remote;
#[cfg(feature = "embedded")]
pub mod service;

pub use batching::{Batcher, WriterOptions};
pub use client::{
    CommitAck, Placement, PushAck, ReadStats, RecordBatch, ShuffleClient, ShuffleHandle, ShuffleReader,
    ShuffleStatus, ShuffleWriter, WriteStats,
};
#[cfg(feature = "embedded")]
pub use embedded::{EmbeddedOptions, EmbeddedShuffle, EmbeddedStats};
pub use error::ClientError;
pub use protocol;
pub use remote::{QuicTrust, RemoteOptions, RemoteShuffle, ServerUrl};
#[cfg(feature = "embedded")]
pub use service::ServedShuffle;
