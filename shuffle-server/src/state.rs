//! State shared by every service of one running server.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use protocol::{AppId, ServiceError};
use tokio::sync::Notify;

use crate::budget::MemoryBudget;
use crate::config::ServerConfig;
use crate::metrics::Metrics;
use crate::storage::Store;

/// Everything the services share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub store: Arc<Store>,
    pub metrics: Metrics,
    pub budget: MemoryBudget,
    pub apps: AppRegistry,
    pub config: ServerConfig,
    pub grpc_port: u16,
    draining: AtomicBool,
    pub pushes: InFlight,
    /// Result of the last disk check: at least one data dir is writable.
    pub disks_ok: AtomicBool,
}

impl Shared {
    pub fn new(store: Arc<Store>, config: ServerConfig, metrics: Metrics, grpc_port: u16) -> Self {
        // The store's budget: the data plane and streaming blocks share it.
        let budget: MemoryBudget = store.budget().clone();
        let apps = AppRegistry::new(config.app_timeout);
        // Apps restored from disk get a full timeout to heartbeat again.
        for app in store.app_ids() {
            apps.touch(&app);
        }
        Shared {
            store,
            budget,
            apps,
            config,
            grpc_port,
            draining: AtomicBool::new(false),
            pushes: InFlight::default(),
            disks_ok: AtomicBool::new(true),
            metrics,
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
        self.metrics.draining.set(1);
    }

    /// Refuses new work while draining.
    pub fn refuse_if_draining(&self) -> Result<(), ServiceError> {
        if self.is_draining() {
            self.metrics
                .rejected_requests
                .with_label_values(&["draining"])
                .inc();
            return Err(ServiceError::Draining);
        }
        Ok(())
    }

    /// Counts a refused request by its reason.
    pub fn rejected(&self, err: &ServiceError) {
        self.metrics
            .rejected_requests
            .with_label_values(&[err.reason()])
            .inc();
    }
}

/// Resolves once the watched flag turns true (or its sender is gone).
pub(crate) async fn stopped(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Applications and when they were last heard from.
#[derive(Debug)]
pub(crate) struct AppRegistry {
    timeout: Duration,
    last_seen: Mutex<HashMap<AppId, Instant>>,
}

impl AppRegistry {
    fn new(timeout: Duration) -> Self {
        AppRegistry {
            timeout,
            last_seen: Mutex::new(HashMap::new()),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<AppId, Instant>> {
        self.last_seen.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Registers or refreshes an app.
    pub fn touch(&self, app: &AppId) {
        self.map().insert(app.clone(), Instant::now());
    }

    /// Refreshes a known app; false when it is unknown (or expired).
    pub fn heartbeat(&self, app: &AppId) -> bool {
        match self.map().get_mut(app) {
            Some(seen) => {
                *seen = Instant::now();
                true
            }
            None => false,
        }
    }

    pub fn remove(&self, app: &AppId) {
        self.map().remove(app);
    }

    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// Removes and returns the apps silent for longer than the timeout.
    pub fn take_expired(&self, now: Instant) -> Vec<AppId> {
        let mut map = self.map();
        let expired: Vec<AppId> = map
            .iter()
            .filter(|(_, seen)| now.duration_since(**seen) > self.timeout)
            .map(|(app, _)| app.clone())
            .collect();
        for app in &expired {
            map.remove(app);
        }
        expired
    }
}

/// Counts requests in flight so that draining can wait for them.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

/// Held while a request runs.
#[derive(Debug)]
pub(crate) struct InFlightGuard<'a>(&'a InFlight);

impl InFlight {
    pub fn enter(&self) -> InFlightGuard<'_> {
        self.count.fetch_add(1, Ordering::AcqRel);
        InFlightGuard(self)
    }

    pub fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Resolves once nothing is in flight.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silent_apps_expire_and_heartbeats_keep_them() {
        let apps = AppRegistry::new(Duration::from_millis(50));
        let (a, b) = (AppId::new("a").expect("id"), AppId::new("b").expect("id"));
        apps.touch(&a);
        apps.touch(&b);
        let later = Instant::now() + Duration::from_millis(100);
        assert!(apps.heartbeat(&a));
        let mut expired = apps.take_expired(later);
        expired.sort();
        assert_eq!(expired, vec![a.clone(), b.clone()]);
        assert!(!apps.heartbeat(&a), "an expired app is unknown");
        apps.touch(&a);
        assert!(apps.take_expired(Instant::now()).is_empty());
    }

    #[tokio::test]
    async fn wait_idle_returns_when_the_last_request_ends() {
        let f = Arc::new(InFlight::default());
        let g = f.enter();
        let waiter = tokio::spawn({
            let f = f.clone();
            async move { f.wait_idle().await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiter.is_finished());
        drop(g);
        waiter.await.expect("idle");
    }
}
