//! Shuffle servers as real processes for the fault tests: the test binary
//! started again as a child that runs a shuffle server (its file's
//! `serve_as_child` test calls [`serve_from_env`]), so a test always runs
//! the server code it was built with, and can kill it with SIGKILL or stop
//! it with SIGTERM (a drain) and start it again on the same addresses and
//! data directory.
#![allow(dead_code)] // each test file uses its own part

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SERVE_DIR: &str = "RSS_TEST_SERVE_DIR";
/// `tcp,quic,grpc,http` addresses; absent: every one on `127.0.0.1:0`.
const SERVE_ADDRS: &str = "RSS_TEST_SERVE_ADDRS";
/// Seconds of drain after SIGTERM.
const DRAIN_SECS: &str = "RSS_TEST_DRAIN_SECS";

/// The body of a server child: serves the data directory named by
/// `RSS_TEST_SERVE_DIR` (nothing when it is unset: the test itself was run),
/// prints its addresses, and on SIGTERM drains and exits.
pub fn serve_from_env() {
    let Some(dir) = std::env::var_os(SERVE_DIR) else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async move {
        let mut config = shuffle_server::config::ServerConfig::new(vec![dir.into()]);
        config.create_data_dirs = true;
        config.fsync_on_seal = false;
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let addrs: Vec<SocketAddr> = match std::env::var(SERVE_ADDRS) {
            Ok(text) => text.split(',').map(|a| a.parse().expect("address")).collect(),
            Err(_) => vec![any; 4],
        };
        (
            config.listen,
            config.quic_listen,
            config.grpc_listen,
            config.http_listen,
        ) = (addrs[0], addrs[1], addrs[2], addrs[3]);
        if let Ok(secs) = std::env::var(DRAIN_SECS) {
            config.drain_timeout = Duration::from_secs_f64(secs.parse().expect("seconds"));
        }
        let listeners = shuffle_server::Listeners::bind(&config)
            .await
            .expect("server binds");
        let bound = listeners.addrs().expect("bound addresses");
        println!(
            "serving tcp={} quic={} grpc={} http={}",
            bound.tcp, bound.quic, bound.grpc, bound.http
        );
        std::io::stdout().flush().expect("flush");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        shuffle_server::run(config, listeners, async move {
            term.recv().await;
        })
        .await
        .expect("server runs and drains");
    });
}

/// A shuffle server in a child process; killed with SIGKILL on drop.
pub struct ServerProcess {
    child: Child,
    pub dir: PathBuf,
    /// tcp, quic, grpc, http.
    pub addrs: [SocketAddr; 4],
    pub url: String,
    pub http: SocketAddr,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServerProcess {
    /// Starts a server on ephemeral loopback ports.
    pub fn start(dir: &Path) -> Self {
        Self::spawn(dir, None, 30.0)
    }

    /// Starts a server on `addrs` (tcp, quic, grpc, http) with a drain of
    /// `drain_secs` on SIGTERM.
    pub fn start_at(dir: &Path, addrs: [SocketAddr; 4], drain_secs: f64) -> Self {
        Self::spawn(dir, Some(addrs), drain_secs)
    }

    fn spawn(dir: &Path, addrs: Option<[SocketAddr; 4]>, drain_secs: f64) -> Self {
        let mut command = Command::new(std::env::current_exe().expect("test binary"));
        command
            .args([
                "--ignored",
                "--exact",
                "serve_as_child",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(SERVE_DIR, dir)
            .env(DRAIN_SECS, drain_secs.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(a) = addrs {
            command.env(SERVE_ADDRS, format!("{},{},{},{}", a[0], a[1], a[2], a[3]));
        }
        let mut child = command.spawn().expect("server process starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = loop {
            match lines.next() {
                // The harness prints "test serve_as_child ... " first.
                Some(Ok(line)) if line.contains("serving tcp=") => break line,
                Some(Ok(_)) => continue,
                other => panic!("the server process ended before serving: {other:?}"),
            }
        };
        std::thread::spawn(move || for _ in lines {});
        let field = |key: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .unwrap_or_else(|| panic!("no {key} in {line}"))
                .parse()
                .expect("address")
        };
        let addrs = [field("tcp="), field("quic="), field("grpc="), field("http=")];
        ServerProcess {
            child,
            dir: dir.to_path_buf(),
            addrs,
            url: format!("tcp://{}", addrs[0]),
            http: addrs[3],
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([name, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {name}");
    }

    pub fn kill_9(&mut self) {
        self.signal("-9");
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the drain to end; returns how long it took.
    pub fn terminate(&mut self) -> Duration {
        let started = Instant::now();
        self.signal("-TERM");
        let status = self.child.wait().expect("the server exits");
        assert!(status.success(), "a drained server exits 0: {status}");
        started.elapsed()
    }

    /// Starts the server again on its addresses and data directory, and
    /// waits until `/readyz` says ready.
    pub fn restart(&mut self, drain_secs: f64) {
        let next = Self::spawn(&self.dir, Some(self.addrs), drain_secs);
        let old = std::mem::replace(self, next);
        drop(old);
        let started = Instant::now();
        while self.get("/readyz").is_none_or(|(status, _)| status != 200) {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the restarted server is not ready"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// An HTTP GET of the server's operator endpoint: (status, body).
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut s = TcpStream::connect_timeout(&self.http, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
        Some((status, body))
    }

    /// A counter of the server's `/metrics`, summed over its labels (0 when
    /// absent or unreachable).
    pub fn counter(&self, name: &str) -> f64 {
        let Some((_, body)) = self.get("/metrics") else {
            return 0.0;
        };
        body.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}
