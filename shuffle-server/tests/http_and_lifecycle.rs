//! HTTP endpoints and the server's lifecycle: health, the metric names of
//! DESIGN.md, a clean drain and restart that keep sealed data (promise 5),
//! and expiry of silent apps (promise 6).

mod common;

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::*;
use protocol::net::proto::AppRequest;
use shuffle_server::LocalServer;

/// Every metric DESIGN.md promises.
const DESIGN_METRICS: [&str; 21] = [
    "rss_push_bytes_total",
    "rss_push_requests_total",
    "rss_push_duration_seconds",
    "rss_fetch_bytes_total",
    "rss_fetch_duration_seconds",
    "rss_fetch_failures_total",
    "rss_flush_bytes_total",
    "rss_spill_bytes_total",
    "rss_active_applications",
    "rss_active_shuffles",
    "rss_stored_bytes",
    "rss_disk_free_bytes",
    "rss_buffer_bytes",
    "rss_buffer_limit_bytes",
    "rss_backpressure_seconds_total",
    "rss_rejected_requests_total",
    "rss_checksum_mismatches_total",
    "rss_duplicate_blocks_dropped_total",
    "rss_open_connections",
    "rss_draining",
    "rss_build_info",
];

fn missing_metrics(text: &str) -> Vec<&'static str> {
    DESIGN_METRICS
        .into_iter()
        .filter(|name| !text.contains(&format!("# TYPE {name} ")))
        .collect()
}

#[tokio::test]
async fn health_endpoints_answer_and_unknown_paths_are_404() -> Result<()> {
    let ts = TestServer::start().await?;
    let http = ts.server.addrs.http;
    let (code, body) = http_get(http, "/livez").await?;
    ensure!(code == 200, "/livez {code} {body:?}");
    let (code, body) = http_get(http, "/readyz").await?;
    ensure!(code == 200, "/readyz {code} {body:?}");
    let (code, _) = http_get(http, "/no-such-page").await?;
    ensure!(code == 404, "unknown path answered {code}");
    let (code, _) = http_get(http, "/metrics/../livez-not").await?;
    ensure!(code == 404, "unknown path answered {code}");
    Ok(())
}

/// Push and fetch once over TCP, then wait for housekeeping to publish
/// the per-disk series; returns the names still missing.
async fn missing_after_one_push_and_fetch(ts: &TestServer) -> Result<Vec<&'static str>> {
    round_trip(&ts.server, "app", 1).await?;
    // Housekeeping has run since the shuffle exists once it counts it.
    eventually(Duration::from_secs(3), "housekeeping", || async {
        Ok(metric(&ts.metrics().await?, "rss_active_shuffles") == Some(1.0))
    })
    .await?;
    let text = ts.metrics().await?;
    ensure!(
        metric(&text, r#"rss_push_requests_total{result="ok"}"#) == Some(1.0),
        "one push"
    );
    ensure!(metric_or_zero(&text, r#"rss_fetch_bytes_total{transport="tcp"}"#) > 0.0);
    ensure!(metric(&text, "rss_buffer_limit_bytes") == Some((1u64 << 30) as f64));
    ensure!(
        metric(
            &text,
            &format!(r#"rss_build_info{{version="{}"}}"#, env!("CARGO_PKG_VERSION"))
        ) == Some(1.0),
        "build info"
    );
    Ok(missing_metrics(&text))
}

#[tokio::test]
async fn metrics_name_every_design_metric_after_one_push_and_fetch() -> Result<()> {
    let ts = TestServer::start().await?;
    let missing = missing_after_one_push_and_fetch(&ts).await?;
    ensure!(missing.is_empty(), "missing from /metrics: {missing:?}");
    Ok(())
}

#[tokio::test]
async fn metrics_name_every_design_metric_once_something_failed() -> Result<()> {
    let ts = TestServer::start().await?;
    let missing = missing_after_one_push_and_fetch(&ts).await?;
    ensure!(
        missing
            .iter()
            .all(|m| ["rss_fetch_failures_total", "rss_rejected_requests_total"].contains(m)),
        "missing from /metrics: {missing:?}"
    );
    // A failed fetch and a refused call create the failure series.
    let mut conn = ts.data().await?;
    let r = conn.fetch(9, "app", 1, 7, 1).await?;
    ensure!(r.is_err(), "partition 7 of 2 must fail");
    let mut c = ts.control().await?;
    let r = c
        .heartbeat(AppRequest {
            app_id: "ghost".into(),
        })
        .await;
    ensure!(r.is_err(), "an unknown app's heartbeat must fail");
    let text = ts.metrics().await?;
    let missing = missing_metrics(&text);
    ensure!(missing.is_empty(), "missing from /metrics: {missing:?}");
    ensure!(metric(&text, r#"rss_fetch_failures_total{reason="out_of_range"}"#) == Some(1.0));
    ensure!(metric(&text, r#"rss_rejected_requests_total{reason="unknown_app"}"#) == Some(1.0));
    Ok(())
}

#[tokio::test]
async fn drain_keeps_sealed_data_and_a_restart_serves_it() -> Result<()> {
    let ts = TestServer::start().await?;
    let mut c = ts.control().await?;
    register_shuffle(&mut c, "app", 1, 2, 2).await?;
    register_shuffle(&mut c, "app", 2, 1, 1).await?;
    let mut conn = ts.data().await?;
    let blocks = vec![
        block(1, 0, 0, 0, 1000)?,
        block(1, 0, 0, 1, 2000)?,
        block(1, 1, 0, 0, 3000)?,
        block(1, 1, 1, 0, 50)?,
    ];
    conn.push_ok(1, "app", 1, blocks.clone()).await?;
    commit(&mut c, "app", 1, 0, &[(0, 2)]).await?;
    let reply = commit(&mut c, "app", 1, 1, &[(0, 1), (1, 1)]).await?;
    ensure!(reply.sealed, "{reply:?}");
    // Shuffle 2 has data but never seals: it must not come back.
    conn.push_ok(2, "app", 2, vec![block(2, 0, 0, 0, 10)?]).await?;
    let before = conn.fetch(3, "app", 1, 0, 2).await?.map_err(|e| e.error)?;
    ensure!(before == blocks[..3], "read before the restart");

    let TestServer { server, dirs, tmp } = ts;
    // Idle clients stay connected while the server drains.
    within(Duration::from_secs(5), "shutdown", server.shutdown())
        .await?
        .context("shutdown returns Ok")?;
    let sealed_files = dirs
        .iter()
        .filter(|d| d.join("app").join("shuffle-1").exists())
        .count();
    ensure!(sealed_files > 0, "the sealed shuffle's folder is gone");
    drop((conn, c));

    let server = LocalServer::start(test_config(dirs.clone())).await?;
    let mut c = control(&server).await?;
    let status = shuffle_status(&mut c, "app", 1).await??;
    ensure!(status.sealed && status.committed_maps == 2, "{status:?}");
    let mut conn = DataConn::connect(server.addrs.tcp).await?;
    let after0 = conn.fetch(1, "app", 1, 0, 2).await?.map_err(|e| e.error)?;
    ensure!(after0 == before, "partition 0 after the restart differs");
    let after1 = conn.fetch(2, "app", 1, 1, 2).await?.map_err(|e| e.error)?;
    ensure!(after1 == blocks[3..], "partition 1 after the restart differs");
    let unsealed = shuffle_status(&mut c, "app", 2).await?;
    ensure!(
        is_not_found(&unsealed),
        "an unsealed shuffle survived the restart: {unsealed:?}"
    );
    ensure!(
        !dirs.iter().any(|d| d.join("app").join("shuffle-2").exists()),
        "the unsealed shuffle's files survived"
    );
    within(Duration::from_secs(5), "second shutdown", server.shutdown()).await??;
    drop(tmp);
    Ok(())
}

#[tokio::test]
async fn silent_apps_expire_and_heartbeating_apps_survive() -> Result<()> {
    let ts = TestServer::start_with(|c| {
        c.app_timeout = Duration::from_millis(300);
        c.check_interval = Duration::from_millis(50);
    })
    .await?;
    let mut c = ts.control().await?;
    let mut conn = ts.data().await?;
    for app in ["silent", "alive"] {
        c.register_app(AppRequest { app_id: app.into() }).await?;
        register_shuffle(&mut c, app, 1, 1, 2).await?;
        conn.push_ok(1, app, 1, vec![block(1, 0, 0, 0, 100)?, block(1, 0, 1, 0, 100)?])
            .await?;
        ensure!(app_dir_exists(&ts.dirs, app), "{app} has no folder");
    }

    let mut heartbeats = c.clone();
    // Runs until aborted, or returns the first failed heartbeat.
    let keep_alive = tokio::spawn(async move {
        loop {
            let beat = heartbeats.heartbeat(AppRequest {
                app_id: "alive".into(),
            });
            if let Err(status) = beat.await {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });

    let dirs = ts.dirs.clone();
    let result = eventually(Duration::from_secs(3), "silent app expires", || {
        let dirs = dirs.clone();
        async move { Ok(!app_dir_exists(&dirs, "silent")) }
    })
    .await;
    // Let the live app outlast a few more timeouts.
    tokio::time::sleep(Duration::from_millis(700)).await;
    keep_alive.abort();
    let beat = keep_alive.await;
    ensure!(
        beat.as_ref().is_err_and(|e| e.is_cancelled()),
        "heartbeats of the live app failed: {beat:?}"
    );
    result?;

    let gone = shuffle_status(&mut c, "silent", 1).await?;
    ensure!(is_not_found(&gone), "{gone:?}");
    let hb = c
        .heartbeat(AppRequest {
            app_id: "silent".into(),
        })
        .await;
    ensure!(is_not_found(&hb), "{hb:?}");
    let expired = metric_or_zero(&ts.metrics().await?, "rss_expired_applications_total");
    ensure!(expired >= 1.0, "rss_expired_applications_total is {expired}");

    ensure!(app_dir_exists(&ts.dirs, "alive"), "the live app's folder is gone");
    let status = shuffle_status(&mut c, "alive", 1).await??;
    ensure!(status.stored_bytes > 0, "{status:?}");
    commit(&mut c, "alive", 1, 0, &[(0, 1), (1, 1)]).await?;
    let read = conn.fetch(2, "alive", 1, 1, 1).await?;
    ensure!(read.is_ok_and(|b| b.len() == 1), "the live app still reads");
    Ok(())
}
