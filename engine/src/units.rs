//! Byte sizes and durations on the command line (the shared rules of
//! `protocol::units`).

pub use shuffle_client::protocol::units::{human_bytes, parse_duration, parse_size};
