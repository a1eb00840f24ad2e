//! A push or fetch on a pooled connection that the server side closed while
//! it was idle goes out again at once on a fresh connection: with every
//! retry turned off, it still succeeds. A loopback proxy between the client
//! and a real server closes every open connection on command.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use protocol::{AppId, AttemptId, MapId, PartitionId, ShuffleId, ShuffleMode, ShuffleSpec};
use shuffle_client::{
    RemoteOptions, RemoteShuffle, ShuffleClient, ShuffleReader, ShuffleWriter, WriterOptions,
};
use shuffle_server::LocalServer;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Forwards connections to a server; [`Proxy::cut`] closes them all.
struct Proxy {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    task: JoinHandle<()>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (count, list) = (accepted.clone(), conns.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let conn = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                list.lock().unwrap_or_else(PoisonError::into_inner).push(conn);
            }
        });
        Proxy {
            addr,
            accepted,
            conns,
            task,
        }
    }

    /// Closes every connection made so far, as a server closing idle
    /// connections does; returns once their sockets are closed.
    async fn cut(&self) {
        let conns = std::mem::take(&mut *self.conns.lock().unwrap_or_else(PoisonError::into_inner));
        for conn in conns {
            conn.abort();
            let _ = conn.await;
        }
        // Let the close reach the client's side of the sockets.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_pooled_connections_are_replaced_without_a_retry() {
    let tmp = tempfile::tempdir().expect("tmp");
    let server = LocalServer::start(support::server_config(vec![tmp.path().join("d")]))
        .await
        .expect("server");
    let proxy = Proxy::start(server.addrs.tcp).await;
    let no_retries = RemoteOptions {
        max_retries: 0,
        retry_window: Duration::ZERO,
        ..RemoteOptions::default()
    };
    let client = RemoteShuffle::connect_str(&format!("tcp://{}", proxy.addr), no_retries)
        .await
        .expect("connect");
    let app = AppId::new("dead-pool").expect("app");
    let spec = ShuffleSpec::new(2, 1, ShuffleMode::Blocking).expect("spec");
    let handle = client
        .register_shuffle(&app, ShuffleId(1), spec)
        .await
        .expect("register");
    let write = |map: u32| {
        let (client, handle) = (client.clone(), handle.clone());
        async move {
            let mut w = client
                .open_writer(&handle, MapId(map), AttemptId(0), WriterOptions::default())
                .await?;
            for i in 0..100u32 {
                w.write(PartitionId(0), format!("{map}-{i}").as_bytes()).await?;
            }
            w.commit().await
        }
    };
    write(0).await.expect("map 0");

    // Pushes: the pool holds connections the proxy then closes.
    proxy.cut().await;
    let before = proxy.accepted.load(Ordering::SeqCst);
    write(1)
        .await
        .expect("a push on a dead pooled connection goes out on a fresh one");
    assert!(
        proxy.accepted.load(Ordering::SeqCst) > before,
        "a fresh connection was made"
    );

    // Fetches: the same.
    proxy.cut().await;
    let before = proxy.accepted.load(Ordering::SeqCst);
    let mut reader = client
        .open_reader(&handle, PartitionId(0), handle.all_maps())
        .await
        .expect("a fetch on a dead pooled connection goes out on a fresh one");
    let mut records = 0;
    while let Some(batch) = reader.next_batch().await.expect("batch") {
        records += batch.count();
    }
    assert_eq!(records, 200);
    assert!(
        proxy.accepted.load(Ordering::SeqCst) > before,
        "a fresh connection was made"
    );
}
