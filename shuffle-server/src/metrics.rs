//! Prometheus metrics, named as in DESIGN.md: base units, low-cardinality
//! labels only (never an app or shuffle id).

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use protocol::ServiceError;

/// Reasons a request is refused (the `reason` label) besides the service
/// errors' own (`ServiceError::REASONS`, from the one error table): a
/// connection that broke.
pub const TRANSPORT_REASONS: [&str; 1] = ["connection"];

/// Every metric the server exports, in its own registry.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    pub push_bytes: IntCounterVec,
    pub push_requests: IntCounterVec,
    pub push_duration: Histogram,
    pub fetch_bytes: IntCounterVec,
    pub fetch_duration: Histogram,
    pub fetch_failures: IntCounterVec,
    pub flush_bytes: IntCounterVec,
    pub spill_bytes: IntCounterVec,
    pub active_applications: IntGauge,
    pub active_shuffles: IntGauge,
    pub stored_bytes: IntGaugeVec,
    pub disk_free_bytes: IntGaugeVec,
    pub buffer_bytes: IntGauge,
    pub buffer_limit_bytes: IntGauge,
    pub backpressure_seconds: prometheus::Counter,
    pub rejected_requests: IntCounterVec,
    pub checksum_mismatches: IntCounter,
    pub duplicate_blocks_dropped: IntCounter,
    pub open_connections: IntGaugeVec,
    pub draining: IntGauge,
    pub expired_applications: IntCounter,
    pub disk_errors: IntCounterVec,
    pub disk_healthy: IntGaugeVec,
    pub disk_accepting: IntGaugeVec,
    pub quarantined_shuffles: IntCounter,
    pub replication_bytes: IntCounter,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: T) -> T {
    // Names are unique constants: registration only fails on a duplicate,
    // which is a programming error caught by the tests.
    if let Err(e) = registry.register(Box::new(metric.clone())) {
        tracing::error!("metric registration failed: {e}");
    }
    metric
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let r = Registry::new();
        let counter_vec = |name: &str, help: &str, label: &str| {
            register(
                &r,
                IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric opts"),
            )
        };
        let gauge_vec = |name: &str, help: &str, label: &str| {
            register(
                &r,
                IntGaugeVec::new(Opts::new(name, help), &[label]).expect("valid metric opts"),
            )
        };
        let gauge =
            |name: &str, help: &str| register(&r, IntGauge::new(name, help).expect("valid metric opts"));
        let counter =
            |name: &str, help: &str| register(&r, IntCounter::new(name, help).expect("valid metric opts"));
        let histogram = |name: &str, help: &str| {
            let buckets = prometheus::exponential_buckets(0.0001, 2.5, 14).expect("valid buckets");
            register(
                &r,
                Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("valid opts"),
            )
        };
        let m = Metrics {
            push_bytes: counter_vec(
                "rss_push_bytes_total",
                "Bytes of blocks received by pushes.",
                "transport",
            ),
            push_requests: counter_vec("rss_push_requests_total", "Push requests by result.", "result"),
            push_duration: histogram("rss_push_duration_seconds", "Time to validate and store a push."),
            fetch_bytes: counter_vec(
                "rss_fetch_bytes_total",
                "Bytes of blocks sent to readers.",
                "transport",
            ),
            fetch_duration: histogram(
                "rss_fetch_duration_seconds",
                "Time to serve a whole fetch stream.",
            ),
            fetch_failures: counter_vec(
                "rss_fetch_failures_total",
                "Fetches that failed, by reason.",
                "reason",
            ),
            flush_bytes: counter_vec(
                "rss_flush_bytes_total",
                "Bytes written to partition files.",
                "disk",
            ),
            spill_bytes: counter_vec(
                "rss_spill_bytes_total",
                "Bytes written to disk, by shuffle mode.",
                "mode",
            ),
            active_applications: gauge("rss_active_applications", "Registered applications."),
            active_shuffles: gauge("rss_active_shuffles", "Registered shuffles."),
            stored_bytes: gauge_vec("rss_stored_bytes", "Bytes in partition files.", "disk"),
            disk_free_bytes: gauge_vec(
                "rss_disk_free_bytes",
                "Free bytes on the data directory's disk.",
                "disk",
            ),
            buffer_bytes: gauge("rss_buffer_bytes", "Push and fetch data held in memory."),
            buffer_limit_bytes: gauge("rss_buffer_limit_bytes", "The memory budget for buffered data."),
            backpressure_seconds: register(
                &r,
                prometheus::Counter::new(
                    "rss_backpressure_seconds_total",
                    "Time requests waited for memory credit.",
                )
                .expect("valid metric opts"),
            ),
            rejected_requests: counter_vec(
                "rss_rejected_requests_total",
                "Requests refused, by reason.",
                "reason",
            ),
            checksum_mismatches: counter(
                "rss_checksum_mismatches_total",
                "Blocks that failed their CRC32C.",
            ),
            duplicate_blocks_dropped: counter(
                "rss_duplicate_blocks_dropped_total",
                "Duplicate blocks dropped.",
            ),
            open_connections: gauge_vec(
                "rss_open_connections",
                "Open data-plane connections.",
                "transport",
            ),
            draining: gauge("rss_draining", "1 while the server drains."),
            disk_errors: register(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "rss_disk_errors_total",
                        "Failed file-system calls in a data directory, by kind (no_space, io).",
                    ),
                    &["disk", "kind"],
                )
                .expect("valid metric opts"),
            ),
            disk_healthy: gauge_vec(
                "rss_disk_healthy",
                "1 while the data directory passed its last write probe.",
                "disk",
            ),
            disk_accepting: gauge_vec(
                "rss_disk_accepting",
                "1 while the data directory takes new partitions (writable, room above the reserve).",
                "disk",
            ),
            quarantined_shuffles: counter(
                "rss_quarantined_shuffles_total",
                "Shuffles moved to quarantine at start-up (meta unreadable or invalid).",
            ),
            replication_bytes: counter(
                "rss_replication_bytes_total",
                "Bytes of new blocks stored as the replica copy of a partition (replication 2).",
            ),
            expired_applications: counter(
                "rss_expired_applications_total",
                "Applications expired for missing heartbeats.",
            ),
            registry: r,
        };
        // Every series a dashboard expects exists from the start, at 0: the
        // exposition drops a labelled metric until one of its series exists.
        for transport in ["tcp", "quic"] {
            m.push_bytes.with_label_values(&[transport]);
            m.fetch_bytes.with_label_values(&[transport]);
            m.open_connections.with_label_values(&[transport]);
        }
        for result in ["ok", "rejected"] {
            m.push_requests.with_label_values(&[result]);
        }
        for reason in ServiceError::REASONS.iter().chain(&TRANSPORT_REASONS) {
            m.rejected_requests.with_label_values(&[reason]);
            m.fetch_failures.with_label_values(&[reason]);
        }
        for mode in ["blocking", "pipelined", "hybrid-full", "hybrid-selective"] {
            m.spill_bytes.with_label_values(&[mode]);
        }
        let info = IntGaugeVec::new(Opts::new("rss_build_info", "Build information."), &["version"])
            .expect("valid metric opts");
        info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        register(&m.registry, info);
        m
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!("encoding metrics failed: {e}");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_kind_has_its_refusal_series_from_the_start() {
        let text = Metrics::new().render();
        for (_, name, reason, ..) in ServiceError::KINDS {
            let series = format!("rss_rejected_requests_total{{reason=\"{reason}\"}} 0");
            assert!(text.contains(&series), "{name}: {series}");
        }
    }

    #[test]
    fn every_design_metric_is_exported() {
        let m = Metrics::new();
        m.push_bytes.with_label_values(&["tcp"]).inc();
        m.push_requests.with_label_values(&["ok"]).inc();
        m.fetch_bytes.with_label_values(&["quic"]).inc();
        m.fetch_failures.with_label_values(&["x"]).inc();
        m.flush_bytes.with_label_values(&["d"]).inc();
        m.spill_bytes.with_label_values(&["blocking"]).inc();
        m.stored_bytes.with_label_values(&["d"]).set(1);
        m.disk_free_bytes.with_label_values(&["d"]).set(1);
        m.rejected_requests.with_label_values(&["x"]).inc();
        m.open_connections.with_label_values(&["tcp"]).set(1);
        m.disk_errors.with_label_values(&["d", "io"]).inc();
        m.disk_healthy.with_label_values(&["d"]).set(1);
        m.push_duration.observe(0.1);
        m.fetch_duration.observe(0.1);
        let text = m.render();
        for name in [
            "rss_push_bytes_total",
            "rss_push_requests_total",
            "rss_push_duration_seconds",
            "rss_fetch_bytes_total",
            "rss_fetch_duration_seconds",
            "rss_fetch_failures_total",
            "rss_flush_bytes_total",
            "rss_spill_bytes_total",
            "rss_active_applications",
            "rss_active_shuffles",
            "rss_stored_bytes",
            "rss_disk_free_bytes",
            "rss_buffer_bytes",
            "rss_buffer_limit_bytes",
            "rss_backpressure_seconds_total",
            "rss_rejected_requests_total",
            "rss_checksum_mismatches_total",
            "rss_duplicate_blocks_dropped_total",
            "rss_open_connections",
            "rss_draining",
            "rss_build_info",
            "rss_disk_errors_total",
            "rss_disk_healthy",
            "rss_quarantined_shuffles_total",
            "rss_replication_bytes_total",
        ] {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
        }
    }
}
