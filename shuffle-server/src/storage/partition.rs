//! One partition's data file and its write-time index.
//!
//! Blocks of every map of the shuffle are appended to one file, in arrival
//! order, exactly as they are encoded on the wire (header + payload). The
//! index, kept in memory while the shuffle is written, maps
//! (map, attempt, seq) to where the block landed, so a reader can pick the
//! committed attempt's blocks in (map, seq) order without sorting the file.
//! Once the shuffle is sealed, the committed part of the index is also
//! written to the shuffle's meta file, from which it is restored at start-up.
//!
//! Failed-append rule: every block is written at the offset the index says
//! the file ends at (a positioned write, never "wherever the handle is"), and
//! the index learns of it only once it is whole. A write that fails part-way
//! (a full disk, an I/O error) is cut back off the file, and even if that cut
//! fails the next block overwrites it: the file and its index stay exactly as
//! they were before the failed append.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{IoSlice, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use protocol::block::BLOCK_HEADER_LEN;
use protocol::{AppId, AttemptId, Block, MapId, PartitionId, ShuffleId};

use super::disks::Disks;
use super::index::{IndexEntry, PlannedBlock};
use super::layout::partition_file_name;
use crate::ServerError;

type IndexKey = (MapId, AttemptId, u32);

/// Where a partition's file is, once its first block placed it.
#[derive(Clone, Debug)]
pub(crate) struct Place {
    /// Index of its data directory.
    pub dir: usize,
    pub path: PathBuf,
    /// How many times the directory had failed when the file was placed:
    /// if it fails again, the file is lost (see `disks.rs`).
    pub failures: u64,
}

/// What an append needs to know to place a new file.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Target<'a> {
    pub disks: &'a Disks,
    pub app: &'a AppId,
    pub shuffle: ShuffleId,
    pub partition: PartitionId,
}

#[derive(Debug, Default)]
pub(crate) struct PartitionFile {
    place: Option<Place>,
    file: Option<File>,
    /// Bytes successfully appended: where the next block goes.
    len: u64,
    index: BTreeMap<IndexKey, IndexEntry>,
}

impl PartitionFile {
    /// A partition of a sealed shuffle restored at start-up: `len` is the
    /// file's size on disk, `blocks` the committed blocks from the meta.
    pub(crate) fn restored(place: Option<Place>, len: u64, blocks: &[PlannedBlock]) -> Self {
        PartitionFile {
            place,
            file: None,
            len,
            index: blocks
                .iter()
                .map(|b| ((b.map, b.attempt, b.seq), b.entry))
                .collect(),
        }
    }

    pub(crate) fn place(&self) -> Option<&Place> {
        self.place.as_ref()
    }

    /// The file was placed in a directory that failed since: its data is
    /// lost (see `disks.rs`).
    pub(crate) fn is_lost(&self, disks: &Disks) -> bool {
        self.place
            .as_ref()
            .is_some_and(|p| disks.failed_since(p.dir, p.failures))
    }

    /// The file's path, for messages (`-` before the file is placed).
    pub(crate) fn describe(&self) -> PathBuf {
        self.place
            .as_ref()
            .map_or_else(|| PathBuf::from("-"), |p| p.path.clone())
    }

    /// Bytes stored in the file.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Appends a verified block. Returns `false`, writing nothing, when the
    /// same (map, attempt, seq) is already stored. The first block places
    /// the file (see `disks.rs`); if it cannot be written there, the next
    /// directory that accepts new partitions is tried.
    pub(crate) fn append(&mut self, block: &Block, target: Target<'_>) -> Result<bool, ServerError> {
        let id = block.id();
        let key = (id.map, id.attempt, id.seq);
        if self.index.contains_key(&key) {
            return Ok(false);
        }
        let mut header = [0u8; BLOCK_HEADER_LEN];
        block.header.encode(&mut &mut header[..]);
        let bufs = [IoSlice::new(&header), IoSlice::new(&block.payload)];
        if let Some(place) = &self.place {
            target.disks.lost(place.dir, place.failures, target.partition)?;
            self.write_here(&bufs, target.disks)?;
        } else {
            self.write_first(&bufs, target)?;
        }
        let len = block.encoded_len() as u32;
        self.index.insert(
            key,
            IndexEntry {
                offset: self.len,
                len,
                crc: block.header.crc,
            },
        );
        self.len += u64::from(len);
        if let Some(place) = &self.place {
            target.disks.appended(place.dir, u64::from(len));
        }
        Ok(true)
    }

    /// Places the file with its first block: tries each directory that
    /// accepts new partitions, leaving nothing behind in those that fail.
    fn write_first(&mut self, bufs: &[IoSlice<'_>], t: Target<'_>) -> Result<(), ServerError> {
        let mut last_error = None;
        let layout = &t.disks.layout;
        let preferred = layout.preferred_dir(t.app, t.shuffle, t.partition);
        for dir in t.disks.candidates(preferred).collect::<Vec<_>>() {
            let folder = layout.shuffle_dir(dir, t.app, t.shuffle);
            if let Err(e) = std::fs::create_dir_all(&folder) {
                last_error = Some(t.disks.failed(dir, "create shuffle dir", &folder, e));
                continue;
            }
            self.place = Some(Place {
                dir,
                path: folder.join(partition_file_name(t.partition)),
                failures: t.disks.failures(dir),
            });
            match self.write_here(bufs, t.disks) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    // Nothing of this partition stays there: not the file,
                    // not its handle.
                    self.close(t.disks);
                    if let Some(place) = self.place.take() {
                        let _ = std::fs::remove_file(&place.path);
                    }
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| t.disks.no_room()))
    }

    /// Writes one block at `len` in the placed file.
    fn write_here(&mut self, bufs: &[IoSlice<'_>], disks: &Disks) -> Result<(), ServerError> {
        let Some(place) = self.place.clone() else {
            return Err(disks.no_room());
        };
        // A handle kept open holds a budget slot; one opened over budget is
        // used for this block only and closed when dropped.
        let (mut file, kept) = match self.file.take() {
            Some(file) => (file, true),
            None => {
                let file = self
                    .open_file(&place.path)
                    .map_err(|e| disks.failed(place.dir, "open", &place.path, e))?;
                (file, disks.files.try_acquire())
            }
        };
        let written = write_at(&mut file, self.len, bufs);
        if let Err(e) = written {
            // Best effort: give the space back (the next block would
            // overwrite the partial one anyway, see the module docs).
            let _ = file.set_len(self.len);
            if kept {
                self.file = Some(file);
            }
            return Err(disks.failed(place.dir, "append to", &place.path, e));
        }
        if kept {
            self.file = Some(file);
        }
        Ok(())
    }

    fn open_file(&self, path: &Path) -> std::io::Result<File> {
        let mut opts = OpenOptions::new();
        opts.write(true);
        if self.len == 0 {
            // First block: a file left by an earlier run of the same shuffle
            // is stale, start it anew.
            opts.create(true).truncate(true);
        }
        opts.open(path)
    }

    /// Closes the append handle, returning its budget slot.
    pub(crate) fn close(&mut self, disks: &Disks) {
        if self.file.take().is_some() {
            disks.files.release();
        }
    }

    /// Flushes the file to stable storage (fsync), opening it if its append
    /// handle is closed. A partition that never stored a byte has nothing to
    /// flush.
    pub(crate) fn sync(&self, disks: &Disks) -> Result<(), ServerError> {
        let Some(place) = &self.place else {
            return Ok(());
        };
        if self.len == 0 {
            return Ok(());
        }
        let synced = match &self.file {
            Some(file) => file.sync_all(),
            // Opened for writing, never truncating: the file stays as is.
            None => OpenOptions::new()
                .write(true)
                .open(&place.path)
                .and_then(|file| file.sync_all()),
        };
        synced.map_err(|e| disks.failed(place.dir, "fsync", &place.path, e))
    }

    /// Flushes the append handle if one is open; closed files are left
    /// alone.
    pub(crate) fn sync_open(&self, disks: &Disks) -> Result<(), ServerError> {
        match (&self.file, &self.place) {
            (Some(file), Some(place)) => file
                .sync_all()
                .map_err(|e| disks.failed(place.dir, "fsync", &place.path, e)),
            _ => Ok(()),
        }
    }

    /// Checks that blocks `0..count` of (map, attempt) are all stored.
    /// Returns the first missing sequence number otherwise.
    pub(crate) fn first_missing(&self, map: MapId, attempt: AttemptId, count: u32) -> Option<u32> {
        let present = self.index.range((map, attempt, 0)..(map, attempt, count)).count() as u32;
        if present == count {
            return None;
        }
        (0..count).find(|seq| !self.index.contains_key(&(map, attempt, *seq)))
    }

    pub(crate) fn lookup(&self, map: MapId, attempt: AttemptId, seq: u32) -> Option<IndexEntry> {
        self.index.get(&(map, attempt, seq)).copied()
    }
}

/// Writes `bufs` whole at `offset`.
fn write_at(file: &mut File, offset: u64, bufs: &[IoSlice<'_>]) -> std::io::Result<()> {
    file.seek(SeekFrom::Start(offset))?;
    let mut owned: Vec<IoSlice<'_>> = bufs.to_vec();
    let mut bufs = &mut owned[..];
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match failpoint::write_vectored(file, bufs) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Injected short writes for tests: after `fail_after(n)`, this thread's
/// appends write `n` more bytes, then one write fails with ENOSPC, and
/// writes succeed again. Real bytes reach the file, as a disk filling up
/// mid-block would leave them.
#[cfg(test)]
pub(crate) mod failpoint {
    use std::cell::Cell;
    use std::fs::File;
    use std::io::{IoSlice, Write};

    thread_local! {
        static BUDGET: Cell<Option<usize>> = const { Cell::new(None) };
        static ERRNO: Cell<i32> = const { Cell::new(libc::ENOSPC) };
    }

    /// This thread may write `bytes` more, then its next write fails once
    /// with ENOSPC.
    pub(crate) fn fail_after(bytes: usize) {
        fail_after_with(bytes, libc::ENOSPC);
    }

    /// Like [`fail_after`], failing with `errno` (EIO: a disk failing,
    /// which this machine cannot make happen for real).
    pub(crate) fn fail_after_with(bytes: usize, errno: i32) {
        ERRNO.with(|e| e.set(errno));
        BUDGET.with(|b| b.set(Some(bytes)));
    }

    /// True while a failure is still to come.
    pub(crate) fn armed() -> bool {
        BUDGET.with(Cell::get).is_some()
    }

    pub(super) fn write_vectored(file: &mut File, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
        let Some(left) = BUDGET.with(Cell::get) else {
            return file.write_vectored(bufs);
        };
        if left == 0 {
            BUDGET.with(|b| b.set(None));
            return Err(std::io::Error::from_raw_os_error(ERRNO.with(Cell::get)));
        }
        let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| &b[..]);
        let n = file.write(&first[..first.len().min(left)])?;
        BUDGET.with(|b| b.set(Some(left - n)));
        Ok(n)
    }
}

#[cfg(not(test))]
mod failpoint {
    use std::fs::File;
    use std::io::{IoSlice, Write};

    #[inline]
    pub(super) fn write_vectored(file: &mut File, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
        file.write_vectored(bufs)
    }
}
