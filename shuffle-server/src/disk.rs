//! Disk checks: free space (statvfs) and writability of a data directory.

use std::path::Path;

/// What a check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskProbe {
    pub free_bytes: Option<u64>,
    pub writable: bool,
}

/// Probes `dir`: free bytes for unprivileged users, and whether a file can
/// be created, written and removed there.
pub fn probe(dir: &Path) -> DiskProbe {
    DiskProbe {
        free_bytes: free_bytes(dir),
        writable: writable(dir),
    }
}

fn writable(dir: &Path) -> bool {
    let probe = dir.join(".rss-write-probe");
    let ok = std::fs::write(&probe, b"ok").is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

#[cfg(unix)]
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `path` is a valid NUL-terminated string and `stat` points to
    // writable memory of the right type; statvfs fills it on success only.
    let rc = unsafe { libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it initialized `stat`.
    let stat = unsafe { stat.assume_init() };
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    Some(u64::from(stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

#[cfg(not(unix))]
fn free_bytes(_dir: &Path) -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_temp_dir_is_writable_and_has_free_space() {
        let tmp = tempfile::tempdir().expect("tmp");
        let p = probe(tmp.path());
        assert!(p.writable);
        assert!(p.free_bytes.is_some_and(|b| b > 0));
        assert!(!probe(&tmp.path().join("missing")).writable);
    }
}
