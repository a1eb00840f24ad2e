//! Benchmarks of the shuffle service.
//!
//! * [`workload`]: records generated in memory before the clock starts, and
//!   the map (push) and reduce (fetch) phases run against any
//!   `ShuffleClient`.
//! * [`servers`]: shuffle-server daemons started as child processes on
//!   loopback, so their memory is measured apart from the load generator.
//! * [`baseline`]: this machine's own limits, measured in the same run:
//!   sequential disk write and read, memory copy, loopback TCP.
//! * [`stats`]: latency percentiles.
//! * [`hostile`]: a hostile load beside the benchmark (idle connections,
//!   half-sent frames, registrations up to every limit).
//!
//! The `shuffle-bench` binary ties them together.

pub mod baseline;
pub mod hostile;
pub mod servers;
pub mod stats;
pub mod units;
pub mod workload;
