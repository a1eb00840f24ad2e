//! Jobs a user writes with the builder, run through the test runner.

mod support;

use std::collections::BTreeMap;

use engine::dataflow::{Format, Job, JobBuilder, Sink};
use engine::jobs::{parse_params, summary, JobSpec, Registry};
use engine::plan::JobResult;
use engine::{kv, EngineError};
use serde::{Deserialize, Serialize};

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Sums of the even numbers below `n` by last digit, with a custom reduce,
/// a custom format and a custom validation.
fn digit_sums(n: u64, dir: &std::path::Path) -> Result<Job, EngineError> {
    let mut b = JobBuilder::new("digit-sums");
    b.generate_rows(4, n, |row, buf| buf.extend_from_slice(row.to_string().as_bytes()))
        .filter(|r| r.last().is_some_and(|d| (d - b'0') % 2 == 0))
        .flat_map(|r, out| {
            let n: u64 = std::str::from_utf8(r)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            out.emit_pair(&r[r.len() - 1..], &n.to_le_bytes());
        })
        .reduce(3, |acc, v| {
            let a = u64::from_le_bytes(acc[..8].try_into().map_err(|_| bad())?);
            let b = u64::from_le_bytes(v.try_into().map_err(|_| bad())?);
            acc.clear();
            acc.extend_from_slice(&(a + b).to_le_bytes());
            Ok(())
        })
        .sink_with(
            Sink::Files(dir.to_path_buf()),
            Format::Custom(std::sync::Arc::new(|rec, out| {
                let (k, v) = kv::decode(rec)?;
                let v = u64::from_le_bytes(v.try_into().map_err(|_| bad())?);
                out.extend_from_slice(format!("{}={v}\n", String::from_utf8_lossy(k)).as_bytes());
                Ok(())
            })),
        );
    b.finish_with(|job, outputs| {
        let records = job.sink_records(outputs);
        let problems = if records == 5 {
            vec![]
        } else {
            vec![format!("{records} digits")]
        };
        Ok(JobResult::from_problems(
            records,
            problems,
            serde_json::Map::new(),
        ))
    });
    b.build()
}

fn bad() -> EngineError {
    EngineError::MalformedRecord {
        reason: "not 8 bytes".into(),
    }
}

#[tokio::test]
async fn a_user_job_with_filter_flat_map_and_reduce_runs() {
    let (tmp, client) = support::embedded();
    let dir = tmp.path().join("out");
    let job = digit_sums(1000, &dir).expect("job");
    assert_eq!(job.stages().iter().map(|s| s.tasks).collect::<Vec<_>>(), [4, 3]);
    assert_eq!(job.stages()[1].name, "aggregate");
    let (result, outputs) = support::run(&job, &client).await.expect("runs");
    assert!(result.valid, "{:?}", result.problems);
    assert_eq!(outputs[0].iter().map(|o| o.records_in).sum::<u64>(), 1000);
    // The map-side combine leaves at most 5 pairs per map.
    assert!(outputs[0].iter().all(|o| o.records_out <= 5));
    let mut got = BTreeMap::new();
    for p in 0..3 {
        for line in std::fs::read_to_string(dir.join(format!("part-{p:05}")))
            .expect("part")
            .lines()
        {
            let (d, s) = line.split_once('=').expect("d=sum");
            got.insert(d.to_string(), s.parse::<u64>().expect("sum"));
        }
    }
    let mut expected = BTreeMap::new();
    for n in (0..1000u64).filter(|n| n % 2 == 0) {
        *expected.entry((n % 10).to_string()).or_insert(0) += n;
    }
    assert_eq!(got, expected);
}

#[tokio::test]
async fn a_user_sort_is_globally_ordered_across_partitions() {
    let (tmp, client) = support::embedded();
    let dir = tmp.path().join("sorted");
    let rows = 5_000u64;
    let key = |row: u64| (splitmix(row) % 1_000_000).to_be_bytes();
    let sample: Vec<Vec<u8>> = (0..200).map(|i| key(i * rows / 200).to_vec()).collect();
    let mut b = JobBuilder::new("sort");
    b.generate_rows(3, rows, move |row, buf| {
        buf.extend_from_slice(&key(row));
        buf.extend_from_slice(format!("row {row}").as_bytes());
    })
    .key_prefix(8)
    .sort(4, sample)
    .map(|rec| {
        let (k, v) = kv::decode(rec).map_err(|_| ()).unwrap_or((b"", b""));
        let n = u64::from_be_bytes(k.try_into().unwrap_or([0; 8]));
        format!("{n:07} {}", String::from_utf8_lossy(v)).into_bytes()
    })
    .sink(Sink::Files(dir.clone()));
    let job = b.build().expect("job");
    let (result, _) = support::run(&job, &client).await.expect("runs");
    assert_eq!(result.records_out, rows);
    let mut all = Vec::new();
    for p in 0..4 {
        let text = std::fs::read_to_string(dir.join(format!("part-{p:05}"))).expect("part");
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        assert!(!lines.is_empty(), "partition {p} is empty: bad split points");
        all.extend(lines);
    }
    assert_eq!(all.len() as u64, rows);
    let keys: Vec<&str> = all.iter().map(|l| &l[..7]).collect();
    assert!(keys.windows(2).all(|w| w[0] <= w[1]), "not globally ordered");
}

/// A user job's parameters, registered beside the built-in jobs.
#[derive(Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct CountParams {
    rows: u64,
}

fn count_job(spec: &JobSpec) -> Result<Job, EngineError> {
    let p: CountParams = parse_params(&spec.name, &spec.params)?;
    let mut b = JobBuilder::new("count");
    b.generate_rows(2, p.rows, |row, buf| {
        buf.extend_from_slice(&(row % 7).to_le_bytes())
    })
    .key_by(|r| r)
    .repartition(2)
    .values()
    .summarize(|t, n| Box::new(summary::RowsSummary::new(t, n, false)))
    .sink(Sink::Count);
    b.build()
}

#[tokio::test]
async fn a_registered_user_job_builds_from_its_spec_and_runs() {
    let (_tmp, client) = support::embedded();
    let mut registry = Registry::builtin();
    registry.register("count", count_job);
    let job = registry
        .build(&JobSpec::new("count", serde_json::json!({"rows": 700})))
        .expect("job");
    let (result, outputs) = support::run(&job, &client).await.expect("runs");
    assert!(result.valid);
    assert_eq!(result.records_out, 700);
    let rows: Vec<summary::RowsSummary> = summary::read(&outputs[1]).expect("summaries");
    assert_eq!(rows.iter().map(|r| r.records).sum::<u64>(), 700);
    assert!(matches!(
        registry.build(&JobSpec::new("count", serde_json::json!({"rowz": 1}))),
        Err(EngineError::InvalidArgument { .. })
    ));
}

#[test]
fn unfinished_or_bad_plans_are_refused() {
    // A stream whose shuffle has no consumer.
    let mut b = JobBuilder::new("dangling");
    let _ = b.generate_rows(1, 10, |_, _| {}).key_prefix(0).repartition(2);
    assert!(matches!(b.build(), Err(EngineError::InvalidPlan { .. })));
    // Nothing at all.
    assert!(matches!(
        JobBuilder::new("empty").build(),
        Err(EngineError::InvalidPlan { .. })
    ));
    // Zero partitions.
    let mut b = JobBuilder::new("zero");
    b.generate_rows(1, 10, |_, _| {})
        .key_prefix(0)
        .repartition(0)
        .sink(Sink::Count);
    assert!(matches!(
        b.build(),
        Err(EngineError::InvalidArgument {
            what: "partitions",
            ..
        })
    ));
    // A missing input file.
    let mut b = JobBuilder::new("missing");
    b.text_files(vec!["/nonexistent/in.txt".into()], None)
        .sink(Sink::Count);
    assert!(matches!(b.build(), Err(EngineError::Io { .. })));
}
