//! One partition's data file and its write-time index.
//!
//! Blocks of every map of the shuffle are appended to one file, in arrival
//! order, exactly as they are encoded on the wire (header + payload). The
//! index, kept in memory while the shuffle is written, maps
//! (map, attempt, seq) to where the block landed, so a reader can pick the
//! committed attempt's blocks in (map, seq) order without sorting the file.
//! Once the shuffle is sealed, the committed part of the index is also
//! written to the shuffle's meta file, from which it is restored at start-up.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{IoSlice, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use protocol::block::BLOCK_HEADER_LEN;
use protocol::{AttemptId, Block, MapId};

use super::reader::PlannedBlock;
use crate::ServerError;

/// Where one block lives in its partition file.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct IndexEntry {
    pub offset: u64,
    /// Header plus payload.
    pub len: u32,
    /// CRC32C of the payload, as verified when the block was written.
    pub crc: u32,
}

type IndexKey = (MapId, AttemptId, u32);

/// Caps the number of partition files held open for appending, over the
/// whole store. A partition that cannot get a slot opens, appends and closes.
#[derive(Debug)]
pub(crate) struct FileBudget {
    open: AtomicUsize,
    max: usize,
}

impl FileBudget {
    pub(crate) fn new(max: usize) -> Self {
        FileBudget {
            open: AtomicUsize::new(0),
            max,
        }
    }

    fn try_acquire(&self) -> bool {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok()
    }

    fn release(&self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Debug)]
pub(crate) struct PartitionFile {
    path: PathBuf,
    file: Option<File>,
    /// Bytes successfully appended; the file never holds a partial block
    /// beyond this length.
    len: u64,
    index: BTreeMap<IndexKey, IndexEntry>,
}

impl PartitionFile {
    pub(crate) fn new(path: PathBuf) -> Self {
        PartitionFile {
            path,
            file: None,
            len: 0,
            index: BTreeMap::new(),
        }
    }

    /// A partition of a sealed shuffle restored at start-up: `len` is the
    /// file's size on disk, `blocks` the committed blocks from the meta.
    pub(crate) fn restored(path: PathBuf, len: u64, blocks: &[PlannedBlock]) -> Self {
        PartitionFile {
            path,
            file: None,
            len,
            index: blocks
                .iter()
                .map(|b| ((b.map, b.attempt, b.seq), b.entry))
                .collect(),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes stored in the file.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Appends a verified block. Returns `false`, writing nothing, when the
    /// same (map, attempt, seq) is already stored.
    pub(crate) fn append(&mut self, block: &Block, files: &FileBudget) -> Result<bool, ServerError> {
        let id = block.id();
        let key = (id.map, id.attempt, id.seq);
        if self.index.contains_key(&key) {
            return Ok(false);
        }
        let mut header = [0u8; BLOCK_HEADER_LEN];
        block.header.encode(&mut &mut header[..]);
        // A handle kept open holds a budget slot; one opened over budget is
        // used for this block only and closed when dropped.
        let (mut file, kept) = match self.file.take() {
            Some(file) => (file, true),
            None => (self.open_file()?, files.try_acquire()),
        };
        let written = write_all_vectored(
            &mut file,
            &mut [IoSlice::new(&header), IoSlice::new(&block.payload)],
        );
        if let Err(e) = written {
            // Leave no partial block behind: later appends and reads rely on
            // the file ending at `len`.
            let _ = file.set_len(self.len);
            if kept {
                self.file = Some(file);
            }
            return Err(ServerError::io("append to", &self.path)(e));
        }
        if kept {
            self.file = Some(file);
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
        Ok(true)
    }

    fn open_file(&self) -> Result<File, ServerError> {
        let mut opts = OpenOptions::new();
        if self.len == 0 {
            // First block: a file left by an earlier run of the same shuffle
            // is stale, start it anew.
            opts.write(true).create(true).truncate(true);
        } else {
            opts.append(true);
        }
        opts.open(&self.path).map_err(ServerError::io("open", &self.path))
    }

    /// Closes the append handle, returning its budget slot.
    pub(crate) fn close(&mut self, files: &FileBudget) {
        if self.file.take().is_some() {
            files.release();
        }
    }

    /// Flushes the file to stable storage (fsync), opening it if its append
    /// handle is closed. A partition that never stored a byte has nothing to
    /// flush.
    pub(crate) fn sync(&self) -> Result<(), ServerError> {
        if self.len == 0 {
            return Ok(());
        }
        let synced = match &self.file {
            Some(file) => file.sync_all(),
            // Opened for appending, never truncating: the file stays as is.
            None => OpenOptions::new()
                .append(true)
                .open(&self.path)
                .and_then(|file| file.sync_all()),
        };
        synced.map_err(ServerError::io("fsync", &self.path))
    }

    /// Flushes the append handle if one is open; closed files are left
    /// alone.
    pub(crate) fn sync_open(&self) -> Result<(), ServerError> {
        match &self.file {
            Some(file) => file.sync_all().map_err(ServerError::io("fsync", &self.path)),
            None => Ok(()),
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

fn write_all_vectored(file: &mut File, mut bufs: &mut [IoSlice<'_>]) -> std::io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match file.write_vectored(bufs) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
