//! `shuffle-server`: the shuffle service daemon.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use shuffle_server::config::{FileConfig, ServerConfig};
use shuffle_server::{run, Listeners};

/// Stores partitioned map output on local disks and serves it to reducers.
///
/// Every flag can also be set in the TOML file given with --config (same
/// names, with underscores: data_dirs, listen, memory_budget,
/// app_timeout_secs...). Flags win over the file; the file wins over the
/// defaults. Unknown keys and bad values are refused at start. Logs go to
/// stderr, filtered by RUST_LOG (default: info).
#[derive(Parser, Debug)]
#[command(name = "shuffle-server", version)]
struct Cli {
    /// A data directory (repeat for several disks). Required, here or in the
    /// file. It must exist (an unmounted disk must not silently become a
    /// folder on the root file system) unless --create-data-dirs is given.
    #[arg(long = "data-dir", value_name = "DIR")]
    data_dirs: Vec<PathBuf>,
    /// Create data directories that do not exist.
    #[arg(long)]
    create_data_dirs: bool,
    /// A data directory with less free space than this takes no new
    /// partition; /readyz fails only when none can take one [default: 1GiB].
    #[arg(long, value_name = "SIZE")]
    disk_reserve: Option<String>,
    /// TCP data plane address [default: 127.0.0.1:19000].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// QUIC data plane address (UDP) [default: 127.0.0.1:19001].
    #[arg(long)]
    quic_listen: Option<SocketAddr>,
    /// gRPC control plane address [default: 127.0.0.1:19002].
    #[arg(long)]
    grpc_listen: Option<SocketAddr>,
    /// HTTP address for /metrics, /livez, /readyz [default: 127.0.0.1:19003].
    #[arg(long)]
    http_listen: Option<SocketAddr>,
    /// TOML configuration file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Memory for buffered push and fetch data; beyond it writers wait
    /// (e.g. 256MiB) [default: 1GiB].
    #[arg(long)]
    memory_budget: Option<String>,
    /// Largest data-plane frame accepted [default: 64MiB].
    #[arg(long)]
    max_frame_len: Option<String>,
    /// Seconds without heartbeat after which an app's data is deleted [default: 120].
    #[arg(long)]
    app_timeout_secs: Option<f64>,
    /// PEM certificate chain for QUIC [default: a self-signed one, generated at start].
    #[arg(long, value_name = "FILE")]
    quic_cert: Option<PathBuf>,
    /// PEM private key for QUIC (with --quic-cert).
    #[arg(long, value_name = "FILE")]
    quic_key: Option<PathBuf>,
    /// Write the QUIC certificate (PEM) here at start, for clients to trust.
    #[arg(long, value_name = "FILE")]
    quic_cert_out: Option<PathBuf>,
    /// Seconds after which a hybrid-selective block nobody consumed is
    /// spilled to disk [default: 1].
    #[arg(long)]
    spill_after_secs: Option<f64>,
    /// Do not fsync at seal (faster; sealed data may not survive a power loss).
    #[arg(long)]
    no_fsync: bool,
    /// Seconds a push frame's body may take to arrive once its memory
    /// credit is granted [default: 30].
    #[arg(long, value_name = "SECS")]
    frame_timeout_secs: Option<f64>,
    /// Seconds without a request after which a data connection is closed
    /// [default: 120].
    #[arg(long, value_name = "SECS")]
    idle_timeout_secs: Option<f64>,
    /// Most applications registered at once [default: 4096].
    #[arg(long, value_name = "N")]
    max_apps: Option<usize>,
    /// Most shuffles registered at once, over all apps [default: 65536].
    #[arg(long, value_name = "N")]
    max_shuffles: Option<usize>,
    /// Most shuffles one app may have registered at once [default: 10000].
    #[arg(long, value_name = "N")]
    max_shuffles_per_app: Option<usize>,
    /// Largest maps x partitions of one shuffle [default: 1000000000].
    #[arg(long, value_name = "N")]
    max_maps_x_partitions: Option<u64>,
    /// Most data connections open at once, TCP and QUIC [default: 4096].
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Most data connections open at once from one IP address [default: 1024].
    #[arg(long, value_name = "N")]
    max_connections_per_peer: Option<usize>,
}

impl Cli {
    fn flags(&self) -> FileConfig {
        FileConfig {
            data_dirs: (!self.data_dirs.is_empty()).then(|| self.data_dirs.clone()),
            listen: self.listen,
            quic_listen: self.quic_listen,
            grpc_listen: self.grpc_listen,
            http_listen: self.http_listen,
            memory_budget: self.memory_budget.clone(),
            max_frame_len: self.max_frame_len.clone(),
            app_timeout_secs: self.app_timeout_secs,
            spill_after_secs: self.spill_after_secs,
            quic_cert: self.quic_cert.clone(),
            quic_key: self.quic_key.clone(),
            fsync_on_seal: self.no_fsync.then_some(false),
            create_data_dirs: self.create_data_dirs.then_some(true),
            disk_reserve: self.disk_reserve.clone(),
            frame_timeout_secs: self.frame_timeout_secs,
            idle_timeout_secs: self.idle_timeout_secs,
            max_apps: self.max_apps,
            max_shuffles: self.max_shuffles,
            max_shuffles_per_app: self.max_shuffles_per_app,
            max_maps_x_partitions: self.max_maps_x_partitions,
            max_connections: self.max_connections,
            max_connections_per_peer: self.max_connections_per_peer,
            ..FileConfig::default()
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match serve(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(cli: Cli) -> anyhow::Result<()> {
    let file = match &cli.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let config = ServerConfig::merge(file, cli.flags())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        let listeners = Listeners::bind(&config).await?;
        if let Some(out) = &cli.quic_cert_out {
            std::fs::write(out, listeners.quic_identity.certificate_pem())
                .with_context(|| format!("writing the QUIC certificate to {}", out.display()))?;
        }
        run(config, listeners, shutdown_signal()).await?;
        Ok(())
    })
}

/// Resolves on SIGTERM or ctrl-c.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("ctrl-c received"),
                }
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM ({e}); ctrl-c only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
