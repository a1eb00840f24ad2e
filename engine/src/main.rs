//! `engine`: runs built-in jobs through the shuffle service.
//!
//! With no `--shuffle-servers`, jobs use the embedded shuffle service over a
//! temporary data directory, so nothing needs to be started by hand.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use engine::exec::StagePolicy;
use engine::jobs::{terasort, wordcount, JobContext};
use engine::progress::{Progress, ProgressMode};
use engine::report::JobReport;
use engine::units::{human_bytes, parse_size};
use shuffle_client::protocol::{AppId, ShuffleMode};
use shuffle_client::{
    EmbeddedShuffle, QuicTrust, RemoteOptions, RemoteShuffle, ShuffleClient, WriterOptions,
};

#[derive(Parser, Debug)]
#[command(
    name = "engine",
    version,
    about = "Runs dataflow jobs through the remote shuffle service"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a built-in job.
    Run {
        #[command(subcommand)]
        job: Job,
    },
}

#[derive(Subcommand, Debug)]
enum Job {
    /// Generate, range-partition and sort 100-byte records, then validate
    /// the global order and a checksum (TeraGen + TeraSort + TeraValidate).
    Terasort {
        /// Bytes of data to sort (1GiB, 256MiB, 10MB...).
        #[arg(long, default_value = "1GiB", value_parser = parse_size)]
        size: u64,
        /// Reduce partitions.
        #[arg(long, default_value_t = 64)]
        partitions: u32,
        /// Map tasks. Default: one per 64 MiB of data, at least the
        /// parallelism.
        #[arg(long)]
        maps: Option<u32>,
        /// Seed of the data generator.
        #[arg(long, default_value_t = 0x5eed)]
        seed: u64,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Count words in text files (words: runs of Unicode letters and digits,
    /// lowercased; everything else separates).
    Wordcount {
        /// Input text files.
        #[arg(long, num_args = 1.., required = true)]
        input: Vec<PathBuf>,
        /// Reduce partitions.
        #[arg(long, default_value_t = 16)]
        partitions: u32,
        /// Folder for the `part-NNNNN` result files (word<TAB>count, sorted).
        #[arg(long)]
        output: Option<PathBuf>,
        /// Bytes of input per map task.
        #[arg(long, default_value = "32MiB", value_parser = parse_size)]
        split_size: u64,
        #[command(flatten)]
        common: CommonArgs,
    },
}

#[derive(Args, Debug)]
struct CommonArgs {
    /// Shuffle mode: blocking, pipelined, hybrid-full or hybrid-selective.
    #[arg(long, default_value = "blocking")]
    mode: ShuffleMode,
    /// Comma-separated shuffle server URLs (tcp://host:port or
    /// quic://host:port, the servers' data-plane addresses). Without it the
    /// embedded shuffle service is used.
    #[arg(long, value_delimiter = ',')]
    shuffle_servers: Vec<String>,
    /// SHA-256 fingerprint of a QUIC server's certificate to trust (the
    /// server logs it at start); repeat for several servers.
    #[arg(long = "quic-pin", value_name = "HEX")]
    quic_pins: Vec<String>,
    /// PEM file of certificates to trust for QUIC (e.g. written by
    /// `shuffle-server --quic-cert-out`).
    #[arg(long, value_name = "FILE")]
    quic_ca: Option<PathBuf>,
    /// Folder for the embedded shuffle service's data. Default: a temporary
    /// folder, deleted when the job ends.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Tasks run at once. Default: the number of CPUs.
    #[arg(long)]
    parallelism: Option<usize>,
    /// Attempts per task before the job fails.
    #[arg(long, default_value_t = 3)]
    max_attempts: u32,
    /// Shuffle block size before compression.
    #[arg(long, default_value = "1MiB", value_parser = parse_size)]
    block_size: u64,
    /// Do not LZ4-compress shuffle blocks.
    #[arg(long)]
    no_compress: bool,
    /// Print the report as one JSON object, on the last line of stdout.
    #[arg(long)]
    json: bool,
    /// No progress on stderr.
    #[arg(long)]
    quiet: bool,
}

impl CommonArgs {
    fn parallelism(&self) -> usize {
        self.parallelism
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
            .max(1)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("error: the job's output did not validate");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<bool> {
    let Command::Run { job } = cli.command;
    let common = match &job {
        Job::Terasort { common, .. } | Job::Wordcount { common, .. } => common,
    };
    if common.max_attempts == 0 {
        bail!("--max-attempts must be at least 1");
    }
    let parallelism = common.parallelism();
    let json = common.json;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(parallelism)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let settings = Settings {
        app: AppId::new(format!("engine-{}", std::process::id())).context("app id")?,
        mode: common.mode,
        policy: StagePolicy {
            parallelism,
            max_attempts: common.max_attempts,
        },
        writer_options: WriterOptions {
            block_size: usize::try_from(common.block_size).unwrap_or(usize::MAX),
            compress: !common.no_compress,
            ..WriterOptions::default()
        },
        progress: Progress::new(if common.quiet {
            ProgressMode::Off
        } else {
            ProgressMode::Auto
        }),
    };

    let report = if common.shuffle_servers.is_empty() {
        // The embedded service's data lives in a temporary folder unless told.
        let (_temp, data_dir) = match &common.data_dir {
            Some(dir) => (None, dir.clone()),
            None => {
                let t = tempfile::Builder::new()
                    .prefix("rss-engine-")
                    .tempdir()
                    .context("creating a temporary data folder")?;
                let dir = t.path().to_path_buf();
                (Some(t), dir)
            }
        };
        let client = EmbeddedShuffle::open(vec![data_dir.clone()])
            .with_context(|| format!("opening the embedded shuffle store in {}", data_dir.display()))?;
        runtime.block_on(run_job(settings.context(client, "embedded".into()), job))?
    } else {
        let options = RemoteOptions {
            quic_trust: quic_trust(common)?,
            ..RemoteOptions::default()
        };
        let urls = common.shuffle_servers.join(",");
        runtime.block_on(async {
            let client = RemoteShuffle::connect_str(&urls, options)
                .await
                .with_context(|| format!("connecting to the shuffle servers {urls}"))?;
            run_job(settings.context(client, urls.clone()), job).await
        })?
    };
    print_report(&report, json)?;
    Ok(report.valid)
}

/// Job settings that do not depend on the shuffle client.
struct Settings {
    app: AppId,
    mode: ShuffleMode,
    policy: StagePolicy,
    writer_options: WriterOptions,
    progress: Progress,
}

impl Settings {
    fn context<C>(self, client: C, label: String) -> JobContext<C> {
        JobContext {
            client: Arc::new(client),
            app: self.app,
            mode: self.mode,
            policy: self.policy,
            writer_options: self.writer_options,
            progress: self.progress,
            shuffle_label: label,
        }
    }
}

fn quic_trust(common: &CommonArgs) -> Result<QuicTrust> {
    if let Some(file) = &common.quic_ca {
        let pem = std::fs::read(file).with_context(|| format!("reading --quic-ca {}", file.display()))?;
        return QuicTrust::roots_from_pem(&pem)
            .map_err(|e| anyhow::anyhow!("--quic-ca {}: {e}", file.display()));
    }
    if common.quic_pins.is_empty() {
        return Ok(QuicTrust::None);
    }
    let pins = common
        .quic_pins
        .iter()
        .map(|p| QuicTrust::parse_fingerprint(p).map_err(|e| anyhow::anyhow!("--quic-pin: {e}")))
        .collect::<Result<Vec<_>>>()?;
    Ok(QuicTrust::Pinned(pins))
}

/// Runs one job, then releases the app on the shuffle service.
async fn run_job<C: ShuffleClient>(ctx: JobContext<C>, job: Job) -> Result<JobReport> {
    let report = match job {
        Job::Terasort {
            size,
            partitions,
            maps,
            seed,
            ..
        } => {
            let parallelism = ctx.policy.parallelism;
            let maps = maps.unwrap_or_else(|| ((size >> 26) as u32).max(parallelism as u32).max(1));
            let config = terasort::TerasortConfig {
                size_bytes: size,
                maps,
                partitions,
                seed,
            };
            terasort::run(&ctx, config).await
        }
        Job::Wordcount {
            input,
            partitions,
            output,
            split_size,
            ..
        } => {
            let config = wordcount::WordcountConfig {
                inputs: input,
                partitions,
                output,
                split_size,
            };
            wordcount::run(&ctx, config).await
        }
    };
    if let Err(e) = ctx.client.unregister_app(&ctx.app).await {
        eprintln!("warning: releasing the app on the shuffle service failed: {e}");
    }
    Ok(report?)
}

fn print_report(report: &JobReport, json: bool) -> Result<()> {
    let stages: Vec<String> = report
        .stages
        .iter()
        .map(|s| format!("{} {:.2}s ({} tasks)", s.name, s.seconds, s.tasks))
        .collect();
    println!(
        "{} ({} shuffle, {}): {} records in, {} records out, {} valid",
        report.job,
        report.mode,
        report.shuffle,
        report.records_in,
        report.records_out,
        if report.valid { "is" } else { "NOT" }
    );
    println!(
        "  wall {:.2}s; stages: {}; shuffle wrote {}, read {}, on disk {}",
        report.wall_seconds,
        stages.join(", "),
        human_bytes(report.shuffle_bytes_written),
        human_bytes(report.shuffle_bytes_read),
        human_bytes(report.spilled_bytes)
    );
    if let Some(g) = report.extra.get("generate_seconds").and_then(|v| v.as_f64()) {
        println!("  data generation alone (baseline, same run): {g:.2}s");
    }
    if let Some(serde_json::Value::Array(top)) = report.extra.get("top_words") {
        let words: Vec<String> = top
            .iter()
            .map(|p| format!("{}={}", p[0].as_str().unwrap_or("?"), p[1]))
            .collect();
        println!("  top words: {}", words.join(" "));
    }
    if json {
        println!(
            "{}",
            serde_json::to_string(report).context("serializing the report")?
        );
    }
    Ok(())
}
