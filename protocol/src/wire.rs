//! Bounds-checked readers over [`bytes::Buf`]. Every read checks the
//! remaining length first, so a short or hostile input yields
//! [`ProtocolError::Truncated`] and never a panic or a large allocation.

use bytes::{Buf, BufMut, Bytes};

use crate::ProtocolError;

pub(crate) fn need(buf: &impl Buf, n: usize, what: &'static str) -> Result<(), ProtocolError> {
    if buf.remaining() < n {
        return Err(ProtocolError::truncated(what, n, buf.remaining()));
    }
    Ok(())
}

pub(crate) fn u8(buf: &mut impl Buf, what: &'static str) -> Result<u8, ProtocolError> {
    need(buf, 1, what)?;
    Ok(buf.get_u8())
}

pub(crate) fn u16(buf: &mut impl Buf, what: &'static str) -> Result<u16, ProtocolError> {
    need(buf, 2, what)?;
    Ok(buf.get_u16_le())
}

pub(crate) fn u32(buf: &mut impl Buf, what: &'static str) -> Result<u32, ProtocolError> {
    need(buf, 4, what)?;
    Ok(buf.get_u32_le())
}

pub(crate) fn u64(buf: &mut impl Buf, what: &'static str) -> Result<u64, ProtocolError> {
    need(buf, 8, what)?;
    Ok(buf.get_u64_le())
}

/// Takes `len` bytes; zero-copy when `buf` is [`Bytes`].
pub(crate) fn bytes(buf: &mut impl Buf, len: usize, what: &'static str) -> Result<Bytes, ProtocolError> {
    need(buf, len, what)?;
    Ok(buf.copy_to_bytes(len))
}

/// A UTF-8 string with a `u16` length prefix.
pub(crate) fn string(buf: &mut impl Buf, what: &'static str) -> Result<String, ProtocolError> {
    let len = usize::from(u16(buf, what)?);
    let raw = bytes(buf, len, what)?;
    String::from_utf8(raw.to_vec()).map_err(|_| ProtocolError::malformed(what, "not valid UTF-8"))
}

pub(crate) fn put_string(buf: &mut impl BufMut, s: &str) {
    // Strings on the wire are ids and messages; cut at a char boundary to fit.
    let mut end = s.len().min(usize::from(u16::MAX));
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    buf.put_u16_le(end as u16);
    buf.put_slice(&s.as_bytes()[..end]);
}

/// Appends `v` as an unsigned LEB128 varint (1 to 5 bytes).
pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u32) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Length of `v` as a varint.
pub(crate) fn varint_len(v: u32) -> usize {
    match v {
        0..=0x7f => 1,
        0x80..=0x3fff => 2,
        0x4000..=0x1f_ffff => 3,
        0x20_0000..=0xfff_ffff => 4,
        _ => 5,
    }
}

/// Reads an unsigned LEB128 varint of at most 5 bytes that fits in `u32`.
pub(crate) fn varint(buf: &mut impl Buf, what: &'static str) -> Result<u32, ProtocolError> {
    let mut value: u64 = 0;
    for i in 0..5 {
        let byte = u8(buf, what)?;
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return u32::try_from(value).map_err(|_| ProtocolError::malformed(what, "varint overflows u32"));
        }
    }
    Err(ProtocolError::malformed(what, "varint longer than 5 bytes"))
}
