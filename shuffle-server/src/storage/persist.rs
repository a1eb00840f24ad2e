//! Durability of sealed shuffles: the meta file written when a shuffle seals
//! and the recovery scan of [`super::Store::open`].
//!
//! A sealed shuffle is restored from `shuffle.meta` in its folder of the
//! first data directory. Every other shuffle folder found at start-up (never
//! sealed, or a meta that is missing, unreadable or fails validation) is
//! deleted in every data directory, so uncommitted data is never served
//! after a restart. Entries that this layout never creates are left alone.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use protocol::{AppId, ShuffleId, ShuffleMode};

use super::layout::{parse_shuffle_dir_name, Layout};
use super::meta::{self, SealedMeta};
use super::shuffle::{Placement, ShuffleState};
use crate::ServerError;

/// The meta file of a sealed shuffle, in its folder of the first data dir.
pub(crate) const META_FILE: &str = "shuffle.meta";
/// Where the meta is written before it is renamed into place.
pub(crate) const META_TMP_FILE: &str = "shuffle.meta.tmp";

/// What [`super::Store::open`] found in the data directories.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct RecoveryReport {
    /// Sealed shuffles restored from their meta, readable again. Sorted.
    pub restored: Vec<(AppId, ShuffleId)>,
    /// Shuffle folders deleted (one per data dir holding one): the shuffle
    /// was not sealed, or its meta was missing, unreadable or invalid.
    /// Sorted.
    pub discarded: Vec<PathBuf>,
    /// Entries this store did not create (names that are not an app id, or
    /// not `shuffle-<u32>` in an app folder, or not folders), left
    /// untouched. Sorted.
    pub ignored: Vec<PathBuf>,
}

/// Flushes a directory's entries (new, renamed or removed files) to stable
/// storage.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), ServerError> {
    // Directories cannot be opened as files on every platform; the server
    // targets Unix, where this is how a directory is fsynced.
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(ServerError::io("fsync dir", dir))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Writes the meta file atomically: a reader of `dir` sees either no meta
/// or the whole of it. With `fsync`, the meta and its directory entry are on
/// stable storage when this returns. On error nothing is left behind (best
/// effort), so a restart does not find a meta the caller was told failed.
pub(crate) fn write_meta(dir: &Path, bytes: &[u8], fsync: bool) -> Result<(), ServerError> {
    let tmp = dir.join(META_TMP_FILE);
    let path = dir.join(META_FILE);
    let written = File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            if fsync {
                f.sync_all()?;
            }
            Ok(())
        })
        .map_err(ServerError::io("write", &tmp));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    if let Err(e) = fs::rename(&tmp, &path) {
        let _ = fs::remove_file(&tmp);
        return Err(ServerError::io("rename into", &path)(e));
    }
    if fsync {
        if let Err(e) = sync_dir(dir) {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
    }
    Ok(())
}

/// Scans every data directory: restores each shuffle with a valid meta and
/// deletes every other shuffle folder.
pub(crate) fn recover(
    layout: &Layout,
    fsync_on_seal: bool,
) -> Result<(Vec<ShuffleState>, RecoveryReport), ServerError> {
    let mut report = RecoveryReport::default();
    let mut found = BTreeSet::new();
    let mut app_dirs = Vec::new();
    for data_dir in layout.data_dirs() {
        for entry in read_dir(data_dir)? {
            let app = entry.file_name().to_str().and_then(|n| AppId::new(n).ok());
            let (Some(app), true) = (app, is_real_dir(&entry.path())) else {
                report.ignored.push(entry.path());
                continue;
            };
            for sub in read_dir(&entry.path())? {
                match sub.file_name().to_str().and_then(parse_shuffle_dir_name) {
                    Some(shuffle) if is_real_dir(&sub.path()) => {
                        found.insert((app.clone(), shuffle));
                    }
                    _ => report.ignored.push(sub.path()),
                }
            }
            app_dirs.push(entry.path());
        }
    }
    let mut states = Vec::new();
    for (app, shuffle) in found {
        let dirs = layout.shuffle_dirs(&app, shuffle);
        let meta = if is_our_dir(&dirs[0]) {
            load_meta(&dirs[0], &app, shuffle)
        } else {
            None
        };
        match meta {
            Some(meta) => {
                let _ = fs::remove_file(dirs[0].join(META_TMP_FILE));
                states.push(restore(layout, meta, dirs, fsync_on_seal)?);
                report.restored.push((app, shuffle));
            }
            None => {
                for dir in dirs.into_iter().filter(|d| is_our_dir(d)) {
                    fs::remove_dir_all(&dir).map_err(ServerError::io("remove", &dir))?;
                    report.discarded.push(dir);
                }
            }
        }
    }
    for dir in app_dirs {
        // Only succeeds on an app folder left empty.
        let _ = fs::remove_dir(dir);
    }
    report.discarded.sort();
    report.ignored.sort();
    Ok((states, report))
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

/// The shuffle's meta if it is readable, valid, names this shuffle and is of
/// a mode this store serves; `None` otherwise (the caller discards it).
fn load_meta(dir: &Path, app: &AppId, shuffle: ShuffleId) -> Option<SealedMeta> {
    let path = dir.join(META_FILE);
    if !fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) {
        return None;
    }
    let bytes = fs::read(path).ok()?;
    let meta = meta::decode(&mut Bytes::from(bytes)).ok()?;
    // Blocking and hybrid-full shuffles persist everything; the other modes
    // never write a meta.
    let persisted = matches!(
        meta.spec.mode(),
        ShuffleMode::Blocking | ShuffleMode::Hybrid(protocol::SpillStrategy::Full)
    );
    let matches = meta.app == *app && meta.shuffle == shuffle && persisted;
    matches.then_some(meta)
}

/// Rebuilds a sealed shuffle. Partition lengths come from the files on disk
/// (a missing file has none); a file shorter than its index is caught when
/// it is read.
fn restore(
    layout: &Layout,
    meta: SealedMeta,
    dirs: Vec<PathBuf>,
    fsync_on_seal: bool,
) -> Result<ShuffleState, ServerError> {
    let mut lens = HashMap::new();
    for dir in dirs.iter().filter(|d| is_our_dir(d)) {
        for entry in read_dir(dir)? {
            match entry.metadata() {
                Ok(m) if m.is_file() => {
                    lens.insert(entry.path(), m.len());
                }
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(ServerError::io("stat", entry.path())(e)),
            }
        }
    }
    let (app, shuffle) = (meta.app.clone(), meta.shuffle);
    let placement = Placement { dirs, fsync_on_seal };
    Ok(ShuffleState::restore(meta, placement, |p| {
        let path = layout.partition_file(&app, shuffle, p);
        let len = lens.get(&path).copied().unwrap_or(0);
        (path, len)
    }))
}
