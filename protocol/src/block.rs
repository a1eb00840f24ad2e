//! The block: the unit a map attempt pushes and a reader fetches.
//!
//! A block is a 44-byte header followed by the stored payload (see
//! `FORMAT.md`). The payload is the raw record bytes ([`crate::records`]),
//! LZ4-compressed when that makes it smaller, and covered by a CRC32C.
//! Blocks are stored on disk exactly as they travel on the wire, so the
//! partition files are self-describing.

use std::fmt;

use bytes::{Buf, BufMut, Bytes};

use crate::records::RecordIter;
pub use crate::records::MAX_BLOCK_RAW_LEN;
use crate::{wire, AttemptId, MapId, PartitionId, ProtocolError, ShuffleId};

/// First four bytes of every block.
pub const BLOCK_MAGIC: [u8; 4] = *b"RSBK";
/// Block format version written by this crate.
pub const BLOCK_FORMAT_VERSION: u8 = 1;
/// Size of the encoded header.
pub const BLOCK_HEADER_LEN: usize = 44;

/// How a block's payload is stored.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Codec {
    /// Stored as is.
    None,
    /// LZ4 block format (no frame, no size prefix).
    Lz4,
}

impl Codec {
    fn code(self) -> u8 {
        match self {
            Codec::None => 0,
            Codec::Lz4 => 1,
        }
    }

    fn from_code(code: u8) -> Result<Self, ProtocolError> {
        match code {
            0 => Ok(Codec::None),
            1 => Ok(Codec::Lz4),
            codec => Err(ProtocolError::UnknownCodec { codec }),
        }
    }
}

/// The identity of a block: which attempt of which map wrote it, to which
/// partition, at which position of that (map, partition) sequence.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct BlockId {
    pub shuffle: ShuffleId,
    pub map: MapId,
    pub attempt: AttemptId,
    pub partition: PartitionId,
    /// Position of the block in its (map attempt, partition) sequence, from 0.
    pub seq: u32,
}

impl fmt::Display for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}/{}/seq-{}",
            self.shuffle, self.map, self.attempt, self.partition, self.seq
        )
    }
}

/// The decoded block header.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct BlockHeader {
    pub id: BlockId,
    pub codec: Codec,
    /// Number of records in the payload.
    pub record_count: u32,
    /// Length of the payload once decompressed.
    pub raw_len: u32,
    /// Length of the payload as stored (after the header).
    pub stored_len: u32,
    /// CRC32C of the stored payload.
    pub crc: u32,
}

impl BlockHeader {
    /// Writes the 44-byte header.
    pub fn encode(&self, out: &mut impl BufMut) {
        out.put_slice(&BLOCK_MAGIC);
        out.put_u8(BLOCK_FORMAT_VERSION);
        out.put_u8(self.codec.code());
        out.put_u16_le(0); // flags, reserved
        out.put_u32_le(self.id.shuffle.0);
        out.put_u32_le(self.id.map.0);
        out.put_u32_le(self.id.attempt.0);
        out.put_u32_le(self.id.partition.0);
        out.put_u32_le(self.id.seq);
        out.put_u32_le(self.record_count);
        out.put_u32_le(self.raw_len);
        out.put_u32_le(self.stored_len);
        out.put_u32_le(self.crc);
    }

    /// Reads and validates a header. Lengths are checked against the format
    /// limits here, so nothing downstream allocates on a hostile value.
    pub fn decode(buf: &mut impl Buf) -> Result<Self, ProtocolError> {
        wire::need(buf, BLOCK_HEADER_LEN, "block header")?;
        let mut magic = [0u8; 4];
        buf.copy_to_slice(&mut magic);
        if magic != BLOCK_MAGIC {
            return Err(ProtocolError::BadMagic { found: magic });
        }
        let version = buf.get_u8();
        if version != BLOCK_FORMAT_VERSION {
            return Err(ProtocolError::UnsupportedVersion { version });
        }
        let codec = Codec::from_code(buf.get_u8())?;
        let flags = buf.get_u16_le();
        if flags != 0 {
            return Err(ProtocolError::malformed(
                "block header",
                format!("reserved flags {flags:#06x} are set"),
            ));
        }
        let id = BlockId {
            shuffle: ShuffleId(buf.get_u32_le()),
            map: MapId(buf.get_u32_le()),
            attempt: AttemptId(buf.get_u32_le()),
            partition: PartitionId(buf.get_u32_le()),
            seq: buf.get_u32_le(),
        };
        let header = BlockHeader {
            id,
            record_count: buf.get_u32_le(),
            codec,
            raw_len: buf.get_u32_le(),
            stored_len: buf.get_u32_le(),
            crc: buf.get_u32_le(),
        };
        header.check_lengths()?;
        Ok(header)
    }

    fn check_lengths(&self) -> Result<(), ProtocolError> {
        if self.raw_len > MAX_BLOCK_RAW_LEN {
            return Err(ProtocolError::OutOfRange {
                what: "block raw length",
                value: u64::from(self.raw_len),
                allowed: format!("0..={MAX_BLOCK_RAW_LEN}"),
            });
        }
        let consistent = match self.codec {
            Codec::None => self.stored_len == self.raw_len,
            Codec::Lz4 => self.stored_len < self.raw_len,
        };
        if !consistent {
            return Err(ProtocolError::malformed(
                "block header",
                format!(
                    "{:?} block stores {} bytes for {} raw bytes",
                    self.codec, self.stored_len, self.raw_len
                ),
            ));
        }
        Ok(())
    }
}

/// A block: header plus stored payload (zero-copy where the source allows).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Block {
    pub header: BlockHeader,
    pub payload: Bytes,
}

impl Block {
    /// Builds a block from a raw payload of `record_count` framed records.
    /// With `compress`, the payload is LZ4-compressed when that shrinks it;
    /// otherwise (or when it does not shrink) it is stored raw.
    pub fn seal(id: BlockId, raw: Vec<u8>, record_count: u32, compress: bool) -> Result<Self, ProtocolError> {
        if raw.len() > MAX_BLOCK_RAW_LEN as usize {
            return Err(ProtocolError::OutOfRange {
                what: "block raw length",
                value: raw.len() as u64,
                allowed: format!("0..={MAX_BLOCK_RAW_LEN}"),
            });
        }
        let raw_len = raw.len() as u32;
        let compressed = if compress && !raw.is_empty() {
            let mut out = vec![0u8; lz4_flex::block::get_maximum_output_size(raw.len())];
            match lz4_flex::block::compress_into(&raw, &mut out) {
                Ok(n) if n < raw.len() => {
                    // Give back the worst-case room: a block in flight
                    // should hold its compressed size, not its raw size.
                    out.truncate(n);
                    out.shrink_to_fit();
                    Some(out)
                }
                _ => None,
            }
        } else {
            None
        };
        let (codec, payload) = match compressed {
            Some(c) => (Codec::Lz4, Bytes::from(c)),
            None => (Codec::None, Bytes::from(raw)),
        };
        Ok(Block {
            header: BlockHeader {
                id,
                codec,
                record_count,
                raw_len,
                stored_len: payload.len() as u32,
                crc: crc32c::crc32c(&payload),
            },
            payload,
        })
    }

    /// The block's identity.
    pub fn id(&self) -> BlockId {
        self.header.id
    }

    /// Header plus payload length.
    pub fn encoded_len(&self) -> usize {
        BLOCK_HEADER_LEN + self.payload.len()
    }

    /// Writes header and payload.
    pub fn encode(&self, out: &mut impl BufMut) {
        self.header.encode(out);
        out.put_slice(&self.payload);
    }

    /// Reads one block. The checksum is not verified here: call
    /// [`Block::verify`] (or [`Block::decompress`], which does).
    pub fn decode(buf: &mut impl Buf) -> Result<Self, ProtocolError> {
        let header = BlockHeader::decode(buf)?;
        let payload = wire::bytes(buf, header.stored_len as usize, "block payload")?;
        Ok(Block { header, payload })
    }

    /// Checks the payload against the header's CRC32C.
    pub fn verify(&self) -> Result<(), ProtocolError> {
        let actual = crc32c::crc32c(&self.payload);
        if actual != self.header.crc {
            return Err(ProtocolError::ChecksumMismatch {
                block: self.header.id,
                expected: self.header.crc,
                actual,
            });
        }
        Ok(())
    }

    /// Verifies the checksum and returns the raw payload.
    pub fn decompress(&self) -> Result<Bytes, ProtocolError> {
        self.verify()?;
        self.decompress_verified()
    }

    /// Returns the raw payload without checking the CRC again: only for a
    /// block whose checksum was verified since it was read (a storage
    /// reader verifies every block it returns).
    pub fn decompress_verified(&self) -> Result<Bytes, ProtocolError> {
        match self.header.codec {
            Codec::None => Ok(self.payload.clone()),
            Codec::Lz4 => {
                let mut out = vec![0u8; self.header.raw_len as usize];
                match lz4_flex::block::decompress_into(&self.payload, &mut out) {
                    Ok(n) if n == out.len() => Ok(Bytes::from(out)),
                    Ok(n) => Err(ProtocolError::Decompress {
                        block: self.header.id,
                        reason: format!("{n} bytes instead of {}", self.header.raw_len),
                    }),
                    Err(e) => Err(ProtocolError::Decompress {
                        block: self.header.id,
                        reason: e.to_string(),
                    }),
                }
            }
        }
    }

    /// Verifies, decompresses and iterates the block's records.
    pub fn records(&self) -> Result<RecordIter, ProtocolError> {
        Ok(RecordIter::new(self.decompress()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records;
    use bytes::BytesMut;
    use proptest::prelude::*;

    fn id(seq: u32) -> BlockId {
        BlockId {
            shuffle: ShuffleId(1),
            map: MapId(2),
            attempt: AttemptId(3),
            partition: PartitionId(4),
            seq,
        }
    }

    fn raw_of(recs: &[Vec<u8>]) -> Vec<u8> {
        let mut raw = Vec::new();
        for r in recs {
            records::append(&mut raw, r).expect("fits");
        }
        raw
    }

    #[test]
    fn header_is_44_bytes() {
        let block = Block::seal(id(0), b"abc".to_vec(), 0, false).expect("seal");
        let mut out = BytesMut::new();
        block.header.encode(&mut out);
        assert_eq!(out.len(), BLOCK_HEADER_LEN);
    }

    #[test]
    fn compressible_payload_is_compressed_and_incompressible_is_raw() {
        let zeros = raw_of(&[vec![0u8; 10_000]]);
        let b = Block::seal(id(0), zeros.clone(), 1, true).expect("seal");
        assert_eq!(b.header.codec, Codec::Lz4);
        assert!(b.payload.len() < zeros.len() / 10);
        assert_eq!(b.decompress().expect("ok"), Bytes::from(zeros));

        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..1000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        let b = Block::seal(id(1), noise.clone(), 0, true).expect("seal");
        assert_eq!(b.header.codec, Codec::None);
        assert_eq!(b.payload, Bytes::from(noise));
    }

    #[test]
    fn a_flipped_payload_bit_is_a_checksum_mismatch_naming_the_block() {
        let mut b = Block::seal(id(7), raw_of(&[b"hello".to_vec()]), 1, true).expect("seal");
        let mut p = b.payload.to_vec();
        p[0] ^= 1;
        b.payload = Bytes::from(p);
        match b.decompress() {
            Err(ProtocolError::ChecksumMismatch { block, .. }) => assert_eq!(block, id(7)),
            other => panic!("expected checksum mismatch, got {other:?}"),
        }
    }

    #[test]
    fn hostile_headers_are_refused_before_allocation() {
        let b = Block::seal(id(0), b"abcdef".to_vec(), 0, false).expect("seal");
        let mut enc = BytesMut::new();
        b.encode(&mut enc);
        // raw_len of 4 GiB - 1.
        let mut huge = enc.clone();
        huge[32..36].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Block::decode(&mut huge.freeze()),
            Err(ProtocolError::OutOfRange { .. })
        ));
        let mut bad_magic = enc.clone();
        bad_magic[0] = b'X';
        assert!(matches!(
            Block::decode(&mut bad_magic.freeze()),
            Err(ProtocolError::BadMagic { .. })
        ));
        let mut lz4_longer = enc.clone();
        lz4_longer[5] = 1;
        assert!(matches!(
            Block::decode(&mut lz4_longer.freeze()),
            Err(ProtocolError::Malformed { .. })
        ));
        let short = enc.split_to(enc.len() - 1);
        assert!(matches!(
            Block::decode(&mut short.freeze()),
            Err(ProtocolError::Truncated { .. })
        ));
    }

    proptest! {
        #[test]
        fn blocks_round_trip(
            recs in proptest::collection::vec(proptest::collection::vec(0u8..4, 0..200), 0..40),
            compress in any::<bool>(),
            seq in any::<u32>(),
        ) {
            let raw = raw_of(&recs);
            let block = Block::seal(id(seq), raw.clone(), recs.len() as u32, compress).expect("seal");
            let mut enc = BytesMut::new();
            block.encode(&mut enc);
            prop_assert_eq!(enc.len(), block.encoded_len());
            let mut wire = enc.freeze();
            let back = Block::decode(&mut wire).expect("decode");
            prop_assert!(!wire.has_remaining());
            prop_assert_eq!(&back, &block);
            prop_assert_eq!(back.decompress().expect("valid"), Bytes::from(raw));
            let got: Vec<Vec<u8>> = back.records().expect("valid").map(|r| r.expect("rec").to_vec()).collect();
            prop_assert_eq!(got, recs);
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_block_decoder(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut buf = Bytes::from(data);
            if let Ok(block) = Block::decode(&mut buf) {
                let _ = block.decompress();
            }
        }

        #[test]
        fn corrupted_valid_blocks_never_panic(idx in any::<prop::sample::Index>(), bit in 0u8..8) {
            let raw = raw_of(&[vec![1u8; 300], b"xyz".to_vec()]);
            let block = Block::seal(id(0), raw, 2, true).expect("seal");
            let mut enc = BytesMut::new();
            block.encode(&mut enc);
            let i = idx.index(enc.len());
            enc[i] ^= 1 << bit;
            if let Ok(b) = Block::decode(&mut enc.freeze()) {
                if let Ok(it) = b.records() {
                    for r in it { let _ = r; }
                }
            }
        }
    }
}
