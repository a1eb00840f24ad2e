//! shuffle-server daemons as child processes on loopback ports.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// A running daemon.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    pub tcp: String,
    pub quic: String,
    pub quic_fingerprint: String,
    pub data_dir: PathBuf,
}

/// Where the `shuffle-server` binary is: `$RSS_SERVER_BIN`, or next to the
/// running executable (both are built into the same `target/` folder).
pub fn server_binary() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("RSS_SERVER_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("executable has no folder")?;
    for candidate in [dir.join("shuffle-server"), dir.join("..").join("shuffle-server")] {
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    bail!(
        "shuffle-server binary not found next to {}; build it with \
         `cargo build --release -p shuffle-server` or set RSS_SERVER_BIN",
        exe.display()
    )
}

/// CPU time (user + system, every thread) of process `pid` so far, in
/// seconds, from `/proc/PID/stat` (fields 14 and 15, in USER_HZ ticks,
/// which Linux fixes at 100 for this file).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count after its `)`.
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some((ticks(11)? + ticks(12)?) as f64 / 100.0)
}

impl Daemon {
    /// Starts a daemon on ephemeral loopback ports with `data_dir`.
    pub fn start(data_dir: &Path, memory_budget: &str) -> Result<Self> {
        let any = "127.0.0.1:0";
        // Frames must fit the budget: at most half of it, at most 64 MiB.
        let budget = crate::units::parse_size(memory_budget).map_err(anyhow::Error::msg)?;
        let max_frame = (budget / 2).min(64 << 20).to_string();
        let mut child = Command::new(server_binary()?)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--create-data-dirs")
            .args([
                "--listen",
                any,
                "--quic-listen",
                any,
                "--grpc-listen",
                any,
                "--http-listen",
                any,
            ])
            .args([
                "--memory-budget",
                memory_budget,
                "--max-frame-len",
                &max_frame,
                "--no-fsync",
            ])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning shuffle-server")?;
        let stderr = child.stderr.take().context("no stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let field = |line: &str, key: &str| -> Option<String> {
            let start = line.find(&format!("{key}="))? + key.len() + 1;
            Some(line[start..].split_whitespace().next()?.to_string())
        };
        let mut log = Vec::new();
        loop {
            let Some(line) = lines.next() else {
                bail!("shuffle-server exited before listening:\n{}", log.join("\n"));
            };
            let line = line?;
            log.push(line.clone());
            if line.contains("shuffle server listening") {
                let get = |k| field(&line, k).with_context(|| format!("no {k} in {line}"));
                let daemon = Daemon {
                    tcp: format!("tcp://{}", get("tcp")?),
                    quic: format!("quic://{}", get("quic")?),
                    quic_fingerprint: get("quic_fingerprint")?,
                    data_dir: data_dir.to_path_buf(),
                    child,
                };
                std::thread::spawn(move || for _ in lines {});
                return Ok(daemon);
            }
        }
    }

    /// Peak resident memory of the daemon so far (VmHWM), in bytes.
    pub fn peak_rss_bytes(&self) -> Option<u64> {
        self.status_kib("VmHWM:").map(|kib| kib * 1024)
    }

    /// Resident memory of the daemon now (VmRSS), in bytes.
    pub fn rss_bytes(&self) -> Option<u64> {
        self.status_kib("VmRSS:").map(|kib| kib * 1024)
    }

    /// CPU time (user + system) of the daemon so far, in seconds.
    pub fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds(self.child.id())
    }

    fn status_kib(&self, key: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with(key))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// SIGTERM, then wait for the drain (SIGKILL after 30 s).
    pub fn stop(mut self) -> Result<()> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        for _ in 0..300 {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
