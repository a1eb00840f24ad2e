//! The real `shuffle-server` binary as a child process, for tests that kill
//! it (SIGKILL, SIGTERM) and start it again on the same ports and data.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A running daemon. Dropping it kills it with SIGKILL (no drain, no flush).
#[derive(Debug)]
pub struct Daemon {
    pub child: Child,
    /// TCP, QUIC, gRPC and HTTP addresses, as the daemon logged them.
    pub ports: [String; 4],
    pub tcp: SocketAddr,
    pub http: SocketAddr,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Free loopback ports for TCP, QUIC (UDP), gRPC and HTTP, found by
/// binding port 0 and releasing.
pub fn free_ports() -> Result<[String; 4]> {
    let (a, b, c) = (
        TcpListener::bind("127.0.0.1:0")?,
        TcpListener::bind("127.0.0.1:0")?,
        TcpListener::bind("127.0.0.1:0")?,
    );
    let quic = UdpSocket::bind("127.0.0.1:0")?.local_addr()?.to_string();
    let ports = [
        a.local_addr()?.to_string(),
        quic,
        b.local_addr()?.to_string(),
        c.local_addr()?.to_string(),
    ];
    drop((a, b, c));
    Ok(ports)
}

impl Daemon {
    /// Starts the daemon on `data` (created if missing) and `ports` (or
    /// ephemeral ones), with `extra` flags, and waits until it listens.
    pub fn start(data: &Path, ports: Option<&[String; 4]>, extra: &[&str]) -> Result<Self> {
        let any = "127.0.0.1:0".to_string();
        let [tcp, quic, grpc, http] = ports
            .cloned()
            .unwrap_or([any.clone(), any.clone(), any.clone(), any]);
        let mut child = Command::new(env!("CARGO_BIN_EXE_shuffle-server"))
            .arg("--data-dir")
            .arg(data)
            .args(["--create-data-dirs", "--no-fsync"])
            .args(["--listen", &tcp, "--quic-listen", &quic])
            .args(["--grpc-listen", &grpc, "--http-listen", &http])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning shuffle-server")?;
        let stderr = child.stderr.take().context("stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let field = |line: &str, key: &str| -> Option<String> {
            let start = line.find(&format!("{key}="))? + key.len() + 1;
            Some(line[start..].split_whitespace().next()?.to_string())
        };
        loop {
            let Some(line) = lines.next() else {
                let status = child.wait()?;
                bail!("shuffle-server exited before listening ({status})");
            };
            let line = line?;
            if line.contains("shuffle server listening") {
                let get = |k| field(&line, k).with_context(|| format!("no {k} in {line}"));
                let ports = [get("tcp")?, get("quic")?, get("grpc")?, get("http")?];
                // Keep draining the log so the daemon never blocks on a full pipe.
                std::thread::spawn(move || for _ in lines {});
                return Ok(Daemon {
                    child,
                    tcp: ports[0].parse()?,
                    http: ports[3].parse()?,
                    ports,
                });
            }
        }
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) -> Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -TERM failed");
        Ok(())
    }

    /// Waits up to `limit` for the daemon to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(code) = self.child.try_wait()? {
                return Ok(code);
            }
            if Instant::now() > deadline {
                bail!("the daemon did not exit within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
