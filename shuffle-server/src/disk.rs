//! Disk checks: free space (statvfs) and writability of a data directory.

use std::path::Path;

/// What a check found.
#[derive(Debug)]
pub struct DiskProbe {
    pub free_bytes: Option<u64>,
    /// Why a file could not be created, written and removed there (`None`
    /// when it could).
    pub write_error: Option<std::io::Error>,
}

impl DiskProbe {
    pub fn writable(&self) -> bool {
        self.write_error.is_none()
    }
}

/// Probes `dir`: free bytes for unprivileged users, and whether a file can
/// be created, written and removed there.
pub fn probe(dir: &Path) -> DiskProbe {
    DiskProbe {
        free_bytes: free_bytes(dir),
        write_error: write_test(dir).err(),
    }
}

fn write_test(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(".rss-write-probe");
    let written = std::fs::write(&probe, b"ok");
    let removed = std::fs::remove_file(&probe);
    written.and(removed)
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
        assert!(p.writable());
        assert!(p.free_bytes.is_some_and(|b| b > 0));
        let missing = probe(&tmp.path().join("missing"));
        assert_eq!(
            missing.write_error.map(|e| e.kind()),
            Some(std::io::ErrorKind::NotFound)
        );
    }
}
