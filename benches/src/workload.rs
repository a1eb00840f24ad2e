//! The shuffle workload: records generated in memory before the clock
//! starts, then a map phase (M tasks pushing) and a reduce phase (every
//! partition read back), through any `ShuffleClient`. Blocking shuffles run
//! the phases one after the other; streaming ones (pipelined, hybrid) read
//! every partition while the maps push.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use protocol::{AppId, AttemptId, Block, MapId, PartitionId, ShuffleId, ShuffleMode, ShuffleSpec};
use shuffle_client::{Batcher, ShuffleClient, ShuffleHandle, ShuffleReader, WriterOptions};
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
///
/// Blocking: the reduce phase starts after the last map committed, and
/// `map_seconds + reduce_seconds` is the wall time. Streaming modes
/// (pipelined, hybrid): every partition's reader is open before the maps
/// start and reads while they push; the clock starts with the maps, as in
/// blocking (their first push request follows after `first_push_seconds`
/// of batching), `map_seconds` ends at the last commit and `reduce_seconds`
/// is the reading that was left after it, so the sum is still the wall
/// time, maps' start to last block read.
#[derive(Debug, Default)]
pub struct PhaseResults {
    pub map_seconds: f64,
    pub reduce_seconds: f64,
    /// Reads ran while the maps pushed (streaming modes).
    pub concurrent: bool,
    /// From the start of the map phase to the first push request sent.
    pub first_push_seconds: f64,
    /// From the start of the map phase to the first block any reader got.
    pub first_block_seconds: f64,
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

impl PhaseResults {
    /// The wall time the throughput is computed over: map and reduce phases
    /// back to back (blocking), first push to last block read (streaming).
    pub fn shuffle_seconds(&self) -> f64 {
        self.map_seconds + self.reduce_seconds
    }

    fn add_map(&mut self, out: MapOutput, started: Instant) {
        self.push_latency.extend(out.samples);
        self.raw_bytes += out.raw_bytes;
        self.pushed_bytes += out.pushed_bytes;
        self.records_written += out.records;
        if let Some(first) = out.first_push {
            let at = first.saturating_duration_since(started).as_secs_f64();
            if self.first_push_seconds == 0.0 || at < self.first_push_seconds {
                self.first_push_seconds = at;
            }
        }
    }

    fn add_reduce(&mut self, out: ReduceOutput, started: Instant) {
        self.fetch_latency.extend(out.samples);
        self.records_read += out.records;
        self.fetched_bytes += out.bytes;
        if let Some(first) = out.first_block {
            let at = first.saturating_duration_since(started).as_secs_f64();
            if self.first_block_seconds == 0.0 || at < self.first_block_seconds {
                self.first_block_seconds = at;
            }
        }
    }
}

struct MapOutput {
    samples: Samples,
    raw_bytes: u64,
    pushed_bytes: u64,
    records: u64,
    first_push: Option<Instant>,
}

struct ReduceOutput {
    samples: Samples,
    records: u64,
    bytes: u64,
    first_block: Option<Instant>,
    last_block: Option<Instant>,
}

/// Runs both phases against `client`; `after_map` runs once every map
/// committed (between the phases in blocking mode, while the reads go on in
/// streaming modes).
pub async fn run<C: ShuffleClient + Clone>(
    client: Arc<C>,
    spec: WorkloadSpec,
    inputs: Arc<Vec<MapInput>>,
    after_map: impl FnOnce(),
) -> Result<PhaseResults>
where
    C::Reader: 'static,
{
    let app = AppId::new(format!("bench-{}", std::process::id()))?;
    let shuffle_spec = ShuffleSpec::new(spec.maps, spec.partitions, spec.mode)?;
    let handle = Arc::new(client.register_shuffle(&app, ShuffleId(1), shuffle_spec).await?);
    let mut results = if spec.mode == ShuffleMode::Blocking {
        run_blocking(&client, &handle, spec, &inputs, after_map).await?
    } else {
        run_streaming(&client, &handle, spec, &inputs, after_map).await?
    };
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

/// Starts map tasks until `parallelism` run or none is left.
fn spawn_maps<C: ShuffleClient + Clone>(
    maps: &mut JoinSet<Result<MapOutput>>,
    next: &mut u32,
    client: &Arc<C>,
    handle: &Arc<ShuffleHandle>,
    spec: WorkloadSpec,
    inputs: &Arc<Vec<MapInput>>,
) {
    while *next < spec.maps && maps.len() < spec.parallelism.max(1) {
        let (client, handle, inputs) = (client.clone(), handle.clone(), inputs.clone());
        let map = *next;
        maps.spawn(async move { map_task(&*client, &handle, spec, &inputs[map as usize], map).await });
        *next += 1;
    }
}

/// Push everything, then read everything.
async fn run_blocking<C: ShuffleClient + Clone>(
    client: &Arc<C>,
    handle: &Arc<ShuffleHandle>,
    spec: WorkloadSpec,
    inputs: &Arc<Vec<MapInput>>,
    after_map: impl FnOnce(),
) -> Result<PhaseResults> {
    let mut results = PhaseResults::default();
    let started = Instant::now();
    let mut maps = JoinSet::new();
    let mut next = 0u32;
    loop {
        spawn_maps(&mut maps, &mut next, client, handle, spec, inputs);
        let Some(done) = maps.join_next().await else { break };
        results.add_map(done??, started);
    }
    results.map_seconds = started.elapsed().as_secs_f64();
    after_map();

    let reduce_started = Instant::now();
    let mut reduces = JoinSet::new();
    let mut next = 0u32;
    loop {
        while next < spec.partitions && reduces.len() < spec.parallelism.max(1) * 2 {
            let (client, handle) = (client.clone(), handle.clone());
            let p = next;
            reduces.spawn(async move {
                let reader = client
                    .open_reader(&handle, PartitionId(p), handle.all_maps())
                    .await?;
                read_all(reader).await
            });
            next += 1;
        }
        let Some(done) = reduces.join_next().await else {
            break;
        };
        results.add_reduce(done??, started);
    }
    results.reduce_seconds = reduce_started.elapsed().as_secs_f64();
    Ok(results)
}

/// Every partition's reader opened first, then the maps start and all
/// partitions are read while they push. Pipelined producers wait for memory
/// credit that only readers free, so every partition is read at once (not
/// `parallelism` at a time), and the first failure on either side ends the
/// run rather than leaving the other side waiting.
async fn run_streaming<C: ShuffleClient + Clone>(
    client: &Arc<C>,
    handle: &Arc<ShuffleHandle>,
    spec: WorkloadSpec,
    inputs: &Arc<Vec<MapInput>>,
    after_map: impl FnOnce(),
) -> Result<PhaseResults>
where
    C::Reader: 'static,
{
    let mut opening = JoinSet::new();
    for p in 0..spec.partitions {
        let (client, handle) = (client.clone(), handle.clone());
        opening.spawn(async move {
            client
                .open_reader(&handle, PartitionId(p), handle.all_maps())
                .await
                .with_context(|| format!("opening the reader of partition {p}"))
        });
    }
    let mut readers = Vec::with_capacity(spec.partitions as usize);
    while let Some(opened) = opening.join_next().await {
        readers.push(opened??);
    }

    let mut results = PhaseResults {
        concurrent: true,
        ..PhaseResults::default()
    };
    let mut after_map = Some(after_map);
    let started = Instant::now();
    let mut reduces = JoinSet::new();
    for reader in readers {
        reduces.spawn(read_all(reader));
    }
    let mut maps = JoinSet::new();
    let mut next = 0u32;
    spawn_maps(&mut maps, &mut next, client, handle, spec, inputs);
    let mut last_block = started;
    loop {
        tokio::select! {
            Some(done) = maps.join_next(), if !maps.is_empty() => {
                results.add_map(done??, started);
                spawn_maps(&mut maps, &mut next, client, handle, spec, inputs);
                if maps.is_empty() {
                    results.map_seconds = started.elapsed().as_secs_f64();
                    if let Some(f) = after_map.take() {
                        f();
                    }
                }
            }
            Some(done) = reduces.join_next(), if !reduces.is_empty() => {
                let out = done??;
                last_block = last_block.max(out.last_block.unwrap_or(started));
                results.add_reduce(out, started);
            }
            else => break,
        }
    }
    let wall = last_block.saturating_duration_since(started).as_secs_f64();
    results.reduce_seconds = (wall - results.map_seconds).max(0.0);
    Ok(results)
}

async fn map_task<C: ShuffleClient + Clone>(
    client: &C,
    handle: &shuffle_client::ShuffleHandle,
    spec: WorkloadSpec,
    input: &MapInput,
    map: u32,
) -> Result<MapOutput> {
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
    let mut first_push = None;
    for (i, p) in input.partitions.iter().enumerate() {
        let rec = &input.data[i * spec.record_size..(i + 1) * spec.record_size];
        batcher.write(PartitionId(*p), rec, &mut ready)?;
        for block in ready.drain(..) {
            batch_bytes += block.encoded_len();
            batch.push(block);
        }
        if batch_bytes >= spec.push_batch {
            first_push.get_or_insert_with(Instant::now);
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
        first_push.get_or_insert_with(Instant::now);
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
    Ok(MapOutput {
        samples,
        raw_bytes: stats.raw_bytes,
        pushed_bytes: stats.pushed_bytes,
        records,
        first_push,
    })
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

/// Reads one partition to its end, timing each block.
async fn read_all<R: ShuffleReader>(mut reader: R) -> Result<ReduceOutput> {
    let mut samples = Samples::default();
    let mut records = 0u64;
    let (mut first_block, mut last_block) = (None, None);
    loop {
        let started = Instant::now();
        let Some(batch) = reader.next_batch().await? else {
            break;
        };
        let now = Instant::now();
        samples.push(now - started);
        first_block.get_or_insert(now);
        last_block = Some(now);
        batch.for_each_record(|r| {
            std::hint::black_box(r);
            records += 1;
            Ok::<(), shuffle_client::ClientError>(())
        })?;
    }
    Ok(ReduceOutput {
        samples,
        records,
        bytes: reader.stats().fetched_bytes,
        first_block,
        last_block,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use shuffle_client::embedded::EmbeddedOptions;
    use shuffle_client::EmbeddedShuffle;

    fn spec(mode: ShuffleMode) -> WorkloadSpec {
        WorkloadSpec {
            size: 8 << 20,
            maps: 4,
            partitions: 8,
            record_size: 100,
            compress: false,
            mode,
            block_size: 64 << 10,
            push_batch: 256 << 10,
            in_flight: 2,
            parallelism: 2,
        }
    }

    /// Every mode reads back every record; streaming modes read while the
    /// maps push, and pipelined ones get through a budget far below the
    /// data (the readers free the credit the producers wait for).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_mode_completes_within_a_small_budget() {
        for mode in ShuffleMode::ALL {
            let dir = tempfile::tempdir().expect("temp dir");
            let mut options = EmbeddedOptions::new(vec![dir.path().to_path_buf()]);
            options.memory_budget = 1 << 20;
            let client = Arc::new(EmbeddedShuffle::with_options(options).expect("store"));
            let spec = spec(mode);
            let inputs = Arc::new(generate(&spec));
            let mut after_map = false;
            let results = tokio::time::timeout(
                Duration::from_secs(60),
                run(client, spec, inputs, || after_map = true),
            )
            .await
            .unwrap_or_else(|_| panic!("{mode}: timed out"))
            .unwrap_or_else(|e| panic!("{mode}: {e:#}"));
            assert!(after_map, "{mode}");
            assert_eq!(results.records_read, spec.size / 100, "{mode}");
            assert_eq!(results.concurrent, mode != ShuffleMode::Blocking, "{mode}");
            assert!(results.shuffle_seconds() > 0.0, "{mode}");
            assert!(results.first_block_seconds <= results.shuffle_seconds(), "{mode}");
            assert!(results.first_push_seconds > 0.0, "{mode}");
            assert!(
                results.first_push_seconds <= results.first_block_seconds,
                "{mode}"
            );
            if mode == ShuffleMode::Blocking {
                assert!(results.first_block_seconds >= results.map_seconds, "{mode}");
            }
        }
    }
}
