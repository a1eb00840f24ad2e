//! The server's periodic jobs, every `check_interval`: export the store's
//! disk state and disk writes by mode as metrics (which also updates
//! readiness), expire apps that stopped sending heartbeats, and refresh
//! the gauges. None does disk I/O on the async threads: the store probes
//! its disks on its own thread, and expired apps are deleted in
//! `spawn_blocking`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

use crate::state::Shared;
use crate::storage::DiskErrorKind;

/// Runs the jobs until `stop` turns true.
pub(crate) async fn run(shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(shared.config.check_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stopped = crate::state::stopped(stop);
    tokio::pin!(stopped);
    let mut exported = Exported::default();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut stopped => return,
        }
        let written = export_disk_metrics(&shared, &mut exported);
        export_written_by_mode(&shared, &mut exported, written);
        expire_apps(&shared).await;
        export_gauges(&shared);
    }
}

/// What the store's counters were at the last export, so counters advance
/// by deltas.
#[derive(Debug, Default)]
struct Exported {
    /// Per data directory: bytes written, errors by kind.
    written: Vec<u64>,
    errors: Vec<[u64; 2]>,
    /// Bytes written by hybrid shuffles, per mode, and by blocking ones.
    spilled: Vec<u64>,
    blocking: u64,
}

/// Exports the store's disk state (no I/O: the store probes its disks
/// itself): flushed bytes and errors as counter deltas, stored and free
/// bytes, health. Updates readiness. Returns the bytes written in all.
fn export_disk_metrics(shared: &Shared, before: &mut Exported) -> u64 {
    let status = shared.store.disk_status();
    before.written.resize(status.len(), 0);
    before.errors.resize(status.len(), [0; 2]);
    let m = &shared.metrics;
    let mut total_written = 0;
    for (i, disk) in status.iter().enumerate() {
        let label = disk.path.display().to_string();
        total_written += disk.written_bytes;
        m.flush_bytes
            .with_label_values(&[&label])
            .inc_by(disk.written_bytes.saturating_sub(before.written[i]));
        before.written[i] = disk.written_bytes;
        for kind in DiskErrorKind::ALL {
            let k = kind as usize;
            m.disk_errors
                .with_label_values(&[&label, kind.label()])
                .inc_by(disk.errors[k].saturating_sub(before.errors[i][k]));
            before.errors[i][k] = disk.errors[k];
        }
        m.stored_bytes
            .with_label_values(&[&label])
            .set(i64::try_from(disk.stored_bytes).unwrap_or(i64::MAX));
        if let Some(free) = disk.free_bytes {
            m.disk_free_bytes
                .with_label_values(&[&label])
                .set(i64::try_from(free).unwrap_or(i64::MAX));
        }
        m.disk_healthy
            .with_label_values(&[&label])
            .set(i64::from(disk.healthy));
        m.disk_accepting
            .with_label_values(&[&label])
            .set(i64::from(disk.accepting));
    }
    shared
        .disks_ok
        .store(status.iter().any(|d| d.accepting), Ordering::Release);
    total_written
}

/// `rss_spill_bytes_total` by mode: what hybrid shuffles wrote, by
/// strategy; blocking writes are the rest of `total_written`.
fn export_written_by_mode(shared: &Shared, before: &mut Exported, total_written: u64) {
    let spilled = shared.store.spilled_bytes_by_mode();
    before.spilled.resize(spilled.len(), 0);
    let mut hybrid_total = 0;
    for ((mode, now), last) in spilled.iter().zip(before.spilled.iter_mut()) {
        hybrid_total += now;
        shared
            .metrics
            .spill_bytes
            .with_label_values(&[mode.name()])
            .inc_by(now.saturating_sub(*last));
        *last = *now;
    }
    let blocking = total_written.saturating_sub(hybrid_total);
    shared
        .metrics
        .spill_bytes
        .with_label_values(&["blocking"])
        .inc_by(blocking.saturating_sub(before.blocking));
    before.blocking = before.blocking.max(blocking);
}

/// Deletes the data of apps whose heartbeats stopped.
async fn expire_apps(shared: &Shared) {
    for app in shared.apps.take_expired(Instant::now()) {
        tracing::info!(%app, "app expired: no heartbeat, deleting its data");
        shared.metrics.expired_applications.inc();
        let store = shared.store.clone();
        let result = tokio::task::spawn_blocking(move || store.unregister_app(&app)).await;
        if let Ok(Err(e)) = result {
            tracing::error!("deleting an expired app failed: {e}");
        }
    }
}

/// The active apps and shuffles gauges.
fn export_gauges(shared: &Shared) {
    shared.metrics.active_applications.set(shared.apps.len() as i64);
    shared
        .metrics
        .active_shuffles
        .set(shared.store.shuffle_count() as i64);
}
