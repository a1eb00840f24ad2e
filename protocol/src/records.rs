//! Records inside a block's raw (decompressed) payload.
//!
//! A record is opaque bytes to the shuffle service. The raw payload is the
//! concatenation of `varint(len) ++ bytes` for each record, in write order;
//! the varint is unsigned LEB128. Engines put whatever they like inside a
//! record (the bundled engine uses a key/value layout of its own).

use bytes::{Buf, Bytes};

use crate::{wire, ProtocolError};

/// Largest raw (decompressed) payload of one block, its record sequence:
/// 32 MiB. (Also `block::MAX_BLOCK_RAW_LEN`, where blocks check it.)
pub const MAX_BLOCK_RAW_LEN: u32 = 32 << 20;

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

/// Takes the next record off the front of `rest` (a raw payload), without
/// reference counting: `None` at the end, an error (and `rest` emptied) on a
/// malformed payload.
pub fn next_record<'a>(rest: &mut &'a [u8]) -> Option<Result<&'a [u8], ProtocolError>> {
    if rest.is_empty() {
        return None;
    }
    let parsed = wire::varint(rest, "record length").and_then(|len| {
        let len = len as usize;
        if rest.len() < len {
            return Err(ProtocolError::Truncated {
                what: "record",
                needed: len as u64,
                available: rest.len() as u64,
            });
        }
        let (record, tail) = rest.split_at(len);
        *rest = tail;
        Ok(record)
    });
    if parsed.is_err() {
        *rest = &[];
    }
    Some(parsed)
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

    /// The records not yet iterated, still framed.
    pub fn remaining(&self) -> &[u8] {
        &self.rest
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
    fn borrowed_and_owned_iteration_agree() {
        let mut raw = Vec::new();
        for r in [&b"a"[..], b"", &[9u8; 300]] {
            append(&mut raw, r).expect("fits");
        }
        let owned: Vec<Vec<u8>> = RecordIter::new(Bytes::from(raw.clone()))
            .map(|r| r.expect("ok").to_vec())
            .collect();
        let mut rest = &raw[..];
        let mut borrowed = Vec::new();
        while let Some(r) = next_record(&mut rest) {
            borrowed.push(r.expect("ok").to_vec());
        }
        assert_eq!(owned, borrowed);
        let mut bad = &[5u8, 1][..];
        assert!(matches!(next_record(&mut bad), Some(Err(_))));
        assert!(next_record(&mut bad).is_none());
    }

    #[test]
    fn oversized_record_is_refused() {
        let mut raw = Vec::new();
        let err = append(&mut raw, &vec![0; MAX_RECORD_LEN + 1]).expect_err("too large");
        assert!(matches!(err, ProtocolError::RecordTooLarge { .. }));
    }
}
