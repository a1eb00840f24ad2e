//! Records inside a block's raw (decompressed) payload.
//!
//! A record is opaque bytes to the shuffle service. The raw payload is the
//! concatenation of `varint(len) ++ bytes` for each record, in write order;
//! the varint is unsigned LEB128. Engines put whatever they like inside a
//! record (the bundled engine uses a key/value layout of its own).

use bytes::{Buf, Bytes};

use crate::block::MAX_BLOCK_RAW_LEN;
use crate::{wire, ProtocolError};

/// Largest record that fits in one block.
pub const MAX_RECORD_LEN: usize = MAX_BLOCK_RAW_LEN as usize - 5;

/// Bytes `record` takes once framed.
pub fn framed_len(record_len: usize) -> usize {
    wire::varint_len(record_len as u32) + record_len
}

/// Appends one framed record to a raw payload under construction.
pub fn append(out: &mut Vec<u8>, record: &[u8]) -> Result<(), ProtocolError> {
    if record.len() > MAX_RECORD_LEN {
        return Err(ProtocolError::RecordTooLarge {
            len: record.len() as u64,
            max: MAX_RECORD_LEN as u64,
        });
    }
    wire::put_varint(out, record.len() as u32);
    out.extend_from_slice(record);
    Ok(())
}

/// Iterates the records of a raw payload. Each record is a zero-copy slice of
/// the payload. A malformed payload yields one error, then the iterator ends.
#[derive(Debug, Clone)]
pub struct RecordIter {
    rest: Bytes,
}

impl RecordIter {
    /// Iterates the records framed in `raw`.
    pub fn new(raw: Bytes) -> Self {
        RecordIter { rest: raw }
    }
}

impl Iterator for RecordIter {
    type Item = Result<Bytes, ProtocolError>;

    fn next(&mut self) -> Option<Self::Item> {
        if !self.rest.has_remaining() {
            return None;
        }
        let result = wire::varint(&mut self.rest, "record length")
            .and_then(|len| wire::bytes(&mut self.rest, len as usize, "record"));
        if result.is_err() {
            self.rest = Bytes::new();
        }
        Some(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn records_round_trip(recs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..50)) {
            let mut raw = Vec::new();
            for r in &recs {
                append(&mut raw, r).expect("fits");
            }
            prop_assert_eq!(raw.len(), recs.iter().map(|r| framed_len(r.len())).sum::<usize>());
            let back: Vec<Vec<u8>> = RecordIter::new(Bytes::from(raw))
                .map(|r| r.map(|b| b.to_vec()))
                .collect::<Result<_, _>>()
                .expect("valid");
            prop_assert_eq!(back, recs);
        }

        #[test]
        fn arbitrary_payloads_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut errors = 0;
            for r in RecordIter::new(Bytes::from(raw)) {
                if r.is_err() { errors += 1; }
            }
            prop_assert!(errors <= 1);
        }
    }

    #[test]
    fn varint_boundaries() {
        for len in [0usize, 127, 128, 16383, 16384, 2_097_151, 2_097_152, 8 << 20] {
            let rec = vec![7u8; len];
            let mut raw = Vec::new();
            append(&mut raw, &rec).expect("fits");
            assert_eq!(raw.len(), framed_len(len));
            let mut it = RecordIter::new(Bytes::from(raw));
            assert_eq!(it.next().expect("one").expect("valid").len(), len);
            assert!(it.next().is_none());
        }
    }

    #[test]
    fn oversized_record_is_refused() {
        let mut raw = Vec::new();
        let err = append(&mut raw, &vec![0; MAX_RECORD_LEN + 1]).expect_err("too large");
        assert!(matches!(err, ProtocolError::RecordTooLarge { .. }));
    }
}
