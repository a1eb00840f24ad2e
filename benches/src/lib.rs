//! Benchmarks of the shuffle service.
//!
//! Not filled yet: the criterion micro-benchmarks and the end-to-end
//! `shuffle-bench` load generator land with the benchmarks issue. Until
//! then, `engine run terasort --json` reports the end-to-end wall time next
//! to the data generation baseline measured in the same run.
