//! The engine's record layouts.
//!
//! * A **pair** (key/value record) is `varint(key_len) ++ key ++ value`, the
//!   value running to the record's end ([`encode`], [`decode`]).
//! * A **row** is a sequence of fields, each `varint(len) ++ bytes`
//!   ([`push_field`], [`fields`]). A row's first field framed this way is
//!   also a pair's key, so a row whose key is its first field *is* a pair
//!   whose value is the rest of the row, at no cost.

use crate::EngineError;

fn push_varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Reads a length prefix: `(length, bytes of prefix)`.
fn read_len(record: &[u8]) -> Option<(usize, usize)> {
    let mut len: u64 = 0;
    for (i, byte) in record.iter().take(10).enumerate() {
        len |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((usize::try_from(len).unwrap_or(usize::MAX), i + 1));
        }
    }
    None
}

/// Appends a key/value record to `out`.
pub fn encode(key: &[u8], value: &[u8], out: &mut Vec<u8>) {
    push_varint(key.len() as u64, out);
    out.extend_from_slice(key);
    out.extend_from_slice(value);
}

/// Splits a record into key and value.
pub fn decode(record: &[u8]) -> Result<(&[u8], &[u8]), EngineError> {
    if let Some((len, prefix)) = read_len(record) {
        let rest = &record[prefix..];
        if len <= rest.len() {
            return Ok(rest.split_at(len));
        }
    }
    Err(EngineError::MalformedRecord {
        reason: format!("bad key length prefix in a {}-byte record", record.len()),
    })
}

/// The bytes of a pair after its length prefix: `key ++ value`, contiguous.
pub fn key_and_value(record: &[u8]) -> Result<&[u8], EngineError> {
    match read_len(record) {
        Some((len, prefix)) if len <= record.len() - prefix => Ok(&record[prefix..]),
        _ => Err(EngineError::MalformedRecord {
            reason: format!("bad key length prefix in a {}-byte record", record.len()),
        }),
    }
}

/// Appends one field of a row to `out`.
pub fn push_field(field: &[u8], out: &mut Vec<u8>) {
    push_varint(field.len() as u64, out);
    out.extend_from_slice(field);
}

/// Builds a row from its fields.
pub fn row<'a>(fields: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for f in fields {
        push_field(f, &mut out);
    }
    out
}

/// The fields of a row, in order.
pub fn fields(row: &[u8]) -> Fields<'_> {
    Fields { rest: row }
}

/// Iterator over a row's fields; a malformed prefix ends it with an error.
#[derive(Debug, Clone)]
pub struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<&'a [u8], EngineError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        match decode(self.rest) {
            Ok((field, rest)) => {
                self.rest = rest;
                Some(Ok(field))
            }
            Err(e) => {
                self.rest = &[];
                Some(Err(e))
            }
        }
    }
}

/// Collects a row's fields.
pub fn split_row(row: &[u8]) -> Result<Vec<&[u8]>, EngineError> {
    fields(row).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_malformed() {
        let mut out = Vec::new();
        encode(b"key", b"value", &mut out);
        assert_eq!(decode(&out).expect("valid"), (&b"key"[..], &b"value"[..]));
        assert_eq!(key_and_value(&out).expect("valid"), b"keyvalue");
        let long = vec![b'k'; 300];
        let mut out = Vec::new();
        encode(&long, b"", &mut out);
        assert_eq!(decode(&out).expect("valid"), (&long[..], &b""[..]));
        assert!(decode(&[5, b'a']).is_err());
        assert!(decode(&[0x80; 12]).is_err());
        assert!(decode(&[]).is_err());
        assert!(key_and_value(&[5, b'a']).is_err());
    }

    #[test]
    fn rows_are_pairs_keyed_by_their_first_field() {
        let r = row([&b"k"[..], b"", b"value"]);
        assert_eq!(split_row(&r).expect("row"), vec![&b"k"[..], b"", b"value"]);
        let (key, rest) = decode(&r).expect("pair");
        assert_eq!(key, b"k");
        assert_eq!(split_row(rest).expect("row"), vec![&b""[..], b"value"]);
        assert!(split_row(&[3, b'a']).is_err());
        assert!(split_row(&[]).expect("empty").is_empty());
    }
}
