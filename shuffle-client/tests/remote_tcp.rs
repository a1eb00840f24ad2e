//! The conformance suite against `RemoteShuffle` over TCP, one server.

mod conformance;
mod support;

use std::path::PathBuf;

use shuffle_client::remote::Transport;
use shuffle_client::RemoteShuffle;
use support::Cluster;

impl conformance::Harness for Cluster {
    type Client = RemoteShuffle;
    fn client(&self) -> &RemoteShuffle {
        &self.client
    }
    fn data_dirs(&self) -> Vec<PathBuf> {
        self.dirs
            .iter()
            .flatten()
            .map(|d| d.canonicalize().unwrap_or_else(|_| d.clone()))
            .collect()
    }
    fn sandbox(&self) -> PathBuf {
        self.tmp.path().to_path_buf()
    }
}

conformance_suite!(Cluster::start(1, Transport::Tcp).await);
