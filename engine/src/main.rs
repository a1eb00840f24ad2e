//! `engine`: runs dataflow jobs through the shuffle service, on worker
//! processes, in the shuffle mode chosen per job.
//!
//! With no `--shuffle-servers`, jobs use the embedded shuffle service over a
//! temporary data directory, so nothing needs to be started by hand.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use engine::cluster::wire::ServiceSpec;
use engine::cluster::worker::{run_worker, WorkerOptions};
use engine::cluster::{run_job, Executors, RunConfig, ServiceChoice, WorkerSource};
use engine::jobfile::{size_value, JobFile};
use engine::jobs::groupby::GroupbyParams;
use engine::jobs::join::JoinParams;
use engine::jobs::terasort::{self, TerasortParams};
use engine::jobs::wordcount::WordcountParams;
use engine::jobs::{JobSpec, Registry};
use engine::progress::{Progress, ProgressMode};
use engine::report::JobReport;
use serde_json::Value;
use shuffle_client::protocol::units::{human_bytes, parse_duration, parse_size};
use shuffle_client::protocol::{Replication, ShuffleMode};
use shuffle_client::WriterOptions;

#[derive(Parser, Debug)]
#[command(
    name = "engine",
    version,
    about = "Runs dataflow jobs through the remote shuffle service, on worker processes, \
             in blocking, pipelined or hybrid shuffle mode"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Run a job: a built-in one by name, or one described in a TOML job
    /// file (`--job-file`).
    #[command(args_conflicts_with_subcommands = true, subcommand_required = false)]
    Run {
        #[command(subcommand)]
        job: Option<JobCmd>,
        /// A TOML job file (see `engine::jobfile`): `job = "terasort"`,
        /// settings, and a `[params]` table. Flags override it.
        #[arg(long, value_name = "FILE")]
        job_file: Option<PathBuf>,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Run as a worker of a coordinator (started by `engine run`, or by
    /// hand with `engine run --external-workers`).
    Worker {
        /// The coordinator's address, as `engine run` printed it.
        #[arg(long)]
        coordinator: SocketAddr,
        /// Tasks run at once.
        #[arg(long, default_value_t = 64)]
        slots: u32,
        /// Runtime threads. Default: the number of CPUs.
        #[arg(long)]
        threads: Option<usize>,
    },
}

#[derive(Subcommand, Debug)]
enum JobCmd {
    /// Generate, range-partition and sort 100-byte records, then validate
    /// the global order and a checksum (TeraGen + TeraSort + TeraValidate).
    Terasort {
        #[command(flatten)]
        params: TerasortParams,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Count words in text files (words: runs of Unicode letters and digits,
    /// lowercased; everything else separates).
    Wordcount {
        #[command(flatten)]
        params: WordcountParams,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Aggregate a numeric column of CSV files by a key column.
    Groupby {
        #[command(flatten)]
        params: GroupbyParams,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Inner join of two CSV files on key columns.
    Join {
        #[command(flatten)]
        params: JoinParams,
        #[command(flatten)]
        common: CommonArgs,
    },
}

impl JobCmd {
    /// The job's spec (its parameters as JSON, as workers get them) and the
    /// run's settings.
    fn into_spec(self) -> Result<(JobSpec, CommonArgs)> {
        let (name, params, common) = match self {
            JobCmd::Terasort { params, common } => ("terasort", serde_json::to_value(params), common),
            JobCmd::Wordcount { params, common } => ("wordcount", serde_json::to_value(params), common),
            JobCmd::Groupby { params, common } => ("groupby", serde_json::to_value(params), common),
            JobCmd::Join { params, common } => ("join", serde_json::to_value(params), common),
        };
        let params = params.with_context(|| format!("the {name} parameters as JSON"))?;
        Ok((JobSpec::new(name, params), common))
    }
}

/// Settings of `engine run`; each overrides the job file, which overrides
/// the default named here.
#[derive(Args, Debug, Default)]
struct CommonArgs {
    /// Shuffle mode: blocking, pipelined, hybrid-full or hybrid-selective.
    /// Default: blocking.
    #[arg(long)]
    mode: Option<ShuffleMode>,
    /// Worker processes to start; 0 runs the tasks in this process.
    /// Default: 2.
    #[arg(long)]
    workers: Option<u32>,
    /// Tasks each worker runs at once. A pipelined job needs all its tasks
    /// running at once. Default: 64.
    #[arg(long)]
    slots: Option<u32>,
    /// Wait for `--workers` workers started by hand (`engine worker
    /// --coordinator ADDR`) instead of starting them.
    #[arg(long)]
    external_workers: bool,
    /// Address to listen on for workers. Default: 127.0.0.1, any port.
    #[arg(long)]
    coordinator_listen: Option<SocketAddr>,
    /// Comma-separated shuffle server URLs (tcp://host:port or
    /// quic://host:port). A host that is a DNS name of several addresses
    /// (a Kubernetes headless Service) stands for one server per address,
    /// resolved once when the job starts. Default: the embedded shuffle
    /// service.
    #[arg(long, value_delimiter = ',')]
    shuffle_servers: Vec<String>,
    /// SHA-256 fingerprint of a QUIC server's certificate to trust; repeat
    /// for several servers.
    #[arg(long = "quic-pin", value_name = "HEX")]
    quic_pins: Vec<String>,
    /// PEM file of certificates to trust for QUIC.
    #[arg(long, value_name = "FILE")]
    quic_ca: Option<PathBuf>,
    /// Folder for the embedded shuffle service's data. Default: a temporary
    /// folder, deleted when the job ends.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Memory of the embedded shuffle service for buffered data (pipelined
    /// and hybrid shuffles stream through it). Default: 1GiB.
    #[arg(long, value_parser = parse_size)]
    memory_budget: Option<u64>,
    /// Hybrid-selective: how long a block may wait in the embedded
    /// service's memory for its reader before it spills to disk (500ms,
    /// 2s...). Default: 1s.
    #[arg(long, value_parser = parse_duration)]
    spill_after: Option<Duration>,
    /// How long a call to the shuffle servers retries connection errors
    /// (a server restarting) before that server is taken as lost; the
    /// producers of what it held then run again on the live servers.
    /// Default: 30s.
    #[arg(long, value_parser = parse_duration)]
    retry_window: Option<Duration>,
    /// Copies of each partition of blocking and hybrid-full shuffles on
    /// the shuffle servers: 1, or 2 for a replica on another server (a
    /// lost server then costs no map re-run; pushes and storage double).
    /// Needs --shuffle-servers with two or more. Default: 1.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=2))]
    replication: Option<u32>,
    /// Attempts per task (and runs per region) before the job fails.
    /// Default: 3.
    #[arg(long)]
    max_attempts: Option<u32>,
    /// Shuffle block size before compression. Default: 1MiB.
    #[arg(long, value_parser = parse_size)]
    block_size: Option<u64>,
    /// Do not LZ4-compress shuffle blocks.
    #[arg(long)]
    no_compress: bool,
    /// Print the report as one JSON object, on the last line of stdout.
    #[arg(long)]
    json: bool,
    /// No progress on stderr.
    #[arg(long)]
    quiet: bool,
    /// Testing aid: every shuffle reader waits this long before each block
    /// (a deliberately slow consumer, to watch backpressure).
    #[arg(long, hide = true, value_parser = parse_duration, default_value = "0ms")]
    slow_reads: Duration,
    /// Milliseconds between progress reports from workers.
    #[arg(long, hide = true, default_value_t = 200)]
    progress_ms: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run {
            job,
            job_file,
            common,
        } => run(job, job_file, common),
        Command::Worker {
            coordinator,
            slots,
            threads,
        } => worker(coordinator, slots, threads).map(|()| true),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("error: the job's output did not validate");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each cause once (many messages already
/// include their source).
fn chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let msg = cause.to_string();
        if !out.contains(&msg) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&msg);
        }
    }
    out
}

fn runtime(threads: Option<usize>) -> Result<tokio::runtime::Runtime> {
    let threads = threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .max(1);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .context("starting the runtime")
}

fn worker(coordinator: SocketAddr, slots: u32, threads: Option<usize>) -> Result<()> {
    if slots == 0 {
        bail!("--slots must be at least 1");
    }
    let registry = Registry::builtin();
    runtime(threads)?
        .block_on(run_worker(WorkerOptions { coordinator, slots }, &registry))
        .context("worker")
}

fn run(job: Option<JobCmd>, job_file: Option<PathBuf>, flags: CommonArgs) -> Result<bool> {
    let (spec, flags, file) = match (job, job_file) {
        (Some(job), None) => {
            let (spec, common) = job.into_spec()?;
            (spec, common, JobFile::default())
        }
        (None, Some(path)) => {
            let file = JobFile::load(&path)?;
            let spec = JobSpec {
                name: file.job.clone(),
                params: file.params_json(),
            };
            (spec, flags, file)
        }
        (None, None) => bail!("name a job (terasort, wordcount, groupby, join) or give --job-file"),
        (Some(_), Some(_)) => bail!("give a job name or --job-file, not both"),
    };
    let config = settings(&flags, &file)?;
    let json_out = flags.json;
    let registry = Registry::builtin();
    let baseline = spec.clone();
    let mut report = runtime(None)?.block_on(run_job(&registry, spec, &config))?;
    terasort::add_baseline(&baseline, &mut report.extra)?;
    print_report(&report);
    if json_out {
        println!(
            "{}",
            serde_json::to_string(&report).context("serializing the report")?
        );
    }
    Ok(report.valid)
}

/// Flags over the job file over defaults.
fn settings(flags: &CommonArgs, file: &JobFile) -> Result<RunConfig> {
    let mode = match (flags.mode, &file.mode) {
        (Some(m), _) => m,
        (None, Some(m)) => m.parse().map_err(|e| anyhow::anyhow!("job file `mode`: {e}"))?,
        (None, None) => ShuffleMode::Blocking,
    };
    let workers = flags.workers.or(file.workers).unwrap_or(2);
    let slots = flags.slots.or(file.slots).unwrap_or(64);
    if slots == 0 {
        bail!("`slots` must be at least 1");
    }
    let max_attempts = flags.max_attempts.or(file.max_attempts).unwrap_or(3);
    if max_attempts == 0 {
        bail!("`max_attempts` must be at least 1");
    }
    let block_size = match (flags.block_size, &file.block_size) {
        (Some(b), _) => b,
        (None, Some(v)) => size_value("block_size", v)?,
        (None, None) => 1 << 20,
    };
    let memory_budget = match (flags.memory_budget, &file.memory_budget) {
        (Some(b), _) => b,
        (None, Some(v)) => size_value("memory_budget", v)?,
        (None, None) => 1 << 30,
    };
    let spill_after = match (flags.spill_after, &file.spill_after) {
        (Some(d), _) => d,
        (None, Some(text)) => {
            parse_duration(text).map_err(|e| anyhow::anyhow!("job file `spill_after`: {e}"))?
        }
        (None, None) => Duration::from_secs(1),
    };
    let retry_window = match (flags.retry_window, &file.retry_window) {
        (Some(d), _) => Some(d),
        (None, Some(text)) => {
            Some(parse_duration(text).map_err(|e| anyhow::anyhow!("job file `retry_window`: {e}"))?)
        }
        (None, None) => None,
    };
    let compress = !flags.no_compress && file.compress.unwrap_or(true);
    let servers = if flags.shuffle_servers.is_empty() {
        file.shuffle_servers.clone()
    } else {
        flags.shuffle_servers.clone()
    };
    let replication = flags.replication.or(file.replication).unwrap_or(1);
    Replication::new(replication).map_err(|e| anyhow::anyhow!("`replication`: {e}"))?;
    // One URL may be a DNS name of several servers: the count is checked
    // when the shuffle is placed (fewer live servers than copies fails it).
    if replication > 1 && servers.is_empty() {
        anyhow::bail!(
            "`replication` {replication} needs --shuffle-servers (two or more servers, or a DNS name of \
             several): the embedded service is one"
        );
    }
    let service = if servers.is_empty() {
        ServiceChoice::Embedded {
            data_dir: flags.data_dir.clone().or(file.data_dir.clone()),
            memory_budget,
            spill_after,
        }
    } else {
        ServiceChoice::Servers(ServiceSpec {
            urls: servers,
            quic_pins: if flags.quic_pins.is_empty() {
                file.quic_pins.clone()
            } else {
                flags.quic_pins.clone()
            },
            quic_ca: flags.quic_ca.clone().or(file.quic_ca.clone()),
            retry_window_ms: retry_window.map(|d| d.as_millis() as u64),
            replication,
        })
    };
    let executors = if workers == 0 {
        Executors::InProcess { slots }
    } else {
        let source = if flags.external_workers {
            WorkerSource::External { count: workers }
        } else {
            WorkerSource::Spawn {
                count: workers,
                slots,
                exe: std::env::current_exe().context("locating the engine binary to start workers")?,
            }
        };
        Executors::Workers {
            source,
            listen: flags
                .coordinator_listen
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
        }
    };
    Ok(RunConfig {
        mode,
        executors,
        service,
        max_attempts,
        writer_options: WriterOptions {
            block_size: usize::try_from(block_size).unwrap_or(usize::MAX),
            compress,
            ..WriterOptions::default()
        },
        progress: Progress::new(if flags.quiet {
            ProgressMode::Off
        } else {
            ProgressMode::Auto
        }),
        progress_every: Duration::from_millis(flags.progress_ms.max(10)),
        read_delay: flags.slow_reads,
    })
}

/// The report for people: a few lines on stdout.
fn print_report(report: &JobReport) {
    let stages: Vec<String> = report
        .stages
        .iter()
        .map(|s| format!("{} {:.2}s ({} tasks)", s.name, s.seconds, s.tasks))
        .collect();
    let place = if report.workers == 0 {
        "in process".to_string()
    } else {
        format!("{} workers", report.workers)
    };
    println!(
        "{} ({} shuffle, {}, {place}): {} records in, {} records out, {} valid",
        report.job,
        report.mode,
        report.shuffle,
        report.records_in,
        report.records_out,
        if report.valid { "is" } else { "NOT" }
    );
    println!(
        "  wall {:.2}s (+{:.2}s starting workers); stages: {}; shuffle wrote {}, read {}, on disk {}",
        report.wall_seconds,
        report.startup_seconds,
        stages.join(", "),
        human_bytes(report.shuffle_bytes_written),
        human_bytes(report.shuffle_bytes_read),
        human_bytes(report.stored_bytes)
    );
    if report.retries > 0 || report.region_restarts > 0 || report.maps_rerun > 0 {
        println!(
            "  recovered: {} task retries, {} region restarts, {} map tasks re-run",
            report.retries, report.region_restarts, report.maps_rerun
        );
    }
    if report.read_failovers > 0 {
        println!(
            "  {} partition read(s) went on from the replica",
            report.read_failovers
        );
    }
    for r in &report.recoveries {
        let took = r.seconds.map_or("unfinished".to_string(), |s| format!("{s:.2}s"));
        println!(
            "  shuffle {} lost at {:.2}s: {} {} task(s) ran again on shuffle {} in {took}",
            r.lost_shuffle, r.at, r.tasks_rerun, r.stage, r.new_shuffle
        );
    }
    for p in &report.problems {
        println!("  problem: {p}");
    }
    if let Some(g) = report.extra.get("generate_seconds").and_then(Value::as_f64) {
        println!("  data generation alone (baseline, same run): {g:.2}s");
    }
    if !report.extra.is_empty() {
        let extra: Vec<String> = report.extra.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("  {}", extra.join(" "));
    }
}
