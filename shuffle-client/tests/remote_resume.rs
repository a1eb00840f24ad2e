//! A fetch whose connection breaks mid-stream resumes from the next block:
//! the reader sees every record exactly once. A loopback proxy between the
//! client and a real server cuts the first fetch connection after a few
//! hundred KiB.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use protocol::{AppId, AttemptId, MapId, PartitionId, ShuffleId, ShuffleMode, ShuffleSpec};
use shuffle_client::{
    RemoteOptions, RemoteShuffle, ShuffleClient, ShuffleReader, ShuffleWriter, WriterOptions,
};
use shuffle_server::LocalServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Forwards connections to `target`; the first connection over which the
/// server sends more than `cut_after` bytes (a fetch: pushes only get small
/// acks) is closed there, once.
async fn proxy(target: SocketAddr, cut_after: usize) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let cuts = Arc::new(AtomicUsize::new(0));
    let counter = cuts.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = TcpStream::connect(target).await.expect("connect upstream");
            let counter = counter.clone();
            tokio::spawn(async move {
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut cr, &mut sw).await;
                });
                let mut sent = 0usize;
                let mut buf = vec![0u8; 16 << 10];
                while let Ok(k) = sr.read(&mut buf).await {
                    if k == 0 {
                        break;
                    }
                    if sent + k > cut_after
                        && counter
                            .compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst)
                            .is_ok()
                    {
                        break;
                    }
                    if cw.write_all(&buf[..k]).await.is_err() {
                        break;
                    }
                    sent += k;
                }
                up.abort();
            });
        }
    });
    (addr, cuts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_fetch_resumes_without_loss_or_duplicates() {
    let tmp = tempfile::tempdir().expect("tmp");
    let server = LocalServer::start(support::server_config(vec![tmp.path().join("d")]))
        .await
        .expect("server");
    let (addr, cuts) = proxy(server.addrs.tcp, 1536 << 10).await;
    let options = RemoteOptions {
        retry_backoff: std::time::Duration::from_millis(5),
        ..RemoteOptions::default()
    };
    let client = RemoteShuffle::connect_str(&format!("tcp://{addr}"), options)
        .await
        .expect("connect");
    let app = AppId::new("resume").expect("id");
    let spec = ShuffleSpec::new(1, 1, ShuffleMode::Blocking).expect("spec");
    let handle = client
        .register_shuffle(&app, ShuffleId(1), spec)
        .await
        .expect("register");
    let small_blocks = WriterOptions {
        block_size: 8 << 10,
        compress: false,
        ..WriterOptions::default()
    };
    let mut w = client
        .open_writer(&handle, MapId(0), AttemptId(0), small_blocks)
        .await
        .expect("writer");
    let records = 60_000u32;
    for i in 0..records {
        w.write(PartitionId(0), format!("{i:08}-{}", "y".repeat(50)).as_bytes())
            .await
            .expect("write");
    }
    w.commit().await.expect("commit");

    let mut reader = client
        .open_reader(&handle, PartitionId(0), handle.all_maps())
        .await
        .expect("open");
    let mut next = 0u32;
    while let Some(batch) = reader.next_batch().await.expect("resumes") {
        for r in batch {
            let r = r.expect("record");
            assert_eq!(
                &r[..8],
                format!("{next:08}").as_bytes(),
                "record {next} out of place"
            );
            next += 1;
        }
    }
    assert_eq!(next, records);
    assert_eq!(
        cuts.load(Ordering::SeqCst),
        1,
        "the proxy must have cut the fetch once"
    );
}
