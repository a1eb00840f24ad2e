//! Runs one task of a stage ([`Job::run_task`]): its input (a source
//! cursor, or readers of its input shuffles, several read concurrently),
//! its operator chain, and its output (a shuffle writer, map-side combine
//! included, or a sink).

use std::sync::atomic::Ordering;
use std::sync::Mutex;

use shuffle_client::protocol::{MapId, PartitionId};
use shuffle_client::{ReadStats, ShuffleClient, ShuffleHandle, ShuffleReader, ShuffleWriter};

use super::job::{Job, StageInput, StageOutput, StagePlan};
use super::ops::Chain;
use super::sink::{SinkWriter, Summary};
use super::source::RecordCursor;
use super::wide::{CombineTable, JoinTable, Partitioner, SortBuffer};
use crate::plan::{StageInfo, TaskContext, TaskCounters, TaskOutput};
use crate::EngineError;

/// A combine table holding more than this is flushed to the shuffle (its
/// states are partial; reducers merge them).
const COMBINE_LIMIT: usize = 64 << 20;

/// Records leaving a task, pending their push: `(partition, end)` into
/// `data`.
#[derive(Default)]
struct OutBuf {
    data: Vec<u8>,
    recs: Vec<(u32, usize)>,
}

enum Target<'a, W> {
    Shuffle {
        writer: W,
        partitioner: &'a Partitioner,
        combine: Option<CombineTable>,
        buf: OutBuf,
        raw_bytes: u64,
    },
    Sink(SinkWriter),
}

/// What [`Out::flush`] pushes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flush {
    /// The pending records, and the combine table if it outgrew
    /// [`COMBINE_LIMIT`] (between chunks of input).
    Pending,
    /// Everything, the whole combine table included (the task's end).
    All,
}

/// The output side of a task.
struct Out<'a, W> {
    target: Target<'a, W>,
    summary: Option<Box<dyn Summary>>,
    records_out: u64,
    /// `records_out` already added to the counters.
    reported_out: u64,
    counters: &'a TaskCounters,
}

impl<W: ShuffleWriter> Out<'_, W> {
    /// One record out of the operator chain.
    fn accept(&mut self, record: &[u8]) -> Result<(), EngineError> {
        if let Some(s) = &mut self.summary {
            s.observe(record)?;
        }
        match &mut self.target {
            Target::Shuffle {
                combine: Some(table), ..
            } => table.add_value(record),
            Target::Shuffle { partitioner, buf, .. } => {
                let p = partitioner.partition(record)?;
                buf.data.extend_from_slice(record);
                buf.recs.push((p.0, buf.data.len()));
                Ok(())
            }
            Target::Sink(sink) => {
                self.records_out += 1;
                sink.write(record)
            }
        }
    }

    /// Pushes pending records (and an oversized combine table).
    async fn flush(&mut self, what: Flush) -> Result<(), EngineError> {
        if let Target::Shuffle {
            writer,
            partitioner,
            combine,
            buf,
            raw_bytes,
        } = &mut self.target
        {
            if let Some(table) = combine {
                if what == Flush::All || table.bytes() > COMBINE_LIMIT {
                    table.drain_states(|rec| {
                        let p = partitioner.partition(rec)?;
                        buf.data.extend_from_slice(rec);
                        buf.recs.push((p.0, buf.data.len()));
                        Ok(())
                    })?;
                }
            }
            let mut start = 0;
            for &(p, end) in &buf.recs {
                writer.write(PartitionId(p), &buf.data[start..end]).await?;
                start = end;
            }
            self.records_out += buf.recs.len() as u64;
            *raw_bytes += buf.data.len() as u64;
            self.counters
                .bytes_written
                .fetch_add(buf.data.len() as u64, Ordering::Relaxed);
            buf.data.clear();
            buf.recs.clear();
        }
        self.counters
            .records_out
            .fetch_add(self.records_out - self.reported_out, Ordering::Relaxed);
        self.reported_out = self.records_out;
        Ok(())
    }

    /// Commits the shuffle output or closes the sink.
    async fn finish(mut self, out: &mut TaskOutput) -> Result<(), EngineError> {
        self.flush(Flush::All).await?;
        match self.target {
            Target::Shuffle {
                writer, raw_bytes, ..
            } => {
                let stats = writer.commit().await?;
                out.bytes_written = stats.pushed_bytes;
                self.counters
                    .bytes_written
                    .fetch_add(stats.pushed_bytes.wrapping_sub(raw_bytes), Ordering::Relaxed);
            }
            Target::Sink(sink) => sink.finish()?,
        }
        out.records_out = self.records_out;
        out.summary = self.summary.map_or(serde_json::Value::Null, |s| s.finish());
        Ok(())
    }
}

/// Pumps a cursor through the chain into `out`, a chunk at a time.
async fn pump<W: ShuffleWriter>(
    mut cursor: Box<dyn RecordCursor>,
    chain: &mut Chain<'_>,
    out: &mut Out<'_, W>,
    records_in: Option<&mut u64>,
) -> Result<(), EngineError> {
    let mut counted = 0u64;
    loop {
        let mut n = 0u64;
        let more = cursor.fill(&mut |r| {
            n += 1;
            chain.push(r, &mut |r| out.accept(r))
        })?;
        counted += n;
        if records_in.is_some() {
            out.counters.records_in.fetch_add(n, Ordering::Relaxed);
        }
        out.flush(Flush::Pending).await?;
        if !more {
            break;
        }
    }
    if let Some(r) = records_in {
        *r += counted;
    }
    Ok(())
}

/// Adds what a reader read since `seen` to the task's counters.
fn count_read(counters: &TaskCounters, seen: &mut ReadStats, now: ReadStats) {
    counters
        .records_in
        .fetch_add(now.records - seen.records, Ordering::Relaxed);
    counters
        .bytes_read
        .fetch_add(now.fetched_bytes - seen.fetched_bytes, Ordering::Relaxed);
    *seen = now;
}

/// Reads every record of one reader, feeding `each`; counts as it goes.
async fn drain_reader<R: ShuffleReader>(
    reader: &mut R,
    counters: &TaskCounters,
    mut each: impl FnMut(&[u8]) -> Result<(), EngineError>,
) -> Result<(), EngineError> {
    let mut seen = reader.stats();
    while let Some(batch) = reader.next_batch().await? {
        batch.for_each_record(&mut each)?;
        count_read(counters, &mut seen, reader.stats());
    }
    Ok(())
}

/// Reads one input of a join into the shared table.
async fn join_side<R: ShuffleReader>(
    side: usize,
    reader: &mut R,
    table: &Mutex<JoinTable>,
    counters: &TaskCounters,
) -> Result<(), EngineError> {
    let mut seen = reader.stats();
    while let Some(batch) = reader.next_batch().await? {
        {
            // One lock per batch, released before the next read.
            let mut table = table.lock().unwrap_or_else(|p| p.into_inner());
            batch.for_each_record(|r| table.add(side, r))?;
        }
        count_read(counters, &mut seen, reader.stats());
    }
    Ok(())
}

fn check<'j>(
    job: &'j Job,
    stage: u32,
    task: u32,
    handles: &[ShuffleHandle],
) -> Result<(&'j StageInfo, &'j StagePlan), EngineError> {
    let (Some(info), Some(plan)) = (job.stages.get(stage as usize), job.plans.get(stage as usize)) else {
        return Err(EngineError::InvalidArgument {
            what: "stage",
            reason: format!("stage {stage} of a {}-stage job", job.stages.len()),
        });
    };
    if task >= info.tasks {
        return Err(EngineError::InvalidArgument {
            what: "task",
            reason: format!("task {task} of stage {} with {} tasks", info.name, info.tasks),
        });
    }
    if handles.len() < job.edges.len() {
        return Err(EngineError::InvalidArgument {
            what: "handles",
            reason: format!("{} handles for {} edges", handles.len(), job.edges.len()),
        });
    }
    Ok((info, plan))
}

impl Job {
    /// Runs task `ctx.task` of `ctx.stage`: producer tasks are map
    /// `MapId(ctx.task)`, attempt `ctx.attempt`, of each output edge's
    /// shuffle (open_writer .. commit); consumer task `i` reads partition
    /// `i` of each input edge (all maps), several inputs concurrently.
    pub async fn run_task<C: ShuffleClient>(
        &self,
        ctx: TaskContext<'_, C>,
    ) -> Result<TaskOutput, EngineError> {
        let (info, plan) = check(self, ctx.stage.0, ctx.task, ctx.handles)?;
        // A consumer opens its readers first: it starts reading at once.
        let mut readers = Vec::with_capacity(info.inputs.len());
        for &e in &info.inputs {
            let h = &ctx.handles[e];
            readers.push(
                ctx.client
                    .open_reader(h, PartitionId(ctx.task), h.all_maps())
                    .await?,
            );
        }
        let target = match &plan.output {
            StageOutput::Shuffle { partitioner, combine } => {
                let h = &ctx.handles[info.outputs[0]];
                Target::Shuffle {
                    writer: ctx
                        .client
                        .open_writer(h, MapId(ctx.task), ctx.attempt, ctx.writer_options)
                        .await?,
                    partitioner,
                    combine: combine.clone().map(CombineTable::new),
                    buf: OutBuf::default(),
                    raw_bytes: 0,
                }
            }
            StageOutput::Sink { sink, format } => Target::Sink(SinkWriter::open(sink, format, ctx.task)?),
        };
        let mut out = Out {
            target,
            summary: plan.summary.as_ref().map(|f| f(ctx.task, info.tasks)),
            records_out: 0,
            reported_out: 0,
            counters: ctx.counters,
        };
        let mut chain = Chain::new(&plan.ops);
        let mut result = TaskOutput::default();
        let counters = ctx.counters;
        match &plan.input {
            StageInput::Source(source) => {
                pump(
                    source.open(ctx.task)?,
                    &mut chain,
                    &mut out,
                    Some(&mut result.records_in),
                )
                .await?;
            }
            StageInput::Pass => {
                for reader in &mut readers {
                    let mut seen = reader.stats();
                    while let Some(batch) = reader.next_batch().await? {
                        batch.for_each_record(|r| chain.push(r, &mut |r| out.accept(r)))?;
                        count_read(counters, &mut seen, reader.stats());
                        out.flush(Flush::Pending).await?;
                    }
                }
            }
            StageInput::Merge(agg) => {
                let mut table = CombineTable::new(agg.clone());
                for reader in &mut readers {
                    drain_reader(reader, counters, |r| table.add_state(r)).await?;
                }
                pump(Box::new(table.into_final()), &mut chain, &mut out, None).await?;
            }
            StageInput::Sort => {
                let mut buffer = SortBuffer::default();
                for reader in &mut readers {
                    drain_reader(reader, counters, |r| buffer.add(r)).await?;
                }
                pump(Box::new(buffer.into_sorted()), &mut chain, &mut out, None).await?;
            }
            StageInput::Join => {
                let table = Mutex::new(JoinTable::default());
                let (left, right) = match readers.as_mut_slice() {
                    [l, r] => (l, r),
                    _ => {
                        return Err(EngineError::InvalidPlan {
                            reason: format!("a join stage with {} inputs", info.inputs.len()),
                        })
                    }
                };
                // Both inputs are read at once: in a streaming shuffle, reading
                // one to its end first can deadlock on the other's credit.
                let (l, r) = tokio::join!(
                    join_side(0, left, &table, counters),
                    join_side(1, right, &table, counters)
                );
                l?;
                r?;
                let table = table.into_inner().unwrap_or_else(|p| p.into_inner());
                pump(Box::new(table.into_joined()), &mut chain, &mut out, None).await?;
            }
        }
        for reader in &readers {
            let s = reader.stats();
            result.records_in += s.records;
            result.bytes_read += s.fetched_bytes;
            result.read_failovers += s.failovers;
        }
        out.finish(&mut result).await?;
        Ok(result)
    }
}
