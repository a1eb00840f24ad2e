//! Partition storage: blocks aggregated by reduce partition on local disks.
//!
//! [`Store`] is the synchronous core that both the network services and the
//! embedded client drive. It never blocks on anything but the file system,
//! holds no lock across I/O on another shuffle's data, and validates every
//! input (ids, ranges, checksums) before it writes a byte.
//!
//! A sealed shuffle survives a restart: its commits and index are written to
//! a meta file when it seals, and [`Store::open`] restores it from there.
//! Shuffles that were not sealed are deleted at start-up
//! ([`Store::recovery`] says what was restored and what was discarded).
//!
//! Files: `store.rs` is the [`Store`] and every operation on it;
//! `shuffle.rs` one shuffle's state; `partition.rs` one partition file and
//! its write-time index, whose entries and checks are in `index.rs`;
//! `reader.rs` reads a sealed partition; `persist.rs` and `meta.rs` make a
//! sealed shuffle survive a restart; `disks.rs` and `layout.rs` place data
//! on the data directories.
//!
//! Streaming shuffles (pipelined, hybrid-full, hybrid-selective) keep a
//! stream index per partition (`stream_index`, pure state; pushes in
//! `stream_push.rs`, readers in `stream_read.rs`):
//! readers attach any time after register ([`Store::open_read`]) and
//! stream blocks while producers push; blocks held in memory are paid for
//! with the store's [`MemoryBudget`]. Only blocking and sealed hybrid-full
//! shuffles survive a restart.

mod counters;
mod disks;
mod index;
mod layout;
mod locks;
mod meta;
mod partition;
mod persist;
mod reader;
mod shuffle;
mod store;
mod stream_index;
mod stream_push;
mod stream_read;
mod try_all;

use std::path::PathBuf;
use std::time::Duration;

use protocol::{PartitionId, ShuffleSpec};

pub use self::disks::{DiskErrorKind, DiskStatus};
pub use self::persist::{RecoveryReport, SetAside};
pub use self::reader::PartitionReader;
pub use self::shuffle::{CommitOutcome, CommittedSizes};
pub use self::store::Store;
pub use self::stream_read::{ShuffleRead, StreamBlock, StreamReader};
pub use crate::budget::{Credit, MemoryBudget};

/// Storage settings.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Data directories; the partitions of each shuffle are spread over all
    /// of them. No default: at least one is required.
    pub data_dirs: Vec<PathBuf>,
    /// Create data directories that do not exist. When `false`, a missing
    /// one is refused at open (an unmounted disk must not silently become a
    /// folder on the root file system). Default: `true` here, for embedded
    /// use; the daemon's default is `false`.
    pub create_data_dirs: bool,
    /// A data directory with less free space than this takes no new
    /// partition (partitions already there go on being appended to until
    /// the disk is really full). Default: 1 GiB, like Celeborn's disk
    /// reservation.
    pub disk_reserve: u64,
    /// How often the store probes its data directories (free space and a
    /// write test) and, for hybrid shuffles, how often at most it sweeps.
    /// Default: 5 s.
    pub check_interval: Duration,
    /// Most partition files held open for appending at once, over all
    /// shuffles. Beyond it a partition opens, appends and closes per block.
    /// Default: 4096.
    pub max_open_files: usize,
    /// When a shuffle seals, flush its partition files, its folders and its
    /// meta file to stable storage (fsync) before the sealing commit
    /// returns, so the sealed shuffle survives a power loss or kernel crash
    /// as well as a killed process. When `false` the meta is still written
    /// (atomically, by rename) but nothing is fsynced: a sealed shuffle
    /// survives a killed server (kill -9 included: the data is in the page
    /// cache) but maybe not a machine crash, after which a shuffle whose
    /// meta did not reach the disk is discarded and one whose data did not
    /// reads as corrupt. Default: `true`.
    pub fsync_on_seal: bool,
    /// The memory budget that pays for the blocks streaming shuffles hold
    /// in memory. The server passes the budget its data plane uses, so one
    /// limit covers everything buffered. Default: 256 MiB, unmetered.
    pub memory_budget: MemoryBudget,
    /// Hybrid-selective: a block not consumed within this time is spilled
    /// to disk (hybrid-full: its memory copy is dropped). Default: 1 s.
    pub spill_after: Duration,
    /// Hybrid: a memory copy is kept only if this much credit stays free
    /// afterwards (the server reserves its largest frame, so hybrid copies
    /// never make a push wait). Default: 0.
    pub stream_headroom: u64,
    /// Limits on what registrations may ask for.
    pub limits: StoreLimits,
}

impl StoreConfig {
    /// Defaults with the given data directories.
    pub fn new(data_dirs: Vec<PathBuf>) -> Self {
        StoreConfig {
            data_dirs,
            create_data_dirs: true,
            disk_reserve: 1 << 30,
            check_interval: Duration::from_secs(5),
            max_open_files: 4096,
            fsync_on_seal: true,
            memory_budget: MemoryBudget::unmetered(256 << 20),
            spill_after: Duration::from_secs(1),
            stream_headroom: 0,
            limits: StoreLimits::default(),
        }
    }
}

/// Limits on registered shuffles. A registration beyond one is refused with
/// [`ServerError::LimitExceeded`] naming it. Registering costs a few hundred
/// bytes whatever the shape (state grows with the data pushed), so these
/// bound what idle registrations can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreLimits {
    /// Shuffles registered at once, over all apps. Default 65,536.
    pub max_shuffles: usize,
    /// Shuffles one app may have registered at once. Default 10,000 (a
    /// long Spark application creates thousands over its life; its cleaner
    /// unregisters them as they go out of use).
    pub max_shuffles_per_app: usize,
    /// `num_maps x num_partitions` of one shuffle. Default 10^9, which
    /// admits 10,000 maps x 50,000 partitions with room to spare.
    pub max_maps_x_partitions: u64,
}

impl Default for StoreLimits {
    fn default() -> Self {
        StoreLimits {
            max_shuffles: 65_536,
            max_shuffles_per_app: 10_000,
            max_maps_x_partitions: 1_000_000_000,
        }
    }
}

/// What a push did.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct PushOutcome {
    /// New blocks written.
    pub stored: u32,
    /// Blocks already stored (retried or duplicated pushes), dropped.
    pub duplicates: u32,
    /// Bytes of the new blocks that belong to partitions this server holds
    /// as the replica copy (`rss_replication_bytes_total`).
    pub replica_bytes: u64,
}

/// Where this server stands in a replicated shuffle's placement: server
/// `index` of the `servers` the shuffle was placed over from `offset`
/// ([`protocol::copy_server`]). Known only to count replica bytes: the
/// server stores and serves a replica like any partition.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct CopyRole {
    pub servers: u32,
    pub index: u32,
    pub offset: u32,
}

impl CopyRole {
    /// Validates the role a client sent (`index` and `offset` below
    /// `servers`, at least two servers).
    pub fn new(servers: u32, index: u32, offset: u32) -> Result<Self, String> {
        if servers < 2 {
            return Err(format!("a replicated shuffle needs two servers, not {servers}"));
        }
        if index >= servers || offset >= servers {
            return Err(format!(
                "placement index {index} and offset {offset} must be below its {servers} servers"
            ));
        }
        Ok(CopyRole {
            servers,
            index,
            offset,
        })
    }

    /// Whether this server holds `partition`'s replica copy.
    pub fn holds_replica(&self, partition: PartitionId) -> bool {
        protocol::copy_server(partition, 1, self.servers as usize, self.offset) == self.index as usize
    }
}

/// The state of one shuffle.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ShuffleStatus {
    /// Maps, partitions and mode.
    pub spec: ShuffleSpec,
    /// Maps committed so far.
    pub committed_maps: u32,
    /// Every map committed.
    pub sealed: bool,
    /// Bytes in the shuffle's partition files on disk (every attempt);
    /// blocks held only in memory are not counted.
    pub stored_bytes: u64,
}

/// Counters since the store was opened.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct StoreStats {
    /// New blocks accepted (in memory or on disk).
    pub blocks_stored: u64,
    /// Bytes of those blocks.
    pub bytes_stored: u64,
    /// Duplicate blocks dropped.
    pub duplicates_dropped: u64,
    /// Blocks that failed their CRC32C.
    pub checksum_mismatches: u64,
    /// Bytes of streaming blocks held in memory now.
    pub memory_bytes: u64,
    /// The most bytes of streaming blocks ever held in memory at once.
    pub peak_memory_bytes: u64,
    /// Bytes hybrid shuffles wrote to disk (full and selective).
    pub spilled_bytes: u64,
}

#[cfg(test)]
mod tests;
