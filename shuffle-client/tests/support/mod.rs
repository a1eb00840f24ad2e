//! Real shuffle servers, in process on 127.0.0.1:0, for the remote tests.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use shuffle_client::remote::Transport;
use shuffle_client::{QuicTrust, RemoteOptions, RemoteShuffle, ServerUrl};
use shuffle_server::config::ServerConfig;
use shuffle_server::LocalServer;

/// `n` servers and a client connected to all of them.
pub struct Cluster {
    pub tmp: tempfile::TempDir,
    pub servers: Vec<LocalServer>,
    pub dirs: Vec<Vec<PathBuf>>,
    pub client: RemoteShuffle,
    pub transport: Transport,
}

pub fn server_config(dirs: Vec<PathBuf>) -> ServerConfig {
    let mut config = ServerConfig::new(dirs);
    config.create_data_dirs = true;
    config.memory_budget = 256 << 20;
    config.check_interval = Duration::from_millis(100);
    config.fsync_on_seal = false;
    // Spills in the conformance cases come from memory pressure, not time.
    config.spill_after = Duration::from_secs(30);
    config
}

impl Cluster {
    pub async fn start(n: usize, transport: Transport) -> Self {
        Self::start_with(n, transport, server_config).await
    }

    pub async fn start_with(
        n: usize,
        transport: Transport,
        config: impl Fn(Vec<PathBuf>) -> ServerConfig,
    ) -> Self {
        let tmp = tempfile::tempdir().expect("temp dir");
        let mut servers = Vec::new();
        let mut dirs = Vec::new();
        for i in 0..n {
            let server_dirs = vec![
                tmp.path().join(format!("s{i}-a")),
                tmp.path().join(format!("s{i}-b")),
            ];
            let server = LocalServer::start(config(server_dirs.clone()))
                .await
                .expect("server starts");
            servers.push(server);
            dirs.push(server_dirs);
        }
        let client = Self::connect(&servers, transport).await;
        Cluster {
            tmp,
            servers,
            dirs,
            client,
            transport,
        }
    }

    /// `n` servers with a memory budget of `budget` bytes each (at least
    /// the server's 1 MiB minimum), frames and pushes sized to fit it.
    pub async fn start_budgeted(n: usize, transport: Transport, budget: u64) -> Self {
        let budget = budget.max(1 << 20);
        let mut cluster = Self::start_with(n, transport, |dirs| {
            let mut c = server_config(dirs);
            c.memory_budget = budget;
            c.max_frame_len = u32::try_from(budget).unwrap_or(u32::MAX);
            c
        })
        .await;
        let options = RemoteOptions {
            push_batch_bytes: usize::try_from(budget / 4).unwrap_or(1 << 18),
            ..Self::options(&cluster.servers)
        };
        cluster.client = RemoteShuffle::connect(&Self::urls(&cluster.servers, transport), options)
            .await
            .expect("client connects");
        cluster
    }

    /// [`Cluster::start`], with a client that keeps `copies` of each
    /// partition of the shuffles it registers.
    pub async fn start_replicated(n: usize, transport: Transport, copies: u32) -> Self {
        let mut cluster = Self::start(n, transport).await;
        cluster.replicate(copies).await;
        cluster
    }

    /// [`Cluster::start_budgeted`], replicated.
    pub async fn start_budgeted_replicated(n: usize, transport: Transport, budget: u64, copies: u32) -> Self {
        let mut cluster = Self::start_budgeted(n, transport, budget).await;
        cluster.replicate(copies).await;
        cluster
    }

    /// Reconnects the client with `copies` per partition (its other
    /// options as they were).
    pub async fn replicate(&mut self, copies: u32) {
        if copies == 1 {
            return;
        }
        let options = RemoteOptions {
            replication: shuffle_client::protocol::Replication::new(copies).expect("copies"),
            ..self.client.options().clone()
        };
        self.client = RemoteShuffle::connect(&Self::urls(&self.servers, self.transport), options)
            .await
            .expect("client connects");
    }

    /// Memory budget in use and the budget, summed over the servers.
    pub async fn memory(&self) -> (u64, u64) {
        let mut total = (0, 0);
        for s in &self.servers {
            let mut c = protocol::net::proto::shuffle_control_client::ShuffleControlClient::connect(format!(
                "http://{}",
                s.addrs.grpc
            ))
            .await
            .expect("grpc connects");
            let status = c
                .server_status(protocol::net::proto::Empty {})
                .await
                .expect("server status")
                .into_inner();
            total.0 += status.buffer_bytes;
            total.1 += status.buffer_limit_bytes;
        }
        total
    }

    pub fn options(servers: &[LocalServer]) -> RemoteOptions {
        let pins = servers
            .iter()
            .map(|s| QuicTrust::parse_fingerprint(&s.quic_fingerprint).expect("fingerprint"))
            .collect();
        RemoteOptions {
            quic_trust: QuicTrust::Pinned(pins),
            retry_backoff: Duration::from_millis(10),
            ..RemoteOptions::default()
        }
    }

    pub fn urls(servers: &[LocalServer], transport: Transport) -> Vec<ServerUrl> {
        servers
            .iter()
            .map(|s| match transport {
                Transport::Tcp => s.tcp_url(),
                Transport::Quic => s.quic_url(),
            })
            .map(|u| u.parse().expect("url"))
            .collect()
    }

    pub async fn connect(servers: &[LocalServer], transport: Transport) -> RemoteShuffle {
        RemoteShuffle::connect(&Self::urls(servers, transport), Self::options(servers))
            .await
            .expect("client connects")
    }
}

/// Runs the conformance suite against `RemoteShuffle` over `$transport`
/// with `$servers` servers (and `replication = N` copies per partition). The test file declares `mod conformance;` and
/// `mod support;`.
#[macro_export]
macro_rules! remote_conformance {
    ($servers:expr, $transport:expr) => {
        remote_conformance!($servers, $transport, replication = 1);
    };
    ($servers:expr, $transport:expr, replication = $copies:expr) => {
        impl conformance::Harness for support::Cluster {
            type Client = shuffle_client::RemoteShuffle;
            fn client(&self) -> &shuffle_client::RemoteShuffle {
                &self.client
            }
            fn data_dirs(&self) -> Vec<std::path::PathBuf> {
                self.dirs
                    .iter()
                    .flatten()
                    .map(|d| d.canonicalize().unwrap_or_else(|_| d.clone()))
                    .collect()
            }
            fn sandbox(&self) -> std::path::PathBuf {
                self.tmp.path().to_path_buf()
            }
            async fn with_budget(bytes: u64) -> Self {
                support::Cluster::start_budgeted_replicated($servers, $transport, bytes, $copies).await
            }
            async fn memory(&self) -> (u64, u64) {
                support::Cluster::memory(self).await
            }
            fn wide_partitions(&self) -> u32 {
                10_000 / $copies
            }
        }

        conformance_suite!(support::Cluster::start_replicated($servers, $transport, $copies).await);
    };
}
