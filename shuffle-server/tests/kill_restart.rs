//! The daemon killed with SIGKILL in the middle of a push: the client gets a
//! typed, retryable error; after a restart on the same data directories the
//! sealed shuffle reads back whole and the unsealed one is gone.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use protocol::{AppId, AttemptId, MapId, PartitionId, ShuffleId, ShuffleMode, ShuffleSpec};
use shuffle_client::{
    ClientError, RemoteOptions, RemoteShuffle, ShuffleClient, ShuffleHandle, ShuffleReader, ShuffleWriter,
    WriterOptions,
};

struct Daemon {
    child: Child,
    tcp: SocketAddr,
    ports: [String; 4],
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the daemon and reads its bound addresses from its log.
fn start(data: &Path, ports: Option<&[String; 4]>) -> Result<Daemon> {
    let any = "127.0.0.1:0".to_string();
    let [tcp, quic, grpc, http] = ports
        .cloned()
        .unwrap_or([any.clone(), any.clone(), any.clone(), any]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_shuffle-server"))
        .arg("--data-dir")
        .arg(data)
        .args([
            "--listen",
            &tcp,
            "--quic-listen",
            &quic,
            "--grpc-listen",
            &grpc,
            "--http-listen",
            &http,
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning shuffle-server")?;
    let stderr = child.stderr.take().context("stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let field = |line: &str, key: &str| -> Option<String> {
        let start = line.find(&format!("{key}="))? + key.len() + 1;
        Some(line[start..].split_whitespace().next()?.to_string())
    };
    loop {
        let Some(line) = lines.next() else {
            bail!("shuffle-server exited before listening");
        };
        let line = line?;
        if line.contains("shuffle server listening") {
            let get = |k| field(&line, k).with_context(|| format!("no {k} in {line}"));
            let ports = [get("tcp")?, get("quic")?, get("grpc")?, get("http")?];
            // Keep draining the log so the daemon never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines {});
            return Ok(Daemon {
                child,
                tcp: ports[0].parse()?,
                ports,
            });
        }
    }
}

fn options() -> RemoteOptions {
    RemoteOptions {
        max_retries: 2,
        retry_backoff: Duration::from_millis(20),
        connect_timeout: Duration::from_secs(2),
        ..RemoteOptions::default()
    }
}

async fn read_all(
    client: &RemoteShuffle,
    handle: &ShuffleHandle,
    partitions: u32,
) -> Result<Vec<Vec<Vec<u8>>>> {
    let mut out = Vec::new();
    for p in 0..partitions {
        let mut reader = client
            .open_reader(handle, PartitionId(p), handle.all_maps())
            .await?;
        let mut records = Vec::new();
        while let Some(batch) = reader.next_batch().await? {
            for r in batch {
                records.push(r?.to_vec());
            }
        }
        out.push(records);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_data_survives_kill_9_and_unsealed_data_is_discarded() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data");
    let daemon = start(&data, None)?;
    let url = format!("tcp://{}", daemon.tcp);
    let client = RemoteShuffle::connect_str(&url, options()).await?;
    let app = AppId::new("kill-test")?;

    // A sealed shuffle.
    let spec = ShuffleSpec::new(1, 4, ShuffleMode::Blocking)?;
    let sealed = client.register_shuffle(&app, ShuffleId(1), spec).await?;
    let mut w = client
        .open_writer(&sealed, MapId(0), AttemptId(0), WriterOptions::default())
        .await?;
    for i in 0..20_000u32 {
        w.write(PartitionId(i % 4), format!("record-{i}").as_bytes())
            .await?;
    }
    w.commit().await?;
    let before = read_all(&client, &sealed, 4).await?;
    assert_eq!(before.iter().map(Vec::len).sum::<usize>(), 20_000);

    // An unsealed shuffle, pushed to when the server dies.
    let open = client.register_shuffle(&app, ShuffleId(2), spec).await?;
    let small_blocks = WriterOptions {
        block_size: 16 << 10,
        ..WriterOptions::default()
    };
    let mut w = client
        .open_writer(&open, MapId(0), AttemptId(0), small_blocks)
        .await?;
    let ports = daemon.ports.clone();
    let mut killed = Some(daemon);
    let mut failure = None;
    for i in 0..2_000_000u32 {
        if i == 50_000 {
            // SIGKILL: no drain, no flush.
            drop(killed.take());
        }
        if let Err(e) = w.write(PartitionId(i % 4), &[7u8; 100]).await {
            failure = Some(e);
            break;
        }
    }
    let failure = match failure {
        Some(e) => e,
        None => match w.commit().await {
            Err(e) => e,
            Ok(_) => bail!("writing to a killed server succeeded"),
        },
    };
    assert!(
        matches!(failure, ClientError::Connection { .. }) && failure.is_retryable(),
        "expected a retryable connection error, got {failure:?}"
    );

    // Restart on the same data directory and the same addresses.
    let restarted = start(&data, Some(&ports))?;
    assert_eq!(restarted.tcp.to_string(), ports[0]);
    let client = RemoteShuffle::connect_str(&url, options()).await?;
    let after = read_all(&client, &sealed, 4).await?;
    assert_eq!(
        after, before,
        "sealed data must read back unchanged after kill -9"
    );
    match client.shuffle_status(&open).await {
        Err(ClientError::UnknownShuffle {
            shuffle: ShuffleId(2),
            ..
        }) => {}
        other => bail!("unsealed shuffle must be gone after restart, got {other:?}"),
    }
    // Nothing of the unsealed shuffle is left on disk.
    let leftovers: Vec<_> = std::fs::read_dir(data.join("kill-test"))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(leftovers, vec!["shuffle-1".to_string()]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_zero() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data");
    let mut daemon = start(&data, None)?;
    let url = format!("tcp://{}", daemon.tcp);
    let client = RemoteShuffle::connect_str(&url, options()).await?;
    let app = AppId::new("term-test")?;
    let spec = ShuffleSpec::new(1, 2, ShuffleMode::Blocking)?;
    let handle = client.register_shuffle(&app, ShuffleId(1), spec).await?;
    let mut w = client
        .open_writer(&handle, MapId(0), AttemptId(0), WriterOptions::default())
        .await?;
    for i in 0..1000u32 {
        w.write(PartitionId(i % 2), b"payload").await?;
    }
    w.commit().await?;
    let pid = daemon.child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status()?;
    assert!(status.success(), "kill -TERM failed");
    let exited = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(code) = daemon.child.try_wait()? {
                return Ok::<_, std::io::Error>(Some(code));
            }
            if std::time::Instant::now() > deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await??;
    let code = exited.context("the daemon did not exit within 20 s of SIGTERM")?;
    assert!(code.success(), "exit status after SIGTERM: {code:?}");
    assert!(data
        .join("term-test")
        .join("shuffle-1")
        .join("shuffle.meta")
        .exists());
    Ok(())
}
