//! Durability of sealed shuffles: the meta file written when a shuffle seals
//! and the recovery scan of [`super::Store::open`].
//!
//! A sealed shuffle has a copy of its meta, `shuffle.meta`, in each of its
//! folders (one per data directory holding a partition of it). At start-up
//! every data directory is scanned and each shuffle found is, by what its
//! folders hold:
//!
//! * **restored** when at least one folder has a meta, every meta decodes,
//!   validates, names this shuffle and agrees with the others, and no
//!   partition file is found twice. Each partition's file is found by its
//!   name, in whichever data directory holds it, so reordering or adding
//!   data directories changes nothing.
//! * **discarded** (its folders deleted) when no folder has a meta: it was
//!   not sealed when the server stopped, and uncommitted data is never
//!   served after a restart.
//! * **held** (left exactly where it is, not served, its id refused) when a
//!   meta is of a newer format than this server reads: rolling forward
//!   again finds it intact.
//! * **quarantined** when a meta cannot be read or decoded, fails
//!   validation, or the folders disagree: its folders are moved, whole, to
//!   `<data-dir>/.quarantine/<app>/shuffle-<id>-<ms>/` and reported. Data
//!   that might be sealed is never deleted.
//!
//! Entries this layout never creates are left alone and reported as
//! ignored.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use protocol::{AppId, PartitionId, ShuffleId};

use super::layout::{parse_partition_file_name, parse_shuffle_dir_name, Layout, QUARANTINE_DIR};
use super::meta::{self, SealedMeta};
use super::partition::Place;
use crate::ServerError;

/// The meta file of a sealed shuffle, in each of its folders.
pub(crate) const META_FILE: &str = "shuffle.meta";
/// Where the meta is written before it is renamed into place.
pub(crate) const META_TMP_FILE: &str = "shuffle.meta.tmp";

/// A shuffle that start-up recovery did not serve, and why.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SetAside {
    pub app: AppId,
    pub shuffle: ShuffleId,
    /// What was wrong, naming the file.
    pub reason: String,
    /// Where its folders are now (moved to quarantine, or left in place).
    pub folders: Vec<PathBuf>,
}

/// What [`super::Store::open`] found in the data directories.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct RecoveryReport {
    /// Sealed shuffles restored from their meta, readable again. Sorted.
    pub restored: Vec<(AppId, ShuffleId)>,
    /// Shuffle folders deleted (one per data dir holding one): no folder of
    /// the shuffle had a meta, it was not sealed. Sorted.
    pub discarded: Vec<PathBuf>,
    /// Shuffles moved to quarantine: a meta could not be read or decoded,
    /// or failed validation.
    pub quarantined: Vec<SetAside>,
    /// Shuffles left untouched and not served: a meta of a newer format.
    pub held: Vec<SetAside>,
    /// Restored shuffles' partitions whose file is missing although the
    /// meta lists blocks (reads of them fail as corrupt).
    pub missing_files: Vec<(AppId, ShuffleId, PartitionId)>,
    /// Entries this store did not create (names that are not an app id, or
    /// not `shuffle-<u32>` in an app folder, or not folders), left
    /// untouched. Sorted.
    pub ignored: Vec<PathBuf>,
}

/// A sealed shuffle found on disk: its meta, and where each partition's
/// file was found with its length. The store builds its state from it.
#[derive(Debug)]
pub(crate) struct RestoredShuffle {
    pub meta: SealedMeta,
    pub files: HashMap<PartitionId, (Place, u64)>,
}

/// What recovery hands to the store.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    pub shuffles: Vec<RestoredShuffle>,
    /// Bytes of restored files per data directory.
    pub bytes_by_dir: BTreeMap<usize, u64>,
    pub report: RecoveryReport,
}

/// A failed file-system call: what, on which path, and the error.
pub(crate) type IoFail = (&'static str, PathBuf, std::io::Error);

/// Flushes a directory's entries (new, renamed or removed files) to stable
/// storage.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    // Directories cannot be opened as files on every platform; the server
    // targets Unix, where this is how a directory is fsynced.
    #[cfg(unix)]
    File::open(dir).and_then(|d| d.sync_all())?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Writes the meta file atomically: a reader of `dir` sees either no meta
/// or the whole of it. With `fsync`, the meta and its directory entry are on
/// stable storage when this returns. On error nothing is left behind (best
/// effort), so a restart does not find a meta the caller was told failed.
pub(crate) fn write_meta(dir: &Path, bytes: &[u8], fsync: bool) -> Result<(), IoFail> {
    let tmp = dir.join(META_TMP_FILE);
    let path = dir.join(META_FILE);
    let written = File::create(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        if fsync {
            f.sync_all()?;
        }
        Ok(())
    });
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(("write", tmp, e));
    }
    if let Err(e) = fs::rename(&tmp, &path) {
        let _ = fs::remove_file(&tmp);
        return Err(("rename into", path, e));
    }
    if fsync {
        if let Err(e) = sync_dir(dir) {
            let _ = fs::remove_file(&path);
            return Err(("fsync dir", dir.to_path_buf(), e));
        }
    }
    Ok(())
}

/// Removes a meta written by a seal that then failed (best effort).
pub(crate) fn remove_meta(dir: &Path) {
    let _ = fs::remove_file(dir.join(META_FILE));
}

/// Scans every data directory (see the module docs for what becomes of
/// each shuffle found).
pub(crate) fn recover(layout: &Layout) -> Result<Recovered, ServerError> {
    let mut out = Recovered::default();
    let mut found: BTreeMap<(AppId, ShuffleId), Vec<(usize, PathBuf)>> = BTreeMap::new();
    let mut app_dirs = Vec::new();
    for (dir, data_dir) in layout.data_dirs().iter().enumerate() {
        for entry in read_dir(data_dir)? {
            if entry.file_name() == QUARANTINE_DIR {
                continue;
            }
            let app = entry.file_name().to_str().and_then(|n| AppId::new(n).ok());
            let (Some(app), true) = (app, is_real_dir(&entry.path())) else {
                out.report.ignored.push(entry.path());
                continue;
            };
            for sub in read_dir(&entry.path())? {
                match sub.file_name().to_str().and_then(parse_shuffle_dir_name) {
                    Some(shuffle) if is_real_dir(&sub.path()) => {
                        found
                            .entry((app.clone(), shuffle))
                            .or_default()
                            .push((dir, sub.path()));
                    }
                    _ => out.report.ignored.push(sub.path()),
                }
            }
            app_dirs.push(entry.path());
        }
    }
    for ((app, shuffle), folders) in found {
        match examine(&app, shuffle, &folders)? {
            Verdict::Unsealed => {
                for (_, folder) in folders {
                    fs::remove_dir_all(&folder).map_err(ServerError::io("remove", &folder))?;
                    out.report.discarded.push(folder);
                }
            }
            Verdict::Sealed(meta, files) => {
                for (_, folder) in &folders {
                    let _ = fs::remove_file(folder.join(META_TMP_FILE));
                }
                for (p, blocks) in meta.partitions.iter().enumerate() {
                    let partition = PartitionId(p as u32);
                    if !blocks.is_empty() && !files.contains_key(&partition) {
                        tracing::error!(%app, %shuffle, %partition, "restored shuffle: the file of a partition with committed blocks is missing; its reads will fail");
                        out.report.missing_files.push((app.clone(), shuffle, partition));
                    }
                }
                for (place, len) in files.values() {
                    *out.bytes_by_dir.entry(place.dir).or_insert(0) += len;
                }
                out.shuffles.push(RestoredShuffle { meta, files });
                out.report.restored.push((app, shuffle));
            }
            Verdict::Newer(reason) => {
                tracing::error!(%app, %shuffle, "not serving a shuffle, left as it is: {reason}");
                out.report.held.push(SetAside {
                    app,
                    shuffle,
                    reason,
                    folders: folders.into_iter().map(|(_, f)| f).collect(),
                });
            }
            Verdict::Unreadable(reason) => {
                let moved = quarantine(layout, &app, shuffle, &folders);
                tracing::error!(%app, %shuffle, to = ?moved, "quarantined a shuffle: {reason}");
                out.report.quarantined.push(SetAside {
                    app,
                    shuffle,
                    reason,
                    folders: moved,
                });
            }
        }
    }
    for dir in app_dirs {
        // Only succeeds on an app folder left empty.
        let _ = fs::remove_dir(dir);
    }
    out.report.discarded.sort();
    out.report.ignored.sort();
    Ok(out)
}

enum Verdict {
    Unsealed,
    Sealed(SealedMeta, HashMap<PartitionId, (Place, u64)>),
    Newer(String),
    Unreadable(String),
}

/// Decides what a shuffle's folders hold. Errs only when a folder cannot be
/// listed (the store then refuses to open: nothing is guessed).
fn examine(app: &AppId, shuffle: ShuffleId, folders: &[(usize, PathBuf)]) -> Result<Verdict, ServerError> {
    let mut metas: Vec<(PathBuf, SealedMeta)> = Vec::new();
    for (_, folder) in folders.iter().filter(|(_, f)| is_our_dir(f)) {
        let path = folder.join(META_FILE);
        match fs::symlink_metadata(&path) {
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Ok(Verdict::Unreadable(format!("{}: {e}", path.display()))),
            Ok(m) if !m.is_file() => {
                return Ok(Verdict::Unreadable(format!(
                    "{} is not a regular file",
                    path.display()
                )))
            }
            Ok(_) => {}
        }
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) => return Ok(Verdict::Unreadable(format!("reading {}: {e}", path.display()))),
        };
        if let Some(version) = meta::newer_version(&bytes) {
            return Ok(Verdict::Newer(format!(
                "{} is meta format version {version}; this server reads version {}",
                path.display(),
                meta::META_VERSION
            )));
        }
        let decoded = match meta::decode(&mut Bytes::from(bytes)) {
            Ok(meta) => meta,
            Err(e) => return Ok(Verdict::Unreadable(format!("{}: {e}", path.display()))),
        };
        if decoded.app != *app || decoded.shuffle != shuffle {
            return Ok(Verdict::Unreadable(format!(
                "{} describes shuffle {} of app {}",
                path.display(),
                decoded.shuffle,
                decoded.app
            )));
        }
        if !decoded.spec.mode().persists_seal() {
            return Ok(Verdict::Unreadable(format!(
                "{} is of a {} shuffle, which never persists",
                path.display(),
                decoded.spec.mode()
            )));
        }
        if let Some((first, other)) = metas.first() {
            if *other != decoded {
                return Ok(Verdict::Unreadable(format!(
                    "{} and {} disagree",
                    first.display(),
                    path.display()
                )));
            }
        }
        metas.push((path, decoded));
    }
    let Some((_, meta)) = metas.into_iter().next() else {
        return Ok(Verdict::Unsealed);
    };
    let mut files: HashMap<PartitionId, (Place, u64)> = HashMap::new();
    for (dir, folder) in folders.iter().filter(|(_, f)| is_our_dir(f)) {
        for entry in read_dir(folder)? {
            let Some(partition) = entry.file_name().to_str().and_then(parse_partition_file_name) else {
                continue;
            };
            let len = match entry.metadata() {
                Ok(m) if m.is_file() => m.len(),
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(ServerError::io("stat", entry.path())(e)),
            };
            if partition.0 >= meta.spec.num_partitions() {
                return Ok(Verdict::Unreadable(format!(
                    "{} is beyond the shuffle's {} partitions",
                    entry.path().display(),
                    meta.spec.num_partitions()
                )));
            }
            // Restored before any directory can fail.
            let place = Place {
                dir: *dir,
                path: entry.path(),
                failures: 0,
            };
            if let Some((other, _)) = files.insert(partition, (place, len)) {
                return Ok(Verdict::Unreadable(format!(
                    "{partition} has a file in two data directories: {} and {}",
                    other.path.display(),
                    entry.path().display()
                )));
            }
        }
    }
    Ok(Verdict::Sealed(meta, files))
}

/// Moves a shuffle's folders to quarantine; returns where each one is now
/// (a folder that cannot be moved stays, and is still not served).
fn quarantine(
    layout: &Layout,
    app: &AppId,
    shuffle: ShuffleId,
    folders: &[(usize, PathBuf)],
) -> Vec<PathBuf> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut now_at = Vec::new();
    for (dir, folder) in folders {
        let to = layout.quarantine_dir(*dir, app, shuffle, stamp);
        let moved = to
            .parent()
            .map_or(Ok(()), fs::create_dir_all)
            .and_then(|()| fs::rename(folder, &to));
        match moved {
            Ok(()) => now_at.push(to),
            Err(e) => {
                tracing::error!(from = %folder.display(), to = %to.display(), "cannot move to quarantine, left in place: {e}");
                now_at.push(folder.clone());
            }
        }
    }
    now_at
}

fn read_dir(dir: &Path) -> Result<Vec<fs::DirEntry>, ServerError> {
    fs::read_dir(dir)
        .and_then(|entries| entries.collect::<Result<Vec<_>, _>>())
        .map_err(ServerError::io("list", dir))
}

/// A directory, not a symlink to one: nothing outside the data directories
/// is ever followed, let alone deleted.
fn is_real_dir(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
}

/// A shuffle folder reached without following any symlink below the data
/// dir (which is canonical): the folder and its app folder are both real.
fn is_our_dir(shuffle_dir: &Path) -> bool {
    is_real_dir(shuffle_dir) && shuffle_dir.parent().is_some_and(is_real_dir)
}
