//! `shuffle-bench`: an end-to-end load generator for the shuffle service.
//!
//! Records are generated in memory first (not timed). Then M map tasks push
//! them and every partition is read back, for one mode and transport
//! (blocking: after the last commit; pipelined and hybrid: every partition
//! read while the maps push, readers opened before the maps start); the
//! report states throughput, phase times, push and fetch latency, the
//! servers' peak RSS and the bytes they wrote, next to this machine's own
//! baselines measured in the same run.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use benches::baseline::{self, Baselines};
use benches::hostile::{self, Held, HostileReport};
use benches::servers::Daemon;
use benches::units::parse_size;
use benches::workload::{self, PhaseResults, WorkloadSpec};
use clap::{Parser, ValueEnum};
use protocol::{Replication, ShuffleMode};
use serde::Serialize;
use shuffle_client::{EmbeddedShuffle, QuicTrust, RemoteOptions, RemoteShuffle};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum TransportArg {
    Tcp,
    Quic,
    Embedded,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum OnOff {
    On,
    Off,
}

#[derive(Parser, Debug)]
#[command(
    name = "shuffle-bench",
    version,
    about = "End-to-end load generator for the shuffle service"
)]
struct Cli {
    /// Bytes of records to shuffle.
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    size: u64,
    /// Map tasks.
    #[arg(long, default_value_t = 8)]
    maps: u32,
    /// Reduce partitions.
    #[arg(long, default_value_t = 64)]
    partitions: u32,
    /// Shuffle mode.
    #[arg(long, default_value = "blocking")]
    mode: ShuffleMode,
    /// Data plane transport (embedded: in process, no network).
    #[arg(long, value_enum, default_value = "tcp")]
    transport: TransportArg,
    /// Servers to start (ignored with --urls).
    #[arg(long, default_value_t = 1)]
    servers: usize,
    /// Copies of each partition (blocking, hybrid-full): 1, or 2 for a
    /// replica on another server pushed by the client. Needs two or more
    /// servers.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=2))]
    replication: u32,
    /// Comma-separated URLs of running servers, instead of starting them.
    #[arg(long, value_delimiter = ',')]
    urls: Vec<String>,
    /// SHA-256 fingerprint of the QUIC certificate of running servers.
    #[arg(long = "quic-pin")]
    quic_pins: Vec<String>,
    /// LZ4-compress blocks.
    #[arg(long, value_enum, default_value = "on")]
    compress: OnOff,
    /// Bytes per record.
    #[arg(long, default_value_t = 100)]
    record_size: usize,
    /// Raw bytes per block.
    #[arg(long, default_value = "1MiB", value_parser = parse_size)]
    block_size: u64,
    /// Memory budget of started servers.
    #[arg(long, default_value = "1GiB")]
    memory_budget: String,
    /// Map (and, in blocking mode, 2x reduce) tasks at once; streaming
    /// modes read every partition at once. Default: the number of CPUs.
    #[arg(long)]
    parallelism: Option<usize>,
    /// Skip the machine baselines.
    #[arg(long)]
    no_baselines: bool,
    /// Folder for server data and baseline files. Default: a temp folder.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Print the report as one JSON object on the last line of stdout.
    #[arg(long)]
    json: bool,
    /// Run a hostile load beside the benchmark against the first started
    /// server: idle connections (their cost is measured), connections
    /// holding half-sent frames, and registrations up to the server's limits
    /// (see --hostile-idle, --hostile-frames, --hostile-shuffles).
    #[arg(long)]
    hostile: bool,
    /// With --hostile: idle connections to open.
    #[arg(long, default_value_t = 2000)]
    hostile_idle: usize,
    /// With --hostile: connections holding a half-sent frame of the
    /// server's largest size.
    #[arg(long, default_value_t = 8)]
    hostile_frames: usize,
    /// With --hostile: shuffles of 10,000 x 50,000 to register (16 per
    /// app), short of the default limits by room for the benchmark's own.
    #[arg(long, default_value_t = 65_000)]
    hostile_shuffles: usize,
}

#[derive(Serialize, Debug)]
struct Report {
    mode: String,
    transport: TransportArg,
    servers: usize,
    size_bytes: u64,
    maps: u32,
    partitions: u32,
    compress: bool,
    record_size: usize,
    parallelism: usize,
    records: u64,
    /// Copies of each partition.
    replication: u32,
    /// Raw record bytes shuffled.
    shuffled_bytes: u64,
    /// Block bytes pushed (after compression).
    pushed_bytes: u64,
    fetched_bytes: u64,
    /// Bytes the servers wrote to disk.
    disk_bytes: u64,
    /// Reads ran while the maps pushed (pipelined, hybrid).
    concurrent_reads: bool,
    /// From the start of the maps to the last commit.
    map_seconds: f64,
    /// Blocking: the reduce phase. Streaming: reading left after the last
    /// commit (the reads started with the maps).
    reduce_seconds: f64,
    /// Map plus reduce: the wall time from the start of the maps (their
    /// first push request follows `first_push_seconds` later) to the last
    /// block read, in every mode.
    shuffle_seconds: f64,
    /// From the start of the maps to their first push request (the maps
    /// batch and compress `push_batch` bytes of blocks first).
    first_push_seconds: f64,
    /// From the start of the maps to the first block read.
    first_block_seconds: f64,
    /// The whole run, setup and teardown included.
    total_seconds: f64,
    /// Raw bytes shuffled per second of `shuffle_seconds`.
    throughput_gb_per_sec: f64,
    /// CPU time (user + system) of the benchmark's client over the
    /// shuffle, plus the started servers' over their lives; on one machine
    /// this is what a second copy costs, not network.
    cpu_seconds: Option<f64>,
    /// `cpu_seconds` per GB (1e9 bytes) of raw records shuffled.
    cpu_seconds_per_gb: Option<f64>,
    push_p50_ms: f64,
    push_p99_ms: f64,
    push_requests: usize,
    fetch_p50_ms: f64,
    fetch_p99_ms: f64,
    fetch_requests: usize,
    /// Peak RSS of the largest server process over the whole run (started
    /// servers only). Reads map partition files, whose resident pages count.
    server_peak_rss_bytes: Option<u64>,
    /// Peak RSS of the largest server at the end of the push phase.
    server_peak_rss_after_push_bytes: Option<u64>,
    /// The memory budget of started servers, in bytes.
    memory_budget_bytes: u64,
    /// The hostile load run beside the benchmark (--hostile).
    hostile: Option<HostileReport>,
    baselines: Option<Baselines>,
    /// Throughput over each baseline.
    fraction_of_disk_write: Option<f64>,
    fraction_of_disk_read: Option<f64>,
    fraction_of_memcpy: Option<f64>,
    fraction_of_loopback_tcp: Option<f64>,
    machine: String,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if cli.record_size < 16 {
        bail!("--record-size must be at least 16");
    }
    let parallelism = cli
        .parallelism
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let temp = tempfile::Builder::new().prefix("shuffle-bench-").tempdir()?;
    let work = cli.work_dir.clone().unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(&work)?;
    let spec = WorkloadSpec {
        size: cli.size,
        maps: cli.maps,
        partitions: cli.partitions,
        record_size: cli.record_size,
        compress: cli.compress == OnOff::On,
        mode: cli.mode,
        block_size: usize::try_from(cli.block_size)?,
        push_batch: 4 << 20,
        in_flight: 4,
        parallelism,
    };

    let baselines = if cli.no_baselines {
        None
    } else {
        eprintln!("measuring baselines ({} each)...", human(cli.size));
        Some(runtime.block_on(baseline::measure(cli.size, &work))?)
    };

    eprintln!(
        "generating {} of records for {} maps (not timed)...",
        human(cli.size),
        cli.maps
    );
    let inputs = Arc::new(workload::generate(&spec));

    let server_count = if cli.urls.is_empty() {
        cli.servers
    } else {
        cli.urls.len()
    };
    if cli.replication > 1 && (cli.transport == TransportArg::Embedded || server_count < 2) {
        bail!(
            "--replication {} needs two or more servers (--servers 2, or --urls)",
            cli.replication
        );
    }
    if cli.hostile && (cli.transport == TransportArg::Embedded || !cli.urls.is_empty()) {
        bail!("--hostile needs servers this run starts (not --urls, not embedded)");
    }
    let mut daemons = Vec::new();
    let mut hostile = None;
    let mut held = Held::default();
    let rss_after_map = std::cell::RefCell::new(None);
    let started = Instant::now();
    let client_cpu_before = benches::servers::cpu_seconds(std::process::id());
    let results: PhaseResults = runtime.block_on(async {
        match cli.transport {
            TransportArg::Embedded => {
                let client = EmbeddedShuffle::open(vec![work.join("embedded")])?;
                workload::run(Arc::new(client), spec, inputs.clone(), || {}).await
            }
            transport => {
                let (urls, pins) = if cli.urls.is_empty() {
                    for i in 0..cli.servers.max(1) {
                        daemons.push(Daemon::start(
                            &work.join(format!("server-{i}")),
                            &cli.memory_budget,
                        )?);
                    }
                    let urls: Vec<String> = daemons
                        .iter()
                        .map(|d| {
                            if transport == TransportArg::Quic {
                                d.quic.clone()
                            } else {
                                d.tcp.clone()
                            }
                        })
                        .collect();
                    let pins: Vec<String> = daemons.iter().map(|d| d.quic_fingerprint.clone()).collect();
                    (urls, pins)
                } else {
                    (cli.urls.clone(), cli.quic_pins.clone())
                };
                let pins = pins
                    .iter()
                    .map(|p| QuicTrust::parse_fingerprint(p).map_err(anyhow::Error::msg))
                    .collect::<Result<Vec<_>>>()?;
                let options = RemoteOptions {
                    quic_trust: QuicTrust::Pinned(pins),
                    replication: Replication::new(cli.replication).map_err(anyhow::Error::msg)?,
                    ..RemoteOptions::default()
                };
                let client = RemoteShuffle::connect_str(&urls.join(","), options)
                    .await
                    .context("connecting to the servers")?;
                if cli.hostile {
                    hostile = Some(hostile_load(&cli, &daemons[0], &client, &mut held).await?);
                }
                let daemons = &daemons;
                let after_map = || {
                    *rss_after_map.borrow_mut() = daemons.iter().filter_map(Daemon::peak_rss_bytes).max();
                };
                workload::run(Arc::new(client), spec, inputs.clone(), after_map).await
            }
        }
    })?;
    let total_seconds = started.elapsed().as_secs_f64();
    let client_cpu = benches::servers::cpu_seconds(std::process::id())
        .zip(client_cpu_before)
        .map(|(after, before)| after - before);
    let server_cpu: Option<f64> = daemons.iter().map(Daemon::cpu_seconds).sum();
    let cpu_seconds = match (client_cpu, server_cpu, daemons.is_empty()) {
        (Some(c), _, true) => Some(c),
        (Some(c), Some(s), false) => Some(c + s),
        _ => None,
    };
    drop(held);
    let server_peak_rss_bytes = daemons.iter().filter_map(Daemon::peak_rss_bytes).max();
    let servers = daemons.len();
    for d in daemons {
        d.stop()?;
    }

    let shuffled = results.raw_bytes;
    let phase_seconds = results.shuffle_seconds();
    let throughput = shuffled as f64 / phase_seconds;
    let fraction = |base: Option<f64>| base.map(|b| throughput / b);
    let report = Report {
        mode: cli.mode.to_string(),
        transport: cli.transport,
        servers,
        size_bytes: cli.size,
        maps: cli.maps,
        partitions: cli.partitions,
        compress: spec.compress,
        record_size: cli.record_size,
        parallelism,
        records: results.records_read,
        shuffled_bytes: shuffled,
        pushed_bytes: results.pushed_bytes,
        fetched_bytes: results.fetched_bytes,
        disk_bytes: results.stored_bytes,
        concurrent_reads: results.concurrent,
        map_seconds: results.map_seconds,
        reduce_seconds: results.reduce_seconds,
        shuffle_seconds: phase_seconds,
        first_push_seconds: results.first_push_seconds,
        first_block_seconds: results.first_block_seconds,
        total_seconds,
        throughput_gb_per_sec: throughput / 1e9,
        cpu_seconds,
        cpu_seconds_per_gb: cpu_seconds.map(|c| c / (shuffled as f64 / 1e9)),
        replication: cli.replication,
        push_p50_ms: results.push_latency.quantile_ms(0.5),
        push_p99_ms: results.push_latency.quantile_ms(0.99),
        push_requests: results.push_latency.len(),
        fetch_p50_ms: results.fetch_latency.quantile_ms(0.5),
        fetch_p99_ms: results.fetch_latency.quantile_ms(0.99),
        fetch_requests: results.fetch_latency.len(),
        server_peak_rss_bytes,
        server_peak_rss_after_push_bytes: rss_after_map.into_inner(),
        memory_budget_bytes: parse_size(&cli.memory_budget).map_err(anyhow::Error::msg)?,
        hostile,
        fraction_of_disk_write: fraction(baselines.map(|b| b.disk_write_bytes_per_sec)),
        fraction_of_disk_read: fraction(baselines.map(|b| b.disk_read_bytes_per_sec)),
        fraction_of_memcpy: fraction(baselines.map(|b| b.memcpy_bytes_per_sec)),
        fraction_of_loopback_tcp: fraction(baselines.map(|b| b.loopback_tcp_bytes_per_sec)),
        baselines,
        machine: machine(),
    };
    print_human(&report);
    if cli.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    drop(temp);
    Ok(())
}

/// The hostile load of --hostile, against `daemon`; the connections it
/// opened stay in `held` for the benchmark's whole run.
async fn hostile_load(
    cli: &Cli,
    daemon: &Daemon,
    client: &RemoteShuffle,
    held: &mut Held,
) -> Result<HostileReport> {
    eprintln!("hostile load: {} idle connections...", cli.hostile_idle);
    let idle_connection_bytes = hostile::idle_connections(daemon, cli.hostile_idle, held).await?;
    eprintln!("hostile load: {} half-sent frames...", cli.hostile_frames);
    hostile::half_sent_frames(daemon, cli.hostile_frames, held).await?;
    eprintln!(
        "hostile load: registering up to {} shuffles of 10,000 x 50,000...",
        cli.hostile_shuffles
    );
    let (registered_shuffles, registered_apps, registration_refusal, registration_seconds) =
        hostile::registrations(client, 16, cli.hostile_shuffles).await?;
    Ok(HostileReport {
        idle_connections: cli.hostile_idle,
        idle_connection_bytes,
        half_sent_frames: cli.hostile_frames,
        registered_shuffles,
        registered_apps,
        registration_refusal,
        registration_seconds,
        rss_after_registrations_bytes: daemon.rss_bytes().unwrap_or(0),
    })
}

fn human(bytes: u64) -> String {
    benches::units::human_bytes(bytes)
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown cpu".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string())
        })
        .and_then(|kib| kib.parse::<u64>().ok())
        .map_or("?".into(), |kib| human(kib * 1024));
    format!("{cpus} CPUs ({model}), {mem} RAM")
}

fn print_human(r: &Report) {
    println!(
        "{} shuffle over {:?} ({} server(s)): {} in {} maps -> {} partitions, compress {}",
        r.mode,
        r.transport,
        r.servers,
        human(r.shuffled_bytes),
        r.maps,
        r.partitions,
        if r.compress { "on" } else { "off" }
    );
    if r.concurrent_reads {
        println!(
            "  throughput {:.3} GB/s ({:.2}s from the maps' start to the last block, reads concurrent with maps: first push at {:.2}s, first block at {:.2}s, last commit at {:.2}s, then {:.2}s of reads); pushed {}, fetched {}, disk {}",
            r.throughput_gb_per_sec,
            r.shuffle_seconds,
            r.first_push_seconds,
            r.first_block_seconds,
            r.map_seconds,
            r.reduce_seconds,
            human(r.pushed_bytes),
            human(r.fetched_bytes),
            human(r.disk_bytes)
        );
    } else {
        println!(
            "  throughput {:.3} GB/s (map {:.2}s + reduce {:.2}s); pushed {}, fetched {}, disk {}",
            r.throughput_gb_per_sec,
            r.map_seconds,
            r.reduce_seconds,
            human(r.pushed_bytes),
            human(r.fetched_bytes),
            human(r.disk_bytes)
        );
    }
    if let (Some(cpu), Some(per_gb)) = (r.cpu_seconds, r.cpu_seconds_per_gb) {
        println!(
            "  replication {}: CPU {cpu:.2}s (client + servers), {per_gb:.2} CPU s per GB shuffled",
            r.replication
        );
    }
    println!(
        "  push p50 {:.2} ms p99 {:.2} ms ({} requests); fetch p50 {:.2} ms p99 {:.2} ms ({} blocks)",
        r.push_p50_ms, r.push_p99_ms, r.push_requests, r.fetch_p50_ms, r.fetch_p99_ms, r.fetch_requests
    );
    if let Some(rss) = r.server_peak_rss_bytes {
        let push = r.server_peak_rss_after_push_bytes.map_or("-".into(), human);
        println!(
            "  server peak RSS {} (during the push phase: {push}); memory budget {}",
            human(rss),
            human(r.memory_budget_bytes)
        );
    }
    if let Some(h) = &r.hostile {
        println!(
            "  hostile load: {} idle connections at {:.1} KiB each; {} half-sent frames held; {} shuffles of 10,000 x 50,000 registered over {} apps in {:.1}s ({}); server RSS after them {}",
            h.idle_connections,
            h.idle_connection_bytes / 1024.0,
            h.half_sent_frames,
            h.registered_shuffles,
            h.registered_apps,
            h.registration_seconds,
            h.registration_refusal.as_deref().unwrap_or("no refusal"),
            human(h.rss_after_registrations_bytes)
        );
    }
    if let Some(b) = &r.baselines {
        let pct = |x: Option<f64>| x.map_or("-".into(), |v| format!("{:.0}%", v * 100.0));
        println!(
            "  baselines: disk write {:.2} GB/s ({}), disk read {:.2} GB/s ({}), memcpy {:.2} GB/s ({}), loopback TCP {:.2} GB/s ({})",
            b.disk_write_bytes_per_sec / 1e9,
            pct(r.fraction_of_disk_write),
            b.disk_read_bytes_per_sec / 1e9,
            pct(r.fraction_of_disk_read),
            b.memcpy_bytes_per_sec / 1e9,
            pct(r.fraction_of_memcpy),
            b.loopback_tcp_bytes_per_sec / 1e9,
            pct(r.fraction_of_loopback_tcp)
        );
    }
    println!("  machine: {}", r.machine);
}
