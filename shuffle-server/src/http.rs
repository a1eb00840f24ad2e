//! HTTP for operators: `/metrics` (Prometheus text), `/livez`, `/readyz`
//! (503 while draining or when no data directory can take new partitions;
//! a directory that is merely full or under its reserve does not fail it,
//! since a 503 takes the server out of service discovery and would hide
//! its sealed data). The `/readyz` body names each directory's state.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::state::Shared;

pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener, stop: watch::Receiver<bool>) {
    let stopped = crate::state::stopped(stop.clone());
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let shared = shared.clone();
                            async move { Ok::<_, Infallible>(respond(&shared, &req)) }
                        });
                        if let Err(e) = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await
                        {
                            tracing::debug!("http connection ended: {e}");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!("http accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = &mut stopped => break,
        }
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
}

fn respond(shared: &Shared, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match req.uri().path() {
        "/metrics" => {
            let mut r = text(StatusCode::OK, shared.metrics.render());
            if let Ok(v) = "text/plain; version=0.0.4".parse() {
                r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
            }
            r
        }
        "/livez" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            // One line per data directory either way, so an operator sees
            // which disk is full before the last one is.
            let disks: String = shared
                .store
                .disk_status()
                .iter()
                .map(|d| format!("{d}\n"))
                .collect();
            if shared.is_draining() {
                text(StatusCode::SERVICE_UNAVAILABLE, format!("draining\n{disks}"))
            } else if !shared.disks_ok.load(Ordering::Acquire) {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("no data directory can take new partitions\n{disks}"),
                )
            } else {
                text(StatusCode::OK, format!("ready\n{disks}"))
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /livez or /readyz\n",
        ),
    }
}
