//! The sealed-shuffle metadata file, `shuffle.meta` (layout in
//! `protocol/FORMAT.md`, "Sealed shuffle metadata").
//!
//! Written once, when the last map commits; read at start-up to serve the
//! shuffle again. It holds what lived only in memory: the committed attempt
//! and manifest of every map, and the index entries of exactly the committed
//! blocks of every partition, in (map, seq) order.
//!
//! Pure code over [`Buf`]/[`BufMut`]: the decoder checks every length before
//! allocating, validates every field against the shuffle's spec and the
//! manifests, checks a trailing CRC32C, and never panics on any input.

use bytes::{Buf, BufMut};
use protocol::block::BLOCK_HEADER_LEN;
use protocol::{
    AppId, AttemptId, CommitManifest, MapId, PartitionId, ProtocolError, ShuffleId, ShuffleMode, ShuffleSpec,
};

use super::index::{IndexEntry, PlannedBlock};

/// First four bytes of a meta file.
pub(crate) const META_MAGIC: [u8; 4] = *b"RSSM";
/// Format version written by this code.
pub(crate) const META_VERSION: u16 = 1;
/// magic + version
const PREAMBLE_LEN: usize = 6;
/// map, attempt, seq, offset, len, crc
const INDEX_ENTRY_LEN: u64 = 4 + 4 + 4 + 8 + 4 + 4;
/// A map needs at least its attempt and its manifest count.
const MIN_MAP_LEN: u64 = 8;
/// A partition needs at least its entry count.
const MIN_PARTITION_LEN: u64 = 4;

const WHAT: &str = "shuffle meta";

/// Everything needed to serve a sealed shuffle again.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) struct SealedMeta {
    pub app: AppId,
    pub shuffle: ShuffleId,
    pub spec: ShuffleSpec,
    /// Per map, in map order: its committed attempt and manifest.
    pub commits: Vec<(AttemptId, CommitManifest)>,
    /// Per partition: the committed attempts' blocks, in (map, seq) order.
    pub partitions: Vec<Vec<PlannedBlock>>,
}

/// Appends the encoded meta, trailing CRC32C included. Fails, writing
/// nothing, only when a count does not fit its `u32` field.
pub(crate) fn encode(meta: &SealedMeta, out: &mut impl BufMut) -> Result<(), ProtocolError> {
    let mut body = Vec::new();
    body.put_slice(&META_MAGIC);
    body.put_u16_le(META_VERSION);
    let app = meta.app.as_str().as_bytes();
    body.put_u16_le(count_u16(app.len(), "app id length")?);
    body.put_slice(app);
    body.put_u32_le(meta.shuffle.0);
    body.put_u32_le(meta.spec.num_maps());
    body.put_u32_le(meta.spec.num_partitions());
    body.put_u8(meta.spec.mode().code());
    for (attempt, manifest) in &meta.commits {
        body.put_u32_le(attempt.0);
        body.put_u32_le(count_u32(manifest.entries().len(), "manifest entries")?);
        for (partition, blocks) in manifest.entries() {
            body.put_u32_le(partition.0);
            body.put_u32_le(*blocks);
        }
    }
    for blocks in &meta.partitions {
        body.put_u32_le(count_u32(blocks.len(), "index entries")?);
        for b in blocks {
            body.put_u32_le(b.map.0);
            body.put_u32_le(b.attempt.0);
            body.put_u32_le(b.seq);
            body.put_u64_le(b.entry.offset);
            body.put_u32_le(b.entry.len);
            body.put_u32_le(b.entry.crc);
        }
    }
    let crc = crc32c::crc32c(&body);
    out.put_slice(&body);
    out.put_u32_le(crc);
    Ok(())
}

fn count_u32(n: usize, what: &'static str) -> Result<u32, ProtocolError> {
    u32::try_from(n).map_err(|_| out_of_range(what, n, u64::from(u32::MAX)))
}

fn count_u16(n: usize, what: &'static str) -> Result<u16, ProtocolError> {
    u16::try_from(n).map_err(|_| out_of_range(what, n, u64::from(u16::MAX)))
}

fn out_of_range(what: &'static str, n: usize, max: u64) -> ProtocolError {
    ProtocolError::OutOfRange {
        what,
        value: n as u64,
        allowed: format!("0..={max}"),
    }
}

/// The format version of a meta written by a newer server than this one
/// (magic right, version above [`META_VERSION`]); `None` otherwise. Such a
/// file is left alone, not decoded.
pub(crate) fn newer_version(bytes: &[u8]) -> Option<u16> {
    if bytes.len() < PREAMBLE_LEN || bytes[..4] != META_MAGIC {
        return None;
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    (version > META_VERSION).then_some(version)
}

/// Decodes and validates a whole meta file: `buf` must hold exactly one
/// meta, trailing CRC32C included.
pub(crate) fn decode(buf: &mut impl Buf) -> Result<SealedMeta, ProtocolError> {
    // Zero-copy when `buf` is `Bytes`; otherwise bounded by the input size.
    let all = buf.copy_to_bytes(buf.remaining());
    if all.len() < PREAMBLE_LEN + 4 {
        return Err(truncated(
            "meta preamble and checksum",
            (PREAMBLE_LEN + 4) as u64,
            all.len(),
        ));
    }
    if all[..4] != META_MAGIC {
        return Err(malformed(format!("bad magic {:02x?}", &all[..4])));
    }
    let version = u16::from_le_bytes([all[4], all[5]]);
    if version != META_VERSION {
        return Err(malformed(format!("unsupported version {version}")));
    }
    let (body, tail) = all.split_at(all.len() - 4);
    let stored = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
    let actual = crc32c::crc32c(body);
    if stored != actual {
        return Err(malformed(format!(
            "checksum mismatch: stored {stored:#010x}, computed {actual:#010x}"
        )));
    }
    let mut r = &body[PREAMBLE_LEN..];
    let meta = decode_fields(&mut r)?;
    if !r.is_empty() {
        return Err(ProtocolError::TrailingBytes {
            what: WHAT,
            count: r.len() as u64,
        });
    }
    Ok(meta)
}

fn decode_fields(r: &mut &[u8]) -> Result<SealedMeta, ProtocolError> {
    let app_len = usize::from(get_u16(r, "app id length")?);
    need(r, app_len as u64, "app id")?;
    let (raw, rest) = r.split_at(app_len);
    *r = rest;
    let app = std::str::from_utf8(raw).map_err(|_| malformed("app id is not UTF-8".into()))?;
    let app = AppId::new(app)?;
    let shuffle = ShuffleId(get_u32(r, "shuffle id")?);
    let num_maps = get_u32(r, "num_maps")?;
    let num_partitions = get_u32(r, "num_partitions")?;
    let mode = ShuffleMode::from_code(get_u8(r, "mode")?)?;
    let spec = ShuffleSpec::new(num_maps, num_partitions, mode)?;
    // Bounds every allocation below by the input size.
    need(
        r,
        u64::from(num_maps) * MIN_MAP_LEN + u64::from(num_partitions) * MIN_PARTITION_LEN,
        "maps and partitions",
    )?;
    let mut commits = Vec::with_capacity(num_maps as usize);
    // Blocks each partition's index must list, from the manifests.
    let mut expected = vec![0u64; num_partitions as usize];
    for _ in 0..num_maps {
        let attempt = AttemptId(get_u32(r, "committed attempt")?);
        let count = get_u32(r, "manifest entry count")?;
        need(r, u64::from(count) * 8, "manifest entries")?;
        let mut entries = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let partition = PartitionId(get_u32(r, "manifest partition")?);
            let blocks = get_u32(r, "manifest block count")?;
            entries.push((partition, blocks));
        }
        let manifest = CommitManifest::from_sparse(entries)?;
        manifest.check_against(&spec)?;
        for (partition, blocks) in manifest.entries() {
            expected[partition.index()] += u64::from(*blocks);
        }
        commits.push((attempt, manifest));
    }
    let mut partitions = Vec::with_capacity(num_partitions as usize);
    for (p, want) in (0..num_partitions).map(PartitionId).zip(expected) {
        let count = get_u32(r, "index entry count")?;
        if u64::from(count) != want {
            return Err(malformed(format!(
                "{p} lists {count} index entries, its manifests name {want} blocks"
            )));
        }
        need(r, u64::from(count) * INDEX_ENTRY_LEN, "index entries")?;
        let mut blocks = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let block = PlannedBlock {
                map: MapId(get_u32(r, "index map")?),
                attempt: AttemptId(get_u32(r, "index attempt")?),
                seq: get_u32(r, "index seq")?,
                entry: IndexEntry {
                    offset: get_u64(r, "index offset")?,
                    len: get_u32(r, "index len")?,
                    crc: get_u32(r, "index crc")?,
                },
            };
            check_entry(&commits, p, blocks.last(), &block)?;
            blocks.push(block);
        }
        partitions.push(blocks);
    }
    Ok(SealedMeta {
        app,
        shuffle,
        spec,
        commits,
        partitions,
    })
}

/// An entry must be a block of its map's committed attempt named by that
/// attempt's manifest, after the previous entry in (map, seq) order, and lie
/// within a file (no overflowing end). With the count checked against the
/// manifests, this makes the entries exactly the committed blocks.
fn check_entry(
    commits: &[(AttemptId, CommitManifest)],
    partition: PartitionId,
    previous: Option<&PlannedBlock>,
    b: &PlannedBlock,
) -> Result<(), ProtocolError> {
    let Some((attempt, manifest)) = commits.get(b.map.index()) else {
        return Err(malformed(format!("{partition}: index names unknown {}", b.map)));
    };
    if b.attempt != *attempt {
        return Err(malformed(format!(
            "{partition}: index names {} of {}, committed is {attempt}",
            b.attempt, b.map
        )));
    }
    if b.seq >= manifest.count(partition) {
        return Err(malformed(format!(
            "{partition}: index names seq {} of {}, beyond its manifest",
            b.seq, b.map
        )));
    }
    if previous.is_some_and(|prev| (prev.map, prev.seq) >= (b.map, b.seq)) {
        return Err(malformed(format!(
            "{partition}: index entries not in (map, seq) order at {} seq {}",
            b.map, b.seq
        )));
    }
    if (b.entry.len as usize) < BLOCK_HEADER_LEN
        || b.entry.offset.checked_add(u64::from(b.entry.len)).is_none()
    {
        return Err(malformed(format!(
            "{partition}: entry of {} seq {} has offset {} and length {}",
            b.map, b.seq, b.entry.offset, b.entry.len
        )));
    }
    Ok(())
}

fn malformed(reason: String) -> ProtocolError {
    ProtocolError::Malformed { what: WHAT, reason }
}

fn truncated(what: &'static str, needed: u64, available: usize) -> ProtocolError {
    ProtocolError::Truncated {
        what,
        needed,
        available: available as u64,
    }
}

fn need(r: &[u8], n: u64, what: &'static str) -> Result<(), ProtocolError> {
    if (r.len() as u64) < n {
        return Err(truncated(what, n, r.len()));
    }
    Ok(())
}

fn get_u8(r: &mut &[u8], what: &'static str) -> Result<u8, ProtocolError> {
    need(r, 1, what)?;
    Ok(r.get_u8())
}

fn get_u16(r: &mut &[u8], what: &'static str) -> Result<u16, ProtocolError> {
    need(r, 2, what)?;
    Ok(r.get_u16_le())
}

fn get_u32(r: &mut &[u8], what: &'static str) -> Result<u32, ProtocolError> {
    need(r, 4, what)?;
    Ok(r.get_u32_le())
}

fn get_u64(r: &mut &[u8], what: &'static str) -> Result<u64, ProtocolError> {
    need(r, 8, what)?;
    Ok(r.get_u64_le())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A valid meta: `counts[map][partition]` blocks per committed attempt.
    fn meta_of(app: &str, shuffle: u32, attempts: &[u32], counts: &[Vec<u32>], offsets: u64) -> SealedMeta {
        let num_partitions = counts.first().map_or(1, Vec::len) as u32;
        let spec =
            ShuffleSpec::new(attempts.len() as u32, num_partitions, ShuffleMode::Blocking).expect("spec");
        let commits: Vec<(AttemptId, CommitManifest)> = attempts
            .iter()
            .zip(counts)
            .map(|(a, c)| (AttemptId(*a), CommitManifest::from_dense(c)))
            .collect();
        let mut offset = offsets;
        let partitions = (0..num_partitions as usize)
            .map(|p| {
                let mut blocks = Vec::new();
                for (m, (attempt, _)) in commits.iter().enumerate() {
                    for seq in 0..counts[m][p] {
                        let len = 44 + (offset % 97) as u32;
                        blocks.push(PlannedBlock {
                            map: MapId(m as u32),
                            attempt: *attempt,
                            seq,
                            entry: IndexEntry {
                                offset,
                                len,
                                crc: (offset as u32).rotate_left(seq),
                            },
                        });
                        offset += u64::from(len);
                    }
                }
                blocks
            })
            .collect();
        SealedMeta {
            app: AppId::new(app).expect("app"),
            shuffle: ShuffleId(shuffle),
            spec,
            commits,
            partitions,
        }
    }

    fn encoded(meta: &SealedMeta) -> Vec<u8> {
        let mut out = Vec::new();
        encode(meta, &mut out).expect("encode");
        out
    }

    fn sample() -> SealedMeta {
        meta_of(
            "app-1",
            9,
            &[0, 2, 1],
            &[vec![2, 0, 1], vec![0, 0, 0], vec![1, 3, 0]],
            0,
        )
    }

    #[test]
    fn a_sample_round_trips_and_ends_with_its_crc() {
        let meta = sample();
        let bytes = encoded(&meta);
        assert_eq!(&bytes[..4], b"RSSM");
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        assert_eq!(crc, crc32c::crc32c(body).to_le_bytes());
        assert_eq!(decode(&mut &bytes[..]), Ok(meta));
    }

    /// Re-encodes `meta` after `change`: a valid CRC over invalid content,
    /// which only the structural checks can refuse.
    fn refused_after(change: impl FnOnce(&mut SealedMeta)) -> ProtocolError {
        let mut meta = sample();
        change(&mut meta);
        decode(&mut &encoded(&meta)[..]).expect_err("must be refused")
    }

    #[test]
    fn index_entries_must_be_exactly_the_committed_blocks() {
        refused_after(|m| {
            m.partitions[0].pop();
        });
        refused_after(|m| m.partitions[0].swap(0, 1));
        refused_after(|m| m.partitions[0][0].attempt = AttemptId(7));
        refused_after(|m| m.partitions[1][0].seq = 3);
        refused_after(|m| m.partitions[0][0].entry.len = 10);
        refused_after(|m| m.partitions[0][0].entry.offset = u64::MAX - 10);
        refused_after(|m| {
            let dup = m.partitions[0][0];
            m.partitions[0][1] = dup;
        });
        refused_after(|m| m.partitions.push(Vec::new()));
        refused_after(|m| {
            m.commits.pop();
        });
        refused_after(|m| m.spec = ShuffleSpec::new(3, 2, ShuffleMode::Blocking).expect("spec"));
    }

    #[test]
    fn hostile_counts_are_refused_before_allocating() {
        // num_maps = num_partitions = 2^20 with nothing behind them.
        let mut body = Vec::new();
        body.put_slice(&META_MAGIC);
        body.put_u16_le(META_VERSION);
        body.put_u16_le(1);
        body.put_u8(b'a');
        body.put_u32_le(1);
        body.put_u32_le(1 << 20);
        body.put_u32_le(1 << 20);
        body.put_u8(0);
        let crc = crc32c::crc32c(&body);
        body.put_u32_le(crc);
        assert!(matches!(
            decode(&mut &body[..]),
            Err(ProtocolError::Truncated { .. })
        ));
        // A valid meta whose first manifest claims u32::MAX entries.
        let meta = meta_of("a", 1, &[0], &[vec![1]], 0);
        let mut bytes = encoded(&meta);
        let at = PREAMBLE_LEN + 2 + 1 + 13 + 4;
        bytes[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let n = bytes.len() - 4;
        let crc = crc32c::crc32c(&bytes[..n]);
        bytes[n..].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            decode(&mut &bytes[..]),
            Err(ProtocolError::Truncated { .. })
        ));
    }

    #[test]
    fn other_versions_and_trailing_bytes_are_refused() {
        let mut bytes = encoded(&sample());
        bytes[4] = 2;
        assert!(decode(&mut &bytes[..]).is_err());
        let mut bytes = encoded(&sample());
        bytes.push(0);
        assert!(decode(&mut &bytes[..]).is_err());
        assert!(decode(&mut &b""[..]).is_err());
    }

    fn arb_meta() -> impl Strategy<Value = SealedMeta> {
        (1usize..5, 1usize..5)
            .prop_flat_map(|(maps, parts)| {
                (
                    "[A-Za-z0-9_-]{1,24}",
                    any::<u32>(),
                    proptest::collection::vec(any::<u32>(), maps),
                    proptest::collection::vec(proptest::collection::vec(0u32..4, parts), maps),
                    0u64..(1 << 40),
                )
            })
            .prop_map(|(app, shuffle, attempts, counts, offset)| {
                meta_of(&app, shuffle, &attempts, &counts, offset)
            })
    }

    proptest! {
        #[test]
        fn metas_round_trip(meta in arb_meta()) {
            let bytes = encoded(&meta);
            prop_assert_eq!(decode(&mut bytes::Bytes::from(bytes)), Ok(meta));
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(&mut &data[..]);
        }

        /// Past the CRC, with arbitrary content: exercises every structural check.
        #[test]
        fn arbitrary_bodies_with_a_valid_crc_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut bytes = Vec::new();
            bytes.put_slice(&META_MAGIC);
            bytes.put_u16_le(META_VERSION);
            bytes.put_slice(&data);
            let crc = crc32c::crc32c(&bytes);
            bytes.put_u32_le(crc);
            let _ = decode(&mut &bytes[..]);
        }

        #[test]
        fn every_single_bit_flip_is_refused(meta in arb_meta(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut bytes = encoded(&meta);
            let i = at.index(bytes.len());
            bytes[i] ^= 1 << bit;
            prop_assert!(decode(&mut &bytes[..]).is_err());
        }

        #[test]
        fn every_truncation_is_refused(meta in arb_meta(), at in any::<prop::sample::Index>()) {
            let bytes = encoded(&meta);
            let cut = at.index(bytes.len());
            prop_assert!(decode(&mut &bytes[..cut]).is_err());
        }
    }
}
