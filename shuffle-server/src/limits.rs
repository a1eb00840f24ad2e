//! Process limits the server adjusts at start.

/// Descriptors kept free for sockets, mmaps being opened, and the rest.
const SPARE_FDS: u64 = 1024;

/// Raises the soft limit on open files towards `wanted_files + SPARE_FDS`
/// (never above the hard limit) and returns how many partition files may be
/// kept open within it.
pub(crate) fn fit_open_files(wanted_files: usize) -> usize {
    let wanted = wanted_files as u64 + SPARE_FDS;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit; getrlimit only fills it.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return wanted_files;
    }
    let target = wanted.min(limit.rlim_max);
    if target > limit.rlim_cur {
        let raised = libc::rlimit {
            rlim_cur: target,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: a valid rlimit with rlim_cur <= rlim_max.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = target;
        }
    }
    let usable = limit.rlim_cur.saturating_sub(SPARE_FDS) as usize;
    if usable < wanted_files {
        tracing::warn!(
            wanted = wanted_files,
            usable,
            "the open-file limit is low: partitions beyond it are opened per append"
        );
    }
    wanted_files.min(usable)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_small_request_is_granted() {
        assert_eq!(super::fit_open_files(16), 16);
    }
}
