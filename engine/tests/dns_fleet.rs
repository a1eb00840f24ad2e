//! Servers named by one DNS name, the way a Kubernetes headless Service
//! names every pod: `--shuffle-servers tcp://rss-fleet:PORT` where
//! `rss-fleet` resolves to three addresses. The job places its partitions
//! over all three (each server stores data), with replication 2 given one
//! URL, and its worker processes reach the same servers.
//!
//! The name lives in a network namespace made by the test with its own
//! hosts file (`/etc/netns/NAME/hosts`, which `ip netns exec` mounts over
//! `/etc/hosts`); the machine's `/etc/hosts` is never touched. Needs root
//! (`ip netns add`): skipped with a printed reason otherwise.

mod cli_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use cli_support::finish;

/// Set for the copy of this test binary that runs inside the namespace.
const INSIDE: &str = "RSS_TEST_DNS_INSIDE";
const NAME: &str = "rss-fleet";
const ADDRESSES: [[u8; 4]; 3] = [[127, 0, 0, 11], [127, 0, 0, 12], [127, 0, 0, 13]];

/// A network namespace with its own hosts file, removed on drop.
struct Namespace {
    name: String,
    etc: PathBuf,
}

impl Namespace {
    fn create() -> Result<Self, String> {
        let name = format!("rss-dns-{}", std::process::id());
        let etc = PathBuf::from("/etc/netns").join(&name);
        let ip = |args: &[&str]| -> Result<(), String> {
            let out = Command::new("ip")
                .args(args)
                .output()
                .map_err(|e| format!("ip: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "ip {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        };
        ip(&["netns", "add", &name])?;
        let ns = Namespace { name, etc };
        ip(&["netns", "exec", &ns.name, "ip", "link", "set", "lo", "up"])?;
        std::fs::create_dir_all(&ns.etc).map_err(|e| format!("{}: {e}", ns.etc.display()))?;
        let mut hosts = String::from("127.0.0.1 localhost\n");
        for a in ADDRESSES {
            hosts.push_str(&format!("{}.{}.{}.{} {NAME}\n", a[0], a[1], a[2], a[3]));
        }
        std::fs::write(ns.etc.join("hosts"), hosts).map_err(|e| format!("hosts file: {e}"))?;
        Ok(ns)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
        let _ = std::fs::remove_dir_all(&self.etc);
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

#[test]
fn a_dns_name_of_three_servers_places_over_all_three() {
    if !is_root() {
        eprintln!("skipped: making a network namespace (ip netns add) needs root");
        return;
    }
    let ns = match Namespace::create() {
        Ok(ns) => ns,
        Err(e) => {
            eprintln!("skipped: no network namespace can be made here: {e}");
            return;
        }
    };
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(std::env::current_exe().expect("test binary"))
        .args(["--ignored", "--exact", "inside_the_namespace", "--nocapture"])
        .env(INSIDE, "1")
        .output()
        .expect("ip netns exec runs");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "inside the namespace:\n{text}");
    assert!(text.contains("1 passed"), "the inner test ran:\n{text}");
}

/// Not a test on its own: the body of the test above, run by it inside the
/// namespace (where `rss-fleet` resolves to three addresses).
#[test]
#[ignore = "run by a_dns_name_of_three_servers_places_over_all_three inside its namespace"]
fn inside_the_namespace() {
    if std::env::var_os(INSIDE).is_none() {
        return;
    }
    let resolved: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(&(NAME, 1))
        .expect("the namespace's hosts file names the fleet")
        .collect();
    assert_eq!(resolved.len(), 3, "{NAME} resolves to {resolved:?}");

    let tmp = tempfile::tempdir().expect("tmp");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    // Every server on the same port of its own address, as pods are.
    let mut port = 0;
    let mut http = Vec::new();
    for (i, a) in ADDRESSES.iter().enumerate() {
        let at = |p: u16| SocketAddr::from((*a, p));
        let mut config = shuffle_server::config::ServerConfig::new(vec![tmp.path().join(format!("s{i}"))]);
        config.create_data_dirs = true;
        config.fsync_on_seal = false;
        config.listen = at(port);
        config.quic_listen = at(0);
        config.grpc_listen = at(0);
        config.http_listen = at(0);
        let listeners = runtime
            .block_on(shuffle_server::Listeners::bind(&config))
            .expect("server binds");
        let addrs = listeners.addrs().expect("bound addresses");
        port = addrs.tcp.port();
        http.push(addrs.http);
        runtime.spawn(shuffle_server::run(config, listeners, std::future::pending()));
    }

    let url = format!("tcp://{NAME}:{port}");
    let child = Command::new(env!("CARGO_BIN_EXE_engine"))
        .args([
            "run",
            "terasort",
            "--size",
            "12MB",
            "--maps",
            "6",
            "--partitions",
            "6",
            "--workers",
            "2",
            "--replication",
            "2",
            "--shuffle-servers",
            &url,
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("engine starts");
    let (report, err) = {
        let mut child = child;
        let stderr = child.stderr.take().expect("stderr");
        finish(child, stderr)
    };
    assert_eq!(report["valid"], true, "{report}\n{err}");
    assert_eq!(report["records_out"], 120_000, "{report}");
    // Each of the three servers stored partitions: two copies of 6
    // partitions spread over 3 servers is 4 per server.
    let per_server: Vec<f64> = http.iter().map(|h| counter(*h, "rss_push_bytes_total")).collect();
    assert!(
        per_server.iter().all(|b| *b > 0.0),
        "bytes pushed per server: {per_server:?}\n{err}"
    );
    let replicated: f64 = http
        .iter()
        .map(|h| counter(*h, "rss_replication_bytes_total"))
        .sum();
    let pushed: f64 = per_server.iter().sum();
    assert!(
        (replicated * 2.0 - pushed).abs() < 1.0,
        "half of what was pushed is the second copy: {replicated} of {pushed}"
    );
}

/// A counter of a server's `/metrics`, summed over its labels.
fn counter(http: SocketAddr, name: &str) -> f64 {
    let mut s = TcpStream::connect_timeout(&http, Duration::from_secs(2)).expect("metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
    write!(s, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").expect("request");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("metrics");
    body.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
