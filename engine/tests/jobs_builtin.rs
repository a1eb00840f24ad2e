//! The built-in jobs on the plan, end to end on small data through the
//! test runner (`support`), each validated by its own `finish` and against
//! an in-memory computation.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use engine::dataflow::csv::CsvReader;
use engine::jobs::{summary, terasort, wordcount, JobSpec, Registry};
use engine::kv;
use engine::plan::StageId;
use engine::EngineError;
use serde_json::json;

fn build(name: &str, params: serde_json::Value) -> Result<engine::dataflow::Job, EngineError> {
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

/// Every CSV row of the part files under `dir`.
fn read_csv_parts(dir: &Path) -> Vec<Vec<String>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("output dir")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    let mut rows = Vec::new();
    for f in files {
        let text = std::fs::read(&f).expect("part");
        let mut r = CsvReader::new(&text[..]);
        while r.next_row().expect("csv").is_some() {
            rows.push(
                (0..r.len())
                    .map(|i| String::from_utf8_lossy(r.field(i)).into_owned())
                    .collect(),
            );
        }
    }
    rows
}

const SALES: &str = "region,product,amount\n\
\"North, East\",apple,1.5\n\
south,pear,2\n\
\"North, East\",pear,-0.25\n\
\"say \"\"west\"\"\",apple,10\n\
south,apple,4.75\r\n\
\n\
\"multi\nline\",fig,3\n";

const MORE_SALES: &str = "product,amount,region\napple,8,south\nkiwi,0.5,\"North, East\"\n";

/// The in-memory group-by: values by region, then the aggregation.
fn expected_groupby(agg: &str) -> BTreeMap<String, String> {
    let rows = [
        ("North, East", 1.5),
        ("south", 2.0),
        ("North, East", -0.25),
        ("say \"west\"", 10.0),
        ("south", 4.75),
        ("multi\nline", 3.0),
        ("south", 8.0),
        ("North, East", 0.5),
    ];
    let mut by: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for (k, v) in rows {
        by.entry(k.to_string()).or_default().push(v);
    }
    by.into_iter()
        .map(|(k, vs)| {
            let sum: f64 = vs.iter().sum();
            let v = match agg {
                "count" => vs.len().to_string(),
                "sum" => sum.to_string(),
                "min" => vs.iter().copied().fold(f64::INFINITY, f64::min).to_string(),
                "max" => vs.iter().copied().fold(f64::NEG_INFINITY, f64::max).to_string(),
                _ => (sum / vs.len() as f64).to_string(),
            };
            (k, v)
        })
        .collect()
}

#[tokio::test]
async fn groupby_matches_an_in_memory_aggregation_for_every_agg() {
    let (tmp, client) = support::embedded();
    let inputs = vec![
        write(tmp.path(), "a.csv", SALES),
        write(tmp.path(), "b.csv", MORE_SALES),
    ];
    for agg in ["count", "sum", "min", "max", "avg"] {
        let out = tmp.path().join(format!("out-{agg}"));
        // Columns by name; the second file orders them differently.
        let job = build(
            "groupby",
            json!({"inputs": inputs, "key_column": "region", "value_column": "amount",
                   "agg": agg, "partitions": 3, "output": out}),
        )
        .expect("job");
        let (result, _) = support::run(&job, &client).await.expect("runs");
        assert!(result.valid, "{agg}: {:?}", result.problems);
        let got: BTreeMap<String, String> = read_csv_parts(&out)
            .into_iter()
            .map(|row| (row[0].clone(), row[1].clone()))
            .collect();
        let expected = expected_groupby(agg);
        assert_eq!(got, expected, "{agg}");
        assert_eq!(result.records_out, 4);
        assert_eq!(result.extra["rows"], 8);
        let sum = summary::checksum(
            expected
                .iter()
                .map(|(k, v)| pair(k.as_bytes(), v.as_bytes()))
                .collect::<Vec<_>>()
                .iter()
                .map(Vec::as_slice),
        );
        assert_eq!(result.extra["checksum"], format!("{sum:016x}"), "{agg}");
    }
    // By index, count needs no value column.
    let job = build(
        "groupby",
        json!({"inputs": [&inputs[0]], "key_column": 1, "partitions": 2}),
    )
    .expect("job");
    let (result, _) = support::run(&job, &client).await.expect("runs");
    assert_eq!(result.records_out, 3, "apple, pear, fig");
}

fn pair(k: &[u8], v: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    kv::encode(k, v, &mut out);
    out
}

#[tokio::test]
async fn groupby_refuses_a_non_numeric_value_with_its_file_and_line() {
    let (tmp, client) = support::embedded();
    let bad = write(tmp.path(), "bad.csv", "k,v\na,1\n\"b\nb\",2\nc,lots\n");
    let job = build(
        "groupby",
        json!({"inputs": [&bad], "value_column": "v", "agg": "sum"}),
    )
    .expect("job");
    match support::run(&job, &client).await {
        Err(EngineError::NotNumeric {
            path,
            line,
            column,
            value,
        }) => {
            assert_eq!(
                (path, line, column.as_str(), value.as_str()),
                (bad.clone(), 5, "v", "lots")
            );
        }
        other => panic!("expected NotNumeric, got {other:?}"),
    }
    let broken = write(tmp.path(), "broken.csv", "k,v\na,1\nb,\"2\"x\n");
    let job = build("groupby", json!({"inputs": [&broken], "agg": "sum"})).expect("job");
    assert!(matches!(
        support::run(&job, &client).await,
        Err(EngineError::Csv { line: 3, .. })
    ));
    let job = build("groupby", json!({"inputs": [&broken], "key_column": "nope"})).expect("job");
    assert!(matches!(
        support::run(&job, &client).await,
        Err(EngineError::Csv { line: 1, .. })
    ));
}

#[tokio::test]
async fn join_matches_an_in_memory_nested_loop_join() {
    let (tmp, client) = support::embedded();
    let customers = [
        write(tmp.path(), "c1.csv", "id,name\n1,Ann\n2,\"Bob, Jr.\"\n3,Cy\n"),
        write(tmp.path(), "c2.csv", "id,name\n2,Bobby\n4,Dee\n"),
    ];
    let orders = [write(
        tmp.path(),
        "o.csv",
        "order,cust,total\n10,2,5\n11,1,7\n12,2,\"1,5\"\n13,9,1\n14,3,2\n",
    )];
    let out = tmp.path().join("out");
    let job = build(
        "join",
        json!({"left": customers, "right": orders, "left_key": "id", "right_key": "cust",
               "partitions": 3, "maps": 1, "output": out}),
    )
    .expect("job");
    assert_eq!(job.stages().len(), 3);
    assert_eq!(job.stages()[2].inputs, vec![0, 1]);
    let (result, _) = support::run(&job, &client).await.expect("runs");
    assert!(result.valid, "{:?}", result.problems);

    // Nested loops over the parsed inputs.
    let parse = |paths: &[std::path::PathBuf]| -> Vec<Vec<String>> {
        paths
            .iter()
            .flat_map(|p| {
                let text = std::fs::read(p).expect("read");
                let mut r = CsvReader::new(&text[..]);
                let mut rows = Vec::new();
                r.next_row().expect("header");
                while r.next_row().expect("row").is_some() {
                    rows.push(
                        (0..r.len())
                            .map(|i| String::from_utf8_lossy(r.field(i)).into_owned())
                            .collect(),
                    );
                }
                rows
            })
            .collect()
    };
    let (left, right) = (parse(&customers), parse(&orders));
    let mut expected: Vec<Vec<String>> = Vec::new();
    for l in &left {
        for r in &right {
            if l[0] == r[1] {
                expected.push(l.iter().chain(r).cloned().collect());
            }
        }
    }
    assert_eq!(
        expected.len(),
        6,
        "id 2 twice on each side: 4 rows, ids 1 and 3: 2"
    );
    let rows: Vec<Vec<u8>> = expected
        .iter()
        .map(|r| kv::row(r.iter().map(|f| f.as_bytes())))
        .collect();
    let sum = summary::checksum(rows.iter().map(Vec::as_slice));
    assert_eq!(result.records_out, 6);
    assert_eq!(result.extra["rows"], 6);
    assert_eq!(result.extra["checksum"], format!("{sum:016x}"));
    let mut got = read_csv_parts(&out);
    got.sort();
    expected.sort();
    assert_eq!(got, expected);
}

#[tokio::test]
async fn wordcount_matches_an_in_memory_count() {
    let (tmp, client) = support::embedded();
    let a: String = (0..3000)
        .map(|i| {
            format!(
                "The quick brown fox {} jumps; over the lazy dog's back-{}\n",
                i % 37,
                i % 5
            )
        })
        .collect();
    let b = "Ünïcode ÉCOLE école Straße\nno trailing newline — «quoted» 42 42";
    let inputs = vec![
        write(tmp.path(), "a.txt", &a),
        write(tmp.path(), "b.txt", b),
        write(tmp.path(), "c.txt", ""),
    ];
    let out = tmp.path().join("out");
    let job = build(
        "wordcount",
        json!({"inputs": inputs, "split_size": "4KiB", "partitions": 5, "output": out}),
    )
    .expect("job");
    assert!(job.stages()[0].tasks > 3, "the 4 KiB splits cut file a");
    let (result, _) = support::run(&job, &client).await.expect("runs");
    assert!(result.valid, "{:?}", result.problems);

    let expected = wordcount::count_in_memory(&[&a, b]);
    let mut got: HashMap<String, u64> = HashMap::new();
    for part in 0..5 {
        let text = std::fs::read_to_string(out.join(format!("part-{part:05}"))).expect("part");
        let mut prev: Option<String> = None;
        for line in text.lines() {
            let (w, c) = line.split_once('\t').expect("word<TAB>count");
            assert!(prev.as_deref() < Some(w), "part {part} is not sorted");
            prev = Some(w.to_string());
            assert!(
                got.insert(w.to_string(), c.parse().expect("count")).is_none(),
                "{w} twice"
            );
        }
    }
    assert_eq!(got, expected);
    assert_eq!(result.records_out, expected.len() as u64);
    assert_eq!(result.extra["distinct_words"], expected.len());
    assert_eq!(result.extra["words"], expected.values().sum::<u64>());
    assert_eq!(result.extra["top_words"][0], json!(["the", 6000]));

    // Without an output folder nothing is written, and it still validates;
    // `maps` sets the number of splits instead.
    let job = build("wordcount", json!({"inputs": inputs, "maps": 2})).expect("job");
    assert_eq!(job.stages()[0].tasks, 4, "file a in two, b and c whole");
    let (result, _) = support::run(&job, &client).await.expect("runs");
    assert!(result.valid);
    assert_eq!(result.records_out, expected.len() as u64);
}

fn invalid_argument(r: Result<engine::dataflow::Job, EngineError>) -> String {
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
