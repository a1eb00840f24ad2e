//! The per-partition stream index of streaming shuffles (pipelined and
//! hybrid): which blocks of which attempts arrived, where each one is now
//! (memory, disk, or consumed and gone), and what each reader delivers next.
//!
//! Pure state, no I/O and no clock of its own: the caller holds the
//! partition's lock, does the disk reads outside it, and wakes waiting
//! readers after every change.
//!
//! Per map, a reader delivers the blocks of exactly ONE attempt, in seq
//! order: the committed attempt if the map committed; else the attempt it
//! already delivered blocks from (its "bound" attempt); else the first
//! attempt (lowest id) whose seq-0 block is available. A reader bound to an
//! attempt that then loses the commit fails with `AttemptFailed`; a reader
//! that needs a memory-only block another reader consumed fails with
//! `DataGone`. So no block is ever delivered twice to one reader, nor from a
//! losing attempt.

use protocol::ServiceError;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use protocol::{AttemptId, Block, MapId, MapRange, PartitionId};

use tokio::sync::Notify;

use crate::budget::Credit;
use crate::ServerError;

/// One partition's stream index and the readers waiting on it.
#[derive(Debug, Default)]
pub(crate) struct StreamPart {
    pub index: Mutex<StreamIndex>,
    /// Woken (all waiters) after every change a reader may care about.
    pub notify: Notify,
}

/// Bytes of streaming blocks held in memory by one store, and the most
/// ever held at once.
#[derive(Debug, Default)]
pub(crate) struct MemoryGauge {
    current: AtomicU64,
    peak: AtomicU64,
}

impl MemoryGauge {
    fn add(&self, bytes: u64) {
        let now = self.current.fetch_add(bytes, Ordering::AcqRel) + bytes;
        self.peak.fetch_max(now, Ordering::AcqRel);
    }

    fn sub(&self, bytes: u64) {
        self.current.fetch_sub(bytes, Ordering::AcqRel);
    }

    pub(crate) fn current(&self) -> u64 {
        self.current.load(Ordering::Acquire)
    }

    pub(crate) fn peak(&self) -> u64 {
        self.peak.load(Ordering::Acquire)
    }
}

/// A block held in memory with the budget credit that pays for it.
#[derive(Debug)]
pub(crate) struct Held {
    pub block: Block,
    credit: Option<Credit>,
    /// When it arrived (for the selective spill and the full-copy expiry).
    pub since: Instant,
    /// A hybrid-full copy: the block is also in the partition file.
    pub on_disk: bool,
    gauge: Arc<MemoryGauge>,
}

impl Held {
    pub(crate) fn new(
        block: Block,
        credit: Option<Credit>,
        since: Instant,
        on_disk: bool,
        gauge: Arc<MemoryGauge>,
    ) -> Self {
        gauge.add(block.encoded_len() as u64);
        Held {
            block,
            credit,
            since,
            on_disk,
            gauge,
        }
    }

    /// The block and its credit, leaving the store's memory.
    fn take(mut self) -> (Block, Option<Credit>) {
        (self.block.clone(), self.credit.take())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.gauge.sub(self.block.encoded_len() as u64);
    }
}

/// Where one block of the stream is.
#[derive(Debug)]
pub(crate) enum Slot {
    /// In memory (a hybrid-full copy is also on disk).
    Memory(Box<Held>),
    /// Only in the partition file (hybrid modes).
    Disk,
    /// Delivered from memory and dropped: it arrived, but is gone.
    Consumed,
}

#[derive(Debug, Default)]
struct MapStream {
    /// The committed attempt and its block count for this partition.
    committed: Option<(AttemptId, u32)>,
    attempts: BTreeMap<AttemptId, BTreeMap<u32, Slot>>,
}

/// Where a delivered block comes from.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // transient, moved once per block
pub(crate) enum Source {
    /// From memory; the credit must live until the block is written out.
    Memory(Block, Option<Credit>),
    /// From the partition file, at the index entry of (map, attempt, seq).
    Disk,
}

/// What a reader does next.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // transient, moved once per block
pub(crate) enum Step {
    Deliver {
        map: MapId,
        attempt: AttemptId,
        seq: u32,
        source: Source,
    },
    /// Nothing deliverable yet: wait for a push, a commit or a spill.
    Wait,
    /// Every map in range committed and was delivered.
    End,
}

#[derive(Clone, Copy, Debug, Default)]
struct MapCursor {
    bound: Option<AttemptId>,
    next: u32,
    done: bool,
}

/// One reader's position: per map in its range that it has seen, the
/// attempt it is bound to and the next seq. Sparse: a reader of a range of a
/// million maps costs only the maps that have data in its partition.
#[derive(Debug)]
pub(crate) struct Cursor {
    range: MapRange,
    maps: BTreeMap<MapId, MapCursor>,
    /// Where the next scan starts (stays on a map while it has blocks).
    rr: MapId,
    /// Maps of the range committed and wholly delivered.
    done: u32,
    delivered: u64,
}

impl Cursor {
    pub(crate) fn new(range: MapRange) -> Self {
        Cursor {
            range,
            maps: BTreeMap::new(),
            rr: range.start(),
            done: 0,
            delivered: 0,
        }
    }

    fn len(&self) -> u32 {
        self.range.end().0 - self.range.start().0
    }

    /// Blocks delivered so far.
    pub(crate) fn delivered(&self) -> u64 {
        self.delivered
    }
}

/// One partition's streaming blocks.
#[derive(Debug, Default)]
pub(crate) struct StreamIndex {
    maps: BTreeMap<MapId, MapStream>,
}

impl StreamIndex {
    /// True when (map, attempt, seq) arrived (in any state).
    pub(crate) fn contains(&self, map: MapId, attempt: AttemptId, seq: u32) -> bool {
        self.maps
            .get(&map)
            .and_then(|m| m.attempts.get(&attempt))
            .is_some_and(|s| s.contains_key(&seq))
    }

    /// The committed attempt of `map`, if any.
    pub(crate) fn committed(&self, map: MapId) -> Option<AttemptId> {
        self.maps.get(&map).and_then(|m| m.committed).map(|(a, _)| a)
    }

    /// Records an arrived block. The caller checked it is not a duplicate.
    pub(crate) fn insert(&mut self, map: MapId, attempt: AttemptId, seq: u32, slot: Slot) {
        self.maps
            .entry(map)
            .or_default()
            .attempts
            .entry(attempt)
            .or_default()
            .insert(seq, slot);
    }

    /// The first seq of `0..count` of (map, attempt) that never arrived;
    /// consumed blocks count as arrived.
    pub(crate) fn first_missing(&self, map: MapId, attempt: AttemptId, count: u32) -> Option<u32> {
        let slots = self.maps.get(&map).and_then(|m| m.attempts.get(&attempt));
        (0..count).find(|seq| !slots.is_some_and(|s| s.contains_key(seq)))
    }

    /// Records the commit of `map` by `attempt` with `count` blocks in this
    /// partition, and drops every other attempt's blocks (their memory and
    /// credit are returned).
    pub(crate) fn commit(&mut self, map: MapId, attempt: AttemptId, count: u32) {
        let m = self.maps.entry(map).or_default();
        m.committed = Some((attempt, count));
        m.attempts.retain(|a, _| *a == attempt);
    }

    /// Drops every block in memory (unregister).
    pub(crate) fn clear(&mut self) {
        self.maps.clear();
    }

    /// Fails when a map in range has memory-only blocks another reader
    /// already consumed (a reader opening now could not read them).
    pub(crate) fn check_open(&self, partition: PartitionId, maps: MapRange) -> Result<(), ServerError> {
        for (map, m) in self.maps.range(maps.start()..maps.end()) {
            let gone = m
                .attempts
                .values()
                .any(|s| s.values().any(|slot| matches!(slot, Slot::Consumed)));
            if gone {
                return Err(ServerError::Service(ServiceError::DataGone {
                    partition,
                    map: *map,
                }));
            }
        }
        Ok(())
    }

    /// The memory slots older than `cutoff`, for the sweep: `(map, attempt,
    /// seq, on_disk)`.
    pub(crate) fn expired(&self, cutoff: Instant) -> Vec<(MapId, AttemptId, u32, bool)> {
        let mut out = Vec::new();
        for (map, m) in &self.maps {
            for (attempt, slots) in &m.attempts {
                for (seq, slot) in slots {
                    if let Slot::Memory(h) = slot {
                        if h.since <= cutoff {
                            out.push((*map, *attempt, *seq, h.on_disk));
                        }
                    }
                }
            }
        }
        out
    }

    /// The block in memory at (map, attempt, seq), if there is one.
    pub(crate) fn memory_block(&self, map: MapId, attempt: AttemptId, seq: u32) -> Option<&Block> {
        match self.maps.get(&map)?.attempts.get(&attempt)?.get(&seq)? {
            Slot::Memory(h) => Some(&h.block),
            _ => None,
        }
    }

    /// Replaces a memory slot by `Disk` (spilled, or a full copy dropped);
    /// its memory and credit are returned.
    pub(crate) fn mark_on_disk(&mut self, map: MapId, attempt: AttemptId, seq: u32) {
        if let Some(slot) = self
            .maps
            .get_mut(&map)
            .and_then(|m| m.attempts.get_mut(&attempt))
            .and_then(|s| s.get_mut(&seq))
        {
            *slot = Slot::Disk;
        }
    }

    /// The next step of the reader at `cursor`: scans the maps that have
    /// an entry, from where the last block came (round robin, staying on a
    /// map while it has blocks), for one whose next block is here.
    pub(crate) fn next(&mut self, partition: PartitionId, cursor: &mut Cursor) -> Result<Step, ServerError> {
        let (start, end, rr) = (cursor.range.start(), cursor.range.end(), cursor.rr);
        for (map, m) in self.maps.range_mut(rr..end) {
            if let Some(step) = visit(partition, *map, m, cursor)? {
                return Ok(step);
            }
        }
        for (map, m) in self.maps.range_mut(start..rr) {
            if let Some(step) = visit(partition, *map, m, cursor)? {
                return Ok(step);
            }
        }
        if cursor.done == cursor.len() {
            Ok(Step::End)
        } else {
            Ok(Step::Wait)
        }
    }
}

/// One map's turn in [`StreamIndex::next`]: the block to deliver, if its
/// next one is here.
fn visit(
    partition: PartitionId,
    map: MapId,
    m: &mut MapStream,
    cursor: &mut Cursor,
) -> Result<Option<Step>, ServerError> {
    let c = cursor.maps.entry(map).or_default();
    if c.done {
        return Ok(None);
    }
    let attempt = match (m.committed, c.bound) {
        (Some((committed, _)), Some(bound)) if committed != bound => {
            return Err(ServerError::Service(ServiceError::AttemptFailed {
                map,
                attempt: bound,
            }));
        }
        (Some((committed, count)), _) => {
            if c.next >= count {
                c.done = true;
                cursor.done += 1;
                return Ok(None);
            }
            committed
        }
        (None, Some(bound)) => bound,
        (None, None) => {
            let mut first = None;
            for (attempt, slots) in &m.attempts {
                match slots.get(&0) {
                    Some(Slot::Consumed) => {
                        return Err(ServerError::Service(ServiceError::DataGone { partition, map }))
                    }
                    Some(_) if first.is_none() => first = Some(*attempt),
                    _ => {}
                }
            }
            match first {
                Some(a) => a,
                None => return Ok(None),
            }
        }
    };
    let Some(slot) = m.attempts.get_mut(&attempt).and_then(|s| s.get_mut(&c.next)) else {
        return Ok(None); // not arrived yet
    };
    let source = match std::mem::replace(slot, Slot::Consumed) {
        Slot::Consumed => return Err(ServerError::Service(ServiceError::DataGone { partition, map })),
        Slot::Disk => {
            *slot = Slot::Disk;
            Source::Disk
        }
        Slot::Memory(held) => {
            // A hybrid-full copy falls back to its disk copy for later
            // readers; a memory-only block is gone.
            if held.on_disk {
                *slot = Slot::Disk;
            }
            let (block, credit) = (*held).take();
            Source::Memory(block, credit)
        }
    };
    let seq = c.next;
    c.bound = Some(attempt);
    c.next += 1;
    cursor.rr = map;
    cursor.delivered += 1;
    Ok(Some(Step::Deliver {
        map,
        attempt,
        seq,
        source,
    }))
}

#[cfg(test)]
mod tests;
