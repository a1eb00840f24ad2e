//! The remote writer: records are batched into blocks, blocks into one
//! push per server, and pushes run in the background, a bounded number at
//! a time (backpressure: `write` waits when the limit is reached).
//!
//! A replicated shuffle's blocks go to both copies of their partition. A
//! copy that fails as lost (`ClientError::loses_copy`: after the retry
//! window for a server gone) is marked and left out from then on; the
//! writer goes on with the other copy (degraded) and fails only when a
//! partition has no live copy left.

use std::sync::Arc;

use protocol::Block;
use tokio::task::JoinSet;

use super::copies::CopyFailures;
use super::{commit_on_every_server, Inner, Placed};
use crate::batching::Batcher;
use crate::{ClientError, PushAck, ShuffleHandle, ShuffleWriter, WriteStats};

/// Writer of one map attempt to remote servers.
#[derive(Debug)]
pub struct RemoteWriter {
    inner: Arc<Inner>,
    /// The servers of the shuffle, indexed as its placement indexes them.
    placed: Placed,
    handle: ShuffleHandle,
    batcher: Batcher,
    ready: Vec<Block>,
    /// Blocks waiting to be pushed, per server, and their bytes.
    pending: Vec<(Vec<Block>, usize)>,
    /// Pushes in flight, with the index of their server.
    in_flight: JoinSet<(usize, Result<PushAck, ClientError>)>,
}

impl RemoteWriter {
    pub(crate) fn new(inner: Arc<Inner>, placed: Placed, handle: ShuffleHandle, batcher: Batcher) -> Self {
        let servers = placed.len();
        RemoteWriter {
            inner,
            placed,
            handle,
            batcher,
            ready: Vec::new(),
            pending: (0..servers).map(|_| (Vec::new(), 0)).collect(),
            in_flight: JoinSet::new(),
        }
    }

    /// Routes sealed blocks to their servers; sends full batches.
    async fn route_ready(&mut self) -> Result<(), ClientError> {
        for block in std::mem::take(&mut self.ready) {
            let copies = self.live_copies(block.id().partition)?;
            let last = copies.len() - 1;
            let mut block = Some(block);
            for (n, index) in copies.into_iter().enumerate() {
                let Some(b) = (if n == last { block.take() } else { block.clone() }) else {
                    break;
                };
                self.add(index, b).await?;
            }
        }
        Ok(())
    }

    /// The live copies of `partition` (every copy unless replicated); an
    /// error when none is left.
    fn live_copies(&self, partition: protocol::PartitionId) -> Result<Vec<usize>, ClientError> {
        let placement = self.handle.placement();
        let last = self.pending.len() - 1;
        let all: Vec<usize> = placement
            .copies_of(partition)
            .into_iter()
            .map(|i| i.min(last))
            .collect();
        if placement.replication().copies() < 2 {
            return Ok(all);
        }
        let (app, shuffle) = (self.handle.app(), self.handle.shuffle());
        let mut why = CopyFailures::default();
        let live: Vec<usize> = all
            .iter()
            .copied()
            .filter(
                |&i| match self.inner.lost.why(&self.placed[i].name, app, shuffle) {
                    Some(reason) => {
                        why.skipped(&self.placed[i].name, &reason);
                        false
                    }
                    None => true,
                },
            )
            .collect();
        if live.is_empty() {
            let names: Vec<&str> = all.iter().map(|&i| self.placed[i].name.as_str()).collect();
            return Err(why.into_error(&names, shuffle));
        }
        Ok(live)
    }

    /// Adds a block to server `index`'s pending push; sends full batches.
    async fn add(&mut self, index: usize, block: Block) -> Result<(), ClientError> {
        // A push never exceeds the batch (so it fits the server's frame
        // limit) unless a single block does.
        let batch = self.placed[index].push_batch_bytes;
        let len = block.encoded_len();
        let (blocks, bytes) = &self.pending[index];
        if !blocks.is_empty() && bytes + len > batch {
            self.send(index).await?;
        }
        let slot = &mut self.pending[index];
        slot.1 += len;
        slot.0.push(block);
        if slot.1 >= batch {
            self.send(index).await?;
        }
        Ok(())
    }

    /// Starts a push of server `index`'s pending blocks, after waiting for a
    /// free slot among the pushes in flight.
    async fn send(&mut self, index: usize) -> Result<(), ClientError> {
        let (blocks, _) = std::mem::take(&mut self.pending[index]);
        if blocks.is_empty() {
            return Ok(());
        }
        if self.handle.placement().replication().copies() > 1 {
            let (app, shuffle) = (self.handle.app(), self.handle.shuffle());
            if self
                .inner
                .lost
                .why(&self.placed[index].name, app, shuffle)
                .is_some()
            {
                // Found lost since these were routed: the other copy has them.
                return Ok(());
            }
        }
        // Backpressure rule (pipelined): a server holds a pipelined block in
        // memory until its reader takes it, and readers take a map's blocks
        // in sequence order. With two pushes of one writer in flight, the
        // later one could fill the budget while the earlier one waits for
        // credit, and the reader would wait for a block that can never come
        // in. One push at a time keeps every writer's blocks in order, so
        // the memory always holds blocks some reader can take.
        let limit = match self.handle.spec().mode() {
            protocol::ShuffleMode::Pipelined => 1,
            _ => self.inner.options.max_in_flight_pushes.max(1),
        };
        while self.in_flight.len() >= limit {
            self.join_one().await?;
        }
        let inner = self.inner.clone();
        let server = self.placed[index].clone();
        let (app, shuffle) = (self.handle.app().clone(), self.handle.shuffle());
        self.in_flight
            .spawn(async move { (index, inner.push(&server, &app, shuffle, blocks).await) });
        Ok(())
    }

    /// Waits for one push in flight. A replicated copy that failed as lost
    /// is marked and the writer goes on (its blocks are on the other copy,
    /// or `live_copies` and the commit say none is left).
    async fn join_one(&mut self) -> Result<(), ClientError> {
        match self.in_flight.join_next().await {
            Some(Ok((index, Err(e))))
                if self.handle.placement().replication().copies() > 1 && e.loses_copy() =>
            {
                let (app, shuffle) = (self.handle.app(), self.handle.shuffle());
                self.inner.lost.mark(&self.placed[index].name, app, shuffle, &e);
                Ok(())
            }
            Some(Ok((_, result))) => result.map(|_| ()),
            Some(Err(join)) => Err(ClientError::Internal {
                server: "client".into(),
                reason: format!("push task failed: {join}"),
            }),
            None => Ok(()),
        }
    }
}

impl ShuffleWriter for RemoteWriter {
    async fn write(&mut self, partition: protocol::PartitionId, record: &[u8]) -> Result<(), ClientError> {
        self.batcher.write(partition, record, &mut self.ready)?;
        if !self.ready.is_empty() {
            self.route_ready().await?;
        }
        Ok(())
    }

    async fn commit(self) -> Result<WriteStats, ClientError> {
        Ok(self.commit_with_partition_bytes().await?.0)
    }
}

impl RemoteWriter {
    /// [`ShuffleWriter::commit`], also returning the bytes pushed per
    /// partition ([`Batcher::partition_bytes`]): what an engine reports as
    /// a map output's size per partition (Spark's `MapStatus`).
    pub async fn commit_with_partition_bytes(mut self) -> Result<(WriteStats, Vec<u64>), ClientError> {
        self.batcher.finish(&mut self.ready)?;
        self.route_ready().await?;
        for index in 0..self.pending.len() {
            self.send(index).await?;
        }
        while !self.in_flight.is_empty() {
            self.join_one().await?;
        }
        let (map, attempt) = (self.batcher.map(), self.batcher.attempt());
        commit_on_every_server(
            &self.inner,
            &self.placed,
            &self.handle,
            map,
            attempt,
            &self.batcher.manifest(),
        )
        .await?;
        Ok((self.batcher.stats(), self.batcher.partition_bytes().to_vec()))
    }
}
