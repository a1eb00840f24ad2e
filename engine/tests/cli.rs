//! The `engine` binary as a user runs it.

mod cli_support;

use cli_support::{engine, report};

use std::collections::BTreeMap;
use std::path::Path;

#[test]
fn terasort_validates_and_reports_json() {
    let out = engine(&[
        "run",
        "terasort",
        "--size",
        "3MB",
        "--partitions",
        "8",
        "--maps",
        "3",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = report(&out);
    assert_eq!(report["job"], "terasort");
    assert_eq!(report["mode"], "blocking");
    assert_eq!(report["valid"], true);
    assert_eq!(report["records_in"], 30_000);
    assert_eq!(report["records_out"], 30_000);
    assert_eq!(report["maps"], 3);
    assert_eq!(report["partitions"], 8);
    for field in ["shuffle_bytes_written", "shuffle_bytes_read", "stored_bytes"] {
        assert!(report[field].as_u64().is_some_and(|b| b > 0), "{field}: {report}");
    }
    assert_eq!(report["shuffle_bytes_written"], report["shuffle_bytes_read"]);
    assert!(report["wall_seconds"].as_f64().is_some_and(|s| s > 0.0));
    assert!(report["extra"]["generate_seconds"].as_f64().is_some());
}

#[test]
fn terasort_without_compression_moves_every_byte() {
    let out = engine(&[
        "run",
        "terasort",
        "--size",
        "1MB",
        "--partitions",
        "4",
        "--no-compress",
        "--json",
        "--quiet",
    ]);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = report(&out);
    assert_eq!(report["valid"], true);
    // 10,000 records of 100 bytes, each framed with a 1-byte length, plus
    // block headers.
    assert!(report["shuffle_bytes_written"]
        .as_u64()
        .is_some_and(|b| b > 1_010_000));
}

/// A straightforward count, independent of the engine's tokenizer.
fn reference_count(texts: &[&str]) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for text in texts {
        let lowered = text.to_lowercase();
        for word in lowered
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
        {
            *counts.entry(word.to_string()).or_insert(0) += 1;
        }
    }
    counts
}

fn read_output(dir: &Path) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for entry in std::fs::read_dir(dir).expect("output dir") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("part file");
        let mut prev: Option<String> = None;
        for line in text.lines() {
            let (word, count) = line.split_once('\t').expect("word<TAB>count");
            assert!(prev.as_deref() < Some(word), "{} is not sorted", path.display());
            prev = Some(word.to_string());
            let old = counts.insert(word.to_string(), count.parse().expect("count"));
            assert!(old.is_none(), "{word} appears in two partitions");
        }
    }
    counts
}

#[test]
fn wordcount_matches_an_in_memory_count() {
    let tmp = tempfile::tempdir().expect("tmp");
    let a: String = (0..3000)
        .map(|i| {
            format!(
                "The quick brown fox {} jumps; over the lazy dog's back-{}\n",
                i % 37,
                i % 5
            )
        })
        .collect();
    let b = "Ünïcode ÉCOLE école Straße\nno trailing newline — «quoted» 42 42".to_string();
    let c = String::new();
    let paths: Vec<_> = [("a.txt", &a), ("b.txt", &b), ("c.txt", &c)]
        .iter()
        .map(|(name, text)| {
            let p = tmp.path().join(name);
            std::fs::write(&p, text).expect("write input");
            p
        })
        .collect();
    let out_dir = tmp.path().join("out");
    let mut args = vec![
        "run",
        "wordcount",
        "--partitions",
        "5",
        "--split-size",
        "4KiB",
        "--json",
        "--input",
    ];
    let path_strs: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    args.extend(path_strs.iter().map(String::as_str));
    let out_str = out_dir.display().to_string();
    args.extend(["--output", &out_str]);
    let out = engine(&args);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = report(&out);
    let expected = reference_count(&[&a, &b, &c]);
    assert_eq!(read_output(&out_dir), expected);
    assert_eq!(report["valid"], true);
    // The source's records are the input lines.
    assert_eq!(
        report["records_in"],
        (a.lines().count() + b.lines().count()) as u64
    );
    assert_eq!(report["records_out"], expected.len() as u64);
    assert!(
        report["maps"].as_u64().is_some_and(|m| m > 3),
        "the 4 KiB splits cut file a: {report}"
    );
}

#[test]
fn unbuilt_features_bad_arguments_and_unreachable_servers_get_clear_errors() {
    let out = engine(&[
        "run",
        "terasort",
        "--size",
        "1MB",
        "--shuffle-servers",
        "tcp://127.0.0.1:1",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("connecting to the shuffle servers tcp://127.0.0.1:1")
    );

    let out = engine(&[
        "run",
        "terasort",
        "--size",
        "1MB",
        "--shuffle-servers",
        "udp://x:1",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("expected tcp://host:port"),
        "{out:?}"
    );

    let out = engine(&["run", "terasort", "--size", "1MB", "--slots", "0", "--quiet"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("slots"), "{out:?}");

    let out = engine(&["run", "nosuchjob"]);
    assert!(!out.status.success());

    let out = engine(&["run", "--job-file", "/nonexistent/job.toml"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/job.toml"));

    let out = engine(&[
        "run",
        "terasort",
        "--size",
        "1MB",
        "--memory-budget",
        "1KiB",
        "--quiet",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("memory_budget"),
        "{out:?}"
    );

    let out = engine(&["run", "terasort", "--size", "lots"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a size"));

    let out = engine(&["run", "terasort", "--mode", "hybrid"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("hybrid-full"));

    let out = engine(&["run", "wordcount", "--input", "/nonexistent/file.txt", "--quiet"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/file.txt"));

    let out = engine(&["run", "terasort", "--size", "50B", "--quiet"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no 100-byte record"));
}
