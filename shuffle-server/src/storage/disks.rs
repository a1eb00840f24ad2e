//! The data directories at run time: where a new partition goes, how much
//! room each has, which errors each gave, and the budget of open files.
//!
//! Placement rule: a partition's file is placed when its first block is
//! written, in the first directory that accepts new partitions, starting
//! from the one the (app, shuffle, partition) hash prefers. A directory
//! accepts new partitions while its last probe found it writable, no write
//! failed there for lack of space since, and it has at least `reserve` bytes
//! free (probed every check, lowered by every append in between). A
//! partition never moves once it holds data: when its directory fills up,
//! appends to it fail (and leave its file and index as they were), while new
//! partitions go elsewhere.
//!
//! Failure rule: a file-system call in a directory that fails for another
//! reason than a lack of space or of process resources (EIO, a read-only
//! file system, the directory removed...), or a probe that cannot write
//! there, takes the directory out of service: logged at ERROR once,
//! `rss_disk_healthy` 0, no new partition placed there. Every partition it
//! held at that moment is lost (reads and appends get `DiskFailed`), even
//! after a later probe succeeds and brings the directory back into service
//! for new partitions: each partition remembers the directory's failure
//! count when it was placed.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use super::layout::Layout;
use crate::disk::DiskProbe;
use crate::ServerError;

/// What went wrong on a disk: the `kind` label of `rss_disk_errors_total`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DiskErrorKind {
    /// No space (or quota) left on the device.
    NoSpace,
    /// Any other I/O error.
    Io,
}

impl DiskErrorKind {
    /// Every kind, in label order.
    pub const ALL: [DiskErrorKind; 2] = [DiskErrorKind::NoSpace, DiskErrorKind::Io];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            DiskErrorKind::NoSpace => "no_space",
            DiskErrorKind::Io => "io",
        }
    }

    fn of(e: &io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => DiskErrorKind::NoSpace,
            _ => DiskErrorKind::Io,
        }
    }
}

/// One data directory's state, as status calls, metrics and `/readyz`
/// report it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskStatus {
    /// The directory (canonical).
    pub path: PathBuf,
    /// Free bytes at the last probe, less what was appended since; `None`
    /// when it could not be probed.
    pub free_bytes: Option<u64>,
    /// A file could be created there at the last probe.
    pub writable: bool,
    /// Writable and not taken out of service by a failure.
    pub healthy: bool,
    /// New partitions may be placed there.
    pub accepting: bool,
    /// Why it does not accept new partitions (`None` when it does).
    pub reason: Option<String>,
    /// Bytes in the partition files of live shuffles there.
    pub stored_bytes: u64,
    /// Bytes appended there since the store opened.
    pub written_bytes: u64,
    /// Errors since the store opened, by kind (in [`DiskErrorKind::ALL`] order).
    pub errors: [u64; 2],
}

impl fmt::Display for DiskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.path.display())?;
        match &self.reason {
            None => f.write_str("accepting")?,
            Some(reason) => write!(f, "not accepting new partitions ({reason})")?,
        }
        if let Some(free) = self.free_bytes {
            write!(f, ", {} free", protocol::units::human_bytes(free))?;
        }
        Ok(())
    }
}

const UNKNOWN: u64 = u64::MAX;

#[derive(Debug)]
struct DataDir {
    path: PathBuf,
    /// Free bytes at the last probe less what was appended since
    /// (`UNKNOWN` before the first probe or when it failed).
    free: AtomicU64,
    /// A write failed for lack of space since the last probe that found
    /// room above the reserve.
    full: AtomicBool,
    writable: AtomicBool,
    /// Why it is out of service (`None` while in service).
    failure: Mutex<Option<String>>,
    /// How many times it was taken out of service.
    failures: AtomicU64,
    stored: AtomicU64,
    written: AtomicU64,
    errors: [AtomicU64; 2],
}

/// The data directories (their paths, state and errors) and the open-file
/// budget.
#[derive(Debug)]
pub(crate) struct Disks {
    pub layout: Layout,
    dirs: Vec<DataDir>,
    /// Free bytes below which a directory takes no new partition.
    reserve: u64,
    pub files: FileBudget,
}

impl Disks {
    pub(crate) fn new(layout: Layout, reserve: u64, max_open_files: usize) -> Self {
        let dirs = layout
            .data_dirs()
            .iter()
            .map(|path| DataDir {
                path: path.clone(),
                free: AtomicU64::new(UNKNOWN),
                full: AtomicBool::new(false),
                writable: AtomicBool::new(true),
                failure: Mutex::new(None),
                failures: AtomicU64::new(0),
                stored: AtomicU64::new(0),
                written: AtomicU64::new(0),
                errors: [AtomicU64::new(0), AtomicU64::new(0)],
            })
            .collect();
        Disks {
            layout,
            dirs,
            reserve,
            files: FileBudget::new(max_open_files),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.dirs.len()
    }

    /// Why directory `dir` takes no new partition now; `None` if it does.
    fn refusal(&self, dir: usize) -> Option<String> {
        let d = &self.dirs[dir];
        if let Some(reason) = d.failure() {
            return Some(format!("failed: {reason}"));
        }
        if !d.writable.load(Ordering::Acquire) {
            return Some("not writable".into());
        }
        if d.full.load(Ordering::Acquire) {
            return Some("a write failed: no space left".into());
        }
        let free = d.free.load(Ordering::Acquire);
        if free != UNKNOWN && free < self.reserve {
            return Some(format!(
                "free space under the reserve of {}",
                protocol::units::human_bytes(self.reserve)
            ));
        }
        None
    }

    /// The directories a new partition may go to, the preferred one first,
    /// then the others in order.
    pub(crate) fn candidates(&self, preferred: usize) -> impl Iterator<Item = usize> + '_ {
        let n = self.dirs.len();
        (0..n)
            .map(move |k| (preferred + k) % n)
            .filter(|&d| self.refusal(d).is_none())
    }

    /// The error when no directory accepts a new partition.
    pub(crate) fn no_room(&self) -> ServerError {
        let why = (0..self.dirs.len())
            .map(|d| {
                let reason = self.refusal(d).unwrap_or_else(|| "accepting".into());
                format!("{}: {reason}", self.dirs[d].path.display())
            })
            .collect::<Vec<_>>()
            .join("; ");
        ServerError::NoRoom { reason: why }
    }

    /// Bytes appended to a file in `dir`.
    pub(crate) fn appended(&self, dir: usize, bytes: u64) {
        let d = &self.dirs[dir];
        d.stored.fetch_add(bytes, Ordering::Relaxed);
        d.written.fetch_add(bytes, Ordering::Relaxed);
        let _ = d.free.fetch_update(Ordering::AcqRel, Ordering::Acquire, |f| {
            (f != UNKNOWN).then(|| f.saturating_sub(bytes))
        });
    }

    /// Bytes of files in `dir` that were restored at start-up.
    pub(crate) fn restored(&self, dir: usize, bytes: u64) {
        self.dirs[dir].stored.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Bytes of files in `dir` that were deleted.
    pub(crate) fn removed(&self, dir: usize, bytes: u64) {
        let _ = self.dirs[dir]
            .stored
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                Some(s.saturating_sub(bytes))
            });
    }

    /// How many times `dir` was taken out of service: a partition placed
    /// there records it (see the module docs).
    pub(crate) fn failures(&self, dir: usize) -> u64 {
        self.dirs[dir].failures.load(Ordering::Acquire)
    }

    /// The error for `partition`, placed in `dir` when the directory had
    /// failed `failures` times, if the directory failed since.
    pub(crate) fn lost(
        &self,
        dir: usize,
        failures: u64,
        partition: protocol::PartitionId,
    ) -> Result<(), ServerError> {
        if !self.failed_since(dir, failures) {
            return Ok(());
        }
        Err(ServerError::Service(protocol::ServiceError::DiskFailed {
            partition,
            dir: self.dirs[dir].path.display().to_string(),
        }))
    }

    /// Whether `dir` failed since it had failed `failures` times: what a
    /// partition placed then held there is lost.
    pub(crate) fn failed_since(&self, dir: usize, failures: u64) -> bool {
        self.failures(dir) != failures
    }

    /// Takes `dir` out of service (see the module docs); logged once per
    /// episode.
    fn take_out(&self, dir: usize, reason: String) {
        let d = &self.dirs[dir];
        let mut failure = d.failure.lock().unwrap_or_else(PoisonError::into_inner);
        if failure.is_none() {
            d.failures.fetch_add(1, Ordering::AcqRel);
            tracing::error!(
                dir = %d.path.display(),
                "data directory failed ({reason}): taken out of service; the partitions it held are lost"
            );
            *failure = Some(reason);
        }
    }

    /// Records a failed file-system call in `dir` and turns it into the
    /// store's error. A lack of space stops new partitions there until a
    /// probe finds room again; it is logged once per episode. Another
    /// failure of the disk takes it out of service (see the module docs).
    pub(crate) fn failed(&self, dir: usize, op: &'static str, path: &Path, e: io::Error) -> ServerError {
        let d = &self.dirs[dir];
        let kind = DiskErrorKind::of(&e);
        d.errors[kind as usize].fetch_add(1, Ordering::Relaxed);
        match kind {
            DiskErrorKind::NoSpace => {
                if !d.full.swap(true, Ordering::AcqRel) {
                    tracing::warn!(
                        dir = %d.path.display(),
                        "data directory is full: {op} {} failed ({e}); no new partitions go there until it has room",
                        path.display()
                    );
                }
            }
            DiskErrorKind::Io if is_process_limit(&e) => {
                tracing::warn!(dir = %d.path.display(), "{op} {} failed: {e}", path.display());
            }
            DiskErrorKind::Io => self.take_out(dir, format!("{op} {}: {e}", path.display())),
        }
        ServerError::io(op, path)(e)
    }

    /// Takes a probe's findings for `dir`.
    pub(crate) fn probed(&self, dir: usize, probe: DiskProbe) {
        let d = &self.dirs[dir];
        d.writable.store(probe.writable(), Ordering::Release);
        match &probe.write_error {
            Some(e) if DiskErrorKind::of(e) == DiskErrorKind::Io && !is_process_limit(e) => {
                self.take_out(dir, format!("write probe: {e}"));
            }
            Some(_) => {}
            None => {
                let mut failure = d.failure.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(reason) = failure.take() {
                    tracing::info!(
                        dir = %d.path.display(),
                        "data directory back in service (it failed: {reason}); new partitions may go there"
                    );
                }
            }
        }
        let free = probe.free_bytes.unwrap_or(UNKNOWN);
        d.free.store(free, Ordering::Release);
        // Room again (an app was deleted, space freed by hand...).
        if free != UNKNOWN && free >= self.reserve.max(1) && d.full.swap(false, Ordering::AcqRel) {
            tracing::info!(dir = %d.path.display(), "data directory has room again");
        }
    }

    /// Probes every directory (statvfs and a write test); blocking I/O.
    pub(crate) fn probe_all(&self) {
        for dir in 0..self.dirs.len() {
            self.probed(dir, crate::disk::probe(&self.dirs[dir].path));
        }
    }

    /// Every directory's state.
    pub(crate) fn status(&self) -> Vec<DiskStatus> {
        (0..self.dirs.len())
            .map(|dir| {
                let d = &self.dirs[dir];
                let reason = self.refusal(dir);
                let free = d.free.load(Ordering::Acquire);
                DiskStatus {
                    path: d.path.clone(),
                    free_bytes: (free != UNKNOWN).then_some(free),
                    writable: d.writable.load(Ordering::Acquire),
                    healthy: d.writable.load(Ordering::Acquire) && d.failure().is_none(),
                    accepting: reason.is_none(),
                    reason,
                    stored_bytes: d.stored.load(Ordering::Relaxed),
                    written_bytes: d.written.load(Ordering::Relaxed),
                    errors: [0, 1].map(|k| d.errors[k].load(Ordering::Relaxed)),
                }
            })
            .collect()
    }
}

impl DataDir {
    fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Errors of the process, not of the disk: no reason to take it out.
fn is_process_limit(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::EINTR | libc::EAGAIN)
    )
}

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

    pub(crate) fn try_acquire(&self) -> bool {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok()
    }

    pub(crate) fn release(&self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(free: u64) -> DiskProbe {
        DiskProbe {
            free_bytes: Some(free),
            write_error: None,
        }
    }

    #[test]
    fn new_partitions_skip_dirs_under_the_reserve_or_full() {
        let tmp = tempfile::tempdir().expect("tmp");
        let names: Vec<PathBuf> = ["a", "b", "c"].iter().map(|n| tmp.path().join(n)).collect();
        let disks = Disks::new(Layout::new(&names, true).expect("layout"), 100, 8);
        disks.probed(0, probe(1000));
        disks.probed(1, probe(50));
        disks.probed(2, probe(1000));
        assert_eq!(disks.candidates(1).collect::<Vec<_>>(), vec![2, 0]);
        let _ = disks.failed(
            2,
            "write",
            Path::new("/c/x"),
            io::Error::from_raw_os_error(libc::ENOSPC),
        );
        assert_eq!(disks.candidates(1).collect::<Vec<_>>(), vec![0]);
        assert_eq!(disks.status()[2].errors, [1, 0]);
        // Appends lower the estimate until the next probe.
        disks.appended(0, 950);
        assert_eq!(disks.candidates(0).count(), 0);
        assert!(
            disks
                .no_room()
                .to_string()
                .contains("/b: free space under the reserve"),
            "{}",
            disks.no_room()
        );
        disks.probed(2, probe(500));
        assert_eq!(disks.candidates(0).collect::<Vec<_>>(), vec![2]);
        let _ = disks.failed(
            0,
            "write",
            Path::new("/a/x"),
            io::Error::from_raw_os_error(libc::EIO),
        );
        assert_eq!(disks.status()[0].errors, [0, 1]);
    }

    #[test]
    fn a_failed_dir_is_out_of_service_and_its_partitions_stay_lost() {
        let tmp = tempfile::tempdir().expect("tmp");
        let names: Vec<PathBuf> = ["a", "b"].iter().map(|n| tmp.path().join(n)).collect();
        let disks = Disks::new(Layout::new(&names, true).expect("layout"), 100, 8);
        disks.probed(0, probe(1000));
        disks.probed(1, probe(1000));
        let placed = disks.failures(0);
        assert!(disks.lost(0, placed, protocol::PartitionId(3)).is_ok());
        // Running out of file handles is not the disk's fault.
        let _ = disks.failed(
            0,
            "open",
            Path::new("/a/x"),
            io::Error::from_raw_os_error(libc::EMFILE),
        );
        assert_eq!(disks.candidates(0).collect::<Vec<_>>(), vec![0, 1]);
        // EIO is.
        let _ = disks.failed(
            0,
            "append to",
            Path::new("/a/x"),
            io::Error::from_raw_os_error(libc::EIO),
        );
        let status = &disks.status()[0];
        assert!(!status.healthy && !status.accepting, "{status:?}");
        assert!(status.to_string().contains("failed: append to /a/x"), "{status}");
        assert_eq!(disks.candidates(0).collect::<Vec<_>>(), vec![1]);
        let lost = disks.lost(0, placed, protocol::PartitionId(3)).expect_err("lost");
        assert!(lost.to_string().contains("partition-3"), "{lost}");
        // A probe that writes again brings it back for new partitions; the
        // old ones stay lost.
        disks.probed(0, probe(1000));
        assert!(disks.status()[0].healthy);
        assert_eq!(disks.candidates(0).collect::<Vec<_>>(), vec![0, 1]);
        assert!(disks.lost(0, placed, protocol::PartitionId(3)).is_err());
        assert!(disks.lost(0, disks.failures(0), protocol::PartitionId(3)).is_ok());
        // A probe that cannot write (read-only) takes it out again.
        disks.probed(
            0,
            DiskProbe {
                free_bytes: Some(1000),
                write_error: Some(io::Error::from_raw_os_error(libc::EROFS)),
            },
        );
        assert!(!disks.status()[0].healthy);
        assert_eq!(disks.failures(0), 2);
    }
}
