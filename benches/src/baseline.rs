//! This machine's limits, measured in the same run as the shuffle so that
//! results are stated as fractions of them.

use std::io::{Read, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bytes per second of each baseline.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Baselines {
    /// Sequential write of a file of the shuffle's size, then fdatasync.
    pub disk_write_bytes_per_sec: f64,
    /// Sequential read of that file after its pages were dropped from the
    /// page cache (posix_fadvise DONTNEED), i.e. from the disk.
    pub disk_read_bytes_per_sec: f64,
    /// One memory-to-memory copy.
    pub memcpy_bytes_per_sec: f64,
    /// A plain tokio TCP socket pair on loopback pushing the same bytes.
    pub loopback_tcp_bytes_per_sec: f64,
}

const CHUNK: usize = 4 << 20;

/// Measures every baseline with `bytes` of data, using a scratch file in
/// `dir`.
pub async fn measure(bytes: u64, dir: &Path) -> Result<Baselines> {
    let path = dir.join("baseline.bin");
    let (write, read) = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || disk(&path, bytes)).await??
    };
    let _ = std::fs::remove_file(&path);
    let memcpy = tokio::task::spawn_blocking(move || memcpy(bytes)).await?;
    let tcp = loopback_tcp(bytes).await?;
    Ok(Baselines {
        disk_write_bytes_per_sec: write,
        disk_read_bytes_per_sec: read,
        memcpy_bytes_per_sec: memcpy,
        loopback_tcp_bytes_per_sec: tcp,
    })
}

fn pattern() -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..CHUNK)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn disk(path: &Path, bytes: u64) -> Result<(f64, f64)> {
    let chunk = pattern();
    let started = Instant::now();
    let mut file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        file.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    file.sync_data()?;
    let write = bytes as f64 / started.elapsed().as_secs_f64();
    drop_cache(&file);
    drop(file);
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; CHUNK];
    let started = Instant::now();
    let mut read = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        read += n as u64;
    }
    let read_rate = read as f64 / started.elapsed().as_secs_f64();
    Ok((write, read_rate))
}

#[cfg(unix)]
fn drop_cache(file: &std::fs::File) {
    use std::os::unix::io::AsRawFd;
    // SAFETY: a valid open descriptor; the call only advises the kernel.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
    }
}

#[cfg(not(unix))]
fn drop_cache(_file: &std::fs::File) {}

fn memcpy(bytes: u64) -> f64 {
    let size = (bytes as usize).clamp(CHUNK, 256 << 20);
    let src = vec![1u8; size];
    let mut dst = vec![0u8; size];
    dst.copy_from_slice(&src); // fault the pages in first
    let rounds = (bytes as usize).div_ceil(size).max(4);
    let started = Instant::now();
    for i in 0..rounds {
        dst.copy_from_slice(&src);
        std::hint::black_box(&dst[i % size]);
    }
    (size * rounds) as f64 / started.elapsed().as_secs_f64()
}

async fn loopback_tcp(bytes: u64) -> Result<f64> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let receiver = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await?;
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0u64;
        loop {
            let n = sock.read(&mut buf).await?;
            if n == 0 {
                return Ok::<u64, std::io::Error>(got);
            }
            got += n as u64;
        }
    });
    let chunk = vec![7u8; 1 << 20];
    let started = Instant::now();
    let mut sock = tokio::net::TcpStream::connect(addr).await?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        sock.write_all(&chunk[..n]).await?;
        left -= n as u64;
    }
    sock.shutdown().await?;
    let got = receiver.await??;
    Ok(got as f64 / started.elapsed().as_secs_f64())
}
