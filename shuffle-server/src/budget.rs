//! The memory budget for buffered data.
//!
//! Backpressure rule: a connection reads a frame's length prefix, then waits
//! here for that many bytes of credit *before* it reads the body (a sender
//! that then stalls gives back what it has not sent: see
//! `data/framing.rs`). While it waits it reads nothing, so the peer's writes stall in the
//! transport's own flow control (TCP window, QUIC stream credit) instead of
//! in the server's memory. Fetch streams take credit for each chunk before
//! encoding it and hold it until the chunk is written to the socket; the
//! next chunk is read only after that (see `FrameSink` in `data/fetch.rs`), so a stalled
//! reader pins at most one chunk (1 MiB plus at most one block) and never
//! waits in the budget's queue. Credit is returned when the [`Credit`] is
//! dropped; the sum of live credits never exceeds the budget. (A single
//! block larger than the whole budget, possible only if the budget was
//! lowered below the frame size it was written with, is sent with credit
//! for the whole budget.)
//!
//! The [`crate::storage::Store`] owns the budget (see
//! [`crate::storage::StoreConfig::memory_budget`]); in the server the data
//! plane uses that same budget, so `rss_buffer_bytes` counts push frames,
//! fetch chunks and the in-memory blocks of streaming shuffles together.
//! Streaming (pipelined, hybrid) blocks keep their credit until a reader
//! consumes them or they are spilled; see `storage/stream_push.rs` for the rules
//! that keep that from deadlocking.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::Metrics;

/// How often a wait for credit adds to `rss_backpressure_seconds_total`.
const BACKPRESSURE_TICK: Duration = Duration::from_millis(100);

/// Byte-exact budget, shared by every connection.
#[derive(Clone, Debug)]
pub struct MemoryBudget {
    permits: Arc<Semaphore>,
    limit: u64,
    metrics: Option<Metrics>,
}

/// Bytes of the budget held by one buffer. Dropping it returns them.
#[derive(Debug)]
pub struct Credit {
    permit: Option<OwnedSemaphorePermit>,
    bytes: u32,
    metrics: Option<Metrics>,
}

impl Drop for Credit {
    fn drop(&mut self) {
        if let Some(m) = &self.metrics {
            m.buffer_bytes.sub(i64::from(self.bytes));
        }
    }
}

impl Credit {
    /// Bytes this credit holds.
    pub fn bytes(&self) -> u32 {
        self.bytes
    }

    /// Adds `other`'s bytes to this credit (both from the same budget).
    pub fn merge(&mut self, mut other: Credit) {
        match (&mut self.permit, other.permit.take()) {
            (Some(mine), Some(theirs)) => mine.merge(theirs),
            (mine @ None, theirs) => *mine = theirs,
            (Some(_), None) => {}
        }
        self.bytes += other.bytes;
        // `other` now holds nothing: its drop must not count its bytes again.
        other.bytes = 0;
    }

    /// Splits `bytes` off this credit into a new one (all that is left when
    /// it holds fewer). The two are returned to the budget separately.
    pub fn split_off(&mut self, bytes: u32) -> Credit {
        let bytes = bytes.min(self.bytes);
        let permit = if bytes == self.bytes {
            self.permit.take()
        } else {
            self.permit.as_mut().and_then(|p| p.split(bytes as usize))
        };
        self.bytes -= bytes;
        Credit {
            permit,
            bytes,
            metrics: self.metrics.clone(),
        }
    }
}

impl MemoryBudget {
    /// A budget of `limit` bytes (capped at what a semaphore can count).
    pub fn new(limit: u64, metrics: Metrics) -> Self {
        let limit = limit.min(Semaphore::MAX_PERMITS as u64);
        metrics
            .buffer_limit_bytes
            .set(i64::try_from(limit).unwrap_or(i64::MAX));
        MemoryBudget {
            permits: Arc::new(Semaphore::new(limit as usize)),
            limit,
            metrics: Some(metrics),
        }
    }

    /// A budget of `limit` bytes that reports no metrics (the embedded
    /// store's).
    pub fn unmetered(limit: u64) -> Self {
        let limit = limit.min(Semaphore::MAX_PERMITS as u64);
        MemoryBudget {
            permits: Arc::new(Semaphore::new(limit as usize)),
            limit,
            metrics: None,
        }
    }

    fn cap(&self, bytes: u32) -> u32 {
        bytes.min(u32::try_from(self.limit).unwrap_or(u32::MAX))
    }

    fn credit(&self, permit: OwnedSemaphorePermit, bytes: u32) -> Credit {
        if let Some(m) = &self.metrics {
            m.buffer_bytes.add(i64::from(bytes));
        }
        Credit {
            permit: Some(permit),
            bytes,
            metrics: self.metrics.clone(),
        }
    }

    /// Takes `bytes` of credit if they are free right now; never waits.
    pub fn try_acquire(&self, bytes: u32) -> Option<Credit> {
        let bytes = self.cap(bytes);
        let permit = self.permits.clone().try_acquire_many_owned(bytes).ok()?;
        Some(self.credit(permit, bytes))
    }

    /// The budget in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes currently held.
    pub fn in_use(&self) -> u64 {
        self.limit - self.permits.available_permits() as u64
    }

    /// Waits until `bytes` of credit are free and takes them. `bytes` must
    /// not exceed the limit (the frame limit is validated against it).
    pub async fn acquire(&self, bytes: u32) -> Credit {
        let bytes = self.cap(bytes);
        let permit = match self.permits.clone().try_acquire_many_owned(bytes) {
            Ok(p) => p,
            Err(_) => {
                // The semaphore is never closed, so this only waits (in
                // FIFO order). The wait is counted while it lasts, so a
                // stuck wait shows in the metric, not only a finished one.
                let wait = self.permits.clone().acquire_many_owned(bytes);
                tokio::pin!(wait);
                let mut counted = Instant::now();
                let p = loop {
                    tokio::select! {
                        p = &mut wait => break p,
                        _ = tokio::time::sleep(BACKPRESSURE_TICK) => self.count_wait(&mut counted),
                    }
                };
                self.count_wait(&mut counted);
                match p {
                    Ok(p) => p,
                    Err(_) => unreachable_closed(),
                }
            }
        };
        self.credit(permit, bytes)
    }

    fn count_wait(&self, since: &mut Instant) {
        let now = Instant::now();
        if let Some(m) = &self.metrics {
            m.backpressure_seconds
                .inc_by(now.duration_since(*since).as_secs_f64());
        }
        *since = now;
    }
}

#[cold]
fn unreachable_closed() -> ! {
    // `MemoryBudget` owns the semaphore and never calls `close`.
    panic!("memory budget semaphore closed")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn credit_is_byte_exact_and_waits_when_exhausted() {
        let budget = MemoryBudget::new(1000, Metrics::new());
        let a = budget.acquire(600).await;
        let b = budget.acquire(400).await;
        assert_eq!(budget.in_use(), 1000);
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.acquire(300).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "over budget: must wait");
        drop(a);
        let c = waiting.await.expect("joined");
        assert_eq!(budget.in_use(), 700);
        drop((b, c));
        assert_eq!(budget.in_use(), 0);
        assert_eq!(budget.metrics.as_ref().map(|m| m.buffer_bytes.get()), Some(0));
    }

    #[test]
    fn split_credit_returns_each_part_separately() {
        let budget = MemoryBudget::new(1000, Metrics::new());
        let mut whole = budget.try_acquire(900).expect("free");
        assert!(budget.try_acquire(200).is_none(), "only 100 left");
        let part = whole.split_off(300);
        assert_eq!((whole.bytes(), part.bytes()), (600, 300));
        drop(whole);
        assert_eq!(budget.in_use(), 300);
        let rest = budget.try_acquire(700).expect("600 came back");
        drop((part, rest));
        assert_eq!(budget.in_use(), 0);
        assert_eq!(budget.metrics.as_ref().map(|m| m.buffer_bytes.get()), Some(0));
    }
}
