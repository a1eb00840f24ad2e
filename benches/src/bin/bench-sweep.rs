//! `bench-sweep`: runs `shuffle-bench` over sweeps of one parameter at a
//! time, writes every result to `benches/results/<sweep>.json`, and renders
//! each sweep as an SVG chart beside its JSON (plotters), plus a Markdown
//! summary (`benches/results/SUMMARY.md`) that `benches/README.md` shows.
//!
//! `bench-sweep` runs every sweep; `bench-sweep --only partitions,size`
//! runs some; `bench-sweep --plot-only` re-renders from the JSON files.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::Parser;
use plotters::prelude::*;
use serde_json::{json, Value};

#[derive(Parser, Debug)]
#[command(
    name = "bench-sweep",
    about = "Sweeps of shuffle-bench, as JSON and SVG charts"
)]
struct Cli {
    /// Sweeps to run (default all): partitions, size, maps, transport, mode.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Only re-render charts and the summary from existing JSON.
    #[arg(long)]
    plot_only: bool,
    /// Where results go.
    #[arg(long, default_value = "benches/results")]
    out: PathBuf,
    /// Scale every size down (e.g. 0.25 for a quick run).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
}

/// One sweep: the parameter that varies, its values, and the fixed flags.
struct Sweep {
    name: &'static str,
    title: &'static str,
    param: &'static str,
    values: Vec<String>,
    fixed: Vec<(&'static str, String)>,
}

const GIB: u64 = 1 << 30;

fn sweeps(scale: f64) -> Vec<Sweep> {
    let size = |b: u64| format!("{}", ((b as f64) * scale) as u64);
    let base = |extra: &[(&'static str, String)]| {
        let mut v = vec![
            ("--size", size(GIB)),
            ("--partitions", "64".into()),
            ("--maps", "8".into()),
        ];
        for (k, val) in extra {
            v.retain(|(kk, _)| kk != k);
            v.push((*k, val.clone()));
        }
        v
    };
    vec![
        Sweep {
            name: "partitions",
            title: "Throughput vs reduce partitions (1 GiB, TCP)",
            param: "--partitions",
            values: ["64", "256", "1000", "4000", "10000"].map(String::from).to_vec(),
            fixed: base(&[]),
        },
        Sweep {
            name: "size",
            title: "Throughput vs data size (64 partitions, TCP)",
            param: "--size",
            values: [GIB / 4, GIB / 2, GIB, 2 * GIB, 4 * GIB].map(size).to_vec(),
            fixed: base(&[]),
        },
        Sweep {
            name: "maps",
            title: "Throughput vs map tasks (1 GiB, 64 partitions, TCP)",
            param: "--maps",
            values: ["2", "8", "32", "128", "256"].map(String::from).to_vec(),
            fixed: base(&[]),
        },
        Sweep {
            name: "transport",
            title: "Throughput by transport (1 GiB, 64 partitions)",
            param: "--transport",
            values: ["embedded", "tcp", "quic"].map(String::from).to_vec(),
            fixed: base(&[]),
        },
        Sweep {
            name: "mode",
            title: "Throughput by shuffle mode (1 GiB, 64 partitions, TCP)",
            param: "--mode",
            values: ["blocking", "pipelined", "hybrid-full", "hybrid-selective"]
                .map(String::from)
                .to_vec(),
            fixed: base(&[]),
        },
    ]
}

fn shuffle_bench() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe.with_file_name("shuffle-bench");
    if !bin.exists() {
        bail!(
            "{} not found: build with `cargo build --release -p benches -p shuffle-server`",
            bin.display()
        );
    }
    Ok(bin)
}

fn run_sweep(sweep: &Sweep, out: &Path) -> Result<Value> {
    let bin = shuffle_bench()?;
    let mut points = Vec::new();
    for (i, value) in sweep.values.iter().enumerate() {
        let mut cmd = Command::new(&bin);
        for (k, v) in &sweep.fixed {
            if *k != sweep.param {
                cmd.args([k, v.as_str()]);
            }
        }
        cmd.args([sweep.param, value.as_str(), "--json"]);
        // Baselines once per sweep, with the first point.
        if i > 0 {
            cmd.arg("--no-baselines");
        }
        eprintln!("[{}] {} = {value}", sweep.name, sweep.param);
        let output = cmd.output().context("running shuffle-bench")?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let point = if output.status.success() {
            let last = stdout.lines().last().unwrap_or_default();
            let mut v: Value = serde_json::from_str(last).context("shuffle-bench JSON")?;
            v["value"] = json!(value);
            v
        } else {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let reason = stderr
                .lines()
                .find_map(|l| l.strip_prefix("Error: "))
                .unwrap_or("failed")
                .trim()
                .to_string();
            eprintln!("  -> not measured: {reason}");
            json!({ "value": value, "error": reason })
        };
        points.push(point);
    }
    let result = json!({
        "sweep": sweep.name,
        "title": sweep.title,
        "param": sweep.param.trim_start_matches("--"),
        "fixed": sweep.fixed.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>(),
        "points": points,
    });
    std::fs::write(
        out.join(format!("{}.json", sweep.name)),
        serde_json::to_string_pretty(&result)?,
    )?;
    Ok(result)
}

fn f(v: &Value, key: &str) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

fn label(value: &str) -> String {
    match value.parse::<u64>() {
        Ok(b) if b >= 1 << 20 => format!("{} MiB", b >> 20),
        _ => value.to_string(),
    }
}

/// Draws throughput (GB/s) per point, as a line over the sweep's values.
fn plot(result: &Value, path: &Path) -> Result<()> {
    let points: Vec<&Value> = result["points"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let measured: Vec<(usize, f64, &Value)> = points
        .iter()
        .enumerate()
        .filter(|(_, p)| p.get("error").is_none())
        .map(|(i, p)| (i, f(p, "throughput_gb_per_sec"), *p))
        .collect();
    let labels: Vec<String> = points
        .iter()
        .map(|p| label(p["value"].as_str().unwrap_or("?")))
        .collect();
    let ymax = measured.iter().map(|(_, y, _)| *y).fold(0.1f64, f64::max) * 1.25;
    let title = result["title"].as_str().unwrap_or("sweep");
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let n = labels.len().max(1);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..ymax)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_labels(n)
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 {
                labels.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .x_desc(result["param"].as_str().unwrap_or(""))
        .y_desc("GB/s of shuffled data")
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let blue = RGBColor(31, 119, 180);
    chart
        .draw_series(LineSeries::new(
            measured.iter().map(|(i, y, _)| (*i as f64, *y)),
            blue.stroke_width(2),
        ))
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .label("throughput")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], blue));
    chart
        .draw_series(
            measured
                .iter()
                .map(|(i, y, _)| Circle::new((*i as f64, *y), 4, blue.filled())),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .draw_series(measured.iter().map(|(i, y, _)| {
            Text::new(
                format!("{y:.2}"),
                (*i as f64 + 0.05, *y + ymax * 0.03),
                ("sans-serif", 13),
            )
        }))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for (i, p) in points.iter().enumerate() {
        if p.get("error").is_some() {
            chart
                .draw_series(std::iter::once(Text::new(
                    "not measured",
                    (i as f64 - 0.3, ymax * 0.1),
                    ("sans-serif", 12),
                )))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
    }
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

fn summary(results: &[Value]) -> String {
    let mut md = String::from("| sweep | value | GB/s | map s | reduce s | push p50/p99 ms | fetch p50/p99 ms | server RSS (push) | disk |\n|---|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in results {
        for p in r["points"].as_array().into_iter().flatten() {
            let value = label(p["value"].as_str().unwrap_or("?"));
            if let Some(e) = p.get("error") {
                md.push_str(&format!(
                    "| {} | {value} | not measured: {} | | | | | | |\n",
                    r["sweep"].as_str().unwrap_or(""),
                    e.as_str().unwrap_or("")
                ));
                continue;
            }
            let mib = |k: &str| {
                p.get(k)
                    .and_then(Value::as_u64)
                    .map_or("-".into(), |b| format!("{} MiB", b >> 20))
            };
            md.push_str(&format!(
                "| {} | {value} | {:.3} | {:.2} | {:.2} | {:.1} / {:.1} | {:.2} / {:.2} | {} | {} |\n",
                r["sweep"].as_str().unwrap_or(""),
                f(p, "throughput_gb_per_sec"),
                f(p, "map_seconds"),
                f(p, "reduce_seconds"),
                f(p, "push_p50_ms"),
                f(p, "push_p99_ms"),
                f(p, "fetch_p50_ms"),
                f(p, "fetch_p99_ms"),
                mib("server_peak_rss_after_push_bytes"),
                mib("disk_bytes"),
            ));
        }
    }
    let concurrent: Vec<String> = results
        .iter()
        .flat_map(|r| r["points"].as_array().into_iter().flatten())
        .filter(|p| p.get("concurrent_reads").and_then(Value::as_bool) == Some(true))
        .filter_map(|p| p["value"].as_str().map(label))
        .fold(Vec::new(), |mut v, l| {
            if !v.contains(&l) {
                v.push(l);
            }
            v
        });
    if !concurrent.is_empty() {
        md.push_str(&format!(
            "\nRows {} read every partition while the maps push (readers opened before the maps start): there, map s runs from the start of the maps to the last commit, reduce s is the reading left after that, and GB/s is over the sum, from the maps' start (their first push) to the last block read.\n",
            concurrent.join(", ")
        ));
    }
    if let Some(b) = results
        .iter()
        .flat_map(|r| r["points"].as_array().into_iter().flatten())
        .find_map(|p| p.get("baselines").filter(|b| !b.is_null()))
    {
        md.push_str(&format!(
            "\nBaselines measured in the same run: disk write {:.2} GB/s (fdatasync), disk read {:.2} GB/s (page cache dropped), memcpy {:.2} GB/s, loopback TCP {:.2} GB/s.\n",
            f(b, "disk_write_bytes_per_sec") / 1e9,
            f(b, "disk_read_bytes_per_sec") / 1e9,
            f(b, "memcpy_bytes_per_sec") / 1e9,
            f(b, "loopback_tcp_bytes_per_sec") / 1e9,
        ));
    }
    if let Some(m) = results
        .iter()
        .flat_map(|r| r["points"].as_array().into_iter().flatten())
        .find_map(|p| p.get("machine").and_then(Value::as_str))
    {
        md.push_str(&format!("\nMachine: {m}.\n"));
    }
    md
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    std::fs::create_dir_all(&cli.out)?;
    let all = sweeps(cli.scale);
    let chosen: Vec<&Sweep> = all
        .iter()
        .filter(|s| cli.only.is_empty() || cli.only.iter().any(|o| o == s.name))
        .collect();
    if chosen.is_empty() {
        bail!(
            "no sweep named {:?} (known: partitions, size, maps, transport, mode)",
            cli.only
        );
    }
    for sweep in &chosen {
        if !cli.plot_only {
            run_sweep(sweep, &cli.out)?;
        }
    }
    let mut results = Vec::new();
    for sweep in &all {
        let path = cli.out.join(format!("{}.json", sweep.name));
        if let Ok(text) = std::fs::read_to_string(&path) {
            let result: Value =
                serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
            plot(&result, &cli.out.join(format!("{}.svg", sweep.name)))?;
            results.push(result);
        }
    }
    std::fs::write(cli.out.join("SUMMARY.md"), summary(&results))?;
    eprintln!("wrote {} sweeps to {}", results.len(), cli.out.display());
    Ok(())
}
