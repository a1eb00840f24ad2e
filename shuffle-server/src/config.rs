//! Server configuration: command-line flags over a TOML file over defaults,
//! validated once at start with messages that name the field.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::ServerError;

/// Everything the server needs to run. Build it with [`ServerConfig::new`]
/// (defaults) or from a file and flags with [`FileConfig`] and
/// [`ServerConfig::merge`]; always [`ServerConfig::validate`] it.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerConfig {
    /// Data directories. No default: at least one is required.
    pub data_dirs: Vec<PathBuf>,
    /// Create data directories that do not exist. Default false: a missing
    /// directory is refused at start, so an unmounted disk does not
    /// silently become a folder on the root file system.
    pub create_data_dirs: bool,
    /// A data directory with less free space than this takes no new
    /// partition; `/readyz` fails only when no directory can take one.
    /// Default 1 GiB.
    pub disk_reserve: u64,
    /// TCP data plane. Default `127.0.0.1:19000`.
    pub listen: SocketAddr,
    /// QUIC data plane. Default `127.0.0.1:19001`.
    pub quic_listen: SocketAddr,
    /// gRPC control plane. Default `127.0.0.1:19002`.
    pub grpc_listen: SocketAddr,
    /// HTTP: `/metrics`, `/livez`, `/readyz`. Default `127.0.0.1:19003`.
    pub http_listen: SocketAddr,
    /// Most bytes of push and fetch data buffered in memory at once; beyond
    /// it, readers of the sockets wait for credit. Default 1 GiB.
    pub memory_budget: u64,
    /// Largest data-plane frame accepted. Default 64 MiB; at most the
    /// memory budget.
    pub max_frame_len: u32,
    /// An app with no heartbeat for this long is expired and its data
    /// deleted. Default 120 s.
    pub app_timeout: Duration,
    /// How often expiry and disk checks run. Default 5 s.
    pub check_interval: Duration,
    /// PEM certificate chain for QUIC. Default: none, a self-signed
    /// certificate is generated at start (for development).
    pub quic_cert: Option<PathBuf>,
    /// PEM private key for QUIC; required with `quic_cert`.
    pub quic_key: Option<PathBuf>,
    /// fsync partition files and metadata when a shuffle seals, so sealed
    /// data survives a crash. Default true.
    pub fsync_on_seal: bool,
    /// Partition files kept open for appending (the soft open-file limit is
    /// raised to fit, within the hard limit). Default 16384.
    pub max_open_files: usize,
    /// Longest drain on SIGTERM: in-flight pushes finish and fetches go on
    /// being served until nothing is in flight, for at most this long.
    /// Default 30 s.
    pub drain_timeout: Duration,
    /// Hybrid-selective shuffles: a block not consumed within this time is
    /// spilled to disk (hybrid-full: its memory copy is dropped; it is on
    /// disk already). Default 1 s.
    pub spill_after: Duration,
    /// A streaming fetch waiting for producers sends an empty `FetchBlocks`
    /// this often, so the client's request timeout does not fire while a
    /// reader legitimately waits. Default 5 s; keep it well below the
    /// clients' request timeout.
    pub stream_keepalive: Duration,
    /// A push frame's body must arrive within this time of its memory
    /// credit being granted, or the connection is closed (with `Busy`) and
    /// the credit returned. Default 30 s.
    pub frame_timeout: Duration,
    /// A push frame whose body brings less than 64 KiB in this time gives
    /// back the credit of what it has not sent yet; it may go on only if
    /// that credit is free again when its bytes come. Default 1 s.
    pub frame_stall: Duration,
    /// A data-plane connection with no request in flight for this long is
    /// closed. Default 120 s (clients drop pooled connections idle for 30 s).
    pub idle_timeout: Duration,
    /// Applications registered at once. Default 4096.
    pub max_apps: usize,
    /// Shuffles registered at once, over all apps. Default 65,536.
    pub max_shuffles: usize,
    /// Shuffles one app may have registered at once. Default 10,000.
    pub max_shuffles_per_app: usize,
    /// `num_maps x num_partitions` of one shuffle. Default 10^9 (admits
    /// 10,000 maps x 50,000 partitions).
    pub max_maps_x_partitions: u64,
    /// Data-plane connections open at once (TCP plus QUIC). Default 4096.
    pub max_connections: usize,
    /// Data-plane connections open at once from one IP address. Default
    /// 1024: a whole Spark job running on one host fits.
    pub max_connections_per_peer: usize,
}

impl ServerConfig {
    /// Defaults, with the given data directories.
    pub fn new(data_dirs: Vec<PathBuf>) -> Self {
        let local = |port| SocketAddr::from(([127, 0, 0, 1], port));
        ServerConfig {
            data_dirs,
            create_data_dirs: false,
            disk_reserve: 1 << 30,
            listen: local(19000),
            quic_listen: local(19001),
            grpc_listen: local(19002),
            http_listen: local(19003),
            memory_budget: 1 << 30,
            max_frame_len: protocol::frame::DEFAULT_MAX_FRAME_LEN,
            app_timeout: Duration::from_secs(120),
            check_interval: Duration::from_secs(5),
            quic_cert: None,
            quic_key: None,
            fsync_on_seal: true,
            max_open_files: 16384,
            drain_timeout: Duration::from_secs(30),
            spill_after: Duration::from_secs(1),
            stream_keepalive: Duration::from_secs(5),
            frame_timeout: Duration::from_secs(30),
            frame_stall: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(120),
            max_apps: 4096,
            max_shuffles: 65_536,
            max_shuffles_per_app: 10_000,
            max_maps_x_partitions: 1_000_000_000,
            max_connections: 4096,
            max_connections_per_peer: 1024,
        }
    }

    /// The store's limits, from these settings.
    pub fn store_limits(&self) -> crate::storage::StoreLimits {
        crate::storage::StoreLimits {
            max_shuffles: self.max_shuffles,
            max_shuffles_per_app: self.max_shuffles_per_app,
            max_maps_x_partitions: self.max_maps_x_partitions,
        }
    }

    /// Applies `file` then `flags` over the defaults (flags win).
    pub fn merge(file: FileConfig, flags: FileConfig) -> Result<Self, ServerError> {
        let mut c = ServerConfig::new(Vec::new());
        for layer in [file, flags] {
            layer.apply(&mut c)?;
        }
        c.validate()?;
        Ok(c)
    }

    /// Refuses unusable settings, naming the field.
    pub fn validate(&self) -> Result<(), ServerError> {
        let bad = |field, reason: String| Err(ServerError::InvalidConfig { field, reason });
        if self.data_dirs.is_empty() {
            return bad(
                "data_dirs",
                "at least one data directory is required (--data-dir)".into(),
            );
        }
        if self.memory_budget < 1 << 20 {
            return bad(
                "memory_budget",
                format!("{} bytes is below the 1 MiB minimum", self.memory_budget),
            );
        }
        if self.max_frame_len < 1024 {
            return bad(
                "max_frame_len",
                format!("{} bytes is below the 1 KiB minimum", self.max_frame_len),
            );
        }
        if u64::from(self.max_frame_len) > self.memory_budget {
            return bad(
                "max_frame_len",
                format!(
                    "{} bytes exceeds memory_budget ({} bytes): such a frame could never get credit",
                    self.max_frame_len, self.memory_budget
                ),
            );
        }
        if self.app_timeout.is_zero() {
            return bad("app_timeout", "must be positive".into());
        }
        if self.check_interval.is_zero() {
            return bad("check_interval", "must be positive".into());
        }
        if self.spill_after.is_zero() {
            return bad("spill_after", "must be positive".into());
        }
        if self.stream_keepalive < Duration::from_millis(10) {
            return bad("stream_keepalive", "must be at least 10 ms".into());
        }
        for (field, value) in [
            ("frame_timeout_secs", self.frame_timeout),
            ("frame_stall_secs", self.frame_stall),
            ("idle_timeout_secs", self.idle_timeout),
        ] {
            if value < Duration::from_millis(10) {
                return bad(field, "must be at least 10 ms".into());
            }
        }
        for (field, value) in [
            ("max_apps", self.max_apps as u64),
            ("max_shuffles", self.max_shuffles as u64),
            ("max_shuffles_per_app", self.max_shuffles_per_app as u64),
            ("max_maps_x_partitions", self.max_maps_x_partitions),
            ("max_connections", self.max_connections as u64),
            ("max_connections_per_peer", self.max_connections_per_peer as u64),
        ] {
            if value == 0 {
                return bad(field, "must be at least 1".into());
            }
        }
        if self.quic_cert.is_some() != self.quic_key.is_some() {
            return bad("quic_cert", "quic_cert and quic_key go together".into());
        }
        Ok(())
    }
}

/// One layer of settings, as written in the TOML file (unknown keys are
/// refused) or given as flags. Every field is optional; see
/// [`ServerConfig`] for meanings and defaults. Sizes are strings such as
/// `"256MiB"`; durations are seconds.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dirs: Option<Vec<PathBuf>>,
    pub create_data_dirs: Option<bool>,
    pub disk_reserve: Option<String>,
    pub listen: Option<SocketAddr>,
    pub quic_listen: Option<SocketAddr>,
    pub grpc_listen: Option<SocketAddr>,
    pub http_listen: Option<SocketAddr>,
    pub memory_budget: Option<String>,
    pub max_frame_len: Option<String>,
    pub app_timeout_secs: Option<f64>,
    pub check_interval_secs: Option<f64>,
    pub quic_cert: Option<PathBuf>,
    pub quic_key: Option<PathBuf>,
    pub fsync_on_seal: Option<bool>,
    pub max_open_files: Option<usize>,
    pub drain_timeout_secs: Option<f64>,
    pub spill_after_secs: Option<f64>,
    pub stream_keepalive_secs: Option<f64>,
    pub frame_timeout_secs: Option<f64>,
    pub frame_stall_secs: Option<f64>,
    pub idle_timeout_secs: Option<f64>,
    pub max_apps: Option<usize>,
    pub max_shuffles: Option<usize>,
    pub max_shuffles_per_app: Option<usize>,
    pub max_maps_x_partitions: Option<u64>,
    pub max_connections: Option<usize>,
    pub max_connections_per_peer: Option<usize>,
}

impl FileConfig {
    /// Reads and parses a TOML file.
    pub fn load(path: &Path) -> Result<Self, ServerError> {
        let text = std::fs::read_to_string(path).map_err(ServerError::io("read config", path))?;
        toml::from_str(&text).map_err(|e| ServerError::InvalidConfig {
            field: "config file",
            reason: format!("{}: {}", path.display(), e.to_string().trim()),
        })
    }

    fn apply(self, c: &mut ServerConfig) -> Result<(), ServerError> {
        if let Some(v) = self.data_dirs {
            c.data_dirs = v;
        }
        macro_rules! set {
            ($($field:ident),*) => { $(if let Some(v) = self.$field { c.$field = v; })* };
        }
        set!(
            listen,
            quic_listen,
            grpc_listen,
            http_listen,
            fsync_on_seal,
            max_open_files,
            create_data_dirs,
            max_apps,
            max_shuffles,
            max_shuffles_per_app,
            max_maps_x_partitions,
            max_connections,
            max_connections_per_peer
        );
        if let Some(v) = self.quic_cert {
            c.quic_cert = Some(v);
        }
        if let Some(v) = self.quic_key {
            c.quic_key = Some(v);
        }
        if let Some(v) = self.memory_budget {
            c.memory_budget = parse_size("memory_budget", &v)?;
        }
        if let Some(v) = self.disk_reserve {
            c.disk_reserve = parse_size("disk_reserve", &v)?;
        }
        if let Some(v) = self.max_frame_len {
            let n = parse_size("max_frame_len", &v)?;
            c.max_frame_len = u32::try_from(n).map_err(|_| ServerError::InvalidConfig {
                field: "max_frame_len",
                reason: format!("{v} does not fit in 4 GiB"),
            })?;
        }
        if let Some(v) = self.app_timeout_secs {
            c.app_timeout = seconds("app_timeout_secs", v)?;
        }
        if let Some(v) = self.check_interval_secs {
            c.check_interval = seconds("check_interval_secs", v)?;
        }
        if let Some(v) = self.drain_timeout_secs {
            c.drain_timeout = seconds("drain_timeout_secs", v)?;
        }
        if let Some(v) = self.spill_after_secs {
            c.spill_after = seconds("spill_after_secs", v)?;
        }
        if let Some(v) = self.stream_keepalive_secs {
            c.stream_keepalive = seconds("stream_keepalive_secs", v)?;
        }
        if let Some(v) = self.frame_timeout_secs {
            c.frame_timeout = seconds("frame_timeout_secs", v)?;
        }
        if let Some(v) = self.frame_stall_secs {
            c.frame_stall = seconds("frame_stall_secs", v)?;
        }
        if let Some(v) = self.idle_timeout_secs {
            c.idle_timeout = seconds("idle_timeout_secs", v)?;
        }
        Ok(())
    }
}

fn seconds(field: &'static str, v: f64) -> Result<Duration, ServerError> {
    Duration::try_from_secs_f64(v).map_err(|_| ServerError::InvalidConfig {
        field,
        reason: format!("{v} is not a number of seconds"),
    })
}

/// Parses a size (`1GiB`, `256MiB`, `64KiB`, `10MB`, `4096`; see
/// `protocol::units`), naming `field` in the error.
pub fn parse_size(field: &'static str, text: &str) -> Result<u64, ServerError> {
    protocol::units::parse_size(text).map_err(|reason| ServerError::InvalidConfig { field, reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags_with_dir() -> FileConfig {
        FileConfig {
            data_dirs: Some(vec!["/tmp/x".into()]),
            ..FileConfig::default()
        }
    }

    #[test]
    fn flags_win_over_the_file_which_wins_over_defaults() {
        let file: FileConfig = toml::from_str(
            "data_dirs = ['/a']\nmemory_budget = '256MiB'\nlisten = '127.0.0.1:7000'\napp_timeout_secs = 9",
        )
        .expect("valid toml");
        let flags = FileConfig {
            listen: Some("127.0.0.1:8000".parse().expect("addr")),
            ..FileConfig::default()
        };
        let c = ServerConfig::merge(file, flags).expect("valid");
        assert_eq!(c.listen.port(), 8000);
        assert_eq!(c.memory_budget, 256 << 20);
        assert_eq!(c.app_timeout, Duration::from_secs(9));
        assert_eq!(c.data_dirs, vec![PathBuf::from("/a")]);
        assert_eq!(c.grpc_listen.port(), 19002);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_field() {
        let err = toml::from_str::<FileConfig>("memory_budgett = '1GiB'").expect_err("unknown key");
        assert!(err.to_string().contains("memory_budgett"), "{err}");
        let bad = FileConfig {
            memory_budget: Some("lots".into()),
            ..flags_with_dir()
        };
        let err = ServerConfig::merge(FileConfig::default(), bad).expect_err("bad size");
        assert!(
            matches!(
                err,
                ServerError::InvalidConfig {
                    field: "memory_budget",
                    ..
                }
            ),
            "{err}"
        );
        let err = ServerConfig::merge(FileConfig::default(), FileConfig::default()).expect_err("no dirs");
        assert!(matches!(
            err,
            ServerError::InvalidConfig {
                field: "data_dirs",
                ..
            }
        ));
        let small = FileConfig {
            memory_budget: Some("2MiB".into()),
            ..flags_with_dir()
        };
        let err = ServerConfig::merge(FileConfig::default(), small).expect_err("frame over budget");
        assert!(matches!(
            err,
            ServerError::InvalidConfig {
                field: "max_frame_len",
                ..
            }
        ));
        let half_tls = FileConfig {
            quic_cert: Some("c.pem".into()),
            ..flags_with_dir()
        };
        assert!(ServerConfig::merge(FileConfig::default(), half_tls).is_err());
        let neg = FileConfig {
            app_timeout_secs: Some(-1.0),
            ..flags_with_dir()
        };
        assert!(matches!(
            ServerConfig::merge(FileConfig::default(), neg),
            Err(ServerError::InvalidConfig {
                field: "app_timeout_secs",
                ..
            })
        ));
    }

    #[test]
    fn the_example_file_is_valid_and_matches_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
        let file = FileConfig::load(&path).expect("example parses");
        let c = ServerConfig::merge(file, FileConfig::default()).expect("example is valid");
        let defaults = ServerConfig::new(c.data_dirs.clone());
        assert_eq!(c, defaults, "the example documents the defaults");
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("f", "1GiB").ok(), Some(1 << 30));
        assert_eq!(parse_size("f", "64kib").ok(), Some(64 << 10));
        assert_eq!(parse_size("f", "10MB").ok(), Some(10_000_000));
        assert!(parse_size("f", "99999999999999TiB").is_err());
        assert_eq!(parse_size("f", "1.5KiB").ok(), Some(1536));
    }
}
