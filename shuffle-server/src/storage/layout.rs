//! Where files live. Every path is built from validated ids only, below one
//! of the configured data directories:
//!
//! ```text
//! <data-dir>/<app-id>/shuffle-<id>/partition-<p>.data
//! <data-dir>/<app-id>/shuffle-<id>/shuffle.meta      (once sealed)
//! <data-dir>/.quarantine/<app-id>/shuffle-<id>-<ms>/ (set aside at start-up)
//! ```
//!
//! A shuffle has a folder in each data directory that holds one of its
//! partitions, and once sealed a copy of its meta in each of those folders.
//! Which directory holds a partition is decided when its first block is
//! written (see `disks.rs`), preferring a spread that starts at an offset
//! derived from (app, shuffle) so that small shuffles do not all land on the
//! first disk. Nothing records the choice but the file itself: recovery
//! finds each partition's file by its name, so the order and number of the
//! data directories may change between runs.

use std::path::PathBuf;

use protocol::{AppId, PartitionId, ShuffleId};

use crate::ServerError;

/// The folder, in each data directory, where start-up recovery moves what it
/// cannot read (see `persist.rs`). App ids never start with `.`, so it cannot
/// clash with an app's folder.
pub(crate) const QUARANTINE_DIR: &str = ".quarantine";

#[derive(Debug, Clone)]
pub(crate) struct Layout {
    dirs: Vec<PathBuf>,
}

impl Layout {
    /// Canonicalizes every data directory. A directory that does not exist
    /// is refused (an unmounted disk must not silently become a folder on
    /// the root file system) unless `create` says to make it.
    pub(crate) fn new(dirs: &[PathBuf], create: bool) -> Result<Self, ServerError> {
        if dirs.is_empty() {
            return Err(ServerError::InvalidConfig {
                field: "data_dirs",
                reason: "at least one data directory is required".into(),
            });
        }
        let mut canonical: Vec<PathBuf> = Vec::with_capacity(dirs.len());
        for dir in dirs {
            if create {
                std::fs::create_dir_all(dir).map_err(ServerError::io("create data dir", dir))?;
            } else if !dir.is_dir() {
                return Err(ServerError::InvalidConfig {
                    field: "data_dirs",
                    reason: format!(
                        "{} does not exist or is not a directory (create it, mount its disk, or set create_data_dirs)",
                        dir.display()
                    ),
                });
            }
            let c = dir
                .canonicalize()
                .map_err(ServerError::io("resolve data dir", dir))?;
            if canonical.contains(&c) {
                return Err(ServerError::InvalidConfig {
                    field: "data_dirs",
                    reason: format!("{} is listed twice", c.display()),
                });
            }
            canonical.push(c);
        }
        Ok(Layout { dirs: canonical })
    }

    pub(crate) fn data_dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    pub(crate) fn app_dir(&self, dir: usize, app: &AppId) -> PathBuf {
        self.dirs[dir].join(app.as_str())
    }

    /// The shuffle's folder in data directory `dir`.
    pub(crate) fn shuffle_dir(&self, dir: usize, app: &AppId, shuffle: ShuffleId) -> PathBuf {
        self.app_dir(dir, app).join(shuffle_dir_name(shuffle))
    }

    /// The data directory a new partition's file goes to first.
    pub(crate) fn preferred_dir(&self, app: &AppId, shuffle: ShuffleId, partition: PartitionId) -> usize {
        let start = protocol::fnv1a64(app.as_str().bytes().chain(shuffle.0.to_le_bytes()));
        (start.wrapping_add(u64::from(partition.0)) % self.dirs.len() as u64) as usize
    }

    /// Where start-up recovery sets a shuffle folder of `dir` aside.
    pub(crate) fn quarantine_dir(
        &self,
        dir: usize,
        app: &AppId,
        shuffle: ShuffleId,
        stamp_ms: u128,
    ) -> PathBuf {
        self.dirs[dir]
            .join(QUARANTINE_DIR)
            .join(app.as_str())
            .join(format!("{}-{stamp_ms}", shuffle_dir_name(shuffle)))
    }
}

/// The file name of a partition's data file.
pub(crate) fn partition_file_name(partition: PartitionId) -> String {
    format!("partition-{}.data", partition.0)
}

/// The partition of a file named `partition-<u32>.data`, in the exact form
/// this layout writes; `None` for any other name.
pub(crate) fn parse_partition_file_name(name: &str) -> Option<PartitionId> {
    let id: u32 = name
        .strip_prefix("partition-")?
        .strip_suffix(".data")?
        .parse()
        .ok()?;
    (partition_file_name(PartitionId(id)) == name).then_some(PartitionId(id))
}

fn shuffle_dir_name(shuffle: ShuffleId) -> String {
    format!("shuffle-{}", shuffle.0)
}

/// The shuffle id of a folder named `shuffle-<u32>`, in the exact form this
/// layout writes (no sign, no leading zero); `None` for any other name.
pub(crate) fn parse_shuffle_dir_name(name: &str) -> Option<ShuffleId> {
    let id: u32 = name.strip_prefix("shuffle-")?.parse().ok()?;
    (shuffle_dir_name(ShuffleId(id)) == name).then_some(ShuffleId(id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn partitions_prefer_a_spread_over_every_dir() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dirs: Vec<PathBuf> = (0..3).map(|i| tmp.path().join(format!("d{i}"))).collect();
        let layout = Layout::new(&dirs, true).expect("layout");
        let app = AppId::new("a").expect("id");
        let used: std::collections::HashSet<usize> = (0..6)
            .map(|p| layout.preferred_dir(&app, ShuffleId(1), PartitionId(p)))
            .collect();
        assert_eq!(used.len(), 3);
    }

    #[test]
    fn only_canonical_names_parse() {
        assert_eq!(parse_shuffle_dir_name("shuffle-0"), Some(ShuffleId(0)));
        assert_eq!(
            parse_shuffle_dir_name("shuffle-4294967295"),
            Some(ShuffleId(u32::MAX))
        );
        for bad in [
            "shuffle-",
            "shuffle-+1",
            "shuffle-01",
            "shuffle-4294967296",
            "shuffle-1x",
            "Shuffle-1",
            "x",
        ] {
            assert_eq!(parse_shuffle_dir_name(bad), None, "{bad}");
        }
        assert_eq!(
            parse_partition_file_name("partition-7.data"),
            Some(PartitionId(7))
        );
        for bad in [
            "partition-07.data",
            "partition-7.data.tmp",
            "partition--1.data",
            "partition-.data",
        ] {
            assert_eq!(parse_partition_file_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn duplicate_empty_and_missing_dir_lists_are_refused() {
        let tmp = tempfile::tempdir().expect("tmp");
        assert!(Layout::new(&[], true).is_err());
        let d = tmp.path().join("d");
        assert!(Layout::new(&[d.clone(), tmp.path().join("x/../d")], true).is_err());
        let missing = tmp.path().join("not-mounted");
        let err = Layout::new(std::slice::from_ref(&missing), false).expect_err("missing dir");
        assert!(err.to_string().contains("not-mounted"), "{err}");
        assert!(!missing.exists(), "a refused dir is not created");
    }

    proptest! {
        #[test]
        fn every_valid_id_maps_inside_a_data_dir(app in "[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}", s in any::<u32>(), p in any::<u32>()) {
            let tmp = tempfile::tempdir().expect("tmp");
            let layout = Layout::new(&[tmp.path().join("d")], true).expect("layout");
            let app = AppId::new(&app).expect("valid by construction");
            let file = layout.shuffle_dir(0, &app, ShuffleId(s)).join(partition_file_name(PartitionId(p)));
            let root = &layout.data_dirs()[0];
            prop_assert!(file.starts_with(root));
            // Exactly three components below the data dir, none of them `..`.
            let rest: Vec<_> = file.strip_prefix(root).expect("inside").components().collect();
            prop_assert_eq!(rest.len(), 3);
            prop_assert!(rest.iter().all(|c| matches!(c, std::path::Component::Normal(_))));
            prop_assert!(!file.starts_with(root.join(QUARANTINE_DIR)));
        }
    }
}
