//! A fetch resumed from a block offset continues the same stream: the
//! blocks after the offset, with the same positions, nothing repeated.

use std::time::Duration;

use anyhow::{bail, Result};
use bytes::BytesMut;
use protocol::frame::{FetchRequest, Frame, FrameCodec, Hello, PROTOCOL_VERSION};
use protocol::{AppId, AttemptId, Block, MapId, MapRange, PartitionId, ShuffleId, ShuffleMode, ShuffleSpec};
use shuffle_client::{RemoteOptions, RemoteShuffle, ShuffleClient, ShuffleWriter, WriterOptions};
use shuffle_server::config::ServerConfig;
use shuffle_server::LocalServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    codec: FrameCodec,
}

impl Conn {
    async fn open(addr: std::net::SocketAddr) -> Result<Self> {
        let mut c = Conn {
            stream: TcpStream::connect(addr).await?,
            buf: BytesMut::new(),
            codec: FrameCodec::default(),
        };
        c.send(&Frame::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            grpc_port: 0,
            max_frame_len: protocol::frame::DEFAULT_MAX_FRAME_LEN,
        }))
        .await?;
        match c.recv().await? {
            Frame::Hello(_) => Ok(c),
            other => bail!("expected hello, got {other:?}"),
        }
    }

    async fn send(&mut self, frame: &Frame) -> Result<()> {
        self.stream.write_all(&self.codec.encode_to_bytes(frame)?).await?;
        Ok(())
    }

    async fn recv(&mut self) -> Result<Frame> {
        loop {
            if let Some(f) = self.codec.decode(&mut self.buf)? {
                return Ok(f);
            }
            let n =
                tokio::time::timeout(Duration::from_secs(10), self.stream.read_buf(&mut self.buf)).await??;
            if n == 0 {
                bail!("connection closed");
            }
        }
    }

    /// Fetches from `resume_from`; returns (position, block) pairs.
    async fn fetch(&mut self, app: &AppId, resume_from: u64) -> Result<Vec<(u64, Block)>> {
        self.send(&Frame::Fetch(FetchRequest {
            request_id: 7,
            app: app.clone(),
            shuffle: ShuffleId(1),
            partition: PartitionId(0),
            maps: MapRange::all(2),
            resume_from,
        }))
        .await?;
        let mut out = Vec::new();
        loop {
            match self.recv().await? {
                Frame::FetchBlocks(f) => {
                    assert_eq!(f.request_id, 7);
                    let first = f.first_index;
                    out.extend(
                        f.blocks
                            .into_iter()
                            .enumerate()
                            .map(|(i, b)| (first + i as u64, b)),
                    );
                }
                Frame::FetchEnd(end) => {
                    assert_eq!(end.total_blocks, resume_from + out.len() as u64);
                    return Ok(out);
                }
                other => bail!("unexpected {other:?}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_fetch_continues_exactly_where_it_stopped() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut config = ServerConfig::new(vec![tmp.path().join("d")]);
    config.fsync_on_seal = false;
    config.create_data_dirs = true;
    let server = LocalServer::start(config).await?;
    let client = RemoteShuffle::connect_str(&server.tcp_url(), RemoteOptions::default()).await?;
    let app = AppId::new("resume")?;
    let handle = client
        .register_shuffle(&app, ShuffleId(1), ShuffleSpec::new(2, 1, ShuffleMode::Blocking)?)
        .await?;
    let tiny_blocks = WriterOptions {
        block_size: 100,
        ..WriterOptions::default()
    };
    for map in 0..2 {
        let mut w = client
            .open_writer(&handle, MapId(map), AttemptId(0), tiny_blocks)
            .await?;
        for i in 0..200u32 {
            w.write(
                PartitionId(0),
                format!("m{map}-{i:04}-{}", "x".repeat(40)).as_bytes(),
            )
            .await?;
        }
        w.commit().await?;
    }
    let mut conn = Conn::open(server.addrs.tcp).await?;
    let full = conn.fetch(&app, 0).await?;
    assert!(full.len() > 100, "{} blocks", full.len());
    for cut in [1, 37, full.len() as u64 - 1, full.len() as u64] {
        let tail = conn.fetch(&app, cut).await?;
        assert_eq!(tail.len() as u64, full.len() as u64 - cut);
        for ((pos, block), (full_pos, full_block)) in tail.iter().zip(&full[cut as usize..]) {
            assert_eq!(pos, full_pos);
            assert_eq!(block, full_block);
        }
    }
    // Past the end is refused, and the connection stays usable.
    conn.send(&Frame::Fetch(FetchRequest {
        request_id: 8,
        app: app.clone(),
        shuffle: ShuffleId(1),
        partition: PartitionId(0),
        maps: MapRange::all(2),
        resume_from: full.len() as u64 + 1,
    }))
    .await?;
    match conn.recv().await? {
        Frame::Error(e) => assert!(
            matches!(e.error, protocol::ServiceError::Malformed { .. }),
            "{e:?}"
        ),
        other => bail!("expected an error, got {other:?}"),
    }
    assert_eq!(conn.fetch(&app, 0).await?.len(), full.len());
    Ok(())
}
