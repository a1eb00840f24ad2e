//! Jobs on real worker processes, in every shuffle mode: correct output,
//! streaming before producers finish, spilling, lost workers, and the
//! pipelined slot check.

mod cli_support;

use cli_support::{engine, finish, report};

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const MODES: [&str; 4] = ["blocking", "pipelined", "hybrid-full", "hybrid-selective"];

fn terasort(mode: &str, extra: &[&str]) -> Value {
    sized_terasort("4MB", mode, extra)
}

fn sized_terasort(size: &str, mode: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "run",
        "terasort",
        "--size",
        size,
        "--workers",
        "2",
        "--mode",
        mode,
        "--json",
        "--quiet",
    ];
    if !extra.contains(&"--maps") {
        args.extend_from_slice(&["--maps", "4", "--partitions", "4"]);
    }
    args.extend_from_slice(extra);
    report(&engine(&args))
}

#[test]
fn terasort_is_correct_in_every_mode_on_two_workers() {
    for mode in MODES {
        let r = terasort(mode, &[]);
        assert_eq!(r["valid"], true, "{mode}: {r}");
        assert_eq!(r["mode"], mode);
        assert_eq!(r["workers"], 2);
        assert_eq!(r["records_in"], 40_000, "{mode}");
        assert_eq!(r["records_out"], 40_000, "{mode}");
        assert_eq!(r["shuffle_bytes_written"], r["shuffle_bytes_read"], "{mode}: {r}");
        let disk = r["stored_bytes"].as_u64().expect("stored_bytes");
        match mode {
            "blocking" | "hybrid-full" => assert!(disk > 0, "{mode} persists everything: {r}"),
            "pipelined" => assert_eq!(disk, 0, "pipelined writes nothing to disk: {r}"),
            _ => {}
        }
    }
}

#[test]
fn pipelined_reducers_receive_data_before_the_last_map_finishes() {
    // Large enough maps that they run for a while after their first block.
    let r = sized_terasort(
        "48MB",
        "pipelined",
        &[
            "--maps",
            "2",
            "--partitions",
            "2",
            "--block-size",
            "64KiB",
            "--progress-ms",
            "10",
        ],
    );
    assert_eq!(r["valid"], true, "{r}");
    let stages = r["stages"].as_array().expect("stages");
    let maps_done = stages[0]["finished"].as_f64().expect("map stage finished");
    let first_input = stages[1]["first_input"].as_f64().expect("reducers got input");
    assert!(
        first_input < maps_done,
        "reducers first received data at {first_input}s, maps finished at {maps_done}s: {r}"
    );
}

#[test]
fn hybrid_selective_spills_nothing_with_ample_memory_and_completes_with_little() {
    let ample = terasort(
        "hybrid-selective",
        &["--memory-budget", "512MiB", "--spill-after", "60s"],
    );
    assert_eq!(ample["valid"], true, "{ample}");
    assert_eq!(ample["stored_bytes"], 0, "ample memory: nothing on disk: {ample}");

    let tiny = sized_terasort(
        "16MB",
        "hybrid-selective",
        &["--memory-budget", "2MiB", "--block-size", "16KiB"],
    );
    assert_eq!(tiny["valid"], true, "{tiny}");
    assert!(
        tiny["stored_bytes"].as_u64().is_some_and(|b| b > 0),
        "a tiny budget spills: {tiny}"
    );
}

#[test]
fn pipelined_with_too_few_slots_fails_early_with_a_clear_message() {
    let started = Instant::now();
    let out = engine(&[
        "run",
        "terasort",
        "--size",
        "1MB",
        "--maps",
        "4",
        "--partitions",
        "4",
        "--workers",
        "2",
        "--slots",
        "2",
        "--mode",
        "pipelined",
        "--quiet",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("8 tasks") && err.contains("4 slots"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(60), "must not hang");
}

/// Starts a job and returns it with the worker pids it announced.
fn start_with_workers(
    workers: usize,
    args: &[&str],
) -> (Child, BufReader<std::process::ChildStderr>, Vec<u32>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("engine starts");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut pids = Vec::new();
    let mut line = String::new();
    while pids.len() < workers {
        line.clear();
        if stderr.read_line(&mut line).expect("read stderr") == 0 {
            panic!("engine ended before its workers joined");
        }
        // "worker 1 pid 1234 joined (1 slots)"
        if let Some(rest) = line.strip_prefix("worker ") {
            if let Some(pid) = rest.split_whitespace().nth(2).and_then(|p| p.parse().ok()) {
                pids.push(pid);
            }
        }
    }
    (child, stderr, pids)
}

/// Runs terasort on `workers` workers of `slots` slots, kills worker 1 with
/// SIGKILL once some maps finished, and returns the report of the
/// (completed, validated) job.
fn kill_a_worker_mid_job(mode: &str, workers: usize, slots: &str) -> Value {
    let count = workers.to_string();
    let (child, mut stderr, pids) = start_with_workers(
        workers,
        &[
            "run",
            "terasort",
            "--size",
            "24MB",
            "--maps",
            "8",
            "--partitions",
            "4",
            "--workers",
            &count,
            "--slots",
            slots,
            "--mode",
            mode,
            "--json",
            "--max-attempts",
            "4",
        ],
    );
    // Wait until some maps finished and others run, then kill -9 one worker.
    let mut seen = String::new();
    let mut line = String::new();
    loop {
        line.clear();
        if stderr.read_line(&mut line).expect("read") == 0 {
            panic!("engine ended before the kill: {seen}");
        }
        seen.push_str(&line);
        if line.contains("/8 tasks") {
            break;
        }
    }
    let status = Command::new("kill")
        .args(["-9", &pids[1].to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let (r, err) = finish(child, stderr);
    assert_eq!(r["valid"], true, "{mode}: {r}\n{err}");
    assert_eq!(r["records_out"], 240_000, "{mode}");
    assert!(
        err.contains("worker 1 lost"),
        "{mode}: the loss was noticed: {err}"
    );
    r
}

#[test]
fn a_worker_killed_mid_job_still_leaves_a_correct_job_in_blocking_mode() {
    kill_a_worker_mid_job("blocking", 2, "1");
}

#[test]
fn a_worker_killed_mid_job_still_leaves_a_correct_job_in_hybrid_full_mode() {
    kill_a_worker_mid_job("hybrid-full", 2, "1");
}

#[test]
fn a_worker_killed_mid_job_restarts_the_pipelined_region() {
    // 12 tasks over 3 workers of 8 slots: every worker runs a reducer, and
    // the two left still have slots for the whole region.
    let r = kill_a_worker_mid_job("pipelined", 3, "8");
    assert!(
        r["region_restarts"].as_u64().is_some_and(|n| n >= 1),
        "the region ran again: {r}"
    );
    assert_eq!(r["stored_bytes"], 0, "{r}");
}

/// `name value` of a Prometheus text line, for an unlabelled metric.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

fn scrape(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n");
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_backpressure_keeps_server_memory_within_budget_with_a_slow_reducer() {
    use shuffle_server::config::ServerConfig;
    let tmp = tempfile::tempdir().expect("tmp");
    let mut config = ServerConfig::new(vec![tmp.path().to_path_buf()]);
    // Pushes are sized to the 1 MiB frame limit the server announces.
    config.memory_budget = 4 << 20;
    config.max_frame_len = 1 << 20;
    config.fsync_on_seal = false;
    let server = shuffle_server::LocalServer::start(config).await.expect("server");
    let url = server.tcp_url();
    let http = server.addrs.http;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut peak, mut limit) = (0f64, 0f64);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let text = scrape(http);
                peak = peak.max(metric(&text, "rss_buffer_bytes").unwrap_or(0.0));
                limit = metric(&text, "rss_buffer_limit_bytes").unwrap_or(limit);
                std::thread::sleep(Duration::from_millis(5));
            }
            (
                peak,
                limit,
                metric(&scrape(http), "rss_backpressure_seconds_total"),
            )
        })
    };
    let out = tokio::task::spawn_blocking(move || {
        engine(&[
            "run",
            "terasort",
            "--size",
            "32MB",
            "--maps",
            "3",
            "--partitions",
            "2",
            "--workers",
            "2",
            "--mode",
            "pipelined",
            "--shuffle-servers",
            &url,
            "--block-size",
            "64KiB",
            "--no-compress",
            "--slow-reads",
            "20ms",
            "--json",
            "--quiet",
        ])
    })
    .await
    .expect("engine");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (peak, limit, waited) = sampler.join().expect("sampler");
    let r = report(&out);
    assert_eq!(r["valid"], true, "{r}");
    assert_eq!(limit, f64::from(4u32 << 20));
    assert!(peak > 0.0, "the sampler saw buffered data");
    assert!(peak <= limit, "buffered {peak} bytes, budget {limit}");
    assert!(
        waited.is_some_and(|w| w > 0.0),
        "producers waited for credit: {waited:?} (peak {peak}): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        r["shuffle_bytes_written"].as_f64().is_some_and(|b| b > limit),
        "more data than the budget went through: {r}"
    );
}
