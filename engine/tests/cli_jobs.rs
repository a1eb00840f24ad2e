//! groupby, join and wordcount through the CLI on worker processes, job
//! files, and workers started by hand (one of them a pretender).

mod cli_support;

use cli_support::{engine, finish, report};

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

/// Every `part-*` file's lines, sorted.
fn output_lines(dir: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    for entry in std::fs::read_dir(dir).expect("output dir") {
        let text = std::fs::read_to_string(entry.expect("entry").path()).expect("part");
        lines.extend(text.lines().map(str::to_string));
    }
    lines.sort();
    lines
}

fn sales(dir: &Path) -> (std::path::PathBuf, BTreeMap<String, (f64, u64)>) {
    let path = dir.join("sales.csv");
    let mut text = String::from("region,amount,note\n");
    let mut expected: BTreeMap<String, (f64, u64)> = BTreeMap::new();
    for i in 0..2000u64 {
        let region = format!("r{}", i % 7);
        let amount = (i % 13) as f64 + 0.5;
        text.push_str(&format!("{region},{amount},\"note, {i}\"\n"));
        let e = expected.entry(region).or_default();
        e.0 += amount;
        e.1 += 1;
    }
    std::fs::write(&path, text).expect("write csv");
    (path, expected)
}

#[test]
fn groupby_on_workers_matches_an_in_memory_aggregate_in_every_mode() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (input, expected) = sales(tmp.path());
    for mode in ["blocking", "pipelined", "hybrid-full", "hybrid-selective"] {
        let out_dir = tmp.path().join(format!("out-{mode}"));
        let r = report(&engine(&[
            "run",
            "groupby",
            "--input",
            input.to_str().expect("path"),
            "--key",
            "region",
            "--value",
            "amount",
            "--agg",
            "sum",
            "--partitions",
            "3",
            "--output",
            out_dir.to_str().expect("path"),
            "--workers",
            "2",
            "--mode",
            mode,
            "--json",
            "--quiet",
        ]));
        assert_eq!(r["valid"], true, "{mode}: {r}");
        let got: BTreeMap<String, f64> = output_lines(&out_dir)
            .iter()
            .map(|l| {
                let (k, v) = l.split_once(',').expect("key,value");
                (k.to_string(), v.parse().expect("number"))
            })
            .collect();
        assert_eq!(got.len(), expected.len(), "{mode}");
        for (k, (sum, _)) in &expected {
            assert!((got[k] - sum).abs() < 1e-6, "{mode} {k}: {} vs {sum}", got[k]);
        }
    }
}

#[test]
fn join_on_workers_matches_an_in_memory_join() {
    let tmp = tempfile::tempdir().expect("tmp");
    let left = tmp.path().join("users.csv");
    let right = tmp.path().join("orders.csv");
    let mut l = String::from("id,name\n");
    for i in 0..300 {
        l.push_str(&format!("{i},user{i}\n"));
    }
    let mut r = String::from("order,user_id\n");
    let mut expected = Vec::new();
    for o in 0..900 {
        let user = (o * 7) % 400; // ids 300..399 have no user
        r.push_str(&format!("o{o},{user}\n"));
        if user < 300 {
            expected.push(format!("{user},user{user},o{o},{user}"));
        }
    }
    std::fs::write(&left, l).expect("left");
    std::fs::write(&right, r).expect("right");
    expected.sort();
    let out_dir = tmp.path().join("out");
    let rep = report(&engine(&[
        "run",
        "join",
        "--left",
        left.to_str().expect("path"),
        "--right",
        right.to_str().expect("path"),
        "--left-key",
        "id",
        "--right-key",
        "user_id",
        "--partitions",
        "4",
        "--output",
        out_dir.to_str().expect("path"),
        "--workers",
        "2",
        "--mode",
        "hybrid-full",
        "--json",
        "--quiet",
    ]));
    assert_eq!(rep["valid"], true, "{rep}");
    assert_eq!(rep["records_out"], expected.len() as u64);
    assert_eq!(output_lines(&out_dir), expected);
}

#[test]
fn a_job_file_runs_and_flags_override_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    let file = tmp.path().join("job.toml");
    std::fs::write(
        &file,
        "job = \"terasort\"\nmode = \"hybrid-full\"\nworkers = 1\n[params]\nsize = \"2MB\"\nmaps = 2\npartitions = 3\n",
    )
    .expect("write");
    let r = report(&engine(&[
        "run",
        "--job-file",
        file.to_str().expect("path"),
        "--mode",
        "pipelined",
        "--json",
        "--quiet",
    ]));
    assert_eq!(r["valid"], true, "{r}");
    assert_eq!(r["mode"], "pipelined", "the flag wins over the file");
    assert_eq!(r["workers"], 1, "the file wins over the default");
    assert_eq!(r["records_out"], 20_000);
    assert_eq!(r["partitions"], 3);

    std::fs::write(&file, "job = \"terasort\"\nworkerz = 1\n").expect("write");
    let out = engine(&["run", "--job-file", file.to_str().expect("path")]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("workerz"),
        "{out:?}"
    );

    std::fs::write(&file, "job = \"terasort\"\n[params]\nsize = \"lots\"\n").expect("write");
    let out = engine(&["run", "--job-file", file.to_str().expect("path")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("lots"), "{out:?}");
}

#[test]
fn workers_started_by_hand_run_the_job_and_a_pretender_is_refused() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let addr = format!("127.0.0.1:{port}");
    let mut coordinator = Command::new(env!("CARGO_BIN_EXE_engine"))
        .args([
            "run",
            "terasort",
            "--size",
            "2MB",
            "--maps",
            "2",
            "--partitions",
            "2",
            "--workers",
            "1",
            "--external-workers",
            "--coordinator-listen",
            &addr,
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("coordinator starts");
    let mut stderr = BufReader::new(coordinator.stderr.take().expect("stderr"));
    let mut line = String::new();
    stderr.read_line(&mut line).expect("read");
    assert!(line.contains(&addr), "it says where workers connect: {line}");

    // Garbage first: refused alone.
    let mut pretender = std::net::TcpStream::connect(&addr).expect("connect");
    pretender
        .write_all(&[0, 0, 0, 5, b'h', b'e', b'l', b'l', b'o'])
        .expect("write");
    let mut worker = Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(["worker", "--coordinator", &addr, "--slots", "4"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("worker starts");
    let (r, err) = finish(coordinator, stderr);
    assert_eq!(r["valid"], true, "{r}");
    assert_eq!(r["workers"], 1);
    assert!(err.contains("refused a worker"), "{err}");
    assert!(
        worker.wait().expect("worker exits").success(),
        "the worker exits with its job"
    );
}
