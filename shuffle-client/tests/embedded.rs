//! The conformance suite against `EmbeddedShuffle`.

mod conformance;

use std::path::PathBuf;

use shuffle_client::embedded::EmbeddedOptions;
use shuffle_client::EmbeddedShuffle;

struct Embedded {
    tmp: tempfile::TempDir,
    client: EmbeddedShuffle,
}

impl Embedded {
    fn new() -> Self {
        Self::with(256 << 20)
    }

    fn with(budget: u64) -> Self {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dirs = vec![tmp.path().join("disk-a"), tmp.path().join("disk-b")];
        let mut options = EmbeddedOptions::new(dirs);
        options.memory_budget = budget;
        // Spills in these cases come from memory pressure, not from time.
        options.spill_after = std::time::Duration::from_secs(30);
        let client = EmbeddedShuffle::with_options(options).expect("open store");
        Embedded { tmp, client }
    }
}

impl conformance::Harness for Embedded {
    type Client = EmbeddedShuffle;
    fn client(&self) -> &EmbeddedShuffle {
        &self.client
    }
    fn data_dirs(&self) -> Vec<PathBuf> {
        self.client.data_dirs()
    }
    fn sandbox(&self) -> PathBuf {
        self.tmp.path().to_path_buf()
    }
    async fn with_budget(bytes: u64) -> Self {
        Self::with(bytes)
    }
    async fn memory(&self) -> (u64, u64) {
        let stats = self.client.stats();
        assert!(
            stats.peak_memory_bytes <= self.client.memory_limit(),
            "peak {} over the budget",
            stats.peak_memory_bytes
        );
        (stats.memory_bytes, self.client.memory_limit())
    }
}

conformance_suite!(Embedded::new());
