//! Wide operators: the end of a stage and the start of the next, across a
//! shuffle. Records crossing a shuffle are pairs ([`crate::kv`]).
//!
//! * partitioners: by key hash (FNV-1a, stable across processes) or by key
//!   range (split keys sampled at build time, so partition `i`'s keys all
//!   precede partition `i + 1`'s);
//! * aggregation: [`Aggregator`] states are combined on the map side
//!   (`CombineTable`) and merged on the reduce side;
//! * sort: a reducer buffers its partition and emits it ordered by key
//!   (`SortBuffer`);
//! * join: a reducer buffers both inputs' records by key and emits the
//!   inner join (`JoinTable`).

use std::collections::HashMap;
use std::sync::Arc;

use shuffle_client::protocol::{fnv1a64, PartitionId};

use super::ops::Downstream;
use super::source::RecordCursor;
use crate::{kv, EngineError};

/// The partition of a key under hash partitioning: FNV-1a (stable across
/// processes and platforms, unlike `std`'s hasher) modulo `partitions`.
pub fn hash_partition(key: &[u8], partitions: u32) -> u32 {
    (fnv1a64(key.iter().copied()) % u64::from(partitions.max(1))) as u32
}

/// How a stage's output pairs are spread over the next stage's tasks.
#[derive(Clone, Debug)]
pub enum Partitioner {
    /// `fnv1a64(key) % partitions`.
    Hash { partitions: u32 },
    /// Partition `i` holds keys in `[bounds[i-1], bounds[i])`.
    Range { bounds: Arc<[Box<[u8]>]> },
}

impl Partitioner {
    /// Range bounds from sampled keys: `partitions - 1` evenly spaced
    /// quantiles of the sorted sample.
    pub fn range_from_sample(mut sample: Vec<Vec<u8>>, partitions: u32) -> Self {
        sample.sort_unstable();
        let p = u64::from(partitions.max(1));
        let n = sample.len() as u64;
        let bounds = (1..p)
            .filter_map(|i| sample.get((i * n / p) as usize))
            .map(|k| k.clone().into_boxed_slice())
            .collect();
        Partitioner::Range { bounds }
    }

    /// Partitions this partitioner spreads over.
    pub fn partitions(&self) -> u32 {
        match self {
            Partitioner::Hash { partitions } => *partitions,
            Partitioner::Range { bounds } => bounds.len() as u32 + 1,
        }
    }

    /// The partition of a key.
    pub fn partition_of_key(&self, key: &[u8]) -> u32 {
        match self {
            Partitioner::Hash { partitions } => hash_partition(key, *partitions),
            Partitioner::Range { bounds } => bounds.partition_point(|b| &**b <= key) as u32,
        }
    }

    /// The partition of a pair record.
    pub fn partition(&self, record: &[u8]) -> Result<PartitionId, EngineError> {
        Ok(PartitionId(self.partition_of_key(kv::decode(record)?.0)))
    }
}

/// An aggregation over the values of a key, in three steps so that maps
/// can combine before the shuffle: `init`/`update` build a state from
/// values, `merge` folds states, `finish` turns a state into the output
/// value. States are bytes so they can cross the shuffle.
pub trait Aggregator: Send + Sync {
    /// The state of a single value.
    fn init(&self, value: &[u8], state: &mut Vec<u8>) -> Result<(), EngineError>;
    /// Folds another state into `state`.
    fn merge(&self, state: &mut Vec<u8>, other: &[u8]) -> Result<(), EngineError>;
    /// The output value of a final state.
    fn finish(&self, state: &[u8], out: &mut Vec<u8>) -> Result<(), EngineError>;
}

/// The built-in aggregations. Values are rows whose first field is a
/// number (`f64` LE bytes, as the CSV source emits number columns); `Count`
/// ignores values. Outputs are decimal text: an integer for `Count`, Rust's
/// shortest round-trip form of an `f64` otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Agg {
    Sum,
    #[default]
    Count,
    Min,
    Max,
    Avg,
}

/// An aggregation by the name JSON and job files use (`sum`, `count`,
/// `min`, `max`, `avg`).
impl std::str::FromStr for Agg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        use serde::de::IntoDeserializer;
        use serde::Deserialize;
        Agg::deserialize(s.into_deserializer()).map_err(|e: serde::de::value::Error| e.to_string())
    }
}

fn state_err(len: usize) -> EngineError {
    EngineError::MalformedRecord {
        reason: format!("aggregation state of {len} bytes"),
    }
}

fn f64_at(bytes: &[u8], at: usize) -> Result<f64, EngineError> {
    bytes
        .get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(f64::from_le_bytes)
        .ok_or_else(|| state_err(bytes.len()))
}

fn u64_at(bytes: &[u8], at: usize) -> Result<u64, EngineError> {
    bytes
        .get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .ok_or_else(|| state_err(bytes.len()))
}

/// The number a value row starts with.
pub fn value_number(value: &[u8]) -> Result<f64, EngineError> {
    match kv::fields(value).next() {
        Some(Ok(f)) if f.len() == 8 => f64_at(f, 0),
        _ => Err(EngineError::MalformedRecord {
            reason: "the value does not start with an 8-byte number field".into(),
        }),
    }
}

impl Aggregator for Agg {
    fn init(&self, value: &[u8], state: &mut Vec<u8>) -> Result<(), EngineError> {
        state.clear();
        match self {
            Agg::Count => state.extend_from_slice(&1u64.to_le_bytes()),
            Agg::Sum | Agg::Min | Agg::Max => state.extend_from_slice(&value_number(value)?.to_le_bytes()),
            Agg::Avg => {
                state.extend_from_slice(&value_number(value)?.to_le_bytes());
                state.extend_from_slice(&1u64.to_le_bytes());
            }
        }
        Ok(())
    }

    fn merge(&self, state: &mut Vec<u8>, other: &[u8]) -> Result<(), EngineError> {
        let (a, b) = (&mut state[..], other);
        let put_f = |a: &mut [u8], v: f64| a[..8].copy_from_slice(&v.to_le_bytes());
        match self {
            Agg::Count => {
                let n = u64_at(a, 0)?.wrapping_add(u64_at(b, 0)?);
                a[..8].copy_from_slice(&n.to_le_bytes());
            }
            Agg::Sum => put_f(a, f64_at(a, 0)? + f64_at(b, 0)?),
            Agg::Min => put_f(a, f64_at(a, 0)?.min(f64_at(b, 0)?)),
            Agg::Max => put_f(a, f64_at(a, 0)?.max(f64_at(b, 0)?)),
            Agg::Avg => {
                let (s, n) = (f64_at(a, 0)? + f64_at(b, 0)?, u64_at(a, 8)? + u64_at(b, 8)?);
                put_f(a, s);
                a[8..16].copy_from_slice(&n.to_le_bytes());
            }
        }
        Ok(())
    }

    fn finish(&self, state: &[u8], out: &mut Vec<u8>) -> Result<(), EngineError> {
        use std::io::Write;
        let text = match self {
            Agg::Count => u64_at(state, 0)?.to_string(),
            Agg::Sum | Agg::Min | Agg::Max => f64_at(state, 0)?.to_string(),
            Agg::Avg => (f64_at(state, 0)? / u64_at(state, 8)?.max(1) as f64).to_string(),
        };
        out.write_all(text.as_bytes())
            .map_err(|e| EngineError::MalformedRecord {
                reason: e.to_string(),
            })
    }
}

/// Keys and their aggregation states (map-side combine, reduce-side merge).
pub(crate) struct CombineTable {
    agg: Arc<dyn Aggregator>,
    states: HashMap<Vec<u8>, Vec<u8>>,
    scratch: Vec<u8>,
    bytes: usize,
}

impl CombineTable {
    pub(crate) fn new(agg: Arc<dyn Aggregator>) -> Self {
        CombineTable {
            agg,
            states: HashMap::new(),
            scratch: Vec::new(),
            bytes: 0,
        }
    }

    /// Adds a (key, value) pair: the value's state is folded in (the map
    /// side's combine).
    pub(crate) fn add_value(&mut self, record: &[u8]) -> Result<(), EngineError> {
        let (key, value) = kv::decode(record)?;
        let mut state = std::mem::take(&mut self.scratch);
        let folded = self
            .agg
            .init(value, &mut state)
            .and_then(|()| self.fold(key, &state));
        self.scratch = state;
        folded
    }

    /// Adds a (key, state) pair, as a map-side combine emitted it (the
    /// reduce side's merge).
    pub(crate) fn add_state(&mut self, record: &[u8]) -> Result<(), EngineError> {
        let (key, state) = kv::decode(record)?;
        self.fold(key, state)
    }

    fn fold(&mut self, key: &[u8], incoming: &[u8]) -> Result<(), EngineError> {
        match self.states.get_mut(key) {
            Some(state) => self.agg.merge(state, incoming)?,
            None => {
                self.bytes += key.len() + incoming.len() + 64;
                self.states.insert(key.to_vec(), incoming.to_vec());
            }
        }
        Ok(())
    }

    /// Bytes held, roughly.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Every (key, state) pair, then empties the table.
    pub(crate) fn drain_states(
        &mut self,
        mut each: impl FnMut(&[u8]) -> Result<(), EngineError>,
    ) -> Result<(), EngineError> {
        let mut rec = Vec::new();
        for (k, v) in self.states.drain() {
            rec.clear();
            kv::encode(&k, &v, &mut rec);
            each(&rec)?;
        }
        self.bytes = 0;
        Ok(())
    }

    /// A cursor over the final (key, output) pairs, sorted by key.
    pub(crate) fn into_final(self) -> FinalCursor {
        let mut entries: Vec<(Vec<u8>, Vec<u8>)> = self.states.into_iter().collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        FinalCursor {
            agg: self.agg,
            entries: entries.into_iter(),
            value: Vec::new(),
            rec: Vec::new(),
        }
    }
}

/// Emits the final results of a [`CombineTable`].
pub(crate) struct FinalCursor {
    agg: Arc<dyn Aggregator>,
    entries: std::vec::IntoIter<(Vec<u8>, Vec<u8>)>,
    value: Vec<u8>,
    rec: Vec<u8>,
}

impl RecordCursor for FinalCursor {
    fn fill(&mut self, emit: &mut Downstream<'_>) -> Result<bool, EngineError> {
        for _ in 0..4096 {
            let Some((k, state)) = self.entries.next() else {
                return Ok(false);
            };
            self.value.clear();
            self.agg.finish(&state, &mut self.value)?;
            self.rec.clear();
            kv::encode(&k, &self.value, &mut self.rec);
            emit(&self.rec)?;
        }
        Ok(self.entries.len() > 0)
    }
}

/// A sort entry: the key's first 8 bytes (big-endian, zero-padded) to
/// decide most comparisons without touching the arena, then the record.
#[derive(Clone, Copy)]
struct Entry {
    prefix: u64,
    start: usize,
    len: u32,
}

/// A partition's pairs, buffered to be emitted in key order.
#[derive(Default)]
pub(crate) struct SortBuffer {
    arena: Vec<u8>,
    entries: Vec<Entry>,
}

impl SortBuffer {
    pub(crate) fn add(&mut self, record: &[u8]) -> Result<(), EngineError> {
        let (key, _) = kv::decode(record)?;
        let mut p = [0u8; 8];
        let n = key.len().min(8);
        p[..n].copy_from_slice(&key[..n]);
        let len = u32::try_from(record.len()).map_err(|_| EngineError::MalformedRecord {
            reason: format!("a {}-byte record", record.len()),
        })?;
        self.entries.push(Entry {
            prefix: u64::from_be_bytes(p),
            start: self.arena.len(),
            len,
        });
        self.arena.extend_from_slice(record);
        Ok(())
    }

    /// Sorts by key (stable for equal keys: arrival order) and returns a
    /// cursor over the records.
    pub(crate) fn into_sorted(mut self) -> SortedCursor {
        let arena = &self.arena;
        let key = |e: &Entry| -> &[u8] {
            let rec = &arena[e.start..e.start + e.len as usize];
            kv::decode(rec).map(|(k, _)| k).unwrap_or(rec)
        };
        // Unstable sort, made stable by the arrival offset as last resort.
        self.entries.sort_unstable_by(|a, b| {
            a.prefix
                .cmp(&b.prefix)
                .then_with(|| key(a).cmp(key(b)))
                .then(a.start.cmp(&b.start))
        });
        SortedCursor {
            buffer: self,
            next: 0,
        }
    }
}

pub(crate) struct SortedCursor {
    buffer: SortBuffer,
    next: usize,
}

impl RecordCursor for SortedCursor {
    fn fill(&mut self, emit: &mut Downstream<'_>) -> Result<bool, EngineError> {
        let end = (self.next + 4096).min(self.buffer.entries.len());
        for e in &self.buffer.entries[self.next..end] {
            emit(&self.buffer.arena[e.start..e.start + e.len as usize])?;
        }
        self.next = end;
        Ok(self.next < self.buffer.entries.len())
    }
}

/// The values of one key on each side of a join: `(left, right)`.
type Sides = (Vec<Vec<u8>>, Vec<Vec<u8>>);

/// Both inputs of a join, by key.
#[derive(Default)]
pub(crate) struct JoinTable {
    keys: HashMap<Vec<u8>, Sides>,
}

impl JoinTable {
    /// Adds a pair from input `side` (0: left, 1: right).
    pub(crate) fn add(&mut self, side: usize, record: &[u8]) -> Result<(), EngineError> {
        let (key, value) = kv::decode(record)?;
        let slot = match self.keys.get_mut(key) {
            Some(slot) => slot,
            None => self.keys.entry(key.to_vec()).or_default(),
        };
        if side == 0 { &mut slot.0 } else { &mut slot.1 }.push(value.to_vec());
        Ok(())
    }

    /// A cursor over the joined pairs `(key, kv(left value, right value))`,
    /// by key, then left then right arrival order.
    pub(crate) fn into_joined(self) -> JoinedCursor {
        let mut keys: Vec<_> = self
            .keys
            .into_iter()
            .filter(|(_, (l, r))| !l.is_empty() && !r.is_empty())
            .collect();
        keys.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        JoinedCursor {
            keys: keys.into_iter(),
            value: Vec::new(),
            rec: Vec::new(),
        }
    }
}

pub(crate) struct JoinedCursor {
    keys: std::vec::IntoIter<(Vec<u8>, Sides)>,
    value: Vec<u8>,
    rec: Vec<u8>,
}

impl RecordCursor for JoinedCursor {
    fn fill(&mut self, emit: &mut Downstream<'_>) -> Result<bool, EngineError> {
        let mut emitted = 0;
        while emitted < 4096 {
            let Some((key, (left, right))) = self.keys.next() else {
                return Ok(false);
            };
            for l in &left {
                for r in &right {
                    self.value.clear();
                    kv::encode(l, r, &mut self.value);
                    self.rec.clear();
                    kv::encode(&key, &self.value, &mut self.rec);
                    emit(&self.rec)?;
                    emitted += 1;
                }
            }
        }
        Ok(self.keys.len() > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataflow::source::drain;

    fn pair(k: &[u8], v: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        kv::encode(k, v, &mut out);
        out
    }

    #[test]
    fn partitioners_spread_by_hash_and_order_by_range() {
        let hash = Partitioner::Hash { partitions: 7 };
        assert_eq!(hash.partitions(), 7);
        let p = hash.partition(&pair(b"word", b"")).expect("pair");
        assert_eq!(p.0, hash_partition(b"word", 7));
        assert!(hash.partition(&[200]).is_err());

        let sample: Vec<Vec<u8>> = (0u8..100).rev().map(|i| vec![i]).collect();
        let range = Partitioner::range_from_sample(sample, 4);
        assert_eq!(range.partitions(), 4);
        let parts: Vec<u32> = (0u8..100).map(|i| range.partition_of_key(&[i])).collect();
        assert!(parts.windows(2).all(|w| w[0] <= w[1]), "monotone");
        assert_eq!((parts[0], parts[99]), (0, 3));
        assert_eq!(Partitioner::range_from_sample(Vec::new(), 4).partitions(), 1);
    }

    #[test]
    fn hash_partitions_are_pinned() {
        // Computed with the engine's former FNV-1a of its own: a key's
        // partition must not move (workers and stored shuffles agree on it).
        let pinned: [(&[u8], u32, u32); 6] = [
            (b"", 7, 2),
            (b"word", 7, 2),
            (b"hello", 16, 11),
            (&[0x00, 0xff], 3, 2),
            (b"the quick brown fox", 64, 34),
            (&[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], 1000, 378),
        ];
        for (key, partitions, expected) in pinned {
            assert_eq!(hash_partition(key, partitions), expected, "{key:?}");
        }
        assert_eq!(hash_partition(b"word", 0), hash_partition(b"word", 1));
        assert_eq!(
            hash_partition(b"the quick brown fox", 1 << 20),
            (0x59ae_b7b4_0bd8_c122u64 % (1 << 20)) as u32
        );
    }

    fn num(v: f64) -> Vec<u8> {
        kv::row([&v.to_le_bytes()[..]])
    }

    fn aggregate(agg: Agg, values: &[f64]) -> String {
        // Two "maps" combine halves, the "reducer" merges their states.
        let mut reduce = CombineTable::new(Arc::new(agg));
        for half in values.chunks(values.len().div_ceil(2).max(1)) {
            let mut map = CombineTable::new(Arc::new(agg));
            for v in half {
                map.add_value(&pair(b"k", &num(*v))).expect("add");
            }
            map.drain_states(|s| reduce.add_state(s)).expect("drain");
        }
        let out = drain(Box::new(reduce.into_final()));
        assert_eq!(out.len(), 1);
        let (k, v) = kv::decode(&out[0]).expect("pair");
        assert_eq!(k, b"k");
        String::from_utf8(v.to_vec()).expect("text")
    }

    #[test]
    fn aggregations_combine_then_merge() {
        let values = [3.0, -1.5, 10.0, 4.5];
        assert_eq!(aggregate(Agg::Count, &values), "4");
        assert_eq!(aggregate(Agg::Sum, &values), "16");
        assert_eq!(aggregate(Agg::Min, &values), "-1.5");
        assert_eq!(aggregate(Agg::Max, &values), "10");
        assert_eq!(aggregate(Agg::Avg, &values), "4");
        let mut t = CombineTable::new(Arc::new(Agg::Sum));
        assert!(t.add_value(&pair(b"k", b"not a row")).is_err());
        assert!(
            t.add_state(&pair(b"k", &[1, 2, 3])).is_ok(),
            "a state is taken as is"
        );
    }

    #[test]
    fn aggregations_parse_by_their_json_names() {
        assert_eq!("sum".parse::<Agg>(), Ok(Agg::Sum));
        assert_eq!("avg".parse::<Agg>(), Ok(Agg::Avg));
        assert!("Sum".parse::<Agg>().is_err_and(|e| e.contains("count")));
    }

    #[test]
    fn sort_orders_by_whole_key_beyond_the_prefix() {
        let mut buf = SortBuffer::default();
        for k in [&b"abcdefgh2"[..], b"b", b"abcdefgh1", b"", b"abc"] {
            buf.add(&pair(k, b"v")).expect("add");
        }
        let keys: Vec<Vec<u8>> = drain(Box::new(buf.into_sorted()))
            .iter()
            .map(|r| kv::decode(r).expect("pair").0.to_vec())
            .collect();
        assert_eq!(
            keys,
            vec![
                b"".to_vec(),
                b"abc".to_vec(),
                b"abcdefgh1".to_vec(),
                b"abcdefgh2".to_vec(),
                b"b".to_vec()
            ]
        );
    }

    #[test]
    fn join_emits_the_inner_product_per_key() {
        let mut t = JoinTable::default();
        t.add(0, &pair(b"a", b"l1")).expect("add");
        t.add(0, &pair(b"a", b"l2")).expect("add");
        t.add(1, &pair(b"a", b"r1")).expect("add");
        t.add(0, &pair(b"only-left", b"x")).expect("add");
        t.add(1, &pair(b"only-right", b"y")).expect("add");
        let out: Vec<(Vec<u8>, Vec<u8>)> = drain(Box::new(t.into_joined()))
            .iter()
            .map(|r| {
                let (k, both) = kv::decode(r).expect("pair");
                let (l, r) = kv::decode(both).expect("pair");
                (k.to_vec(), [l, b"+", r].concat())
            })
            .collect();
        assert_eq!(
            out,
            vec![
                (b"a".to_vec(), b"l1+r1".to_vec()),
                (b"a".to_vec(), b"l2+r1".to_vec())
            ]
        );
    }
}
