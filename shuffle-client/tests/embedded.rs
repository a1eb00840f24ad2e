//! The conformance suite against `EmbeddedShuffle`.

mod conformance;

use std::path::PathBuf;

use shuffle_client::EmbeddedShuffle;

struct Embedded {
    tmp: tempfile::TempDir,
    client: EmbeddedShuffle,
}

impl Embedded {
    fn new() -> Self {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dirs = vec![tmp.path().join("disk-a"), tmp.path().join("disk-b")];
        let client = EmbeddedShuffle::open(dirs).expect("open store");
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
}

conformance_suite!(Embedded::new());
