//! Running the `engine` binary as a user does, for the CLI-level tests.
#![allow(dead_code)] // each test file uses its own part

use std::ffi::OsStr;
use std::process::{Command, Output};

use serde_json::Value;

/// Runs `engine ARGS...` to the end.
pub fn engine<S: AsRef<OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(args)
        .output()
        .expect("the engine binary runs")
}

/// The JSON report on the last line of stdout of a successful run.
pub fn report(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "status {:?}, stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("last stdout line is not JSON ({e}): {stdout}"))
}

/// Waits for a job started with piped stdout and stderr, of which the
/// caller already took (and read the start of) stderr: returns its report
/// and the rest of stderr.
pub fn finish(
    child: std::process::Child,
    mut stderr: impl std::io::Read + Send + 'static,
) -> (Value, String) {
    let rest = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let out = child.wait_with_output().expect("the engine ends");
    let err = rest.join().expect("stderr reader");
    let r = report(&Output {
        stderr: err.clone().into_bytes(),
        ..out
    });
    (r, err)
}

/// [`finish`], but a job still running after `limit` is killed (SIGKILL)
/// and the test fails with what it printed: a hang fails, never blocks.
pub fn finish_within(
    child: std::process::Child,
    stderr: impl std::io::Read + Send + 'static,
    limit: std::time::Duration,
) -> (Value, String) {
    let pid = child.id();
    let (done, watch) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        let hung = watch.recv_timeout(limit).is_err();
        if hung {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
        }
        hung
    });
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| finish(child, stderr)));
    let _ = done.send(());
    let hung = watchdog.join().unwrap_or(false);
    match out {
        Ok(done) if !hung => done,
        Ok(_) => panic!("the job was killed after {limit:?} but reported"),
        Err(e) => {
            let why = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            if hung {
                panic!("the job made no end within {limit:?} (killed): {why}");
            }
            std::panic::resume_unwind(e)
        }
    }
}
