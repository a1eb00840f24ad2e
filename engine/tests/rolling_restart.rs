//! A rolling restart under a running job: three shuffle servers, each in
//! turn stopped with SIGTERM (it drains: new shuffles and pushes are
//! refused with `Draining`, sealed data is served until nothing is in
//! flight or the drain timeout) and started again on the same addresses
//! and data directory, the next one only once the previous says ready.
//! With replication 2 the job finishes valid.

mod cli_support;
mod daemon_support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cli_support::finish_within;
use daemon_support::ServerProcess;

/// Not a test: the body of the server processes the test below starts.
#[test]
#[ignore = "a helper process of the tests in this file, started by them"]
fn serve_as_child() {
    daemon_support::serve_from_env();
}

const DRAIN_SECS: f64 = 1.0;

fn rolling_restart(mode: &str) {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut servers: Vec<ServerProcess> = (0..3)
        .map(|i| ServerProcess::start_at(&tmp.path().join(format!("server-{i}")), any4(), DRAIN_SECS))
        .collect();
    let urls: Vec<&str> = servers.iter().map(|s| s.url.as_str()).collect();
    let urls = urls.join(",");
    let mut child = Command::new(env!("CARGO_BIN_EXE_engine"))
        .args([
            "run",
            "terasort",
            "--size",
            "24MB",
            "--maps",
            "8",
            "--partitions",
            "6",
            "--workers",
            "2",
            "--slots",
            "1",
            "--mode",
            mode,
            "--replication",
            "2",
            "--shuffle-servers",
            &urls,
            "--slow-reads",
            "150ms",
            "--retry-window",
            "10s",
            "--max-attempts",
            "4",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("engine starts");
    let stderr = child.stderr.take().expect("stderr");
    let started = Instant::now();
    while servers[0].counter("rss_push_bytes_total") <= 0.0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the job never pushed"
        );
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the engine ended ({status}) before it pushed");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut during_job = 0;
    for (i, server) in servers.iter_mut().enumerate() {
        if matches!(child.try_wait(), Ok(None)) {
            during_job += 1;
        }
        let drained = server.terminate();
        server.restart(DRAIN_SECS);
        eprintln!(
            "server {i} drained in {drained:?}, ready again at {:?}",
            started.elapsed()
        );
        // Spread the restarts over the map and the reduce stage.
        std::thread::sleep(Duration::from_millis(700));
    }
    let (r, err) = finish_within(child, stderr, Duration::from_secs(90));
    assert_eq!(r["valid"], true, "{mode}: {r}\n{err}");
    assert_eq!(r["records_out"], 240_000, "{mode}: {r}");
    // The job ran through at least two of the three restarts (the job is
    // slowed down to make sure), so the restarts were not all after it.
    assert!(
        during_job >= 2,
        "only {during_job} restarts began during the job: {r}"
    );
    eprintln!("{mode}: {r}");
}

fn any4() -> [std::net::SocketAddr; 4] {
    // Each server picks its ports once; its restarts reuse them.
    [std::net::SocketAddr::from(([127, 0, 0, 1], 0)); 4]
}

#[test]
fn a_rolling_restart_of_three_servers_under_a_blocking_job_with_replication() {
    rolling_restart("blocking");
}

#[test]
fn a_rolling_restart_of_three_servers_under_a_hybrid_full_job_with_replication() {
    rolling_restart("hybrid-full");
}
