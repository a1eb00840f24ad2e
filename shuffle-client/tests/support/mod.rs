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
    config.memory_budget = 256 << 20;
    config.check_interval = Duration::from_millis(100);
    config.fsync_on_seal = false;
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
/// with `$servers` servers. The test file declares `mod conformance;` and
/// `mod support;`.
#[macro_export]
macro_rules! remote_conformance {
    ($servers:expr, $transport:expr) => {
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
        }

        conformance_suite!(support::Cluster::start($servers, $transport).await);
    };
}
