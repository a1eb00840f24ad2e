//! The store's counters, shared with its readers (which count checksum
//! mismatches they find).

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(super) blocks_stored: AtomicU64,
    pub(super) bytes_stored: AtomicU64,
    pub(super) duplicates_dropped: AtomicU64,
    pub(super) checksum_mismatches: AtomicU64,
}

impl Counters {
    pub(crate) fn checksum_mismatch(&self) {
        self.checksum_mismatches.fetch_add(1, Ordering::Relaxed);
    }
}
