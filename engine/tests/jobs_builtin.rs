//! The built-in jobs on the plan, end to end on small data through the
//! test runner (`support`), each validated by its own `finish` and against
//! an in-memory computation.

mod support;

use std::collections::HashMap;
use std::path::Path;

use engine::jobs::{terasort, wordcount, JobSpec, Registry};
use engine::plan::StageId;
use engine::EngineError;
use serde_json::json;

fn build(name: &str, params: serde_json::Value) -> Result<engine::plan::Job, EngineError> {
    Registry::builtin().build(&JobSpec::new(name, params))
}

#[tokio::test]
async fn terasort_sorts_globally_and_validates() {
    let (_tmp, client) = support::embedded();
    let job = build(
        "terasort",
        json!({"size": "300KB", "maps": 3, "partitions": 5, "seed": 7}),
    )
    .expect("job");
    assert_eq!(job.stages().len(), 2);
    assert_eq!(job.stages()[0].name, "map");
    assert_eq!((job.stages()[0].tasks, job.stages()[1].tasks), (3, 5));
    assert_eq!(job.edges().len(), 1);
    assert_eq!((job.edges()[0].from, job.edges()[0].to), (StageId(0), StageId(1)));
    let (result, outputs) = support::run(&job, &client).await.expect("runs");
    assert!(result.valid, "{:?}", result.problems);
    assert_eq!(result.records_out, 3_000);
    assert_eq!(outputs[0].iter().map(|o| o.records_in).sum::<u64>(), 3_000);
    assert!(outputs[1].iter().all(|o| o.bytes_read > 0));
    // The generator's own checksum, computed apart.
    let config = terasort::TerasortConfig {
        size_bytes: 300_000,
        maps: 3,
        partitions: 5,
        seed: 7,
    };
    let (baseline, _) = terasort::generate_only(&config, 1);
    assert_eq!(result.extra["checksum"], format!("{baseline:016x}"));

    // A forged reducer summary does not validate.
    let mut forged = outputs.clone();
    forged[1][0].summary["checksum"] = json!(1);
    let bad = job.finish(&forged).expect("finish");
    assert!(!bad.valid);
    assert!(job.finish(&outputs[..1]).is_err());
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write input");
    path
}

fn read_parts(dir: &Path) -> Vec<String> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("output dir")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .expect("part")
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test]
async fn wordcount_matches_an_in_memory_count() {
    let (tmp, client) = support::embedded();
    let a = "The quick brown fox\njumps over the lazy dog.\nDon't stop-2-stop!\n".repeat(20);
    let b = "ÉCOLE école Straße\n\nthe end";
    let inputs = vec![write(tmp.path(), "a.txt", &a), write(tmp.path(), "b.txt", b)];
    let out = tmp.path().join("out");
    let job = build(
        "wordcount",
        json!({"inputs": inputs, "maps": 4, "partitions": 3, "output": out}),
    )
    .expect("job");
    assert!(job.stages()[0].tasks >= 4);
    let (result, _) = support::run(&job, &client).await.expect("runs");
    assert!(result.valid, "{:?}", result.problems);

    let expected = wordcount::count_in_memory(&[&a, b]);
    let mut got: HashMap<String, u64> = HashMap::new();
    let lines = read_parts(&out);
    for line in &lines {
        let (w, c) = line.split_once('\t').expect("word<TAB>count");
        assert!(
            got.insert(w.to_string(), c.parse().expect("count")).is_none(),
            "{w} twice"
        );
    }
    assert_eq!(got, expected);
    assert_eq!(result.records_out, expected.len() as u64);
    assert_eq!(result.extra["distinct_words"], expected.len());
    assert_eq!(result.extra["words"], expected.values().sum::<u64>());
    assert_eq!(result.extra["top_words"][0], json!(["the", 41]));
    // Each part file is sorted by word.
    let part0 = std::fs::read_to_string(out.join("part-00000")).expect("part");
    let words: Vec<&str> = part0
        .lines()
        .map(|l| l.split('\t').next().unwrap_or(""))
        .collect();
    assert!(words.windows(2).all(|w| w[0] < w[1]));

    // Without an output folder nothing is written, and it still validates.
    let job = build("wordcount", json!({"inputs": inputs})).expect("job");
    let (result, _) = support::run(&job, &client).await.expect("runs");
    assert!(result.valid);
    assert_eq!(result.records_out, expected.len() as u64);
}

fn invalid_argument(r: Result<engine::plan::Job, EngineError>) -> String {
    match r {
        Err(e @ EngineError::InvalidArgument { .. }) => e.to_string(),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

#[test]
fn bad_params_are_refused_naming_the_field() {
    let msg = invalid_argument(build("terasort", json!({"size": "12 parsecs"})));
    assert!(msg.contains("size"), "{msg}");
    let msg = invalid_argument(build("terasort", json!({"partitons": 3})));
    assert!(msg.contains("partitons"), "{msg}");
    let msg = invalid_argument(build("terasort", json!({"maps": "many"})));
    assert!(msg.contains("maps"), "{msg}");
    let msg = invalid_argument(build("terasort", json!({"partitions": 0})));
    assert!(msg.contains("partitions"), "{msg}");
    let msg = invalid_argument(build("terasort", json!({"size": 50})));
    assert!(msg.contains("size"), "{msg}");
    let msg = invalid_argument(build("wordcount", json!({"partitions": 2})));
    assert!(msg.contains("inputs"), "{msg}");
    let msg = invalid_argument(build(
        "wordcount",
        json!({"inputs": ["/nonexistent/x.txt"], "partitions": 0}),
    ));
    assert!(msg.contains("partitions"), "{msg}");
    assert!(matches!(
        build("wordcount", json!({"inputs": ["/nonexistent/x.txt"]})),
        Err(EngineError::Io { .. })
    ));
    let msg = invalid_argument(build("groupby", json!({"agg": "median"})));
    assert!(msg.contains("agg"), "{msg}");
    let msg = invalid_argument(build("join", json!({"left": ["a.csv"]})));
    assert!(msg.contains("right"), "{msg}");
    assert!(matches!(
        build("nope", json!(null)),
        Err(EngineError::UnknownJob { .. })
    ));
}

#[test]
fn specs_round_trip_and_rebuild_the_same_plan() {
    let spec = JobSpec::new("terasort", json!({"size": 1_000_000, "maps": 2, "partitions": 4}));
    let text = serde_json::to_string(&spec).expect("json");
    let back: JobSpec = serde_json::from_str(&text).expect("json");
    assert_eq!(back, spec);
    let (a, b) = (
        Registry::builtin().build(&spec).expect("job"),
        Registry::builtin().build(&back).expect("job"),
    );
    assert_eq!(a.stages(), b.stages());
    assert_eq!(a.edges(), b.edges());
    let registry = Registry::builtin();
    let names: Vec<&str> = registry.names().collect();
    assert_eq!(names, ["groupby", "join", "terasort", "wordcount"]);
}
