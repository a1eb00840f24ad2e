//! A fetch stream carrying a block of another request (another partition,
//! another shuffle, a map outside the requested range) is `Corrupt` and
//! ends the read, without a retry.
//!
//! The data plane here is a small peer on 127.0.0.1:0 that speaks the real
//! frame codec and answers every fetch with a good block, then a stray
//! one. Its hello announces the gRPC port of a real server, so the shuffle
//! is registered for real.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use protocol::frame::{FetchBlocks, FetchRequest, Frame, FrameCodec, Hello, PROTOCOL_VERSION};
use protocol::{
    records, AppId, AttemptId, Block, BlockId, MapId, MapRange, PartitionId, ShuffleId, ShuffleMode,
    ShuffleSpec,
};
use shuffle_client::{ClientError, RemoteShuffle, ShuffleClient, ShuffleReader};
use shuffle_server::LocalServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn block(shuffle: ShuffleId, map: MapId, partition: PartitionId) -> Block {
    let mut raw = Vec::new();
    records::append(&mut raw, b"a record").expect("record");
    let id = BlockId {
        shuffle,
        map,
        attempt: AttemptId(0),
        partition,
        seq: 0,
    };
    Block::seal(id, raw, 1, false).expect("block")
}

/// What the peer sends after a good block: the stray block, given the
/// request.
type Stray = fn(&FetchRequest) -> Block;

/// Serves one connection: hellos are answered with `grpc_port`, fetches
/// with a good block at position 0, then `stray` at position 1.
async fn serve(mut conn: TcpStream, grpc_port: u16, stray: Stray, fetches: Arc<AtomicUsize>) {
    let codec = FrameCodec::default();
    let mut buf = BytesMut::new();
    loop {
        let frame = loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => break frame,
                Ok(None) => {}
                Err(_) => return,
            }
            match conn.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        };
        let replies = match frame {
            Frame::Hello(_) => vec![Frame::Hello(Hello {
                protocol_version: PROTOCOL_VERSION,
                grpc_port,
                max_frame_len: protocol::frame::DEFAULT_MAX_FRAME_LEN,
            })],
            Frame::Fetch(request) => {
                fetches.fetch_add(1, Ordering::SeqCst);
                let good = block(request.shuffle, request.maps.start(), request.partition);
                vec![
                    Frame::FetchBlocks(FetchBlocks {
                        request_id: request.request_id,
                        first_index: 0,
                        blocks: vec![good],
                    }),
                    Frame::FetchBlocks(FetchBlocks {
                        request_id: request.request_id,
                        first_index: 1,
                        blocks: vec![stray(&request)],
                    }),
                ]
            }
            _ => return,
        };
        let mut out = BytesMut::new();
        for reply in &replies {
            if codec.encode(reply, &mut out).is_err() {
                return;
            }
        }
        if conn.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// Reads a partition whose server sends `stray` second; returns the error
/// and how many fetches the peer saw.
async fn read_with_stray(stray: Stray, maps: impl Fn(u32) -> MapRange) -> (ClientError, usize) {
    let tmp = tempfile::tempdir().expect("tmp");
    let real = LocalServer::start(support::server_config(vec![tmp.path().join("d")]))
        .await
        .expect("server");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let fetches = Arc::new(AtomicUsize::new(0));
    let seen = fetches.clone();
    let grpc_port = real.addrs.grpc.port();
    let peer = tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(serve(conn, grpc_port, stray, seen.clone()));
        }
    });
    let client = RemoteShuffle::connect_str(
        &format!("tcp://{addr}"),
        support::Cluster::options(std::slice::from_ref(&real)),
    )
    .await
    .expect("connect");
    let app = AppId::new("stray").expect("app");
    let spec = ShuffleSpec::new(3, 2, ShuffleMode::Blocking).expect("spec");
    let handle = client
        .register_shuffle(&app, ShuffleId(7), spec)
        .await
        .expect("register");
    let mut reader = client
        .open_reader(&handle, PartitionId(1), maps(spec.num_maps()))
        .await
        .expect("the first block is good");
    let batch = reader.next_batch().await.expect("good block").expect("a batch");
    assert_eq!(batch.count(), 1);
    let err = reader.next_batch().await.expect_err("a stray block");
    // The read is over: the error stays, and nothing is fetched again.
    let again = reader.next_batch().await.expect_err("still over");
    assert!(matches!(again, ClientError::Corrupt { .. }), "{again:?}");
    assert!(!err.is_retryable() && err.loses_data());
    peer.abort();
    (err, fetches.load(Ordering::SeqCst))
}

fn check(err: &ClientError, fetches: usize, wrong: &str) {
    match err {
        ClientError::Corrupt { location, reason } => {
            assert!(location.starts_with("tcp://127.0.0.1:"), "{location}");
            assert!(
                reason.contains("arrived in the stream of partition-1 of shuffle-7"),
                "{reason}"
            );
            assert!(reason.contains(wrong), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(fetches, 1, "a stray block is not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_of_another_partition_is_corrupt() {
    let (err, fetches) = read_with_stray(
        |r| block(r.shuffle, r.maps.start(), PartitionId(r.partition.0 + 1)),
        MapRange::all,
    )
    .await;
    check(&err, fetches, "partition-2/seq-0");
    check(&err, fetches, "another partition");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_of_another_shuffle_is_corrupt() {
    let (err, fetches) = read_with_stray(
        |r| block(ShuffleId(r.shuffle.0 + 1), r.maps.start(), r.partition),
        MapRange::all,
    )
    .await;
    check(&err, fetches, "another shuffle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_of_a_map_outside_the_range_is_corrupt() {
    let (err, fetches) = read_with_stray(
        |r| block(r.shuffle, r.maps.end(), r.partition),
        |_| MapRange::new(MapId(0), MapId(2)).expect("range"),
    )
    .await;
    check(&err, fetches, "map-2/");
    check(&err, fetches, "outside the requested range");
}
