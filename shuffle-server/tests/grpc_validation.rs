//! Promise 4 on the control plane (and the read path): every bad request is
//! refused with the documented status code and a typed `ServiceError` in
//! the details; nothing is written outside the data directories.

mod common;

use anyhow::{bail, ensure, Context, Result};
use common::*;
use protocol::net::proto::{
    AppRequest, BlockCount, CommitMapRequest, Empty, RegisterShuffleRequest, ShuffleRef,
};
use protocol::{MapId, PartitionId, ServiceError, ShuffleId};
use tonic::{Code, Response, Status};

/// Checks a refused call: its code, and typed details that satisfy `want`.
fn refused<T: std::fmt::Debug>(
    what: &str,
    result: Result<Response<T>, Status>,
    code: Code,
    want: impl Fn(&ServiceError) -> bool,
) -> Result<ServiceError> {
    let status = match result {
        Ok(r) => bail!("{what}: accepted ({r:?}), expected {code:?}"),
        Err(s) => s,
    };
    ensure!(status.code() == code, "{what}: got {status:?}, expected {code:?}");
    let err = service_error(&status).with_context(|| what.to_string())?;
    ensure!(want(&err), "{what}: unexpected details {err:?}");
    Ok(err)
}

fn malformed(e: &ServiceError) -> bool {
    matches!(e, ServiceError::Malformed { .. })
}

fn hostile_app_ids(ts: &TestServer) -> Vec<String> {
    vec![
        "../x".into(),
        "..".into(),
        ".".into(),
        "/abs".into(),
        // Absolute and inside the sandbox: would show up as a stray entry.
        ts.tmp.path().join("abs").display().to_string(),
        "a/b".into(),
        "a\0b".into(),
        "a".repeat(129),
        String::new(),
    ]
}

#[tokio::test]
async fn hostile_app_ids_are_invalid_argument_on_every_call() -> Result<()> {
    let ts = TestServer::start().await?;
    let mut c = ts.control().await?;
    for app in hostile_app_ids(&ts) {
        let what = |call: &str| format!("{call} with app id {app:?}");
        let app_req = || AppRequest { app_id: app.clone() };
        let shuffle_ref = || ShuffleRef {
            app_id: app.clone(),
            shuffle_id: 1,
        };
        let r = c
            .register_shuffle(RegisterShuffleRequest {
                app_id: app.clone(),
                shuffle_id: 1,
                num_maps: 1,
                num_partitions: 1,
                mode: 0,
                ..Default::default()
            })
            .await;
        refused(&what("RegisterShuffle"), r, Code::InvalidArgument, malformed)?;
        let r = c.commit_map(commit_request(&app, 1, 0, &[(0, 1)])).await;
        refused(&what("CommitMap"), r, Code::InvalidArgument, malformed)?;
        let r = c.shuffle_status(shuffle_ref()).await;
        refused(&what("ShuffleStatus"), r, Code::InvalidArgument, malformed)?;
        let r = c.unregister_shuffle(shuffle_ref()).await;
        refused(&what("UnregisterShuffle"), r, Code::InvalidArgument, malformed)?;
        let r = c.heartbeat(app_req()).await;
        refused(&what("Heartbeat"), r, Code::InvalidArgument, malformed)?;
        let r = c.register_app(app_req()).await;
        refused(&what("RegisterApp"), r, Code::InvalidArgument, malformed)?;
        let r = c.unregister_app(app_req()).await;
        refused(&what("UnregisterApp"), r, Code::InvalidArgument, malformed)?;
    }
    let status = c.server_status(Empty {}).await?.into_inner();
    ensure!(status.active_apps == 0, "a hostile id was registered: {status:?}");
    ensure!(
        status.active_shuffles == 0,
        "a hostile id was registered: {status:?}"
    );
    let stray = ts.entries_outside_data_dirs()?;
    ensure!(stray.is_empty(), "written outside the data dirs: {stray:?}");
    ensure!(!std::path::Path::new("/abs").exists(), "/abs was created");
    Ok(())
}

#[tokio::test]
async fn unknown_apps_and_shuffles_are_not_found() -> Result<()> {
    let ts = TestServer::start().await?;
    let mut c = ts.control().await?;
    let unknown_shuffle = |e: &ServiceError| {
        matches!(e, ServiceError::UnknownShuffle { app, shuffle }
            if app.as_str() == "ghost" && *shuffle == ShuffleId(4))
    };
    let shuffle_ref = || ShuffleRef {
        app_id: "ghost".into(),
        shuffle_id: 4,
    };
    let r = c.shuffle_status(shuffle_ref()).await;
    refused("ShuffleStatus", r, Code::NotFound, unknown_shuffle)?;
    let r = c.commit_map(commit_request("ghost", 4, 0, &[(0, 1)])).await;
    refused("CommitMap", r, Code::NotFound, unknown_shuffle)?;
    let r = c.unregister_shuffle(shuffle_ref()).await;
    refused("UnregisterShuffle", r, Code::NotFound, unknown_shuffle)?;
    let r = c
        .heartbeat(AppRequest {
            app_id: "ghost".into(),
        })
        .await;
    refused(
        "Heartbeat",
        r,
        Code::NotFound,
        |e| matches!(e, ServiceError::UnknownApp { app } if app.as_str() == "ghost"),
    )?;

    // Over TCP: a push to and a fetch from an unregistered shuffle fail as
    // requests; the connection goes on.
    let mut conn = ts.data().await?;
    let pushed = conn.push(1, "ghost", 4, vec![block(4, 0, 0, 0, 10)?]).await?;
    ensure!(
        pushed.as_ref().is_err_and(|e| unknown_shuffle(&e.error)),
        "{pushed:?}"
    );
    let fetched = conn.fetch(2, "ghost", 4, 0, 1).await?;
    ensure!(
        fetched.as_ref().is_err_and(|e| unknown_shuffle(&e.error)),
        "{fetched:?}"
    );
    let stray = ts.entries_outside_data_dirs()?;
    ensure!(stray.is_empty(), "written outside the data dirs: {stray:?}");
    round_trip(&ts.server, "app", 1).await
}

#[tokio::test]
async fn bad_shapes_and_manifests_are_invalid_argument() -> Result<()> {
    let ts = TestServer::start().await?;
    let mut c = ts.control().await?;
    let shape = |num_maps, num_partitions, mode| RegisterShuffleRequest {
        app_id: "app".into(),
        shuffle_id: 1,
        num_maps,
        num_partitions,
        mode,
        ..Default::default()
    };
    for (what, req) in [
        ("num_maps 0", shape(0, 2, 0)),
        ("num_partitions 0", shape(1, 0, 0)),
        ("num_maps over 2^20", shape((1 << 20) + 1, 2, 0)),
        ("mode 4", shape(1, 2, 4)),
        ("mode 256", shape(1, 2, 256)),
        ("mode u32::MAX", shape(1, 2, u32::MAX)),
    ] {
        let r = c.register_shuffle(req).await;
        refused(what, r, Code::InvalidArgument, malformed)?;
    }
    let r = shuffle_status(&mut c, "app", 1).await?;
    ensure!(is_not_found(&r), "a refused shape was registered: {r:?}");

    register_shuffle(&mut c, "app", 1, 2, 3).await?;
    let mut conn = ts.data().await?;
    conn.push_ok(1, "app", 1, vec![block(1, 0, 0, 0, 10)?, block(1, 0, 2, 0, 10)?])
        .await?;
    let manifest = |blocks: &[(u32, u32)]| CommitMapRequest {
        blocks: blocks
            .iter()
            .map(|&(partition, blocks)| BlockCount { partition, blocks })
            .collect(),
        ..commit_request("app", 1, 0, &[])
    };
    for (what, req) in [
        ("partition 3 of 3", manifest(&[(0, 1), (3, 1)])),
        ("partition u32::MAX", manifest(&[(u32::MAX, 1)])),
        ("unsorted", manifest(&[(2, 1), (0, 1)])),
        ("duplicate partition", manifest(&[(0, 1), (0, 1)])),
        ("zero count", manifest(&[(0, 1), (1, 0), (2, 1)])),
    ] {
        let r = c.commit_map(req).await;
        refused(what, r, Code::InvalidArgument, malformed)?;
    }
    let r = c.commit_map(commit_request("app", 1, 2, &[(0, 1)])).await;
    refused(
        "map 2 of 2",
        r,
        Code::InvalidArgument,
        |e| matches!(e, ServiceError::MapOutOfRange { map, num_maps: 2 } if *map == MapId(2)),
    )?;
    // None of it counted: the right manifest still commits.
    let reply = commit(&mut c, "app", 1, 0, &[(0, 1), (2, 1)]).await?;
    ensure!(!reply.sealed && !reply.already_committed, "{reply:?}");
    Ok(())
}

#[tokio::test]
async fn reads_out_of_range_or_before_the_seal_fail_as_requests() -> Result<()> {
    let ts = TestServer::start().await?;
    let mut c = ts.control().await?;
    register_shuffle(&mut c, "app", 1, 2, 2).await?;
    let mut conn = ts.data().await?;
    let blocks = vec![block(1, 0, 1, 0, 100)?, block(1, 0, 1, 1, 100)?];
    conn.push_ok(1, "app", 1, blocks.clone()).await?;

    let out_of_range = |e: &protocol::frame::ErrorFrame| {
        e.request_id == 2
            && matches!(e.error, ServiceError::PartitionOutOfRange { partition, num_partitions: 2 }
                if partition == PartitionId(2))
    };
    let r = conn.fetch(2, "app", 1, 2, 2).await?;
    ensure!(r.as_ref().is_err_and(out_of_range), "{r:?}");

    commit(&mut c, "app", 1, 0, &[(1, 2)]).await?;
    let r = conn.fetch(3, "app", 1, 1, 2).await?;
    let not_ready = |e: &protocol::frame::ErrorFrame| {
        e.request_id == 3
            && matches!(e.error, ServiceError::NotReady { shuffle, committed: 1, num_maps: 2 }
                if shuffle == ShuffleId(1))
    };
    ensure!(r.as_ref().is_err_and(not_ready), "{r:?}");

    // A push to an out-of-range partition stores nothing of its batch.
    let r = conn
        .push(4, "app", 1, vec![block(1, 1, 0, 0, 10)?, block(1, 1, 5, 0, 10)?])
        .await?;
    ensure!(
        r.as_ref()
            .is_err_and(|e| matches!(e.error, ServiceError::PartitionOutOfRange { .. })),
        "{r:?}"
    );
    let r = c.commit_map(commit_request("app", 1, 1, &[(0, 1)])).await;
    refused("commit of a refused batch", r, Code::FailedPrecondition, |e| {
        matches!(e, ServiceError::MissingBlocks { .. })
    })?;

    // The same connection still works, and after the seal the read does.
    conn.push_ok(5, "app", 1, vec![block(1, 1, 0, 0, 10)?]).await?;
    let reply = commit(&mut c, "app", 1, 1, &[(0, 1)]).await?;
    ensure!(reply.sealed, "{reply:?}");
    let r = conn.fetch(6, "app", 1, 1, 2).await?;
    ensure!(r.as_ref().is_ok_and(|b| *b == blocks), "{r:?}");
    let r = conn.fetch(7, "app", 1, 2, 2).await?;
    ensure!(
        r.as_ref()
            .is_err_and(|e| matches!(e.error, ServiceError::PartitionOutOfRange { .. })),
        "{r:?}"
    );
    Ok(())
}

#[tokio::test]
async fn server_status_names_the_version_and_data_dirs() -> Result<()> {
    let ts = TestServer::start().await?;
    let mut c = ts.control().await?;
    register_shuffle(&mut c, "app", 1, 1, 4).await?;
    let s = c.server_status(Empty {}).await?.into_inner();
    ensure!(s.version == env!("CARGO_PKG_VERSION"), "version {:?}", s.version);
    ensure!(!s.draining, "{s:?}");
    ensure!(s.active_apps == 1 && s.active_shuffles == 1, "{s:?}");
    ensure!(s.buffer_limit_bytes == 1 << 30, "{s:?}");
    let mut want = Vec::new();
    for d in &ts.dirs {
        want.push(d.canonicalize()?.display().to_string());
    }
    let got: Vec<String> = s.disks.iter().map(|d| d.path.clone()).collect();
    ensure!(got == want, "disks {got:?}, expected {want:?}");
    ensure!(s.disks.iter().all(|d| d.writable && d.free_bytes > 0), "{s:?}");
    Ok(())
}
