//! State shared by every service of one running server.

use std::collections::HashMap;
use std::net::IpAddr;
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
    /// Pushes whose frame header arrived before any drain began.
    pub pushes: Arc<InFlight>,
    pub fetches: Arc<InFlight>,
    /// Commits in flight (the drain waits for a map's commit after its
    /// last push: see `server.rs`).
    pub commits: Arc<InFlight>,
    pub connections: Arc<Connections>,
    /// Result of the last disk check: at least one data dir is writable.
    pub disks_ok: AtomicBool,
}

impl Shared {
    pub fn new(store: Arc<Store>, config: ServerConfig, metrics: Metrics, grpc_port: u16) -> Self {
        // The store's budget: the data plane and streaming blocks share it.
        let budget: MemoryBudget = store.budget().clone();
        let apps = AppRegistry::new(config.app_timeout, config.max_apps);
        let connections = Arc::new(Connections::new(
            config.max_connections,
            config.max_connections_per_peer,
        ));
        // Apps restored from disk get a full timeout to heartbeat again.
        for app in store.app_ids() {
            apps.restore(&app);
        }
        Shared {
            store,
            budget,
            apps,
            config,
            grpc_port,
            draining: AtomicBool::new(false),
            pushes: Arc::default(),
            fetches: Arc::default(),
            commits: Arc::default(),
            connections,
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
    max_apps: usize,
    last_seen: Mutex<HashMap<AppId, Instant>>,
}

impl AppRegistry {
    fn new(timeout: Duration, max_apps: usize) -> Self {
        AppRegistry {
            timeout,
            max_apps,
            last_seen: Mutex::new(HashMap::new()),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<AppId, Instant>> {
        self.last_seen.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Registers or refreshes an app; a new one beyond `max_apps` is
    /// refused with `LimitExceeded`.
    pub fn touch(&self, app: &AppId) -> Result<(), ServiceError> {
        let mut map = self.map();
        if !map.contains_key(app) && map.len() >= self.max_apps {
            return Err(ServiceError::LimitExceeded {
                limit: "max_apps".into(),
                max: self.max_apps as u64,
                requested: map.len() as u64 + 1,
            });
        }
        map.insert(app.clone(), Instant::now());
        Ok(())
    }

    /// An app whose shuffles were restored from disk (never refused).
    fn restore(&self, app: &AppId) {
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

/// Open data-plane connections, in all and per peer address, against the
/// configured caps (`max_connections`, `max_connections_per_peer`).
#[derive(Debug)]
pub(crate) struct Connections {
    max_total: usize,
    max_per_peer: usize,
    open: Mutex<ConnCounts>,
}

#[derive(Debug, Default)]
struct ConnCounts {
    total: usize,
    per_peer: HashMap<IpAddr, usize>,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub(crate) struct ConnSlot {
    table: Arc<Connections>,
    peer: IpAddr,
}

impl Connections {
    fn new(max_total: usize, max_per_peer: usize) -> Self {
        Connections {
            max_total,
            max_per_peer,
            open: Mutex::default(),
        }
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, ConnCounts> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits a connection from `peer`, or says which cap it would break.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<ConnSlot, ServiceError> {
        let mut c = self.counts();
        let from_peer = c.per_peer.get(&peer).copied().unwrap_or(0);
        if c.total >= self.max_total {
            return Err(ServiceError::LimitExceeded {
                limit: "max_connections".into(),
                max: self.max_total as u64,
                requested: c.total as u64 + 1,
            });
        }
        if from_peer >= self.max_per_peer {
            return Err(ServiceError::LimitExceeded {
                limit: format!("max_connections_per_peer ({peer})"),
                max: self.max_per_peer as u64,
                requested: from_peer as u64 + 1,
            });
        }
        c.total += 1;
        *c.per_peer.entry(peer).or_insert(0) += 1;
        Ok(ConnSlot {
            table: self.clone(),
            peer,
        })
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut c = self.table.counts();
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                c.per_peer.remove(&self.peer);
            }
        }
    }
}

/// Counts requests in flight so that draining can wait for them.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    count: AtomicUsize,
    idle: Notify,
    /// When the last request ended (`None` before the first).
    last_done: std::sync::Mutex<Option<std::time::Instant>>,
}

/// Held while a request runs.
#[derive(Debug)]
pub(crate) struct InFlightGuard(Arc<InFlight>);

impl InFlight {
    pub fn enter(self: &Arc<Self>) -> InFlightGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        InFlightGuard(self.clone())
    }

    pub fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// How long ago the last request ended (`None`: none ever did).
    pub fn since_last_done(&self) -> Option<Duration> {
        self.last_done
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .map(|t| t.elapsed())
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

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        *self
            .0
            .last_done
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(std::time::Instant::now());
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
        let apps = AppRegistry::new(Duration::from_millis(50), 2);
        let (a, b) = (AppId::new("a").expect("id"), AppId::new("b").expect("id"));
        apps.touch(&a).expect("room");
        apps.touch(&b).expect("room");
        let c = AppId::new("c").expect("id");
        assert!(matches!(
            apps.touch(&c),
            Err(ServiceError::LimitExceeded {
                max: 2,
                requested: 3,
                ..
            })
        ));
        apps.touch(&a).expect("a known app is refreshed, not refused");
        let later = Instant::now() + Duration::from_millis(100);
        assert!(apps.heartbeat(&a));
        let mut expired = apps.take_expired(later);
        expired.sort();
        assert_eq!(expired, vec![a.clone(), b.clone()]);
        assert!(!apps.heartbeat(&a), "an expired app is unknown");
        apps.touch(&a).expect("room again");
        assert!(apps.take_expired(Instant::now()).is_empty());
    }

    #[test]
    fn connections_are_capped_in_all_and_per_peer() {
        let table = Arc::new(Connections::new(3, 2));
        let (p, q) = ("127.0.0.2".parse().expect("ip"), "127.0.0.3".parse().expect("ip"));
        let a = table.admit(p).expect("1st");
        let _b = table.admit(p).expect("2nd");
        let err = table.admit(p).expect_err("3rd from one peer");
        assert!(
            err.to_string().contains("max_connections_per_peer (127.0.0.2)"),
            "{err}"
        );
        let _c = table.admit(q).expect("another peer");
        assert!(table.admit(q).is_err(), "in all");
        drop(a);
        let _d = table.admit(q).expect("a place was freed");
    }

    #[tokio::test]
    async fn wait_idle_returns_when_the_last_request_ends() {
        let f: Arc<InFlight> = Arc::default();
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
