//! Sizes on the command line (the shared rules of `protocol::units`).

pub use protocol::units::{human_bytes, parse_size};
