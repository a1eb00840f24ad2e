//! The shuffle workload: records generated in memory before the clock
//! starts, then a map phase (M tasks pushing) and a reduce phase (every
//! partition read back), through any `ShuffleClient`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use protocol::{AppId, AttemptId, Block, MapId, PartitionId, ShuffleId, ShuffleMode, ShuffleSpec};
use shuffle_client::{Batcher, ShuffleClient, ShuffleReader, WriterOptions};
use tokio::task::JoinSet;

use crate::stats::Samples;

/// What to shuffle and how.
#[derive(Clone, Copy, Debug)]
pub struct WorkloadSpec {
    pub size: u64,
    pub maps: u32,
    pub partitions: u32,
    pub record_size: usize,
    pub compress: bool,
    pub mode: ShuffleMode,
    /// Raw bytes per block.
    pub block_size: usize,
    /// Bytes of blocks per push request.
    pub push_batch: usize,
    /// Push requests in flight per map task.
    pub in_flight: usize,
    /// Map tasks, and reduce tasks, running at once.
    pub parallelism: usize,
}

/// One map task's records: `data` holds them back to back, `partitions`
/// says where each goes.
#[derive(Debug)]
pub struct MapInput {
    pub data: Vec<u8>,
    pub partitions: Vec<u32>,
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Generates every map's records (a 10-byte random key, then a row id and
/// TeraGen-like filler), on all cores. Not timed.
pub fn generate(spec: &WorkloadSpec) -> Vec<MapInput> {
    let records = spec.size / spec.record_size as u64;
    let maps = u64::from(spec.maps);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    let make = |m: u64| {
        let rows = (records * m / maps)..(records * (m + 1) / maps);
        let mut data = Vec::with_capacity(rows.clone().count() * spec.record_size);
        let mut partitions = Vec::with_capacity(rows.clone().count());
        for row in rows {
            let k = splitmix64(row);
            let start = data.len();
            data.extend_from_slice(&k.to_be_bytes());
            data.extend_from_slice(&splitmix64(k).to_be_bytes()[..2]);
            data.extend((10..spec.record_size).map(|i| b'A' + ((row as usize + i) % 26) as u8));
            debug_assert_eq!(data.len() - start, spec.record_size);
            partitions.push((k % u64::from(spec.partitions)) as u32);
        }
        MapInput { data, partitions }
    };
    let per_thread = (maps as usize).div_ceil(threads as usize).max(1);
    let mut out: Vec<Option<MapInput>> = (0..maps).map(|_| None).collect();
    std::thread::scope(|s| {
        for (i, slots) in out.chunks_mut(per_thread).enumerate() {
            let make = &make;
            s.spawn(move || {
                for (j, slot) in slots.iter_mut().enumerate() {
                    *slot = Some(make((i * per_thread + j) as u64));
                }
            });
        }
    });
    out.into_iter().flatten().collect()
}

/// What the phases measured.
#[derive(Debug, Default)]
pub struct PhaseResults {
    pub map_seconds: f64,
    pub reduce_seconds: f64,
    pub records_written: u64,
    pub records_read: u64,
    /// Raw record bytes pushed (before compression).
    pub raw_bytes: u64,
    /// Block bytes pushed (after compression, headers included).
    pub pushed_bytes: u64,
    pub fetched_bytes: u64,
    pub stored_bytes: u64,
    pub push_latency: Samples,
    pub fetch_latency: Samples,
}

/// Runs both phases against `client`; `after_map` runs between them.
pub async fn run<C: ShuffleClient + Clone>(
    client: Arc<C>,
    spec: WorkloadSpec,
    inputs: Arc<Vec<MapInput>>,
    after_map: impl FnOnce(),
) -> Result<PhaseResults> {
    let app = AppId::new(format!("bench-{}", std::process::id()))?;
    let shuffle_spec = ShuffleSpec::new(spec.maps, spec.partitions, spec.mode)?;
    let handle = Arc::new(client.register_shuffle(&app, ShuffleId(1), shuffle_spec).await?);
    let mut results = PhaseResults::default();

    let started = Instant::now();
    let mut maps = JoinSet::new();
    let mut next = 0u32;
    loop {
        while next < spec.maps && maps.len() < spec.parallelism.max(1) {
            let (client, handle, inputs) = (client.clone(), handle.clone(), inputs.clone());
            let map = next;
            maps.spawn(async move { map_task(&*client, &handle, spec, &inputs[map as usize], map).await });
            next += 1;
        }
        let Some(done) = maps.join_next().await else { break };
        let (samples, raw, pushed, records) = done??;
        results.push_latency.extend(samples);
        results.raw_bytes += raw;
        results.pushed_bytes += pushed;
        results.records_written += records;
    }
    results.map_seconds = started.elapsed().as_secs_f64();
    after_map();

    let started = Instant::now();
    let mut reduces = JoinSet::new();
    let mut next = 0u32;
    loop {
        while next < spec.partitions && reduces.len() < spec.parallelism.max(1) * 2 {
            let (client, handle) = (client.clone(), handle.clone());
            let p = next;
            reduces.spawn(async move { reduce_task(&*client, &handle, p).await });
            next += 1;
        }
        let Some(done) = reduces.join_next().await else {
            break;
        };
        let (samples, records, bytes) = done??;
        results.fetch_latency.extend(samples);
        results.records_read += records;
        results.fetched_bytes += bytes;
    }
    results.reduce_seconds = started.elapsed().as_secs_f64();
    results.stored_bytes = client.shuffle_status(&handle).await?.stored_bytes;
    client.unregister_app(&app).await?;
    ensure!(
        results.records_read == results.records_written,
        "read {} records, wrote {}",
        results.records_read,
        results.records_written
    );
    Ok(results)
}

async fn map_task<C: ShuffleClient + Clone>(
    client: &C,
    handle: &shuffle_client::ShuffleHandle,
    spec: WorkloadSpec,
    input: &MapInput,
    map: u32,
) -> Result<(Samples, u64, u64, u64)> {
    let options = WriterOptions {
        block_size: spec.block_size,
        compress: spec.compress,
        ..WriterOptions::default()
    };
    let mut batcher = Batcher::new(
        handle.shuffle(),
        MapId(map),
        AttemptId(0),
        spec.partitions,
        options,
    );
    let mut ready: Vec<Block> = Vec::new();
    let mut batch: Vec<Block> = Vec::new();
    let mut batch_bytes = 0usize;
    let mut in_flight: JoinSet<Result<Duration>> = JoinSet::new();
    let mut samples = Samples::default();
    let records = input.partitions.len() as u64;
    for (i, p) in input.partitions.iter().enumerate() {
        let rec = &input.data[i * spec.record_size..(i + 1) * spec.record_size];
        batcher.write(PartitionId(*p), rec, &mut ready)?;
        for block in ready.drain(..) {
            batch_bytes += block.encoded_len();
            batch.push(block);
        }
        if batch_bytes >= spec.push_batch {
            send(
                client,
                handle,
                std::mem::take(&mut batch),
                &mut in_flight,
                &mut samples,
                spec.in_flight,
            )
            .await?;
            batch_bytes = 0;
        }
    }
    batcher.finish(&mut ready)?;
    batch.append(&mut ready);
    if !batch.is_empty() {
        send(
            client,
            handle,
            batch,
            &mut in_flight,
            &mut samples,
            spec.in_flight,
        )
        .await?;
    }
    while let Some(done) = in_flight.join_next().await {
        samples.push(done??);
    }
    client
        .commit_map(handle, MapId(map), AttemptId(0), batcher.manifest())
        .await
        .context("commit")?;
    let stats = batcher.stats();
    Ok((samples, stats.raw_bytes, stats.pushed_bytes, records))
}

/// Starts a timed push in the background, after waiting for a free slot.
async fn send<C: ShuffleClient + Clone>(
    client: &C,
    handle: &shuffle_client::ShuffleHandle,
    blocks: Vec<Block>,
    in_flight: &mut JoinSet<Result<Duration>>,
    samples: &mut Samples,
    limit: usize,
) -> Result<()> {
    while in_flight.len() >= limit.max(1) {
        if let Some(done) = in_flight.join_next().await {
            samples.push(done??);
        }
    }
    let (client, handle) = (client.clone(), handle.clone());
    in_flight.spawn(async move {
        let started = Instant::now();
        client.push_blocks(&handle, blocks).await?;
        Ok(started.elapsed())
    });
    Ok(())
}

async fn reduce_task<C: ShuffleClient>(
    client: &C,
    handle: &shuffle_client::ShuffleHandle,
    partition: u32,
) -> Result<(Samples, u64, u64)> {
    let mut samples = Samples::default();
    let mut reader = client
        .open_reader(handle, PartitionId(partition), handle.all_maps())
        .await?;
    let mut records = 0u64;
    loop {
        let started = Instant::now();
        let Some(batch) = reader.next_batch().await? else {
            break;
        };
        samples.push(started.elapsed());
        batch.for_each_record(|r| {
            std::hint::black_box(r);
            records += 1;
            Ok::<(), shuffle_client::ClientError>(())
        })?;
    }
    Ok((samples, records, reader.stats().fetched_bytes))
}
