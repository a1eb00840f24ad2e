//! The push side of streaming shuffles (pipelined, hybrid-full,
//! hybrid-selective) on top of the stream index: where each pushed block
//! goes, and the spill sweep. Readers are in `stream_read.rs`.
//!
//! Backpressure and memory rules, each kept by the code beside it:
//!
//! * **Pipelined** blocks live in memory only and each holds budget credit
//!   until a reader takes it: the credit the push paid (in the server, the
//!   push frame's credit, split per block) or, when pushed without one,
//!   credit taken now. A full budget therefore stops the next push frame in
//!   `read_frame` (or the embedded writer's `acquire`): a slow reader slows
//!   producers, without an error and without growing memory.
//! * **Hybrid** blocks never make a producer wait on memory: a memory copy
//!   is kept only if credit is free right now (`try_acquire`), and only
//!   while `headroom` bytes stay free for incoming frames; otherwise the
//!   block is on disk only. Copies live at most `spill_after`: the sweep
//!   spills selective blocks and drops full copies (already on disk).
//! * **Readers never take credit** for in-memory blocks: the block hands
//!   its own credit over, and the caller drops it once the bytes are
//!   written out. A reader that had to wait for credit while the budget is
//!   full of the very blocks it would consume would deadlock.

use protocol::ServiceError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::{AttemptId, Block, MapId, ShuffleMode, SpillStrategy};

use super::disks::Disks;
use super::locks::lock;
use super::shuffle::ShuffleState;
use super::stream_index::{Held, MemoryGauge, Slot, StreamIndex};
use crate::budget::{Credit, MemoryBudget};
use crate::ServerError;

/// What streaming pushes need from the store.
#[derive(Debug)]
pub(crate) struct StreamEnv {
    pub budget: MemoryBudget,
    pub gauge: Arc<MemoryGauge>,
    /// Credit a hybrid copy must leave free (for incoming frames).
    pub headroom: u64,
    pub spill_after: Duration,
    /// Bytes written to disk by hybrid-full and hybrid-selective shuffles.
    pub spilled_full: AtomicU64,
    pub spilled_selective: AtomicU64,
}

impl StreamEnv {
    /// Credit for a hybrid memory copy, if free right now with headroom
    /// left; never waits.
    fn copy_credit(&self, bytes: u64) -> Option<Credit> {
        let after = self.budget.in_use() + bytes + self.headroom;
        if after > self.budget.limit() {
            return None;
        }
        self.budget.try_acquire(u32::try_from(bytes).ok()?)
    }

    fn spilled(&self, mode: ShuffleMode, bytes: u64) {
        match mode {
            ShuffleMode::Hybrid(SpillStrategy::Full) => self.spilled_full.fetch_add(bytes, Ordering::Relaxed),
            _ => self.spilled_selective.fetch_add(bytes, Ordering::Relaxed),
        };
    }
}

impl ShuffleState {
    /// Stores checked blocks of a streaming shuffle; returns for each block
    /// whether it was new and how many of its bytes went to disk.
    /// `credit` (pipelined) pays for the blocks kept in memory.
    pub(crate) fn push_streaming(
        &self,
        blocks: Vec<Block>,
        mut credit: Option<Credit>,
        env: &StreamEnv,
        disks: &Disks,
    ) -> Result<Vec<(bool, u64)>, ServerError> {
        let mode = self.spec.mode();
        if mode.memory_only() {
            // Every block kept must be paid for before any is stored, so a
            // push without enough credit stores nothing.
            let needed: u64 = blocks.iter().map(|b| b.encoded_len() as u64).sum();
            let held = credit.as_ref().map_or(0, |c| u64::from(c.bytes()));
            if held < needed {
                let more = u32::try_from(needed - held).unwrap_or(u32::MAX);
                let extra = env
                    .budget
                    .try_acquire(more)
                    .ok_or(ServerError::NoCredit { bytes: needed })?;
                match &mut credit {
                    Some(c) => c.merge(extra),
                    None => credit = Some(extra),
                }
            }
            return self.push_pipelined(blocks, credit, env);
        }
        let mut out = Vec::with_capacity(blocks.len());
        for block in blocks {
            let id = block.id();
            let len = block.encoded_len() as u64;
            let part = self.stream_part(id.partition)?;
            let mut index = lock(&part.index);
            self.check_stream_push(&index, id.map, id.attempt)?;
            if index.contains(id.map, id.attempt, id.seq) {
                out.push((false, 0));
                continue;
            }
            let full = mode == ShuffleMode::Hybrid(SpillStrategy::Full);
            let copy = env.copy_credit(len);
            let slot = match (full, copy) {
                (true, copy) => {
                    self.append(&block, disks)?;
                    env.spilled(mode, len);
                    out.push((true, len));
                    match copy {
                        Some(c) => Slot::Memory(Box::new(Held::new(
                            block,
                            Some(c),
                            Instant::now(),
                            true,
                            env.gauge.clone(),
                        ))),
                        None => Slot::Disk,
                    }
                }
                (false, Some(c)) => {
                    out.push((true, 0));
                    Slot::Memory(Box::new(Held::new(
                        block,
                        Some(c),
                        Instant::now(),
                        false,
                        env.gauge.clone(),
                    )))
                }
                (false, None) => {
                    self.append(&block, disks)?;
                    env.spilled(mode, len);
                    out.push((true, len));
                    Slot::Disk
                }
            };
            index.insert(id.map, id.attempt, id.seq, slot);
            drop(index);
            part.notify.notify_waiters();
        }
        Ok(out)
    }

    fn push_pipelined(
        &self,
        blocks: Vec<Block>,
        mut credit: Option<Credit>,
        env: &StreamEnv,
    ) -> Result<Vec<(bool, u64)>, ServerError> {
        let mut out = Vec::with_capacity(blocks.len());
        for block in blocks {
            let id = block.id();
            let part = self.stream_part(id.partition)?;
            let mut index = lock(&part.index);
            self.check_stream_push(&index, id.map, id.attempt)?;
            if index.contains(id.map, id.attempt, id.seq) {
                out.push((false, 0));
                continue;
            }
            // The block keeps its share of the push's credit until a
            // reader takes it (backpressure rule of pipelined mode).
            let len = u32::try_from(block.encoded_len()).unwrap_or(u32::MAX);
            let share = credit.as_mut().map(|c| c.split_off(len));
            let held = Held::new(block, share, Instant::now(), false, env.gauge.clone());
            index.insert(id.map, id.attempt, id.seq, Slot::Memory(Box::new(held)));
            drop(index);
            part.notify.notify_waiters();
            out.push((true, 0));
        }
        Ok(out)
    }

    /// A push racing a commit of another attempt is refused here, under the
    /// stream lock the commit takes too: no loser's block is kept after the
    /// winner committed.
    fn check_stream_push(
        &self,
        index: &StreamIndex,
        map: MapId,
        attempt: AttemptId,
    ) -> Result<(), ServerError> {
        if self.is_removed() {
            return Err(ServerError::Service(ServiceError::UnknownShuffle {
                app: self.app.clone(),
                shuffle: self.id,
            }));
        }
        match index.committed(map) {
            Some(committed) if committed != attempt => {
                Err(ServerError::Service(ServiceError::AttemptSuperseded {
                    map,
                    committed,
                    attempt,
                }))
            }
            _ => Ok(()),
        }
    }

    /// Spills selective blocks and drops full copies older than
    /// `spill_after`; returns the bytes written.
    pub(crate) fn sweep(&self, now: Instant, env: &StreamEnv, disks: &Disks) -> Result<u64, ServerError> {
        if !self.streams() || self.spec.mode().memory_only() || self.is_removed() {
            return Ok(0);
        }
        let Some(cutoff) = now.checked_sub(env.spill_after) else {
            return Ok(0);
        };
        let mut written = 0;
        for part in self.stream_parts() {
            let mut index = lock(&part.index);
            let expired = index.expired(cutoff);
            if expired.is_empty() {
                continue;
            }
            for (map, attempt, seq, on_disk) in expired {
                if !on_disk {
                    let Some(block) = index.memory_block(map, attempt, seq) else {
                        continue;
                    };
                    let len = block.encoded_len() as u64;
                    self.append(block, disks)?;
                    env.spilled(self.spec.mode(), len);
                    written += len;
                }
                index.mark_on_disk(map, attempt, seq);
            }
            drop(index);
            part.notify.notify_waiters();
        }
        Ok(written)
    }
}
