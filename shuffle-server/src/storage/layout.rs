//! Where files live. Every path is built from validated ids only, below one
//! of the configured data directories:
//!
//! ```text
//! <data-dir>/<app-id>/shuffle-<id>/partition-<p>.data
//! <first-data-dir>/<app-id>/shuffle-<id>/shuffle.meta   (once sealed)
//! ```
//!
//! Partitions of one shuffle are spread round-robin over the data
//! directories, starting at an offset derived from (app, shuffle) so that
//! small shuffles do not all land on the first disk.

use std::path::{Path, PathBuf};

use protocol::{AppId, PartitionId, ShuffleId};

use crate::ServerError;

#[derive(Debug, Clone)]
pub(crate) struct Layout {
    dirs: Vec<PathBuf>,
}

impl Layout {
    /// Creates (if needed) and canonicalizes every data directory.
    pub(crate) fn new(dirs: &[PathBuf]) -> Result<Self, ServerError> {
        if dirs.is_empty() {
            return Err(ServerError::InvalidConfig {
                field: "data_dirs",
                reason: "at least one data directory is required".into(),
            });
        }
        let mut canonical: Vec<PathBuf> = Vec::with_capacity(dirs.len());
        for dir in dirs {
            std::fs::create_dir_all(dir).map_err(ServerError::io("create data dir", dir))?;
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

    pub(crate) fn app_dir(&self, data_dir: &Path, app: &AppId) -> PathBuf {
        data_dir.join(app.as_str())
    }

    /// The shuffle's folder in every data directory.
    pub(crate) fn shuffle_dirs(&self, app: &AppId, shuffle: ShuffleId) -> Vec<PathBuf> {
        self.dirs
            .iter()
            .map(|d| self.app_dir(d, app).join(shuffle_dir_name(shuffle)))
            .collect()
    }

    /// Which data directory (index into [`Layout::data_dirs`]) holds a
    /// partition's file.
    pub(crate) fn dir_index(&self, app: &AppId, shuffle: ShuffleId, partition: PartitionId) -> usize {
        let start = spread_seed(app, shuffle);
        (start.wrapping_add(u64::from(partition.0)) % self.dirs.len() as u64) as usize
    }

    /// The data file of one partition.
    pub(crate) fn partition_file(&self, app: &AppId, shuffle: ShuffleId, partition: PartitionId) -> PathBuf {
        let dir = &self.dirs[self.dir_index(app, shuffle, partition)];
        self.app_dir(dir, app)
            .join(shuffle_dir_name(shuffle))
            .join(format!("partition-{}.data", partition.0))
    }
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

/// FNV-1a over the app id and shuffle id: stable across restarts, so a
/// restarted server finds every partition where it left it.
fn spread_seed(app: &AppId, shuffle: ShuffleId) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in app.as_str().bytes().chain(shuffle.0.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn partitions_spread_over_every_dir() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dirs: Vec<PathBuf> = (0..3).map(|i| tmp.path().join(format!("d{i}"))).collect();
        let layout = Layout::new(&dirs).expect("layout");
        let app = AppId::new("a").expect("id");
        let mut used = std::collections::HashSet::new();
        for p in 0..6 {
            let f = layout.partition_file(&app, ShuffleId(1), PartitionId(p));
            used.insert(
                f.parent()
                    .and_then(|s| s.parent())
                    .and_then(|a| a.parent())
                    .map(Path::to_path_buf),
            );
        }
        assert_eq!(used.len(), 3);
    }

    #[test]
    fn only_canonical_shuffle_folder_names_parse() {
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
    }

    #[test]
    fn duplicate_and_empty_dir_lists_are_refused() {
        let tmp = tempfile::tempdir().expect("tmp");
        assert!(Layout::new(&[]).is_err());
        let d = tmp.path().join("d");
        assert!(Layout::new(&[d.clone(), tmp.path().join("x/../d")]).is_err());
    }

    proptest! {
        #[test]
        fn every_valid_id_maps_inside_a_data_dir(app in "[A-Za-z0-9._-]{1,128}", s in any::<u32>(), p in any::<u32>()) {
            prop_assume!(app != "." && app != "..");
            let tmp = tempfile::tempdir().expect("tmp");
            let layout = Layout::new(&[tmp.path().join("d")]).expect("layout");
            let app = AppId::new(&app).expect("valid by construction");
            let file = layout.partition_file(&app, ShuffleId(s), PartitionId(p));
            let root = &layout.data_dirs()[0];
            prop_assert!(file.starts_with(root));
            // Exactly three components below the data dir, none of them `..`.
            let rest: Vec<_> = file.strip_prefix(root).expect("inside").components().collect();
            prop_assert_eq!(rest.len(), 3);
            prop_assert!(rest.iter().all(|c| matches!(c, std::path::Component::Normal(_))));
        }
    }
}
