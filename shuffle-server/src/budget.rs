//! The memory budget for buffered data.
//!
//! Backpressure rule: a connection reads a frame's length prefix, then waits
//! here for that many bytes of credit *before* it reads (and allocates) the
//! body. While it waits it reads nothing, so the peer's writes stall in the
//! transport's own flow control (TCP window, QUIC stream credit) instead of
//! in the server's memory. Fetch streams take credit for each chunk before
//! encoding it and hold it until the chunk is written to the socket; the
//! next chunk is read only after that (see `FrameSink`), so a stalled
//! reader pins at most one chunk (1 MiB plus at most one block) and never
//! waits in the budget's queue. Credit is returned when the [`Credit`] is
//! dropped; the sum of live credits never exceeds the budget. (A single
//! block larger than the whole budget, possible only if the budget was
//! lowered below the frame size it was written with, is sent with credit
//! for the whole budget.)

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::Metrics;

/// Byte-exact budget, shared by every connection.
#[derive(Clone, Debug)]
pub struct MemoryBudget {
    permits: Arc<Semaphore>,
    limit: u64,
    metrics: Metrics,
}

/// Bytes of the budget held by one buffer. Dropping it returns them.
#[derive(Debug)]
pub struct Credit {
    _permit: OwnedSemaphorePermit,
    bytes: u32,
    metrics: Metrics,
}

impl Drop for Credit {
    fn drop(&mut self) {
        self.metrics.buffer_bytes.sub(i64::from(self.bytes));
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
            metrics,
        }
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
        let bytes = bytes.min(u32::try_from(self.limit).unwrap_or(u32::MAX));
        let permit = match self.permits.clone().try_acquire_many_owned(bytes) {
            Ok(p) => p,
            Err(_) => {
                let waited = Instant::now();
                // The semaphore is never closed, so this only waits.
                let p = self.permits.clone().acquire_many_owned(bytes).await;
                self.metrics
                    .backpressure_seconds
                    .inc_by(waited.elapsed().as_secs_f64());
                match p {
                    Ok(p) => p,
                    Err(_) => unreachable_closed(),
                }
            }
        };
        self.metrics.buffer_bytes.add(i64::from(bytes));
        Credit {
            _permit: permit,
            bytes,
            metrics: self.metrics.clone(),
        }
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
        assert_eq!(budget.metrics.buffer_bytes.get(), 0);
    }
}
