//! The one retry policy of the remote client: every call that retries
//! (pushes, commits, control calls, app registration, the blocking
//! reader's resume) goes through [`Backoff`].
//!
//! * Which errors: connection-class errors ([`ClientError::Connection`],
//!   [`ClientError::Draining`], [`ClientError::Busy`]) are retried until
//!   `retry_window` has passed since the call's first failure, however many
//!   attempts that takes, so a server restart shorter than the window costs
//!   the caller nothing. The other retryable errors
//!   ([`ClientError::Internal`], [`ClientError::Io`]) are retried at most
//!   `max_retries` times. [`ClientError::NotReady`] is returned at once (only
//!   the caller knows when more maps have committed), and so is every
//!   error that is not retryable.
//! * How long to wait: before retry `n` (0, 1, ...) the call sleeps a
//!   uniformly random time in `[0, min(retry_max_delay, retry_backoff *
//!   2^n)]` ("full jitter"). Full rather than equal jitter: after a restart
//!   every client of the server retries at once, and full jitter spreads
//!   them over the whole interval, so the server sees the fewest
//!   collisions and the callers, on average, the shortest wait (half of
//!   equal jitter's guaranteed minimum is wasted when the server is back).
//!   The randomness is a splitmix64 seeded from `RandomState` and the
//!   clock: no crate, no global state.
//! * The last sleep inside the window is cut to end at the window, so one
//!   attempt is made at its end.
//!
//! Bounds, from the first failure of a call until its error surfaces:
//!
//! * connection-class errors only: at most `retry_window` plus the length
//!   of one attempt (a refused connect returns at once; an attempt waits at
//!   most `connect_timeout` to connect and `request_timeout` for a reply).
//!   With the defaults, 30 s after a server went away for good (plus up to
//!   5 s if its host stopped answering instead of refusing);
//! * `Internal` / `Io` only: `max_retries` retries, sleeping at most
//!   `sum(min(retry_max_delay, retry_backoff * 2^n), n < max_retries)` in
//!   all, 1.55 s with the defaults (50 + 100 + 200 + 400 + 800 ms), plus
//!   the attempts themselves;
//! * a mix: the two limits are counted apart, so at most the sum of both.
//!
//! Each retry is logged at debug (attempt, delay, error); a call that gives
//! up on a retryable error logs once at warn.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::RemoteOptions;
use crate::ClientError;

/// The settings of the policy, from [`RemoteOptions`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RetryPolicy {
    /// Upper bound of the first delay, doubled at each retry.
    pub backoff: Duration,
    /// Upper bound of any one delay.
    pub max_delay: Duration,
    /// Retries of `Internal` / `Io` errors.
    pub max_retries: u32,
    /// How long connection-class errors are retried after the first failure.
    pub window: Duration,
}

impl RetryPolicy {
    pub fn new(options: &RemoteOptions) -> Self {
        RetryPolicy {
            backoff: options.retry_backoff,
            max_delay: options.retry_max_delay,
            max_retries: options.max_retries,
            window: options.retry_window,
        }
    }

    /// Upper bound of the delay before retry `n`.
    fn cap(&self, n: u32) -> Duration {
        self.backoff
            .saturating_mul(2u32.saturating_pow(n))
            .min(self.max_delay)
    }
}

/// How the policy treats an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// Retried until the window is over.
    Connection,
    /// Retried at most `max_retries` times.
    Counted,
    /// Returned at once.
    Final,
}

fn class(e: &ClientError) -> Class {
    match e {
        ClientError::Connection { .. } | ClientError::Draining { .. } | ClientError::Busy { .. } => {
            Class::Connection
        }
        ClientError::NotReady { .. } => Class::Final,
        e if e.is_retryable() => Class::Counted,
        _ => Class::Final,
    }
}

/// The retry state of one call (or of one interruption of a read).
#[derive(Debug)]
pub(crate) struct Backoff {
    policy: RetryPolicy,
    /// Retries so far: the exponent of the next delay's bound.
    retries: u32,
    /// Retries of `Counted` errors so far.
    counted: u32,
    first_failure: Option<Instant>,
    rng: SplitMix64,
}

impl Backoff {
    pub fn new(policy: RetryPolicy) -> Self {
        Backoff {
            policy,
            retries: 0,
            counted: 0,
            first_failure: None,
            rng: SplitMix64::seeded(),
        }
    }

    /// Forgets past failures (a read made progress: the next interruption
    /// gets a whole window again).
    pub fn reset(&mut self) {
        self.retries = 0;
        self.counted = 0;
        self.first_failure = None;
    }

    /// After a failure seen at `now`: the sleep before the next attempt, or
    /// `None` to give up and return the error.
    fn next_delay(&mut self, e: &ClientError, now: Instant) -> Option<Duration> {
        let class = class(e);
        if class == Class::Final {
            return None;
        }
        let first = *self.first_failure.get_or_insert(now);
        let mut delay = self.jitter(self.retries);
        match class {
            Class::Connection => {
                let deadline = first + self.policy.window;
                if now >= deadline {
                    return None;
                }
                delay = delay.min(deadline - now);
            }
            Class::Counted => {
                if self.counted >= self.policy.max_retries {
                    return None;
                }
                self.counted += 1;
            }
            Class::Final => return None,
        }
        self.retries = self.retries.saturating_add(1);
        Some(delay)
    }

    /// A uniformly random delay in `[0, cap(n)]`.
    fn jitter(&mut self, n: u32) -> Duration {
        let cap = u64::try_from(self.policy.cap(n).as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(self.rng.up_to(cap))
    }

    /// Sleeps before the next attempt of `what`, or hands `e` back when the
    /// call should give up.
    pub async fn wait(&mut self, what: &str, e: ClientError) -> Result<(), ClientError> {
        match self.next_delay(&e, Instant::now()) {
            Some(delay) => {
                tracing::debug!(
                    call = what,
                    attempt = self.retries,
                    delay_ms = delay.as_millis() as u64,
                    "retrying after: {e}"
                );
                tokio::time::sleep(delay).await;
                Ok(())
            }
            None => {
                if class(&e) != Class::Final {
                    let elapsed = self.first_failure.map(|t| t.elapsed()).unwrap_or_default();
                    tracing::warn!(
                        call = what,
                        retries = self.retries,
                        elapsed_ms = elapsed.as_millis() as u64,
                        "giving up: {e}"
                    );
                }
                Err(e)
            }
        }
    }
}

/// Runs `op` until it succeeds or the policy gives up.
pub(crate) async fn retry<T, F, Fut>(policy: RetryPolicy, what: &str, mut op: F) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let mut backoff = Backoff::new(policy);
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) => backoff.wait(what, e).await?,
        }
    }
}

/// splitmix64: a tiny, good-enough generator for jitter.
#[derive(Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn seeded() -> Self {
        // `RandomState` keys differ per process and per call; the clock
        // adds entropy between processes started at once.
        let mut h = RandomState::new().build_hasher();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        h.write_u128(nanos);
        SplitMix64(h.finish())
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, max]` (multiply-shift: no modulo, no loop).
    fn up_to(&mut self, max: u64) -> u64 {
        ((u128::from(self.next()) * (u128::from(max) + 1)) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            backoff: Duration::from_millis(50),
            max_delay: Duration::from_secs(2),
            max_retries: 5,
            window: Duration::from_secs(30),
        }
    }

    fn connection() -> ClientError {
        ClientError::Connection {
            server: "s".into(),
            reason: "refused".into(),
        }
    }

    fn internal() -> ClientError {
        ClientError::Internal {
            server: "s".into(),
            reason: "disk".into(),
        }
    }

    #[test]
    fn delays_stay_within_the_exponential_bound() {
        let mut b = Backoff::new(policy());
        let start = Instant::now();
        for n in 0..20u32 {
            let cap = policy().cap(n);
            let d = b.next_delay(&connection(), start).expect("inside the window");
            assert!(d <= cap, "retry {n}: {d:?} > {cap:?}");
        }
        assert_eq!(policy().cap(0), Duration::from_millis(50));
        assert_eq!(policy().cap(3), Duration::from_millis(400));
        assert_eq!(policy().cap(6), Duration::from_secs(2));
        assert_eq!(policy().cap(u32::MAX), Duration::from_secs(2));
    }

    #[test]
    fn jitter_spreads_over_the_whole_interval() {
        let mut b = Backoff::new(RetryPolicy {
            max_delay: Duration::from_secs(1),
            backoff: Duration::from_secs(1),
            ..policy()
        });
        let samples: Vec<Duration> = (0..2000).map(|_| b.jitter(0)).collect();
        let low = samples
            .iter()
            .filter(|d| **d < Duration::from_millis(250))
            .count();
        let high = samples
            .iter()
            .filter(|d| **d > Duration::from_millis(750))
            .count();
        // Each quarter holds about 500 of 2000; far from 0 either way.
        assert!(low > 300 && high > 300, "low {low}, high {high}");
        assert!(samples.iter().all(|d| *d <= Duration::from_secs(1)));
    }

    #[test]
    fn connection_errors_retry_until_the_window_ends_whatever_max_retries() {
        let mut b = Backoff::new(RetryPolicy {
            max_retries: 0,
            ..policy()
        });
        let start = Instant::now();
        for i in 0..100u64 {
            let now = start + Duration::from_millis(290 * i);
            let d = b.next_delay(&connection(), now).expect("inside the window");
            // The last sleep ends at the window's end, not after it.
            assert!(now + d <= start + Duration::from_secs(30));
        }
        let busy = ClientError::Busy {
            server: "s".into(),
            reason: "credit".into(),
        };
        assert!(b
            .next_delay(&busy, start + Duration::from_millis(29_999))
            .is_some());
        let draining = ClientError::Draining { server: "s".into() };
        assert_eq!(b.next_delay(&draining, start + Duration::from_secs(30)), None);
    }

    #[test]
    fn the_window_starts_at_the_first_failure_and_a_reset_restarts_it() {
        let mut b = Backoff::new(policy());
        let t0 = Instant::now() + Duration::from_secs(100);
        assert!(b.next_delay(&connection(), t0).is_some());
        assert_eq!(b.next_delay(&connection(), t0 + Duration::from_secs(31)), None);
        b.reset();
        assert!(b
            .next_delay(&connection(), t0 + Duration::from_secs(31))
            .is_some());
    }

    #[test]
    fn other_retryable_errors_keep_the_count_limit() {
        let mut b = Backoff::new(policy());
        let now = Instant::now();
        for _ in 0..5 {
            assert!(b.next_delay(&internal(), now).is_some());
        }
        assert_eq!(b.next_delay(&internal(), now), None);
        // Connection errors are not counted against it.
        assert!(b.next_delay(&connection(), now).is_some());
    }

    #[test]
    fn not_ready_and_final_errors_are_returned_at_once() {
        let mut b = Backoff::new(policy());
        let now = Instant::now();
        let not_ready = ClientError::NotReady {
            shuffle: protocol::ShuffleId(1),
            committed: 0,
            num_maps: 2,
        };
        assert_eq!(b.next_delay(&not_ready, now), None);
        let corrupt = ClientError::Corrupt {
            location: "s".into(),
            reason: "bad".into(),
        };
        assert_eq!(b.next_delay(&corrupt, now), None);
    }

    #[tokio::test]
    async fn retry_returns_the_first_success_and_the_final_error() {
        let policy = RetryPolicy {
            backoff: Duration::from_millis(1),
            ..policy()
        };
        let mut calls = 0;
        let v = retry(policy, "test", || {
            calls += 1;
            let n = calls;
            async move {
                if n < 4 {
                    Err(connection())
                } else {
                    Ok(n)
                }
            }
        })
        .await
        .expect("succeeds on the fourth call");
        assert_eq!(v, 4);
        let mut calls = 0;
        let e = retry(policy, "test", || {
            calls += 1;
            async { Err::<(), _>(internal()) }
        })
        .await;
        assert!(matches!(e, Err(ClientError::Internal { .. })));
        assert_eq!(calls, 6, "one call and max_retries retries");
    }
}
