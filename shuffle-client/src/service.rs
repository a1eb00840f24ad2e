//! A shuffle service started inside this process on loopback ports, for
//! engines that run tasks in other processes but want no daemon started by
//! hand: the engine's coordinator hosts it, its workers connect to
//! [`ServedShuffle::tcp_url`] with a [`crate::RemoteShuffle`].

use std::path::PathBuf;

use shuffle_server::config::ServerConfig;
use shuffle_server::LocalServer;

use crate::ClientError;

/// A running in-process shuffle server on `127.0.0.1` ephemeral ports.
#[derive(Debug)]
pub struct ServedShuffle {
    server: LocalServer,
}

impl ServedShuffle {
    /// Starts a server storing under `data_dirs`, holding at most
    /// `memory_budget` bytes of buffered data, spilling hybrid-selective
    /// blocks not read within `spill_after`.
    pub async fn start(
        data_dirs: Vec<PathBuf>,
        memory_budget: u64,
        spill_after: std::time::Duration,
    ) -> Result<Self, ClientError> {
        let mut config = ServerConfig::new(data_dirs);
        // In-process use: the caller's folders, made if missing.
        config.create_data_dirs = true;
        config.memory_budget = memory_budget;
        // A frame must fit the budget to ever get credit (clients learn the
        // limit from the hello and size their pushes to it).
        config.max_frame_len = config
            .max_frame_len
            .min(u32::try_from(memory_budget).unwrap_or(u32::MAX));
        config.spill_after = spill_after;
        // Job data is transient: a crash loses the job anyway.
        config.fsync_on_seal = false;
        let server = LocalServer::start(config).await?;
        Ok(ServedShuffle { server })
    }

    /// `tcp://127.0.0.1:PORT` of its data plane.
    pub fn tcp_url(&self) -> String {
        self.server.tcp_url()
    }

    /// Drains the server and waits for it to stop.
    pub async fn shutdown(self) -> Result<(), ClientError> {
        Ok(self.server.shutdown().await?)
    }
}
