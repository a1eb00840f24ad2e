//! One shuffle server of three killed with SIGKILL during a job. Without
//! replication the job finishes valid, and only the producers of the lost
//! shuffle run again (counted in the report, with the time to recover);
//! with replication 2 it finishes valid with nothing run again.
//!
//! The servers are real processes (`daemon_support`).

mod cli_support;
mod daemon_support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cli_support::finish;
use daemon_support::ServerProcess;
use serde_json::Value;

/// Not a test: the body of the server processes the tests below start
/// (see `daemon_support`). It serves until it is killed.
#[test]
#[ignore = "a helper process of the tests in this file, started by them"]
fn serve_as_child() {
    daemon_support::serve_from_env();
}

/// Runs terasort over three servers, kills server 1 once `kill_when` says
/// so (polled every 10 ms), and returns the finished job's report.
fn run_and_kill(mode: &str, slots: &str, kill_when: &str, extra: &[&str]) -> (Value, String) {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut servers: Vec<ServerProcess> = (0..3)
        .map(|i| ServerProcess::start(&tmp.path().join(format!("server-{i}"))))
        .collect();
    let urls: Vec<&str> = servers.iter().map(|s| s.url.as_str()).collect();
    let urls = urls.join(",");
    let mut args = vec![
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
        slots,
        "--mode",
        mode,
        "--shuffle-servers",
        &urls,
        "--retry-window",
        "2s",
        "--max-attempts",
        "4",
        "--json",
    ];
    args.extend_from_slice(extra);
    let mut child = Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("engine starts");
    let stderr = child.stderr.take().expect("stderr");
    let started = Instant::now();
    while servers[1].counter(kill_when) <= 0.0 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "server 1 never counted {kill_when}"
        );
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the engine ended ({status}) before server 1 counted {kill_when}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    servers[1].kill_9();
    let (r, err) = finish(child, stderr);
    assert!(
        started.elapsed() < Duration::from_secs(180),
        "the job took {:?}",
        started.elapsed()
    );
    assert_eq!(r["valid"], true, "{mode}: {r}\n{err}");
    assert_eq!(r["records_out"], 240_000, "{mode}: {r}");
    (r, err)
}

/// The lost shuffle's 8 maps ran again (once or more), and the recovery
/// is in the report with its time.
fn assert_maps_rerun(r: &Value, err: &str) {
    let rerun = r["maps_rerun"].as_u64().unwrap_or(0);
    assert!(
        rerun >= 8 && rerun % 8 == 0,
        "every map of the lost shuffle ran again: {r}\n{err}"
    );
    let recoveries = r["recoveries"].as_array().expect("recoveries in the report");
    let first = &recoveries[0];
    assert_eq!(first["tasks_rerun"], 8, "{r}");
    assert!(
        first["seconds"].as_f64().is_some_and(|s| s > 0.0),
        "time to recover: {r}"
    );
    assert!(err.contains("lost"), "the loss was reported: {err}");
}

/// One slot per worker and slow readers: the reducers run two at a time
/// in partition order, so when the first reducer of a server-1 partition
/// starts reading, the other server-1 partition (three partitions on) has
/// not started: it finds the server gone.
fn kill_mid_read(mode: &str) {
    let (r, err) = run_and_kill(mode, "1", "rss_fetch_bytes_total", &["--slow-reads", "250ms"]);
    assert_maps_rerun(&r, &err);
    assert_eq!(r["region_restarts"], 0, "{mode}: {r}");
}

#[test]
fn a_server_killed_mid_read_reruns_only_the_maps_in_blocking_mode() {
    kill_mid_read("blocking");
}

#[test]
fn a_server_killed_mid_read_reruns_only_the_maps_in_hybrid_full_mode() {
    kill_mid_read("hybrid-full");
}

#[test]
fn a_server_killed_during_the_map_stage_reruns_the_maps() {
    let (r, err) = run_and_kill("blocking", "1", "rss_push_bytes_total", &[]);
    assert_maps_rerun(&r, &err);
}

#[test]
fn a_server_killed_mid_job_restarts_the_pipelined_region_on_the_live_servers() {
    // Pipelined data is in memory only: the region runs again, on fresh
    // shuffles placed over the two servers left.
    let (r, err) = run_and_kill("pipelined", "8", "rss_push_bytes_total", &[]);
    assert!(
        r["region_restarts"].as_u64().is_some_and(|n| n >= 1),
        "the region ran again: {r}\n{err}"
    );
}

/// With replication 2 nothing is lost with one server: no map runs again,
/// no recovery, and the reads of the killed server's partitions went on
/// from their replicas.
fn assert_nothing_rerun(r: &Value, err: &str) {
    assert_eq!(r["maps_rerun"], 0, "no map ran again: {r}\n{err}");
    assert!(r.get("recoveries").is_none(), "no recovery: {r}");
    assert_eq!(r["region_restarts"], 0, "{r}");
}

fn replicated_kill_mid_read(mode: &str) {
    let extra = ["--slow-reads", "250ms", "--replication", "2"];
    let (r, err) = run_and_kill(mode, "1", "rss_fetch_bytes_total", &extra);
    assert_nothing_rerun(&r, &err);
    assert!(
        r["read_failovers"].as_u64().is_some_and(|n| n >= 1),
        "{mode}: reads went on from the replicas: {r}\n{err}"
    );
}

#[test]
fn replicated_a_server_killed_mid_read_reruns_nothing_in_blocking_mode() {
    replicated_kill_mid_read("blocking");
}

#[test]
fn replicated_a_server_killed_mid_read_reruns_nothing_in_hybrid_full_mode() {
    replicated_kill_mid_read("hybrid-full");
}

#[test]
fn replicated_a_server_killed_during_the_map_stage_reruns_nothing() {
    let (r, err) = run_and_kill("blocking", "1", "rss_push_bytes_total", &["--replication", "2"]);
    assert_nothing_rerun(&r, &err);
}
