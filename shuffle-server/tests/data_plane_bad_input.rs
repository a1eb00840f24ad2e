//! Promise 4 on the TCP data plane: a malformed, oversized, truncated or
//! hostile stream gets a `Malformed` error frame and its connection closed,
//! alone; healthy clients (new and already connected) keep being served,
//! and nothing is written outside the data directories.

mod common;

use std::net::SocketAddr;

use anyhow::{ensure, Context, Result};
use bytes::BufMut;
use common::*;
use protocol::frame::{Frame, FrameCodec, Hello, PROTOCOL_VERSION};

const TAG_PUSH: u8 = 0x02;
const TAG_FETCH_END: u8 = 0x06;

/// One way of breaking the protocol.
#[derive(Clone, Debug)]
struct BadInput {
    name: &'static str,
    /// Say hello before sending `bytes`.
    hello: bool,
    bytes: Vec<u8>,
    /// Close our writing side after `bytes` (the frame stays incomplete).
    half_close: bool,
    /// Part of the reason the server gives.
    reason: &'static str,
}

fn encoded(frame: &Frame) -> Result<Vec<u8>> {
    Ok(FrameCodec::default().encode_to_bytes(frame)?.to_vec())
}

/// A push body, well formed but for its app id.
fn push_body_with_app(app: &str) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    body.put_u64_le(7);
    body.put_u16_le(app.len() as u16);
    body.put_slice(app.as_bytes());
    body.put_u32_le(1);
    body.put_u32_le(1);
    block(1, 0, 0, 0, 100)?.encode(&mut body);
    Ok(body)
}

fn bad_inputs() -> Result<Vec<BadInput>> {
    let push = encoded(&push_frame(3, "intruder", 1, vec![block(1, 0, 0, 0, 4000)?])?)?;
    let mut oversized = u32::MAX.to_le_bytes().to_vec();
    oversized.extend_from_slice(&[TAG_PUSH; 64]);
    Ok(vec![
        BadInput {
            name: "garbage instead of hello (an HTTP request)",
            hello: false,
            bytes: b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            half_close: false,
            reason: "exceeds the maximum",
        },
        BadInput {
            name: "garbage body behind a push tag",
            hello: true,
            bytes: raw_frame(TAG_PUSH, &[0xff; 40]),
            half_close: false,
            reason: "truncated",
        },
        BadInput {
            name: "length prefix u32::MAX",
            hello: true,
            bytes: oversized,
            half_close: false,
            reason: "exceeds the maximum",
        },
        BadInput {
            name: "frame cut in the middle, then end of stream",
            hello: true,
            bytes: push[..push.len() / 2].to_vec(),
            half_close: true,
            reason: "truncated",
        },
        BadInput {
            name: "unknown frame type",
            hello: true,
            bytes: raw_frame(0x42, &[1, 2, 3, 4]),
            half_close: false,
            reason: "unknown frame type 0x42",
        },
        BadInput {
            name: "a server-only frame from a client",
            hello: true,
            bytes: raw_frame(TAG_FETCH_END, &[0; 16]),
            half_close: false,
            reason: "may not send fetch end",
        },
        BadInput {
            name: "push before hello",
            hello: false,
            bytes: push,
            half_close: false,
            reason: "first frame must be hello",
        },
        BadInput {
            name: "hostile app id ../x in a push",
            hello: true,
            bytes: raw_frame(TAG_PUSH, &push_body_with_app("../x")?),
            half_close: false,
            reason: "invalid app id",
        },
        BadInput {
            name: "hostile absolute app id in a push",
            hello: true,
            bytes: raw_frame(TAG_PUSH, &push_body_with_app("/tmp/x")?),
            half_close: false,
            reason: "invalid app id",
        },
    ])
}

async fn send_bad(addr: SocketAddr, bad: &BadInput) -> Result<()> {
    let mut conn = if bad.hello {
        DataConn::connect(addr).await?
    } else {
        DataConn::open(addr).await?
    };
    let _ = conn.send_raw(&bad.bytes).await;
    if bad.half_close {
        conn.writer.finish().await?;
    }
    let e = conn.expect_rejected().await?;
    ensure!(
        e.error.to_string().contains(bad.reason),
        "reason {:?} does not mention {:?}",
        e.error.to_string(),
        bad.reason
    );
    Ok(())
}

async fn all_bad(ts: &TestServer, inputs: &[BadInput]) -> Result<()> {
    for bad in inputs {
        send_bad(ts.server.addrs.tcp, bad)
            .await
            .with_context(|| bad.name)?;
    }
    Ok(())
}

#[tokio::test]
async fn bad_streams_are_refused_and_closed_alone() -> Result<()> {
    let ts = TestServer::start().await?;
    let before = metric_or_zero(
        &ts.metrics().await?,
        r#"rss_rejected_requests_total{reason="malformed"}"#,
    );
    // A client connected before the trouble, used again after it.
    let mut control = ts.control().await?;
    register_shuffle(&mut control, "steady", 1, 1, 1).await?;
    let mut steady = ts.data().await?;
    steady
        .push_ok(1, "steady", 1, vec![block(1, 0, 0, 0, 800)?])
        .await?;

    let inputs = bad_inputs()?;
    let healthy_during = async {
        for shuffle in 1..=3 {
            round_trip(&ts.server, "healthy-during", shuffle).await?;
        }
        anyhow::Ok(())
    };
    let (bad, healthy) = tokio::join!(all_bad(&ts, &inputs), healthy_during);
    bad?;
    healthy.context("healthy client while bad connections come and go")?;

    round_trip(&ts.server, "healthy-after", 1)
        .await
        .context("healthy client after")?;
    steady
        .push_ok(2, "steady", 1, vec![block(1, 0, 0, 1, 900)?])
        .await?;
    commit(&mut control, "steady", 1, 0, &[(0, 2)]).await?;
    let read = steady.fetch(3, "steady", 1, 0, 1).await?;
    ensure!(
        read.is_ok_and(|b| b.len() == 2),
        "the steady connection still reads"
    );

    let after = metric_or_zero(
        &ts.metrics().await?,
        r#"rss_rejected_requests_total{reason="malformed"}"#,
    );
    ensure!(
        after - before == inputs.len() as f64,
        "malformed rejections went from {before} to {after}, expected +{}",
        inputs.len()
    );
    let stray = ts.entries_outside_data_dirs()?;
    ensure!(stray.is_empty(), "written outside the data dirs: {stray:?}");
    Ok(())
}

#[tokio::test]
async fn many_bad_connections_at_once_do_not_disturb_a_healthy_one() -> Result<()> {
    let ts = TestServer::start().await?;
    let inputs = bad_inputs()?;
    let mut bad = tokio::task::JoinSet::new();
    for input in inputs {
        let addr = ts.server.addrs.tcp;
        bad.spawn(async move { send_bad(addr, &input).await.with_context(|| input.name) });
    }
    let bad = async {
        while let Some(joined) = bad.join_next().await {
            joined??;
        }
        anyhow::Ok(())
    };
    let (bad, healthy) = tokio::join!(bad, round_trip(&ts.server, "healthy", 9));
    bad?;
    healthy?;
    // A client that only opens and drops connections mid-frame is harmless too.
    for _ in 0..5 {
        let mut conn = DataConn::connect(ts.server.addrs.tcp).await?;
        conn.send_raw(&raw_frame(TAG_PUSH, &[0; 10])[..8]).await?;
    }
    round_trip(&ts.server, "healthy", 10).await?;
    Ok(())
}

#[tokio::test]
async fn a_wrong_protocol_version_is_refused() -> Result<()> {
    let ts = TestServer::start().await?;
    let mut conn = DataConn::open(ts.server.addrs.tcp).await?;
    let hello = Frame::Hello(Hello {
        protocol_version: PROTOCOL_VERSION + 1,
        grpc_port: 0,
        max_frame_len: protocol::frame::DEFAULT_MAX_FRAME_LEN,
    });
    let e = conn.expect_rejected_after(&encoded(&hello)?).await?;
    ensure!(e.error.to_string().contains("protocol version"), "{e:?}");
    round_trip(&ts.server, "healthy", 1).await
}
