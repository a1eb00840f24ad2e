//! The engine against real shuffle servers, over TCP and QUIC.

mod cli_support;

use cli_support::{engine, report};

use shuffle_server::config::ServerConfig;
use shuffle_server::LocalServer;

async fn servers(n: usize, tmp: &tempfile::TempDir) -> Vec<LocalServer> {
    let mut out = Vec::new();
    for i in 0..n {
        let mut config = ServerConfig::new(vec![tmp.path().join(format!("server-{i}"))]);
        config.fsync_on_seal = false;
        config.create_data_dirs = true;
        out.push(LocalServer::start(config).await.expect("server starts"));
    }
    out
}

fn args(extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "run",
        "terasort",
        "--size",
        "2MB",
        "--partitions",
        "6",
        "--maps",
        "3",
        "--json",
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terasort_validates_against_two_servers_over_tcp() {
    let tmp = tempfile::tempdir().expect("tmp");
    let servers = servers(2, &tmp).await;
    let urls = format!("{},{}", servers[0].tcp_url(), servers[1].tcp_url());
    let out = tokio::task::spawn_blocking(move || engine(&args(&["--shuffle-servers", &urls])))
        .await
        .expect("joined");
    let r = report(&out);
    assert_eq!(r["valid"], true);
    assert_eq!(r["records_out"], 20_000);
    assert!(r["shuffle"].as_str().is_some_and(|s| s.starts_with("tcp://")));
    assert!(r["stored_bytes"].as_u64().is_some_and(|b| b > 0));
    // The job released its app: nothing is left on the servers' disks.
    for i in 0..2 {
        let dir = tmp.path().join(format!("server-{i}"));
        let left: Vec<_> = std::fs::read_dir(&dir).expect("dir").flatten().collect();
        assert!(left.is_empty(), "{} still holds {left:?}", dir.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terasort_validates_over_quic_with_a_pinned_certificate() {
    let tmp = tempfile::tempdir().expect("tmp");
    let servers = servers(1, &tmp).await;
    let url = servers[0].quic_url();
    let pin = servers[0].quic_fingerprint.clone();
    let (u, p) = (url.clone(), pin.clone());
    let out =
        tokio::task::spawn_blocking(move || engine(&args(&["--shuffle-servers", &u, "--quic-pin", &p])))
            .await
            .expect("joined");
    assert_eq!(report(&out)["valid"], true);

    // Without a pin the client refuses to trust the server.
    let out = tokio::task::spawn_blocking(move || engine(&args(&["--shuffle-servers", &url])))
        .await
        .expect("joined");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("QUIC needs a trusted server"));
}
