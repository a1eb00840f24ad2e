//! The engine's record layout for key/value pairs:
//! `varint(key_len) ++ key ++ value`, the value running to the record's end.

use crate::EngineError;

/// Appends a key/value record to `out`.
pub fn encode(key: &[u8], value: &[u8], out: &mut Vec<u8>) {
    let mut n = key.len() as u64;
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out.extend_from_slice(key);
    out.extend_from_slice(value);
}

/// Splits a record into key and value.
pub fn decode(record: &[u8]) -> Result<(&[u8], &[u8]), EngineError> {
    let mut len: u64 = 0;
    for (i, byte) in record.iter().take(10).enumerate() {
        len |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let rest = &record[i + 1..];
            let len = usize::try_from(len).unwrap_or(usize::MAX);
            if len > rest.len() {
                break;
            }
            return Ok(rest.split_at(len));
        }
    }
    Err(EngineError::MalformedRecord {
        reason: format!("bad key length prefix in a {}-byte record", record.len()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_malformed() {
        let mut out = Vec::new();
        encode(b"key", b"value", &mut out);
        assert_eq!(decode(&out).expect("valid"), (&b"key"[..], &b"value"[..]));
        let long = vec![b'k'; 300];
        let mut out = Vec::new();
        encode(&long, b"", &mut out);
        assert_eq!(decode(&out).expect("valid"), (&long[..], &b""[..]));
        assert!(decode(&[5, b'a']).is_err());
        assert!(decode(&[0x80; 12]).is_err());
        assert!(decode(&[]).is_err());
    }
}
