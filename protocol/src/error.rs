use crate::block::BlockId;

/// Every way a byte sequence or a value can be refused by this crate.
///
/// Variants carry structured fields so callers can match on them (for example
/// to count checksum mismatches) instead of parsing messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// An identifier failed validation. `value` is shortened for display.
    #[error("invalid {kind} {value:?}: {reason}")]
    InvalidId {
        kind: &'static str,
        value: String,
        reason: &'static str,
    },
    /// A value is outside the range the format allows.
    #[error("{what} is {value}, out of range (allowed: {allowed})")]
    OutOfRange {
        what: &'static str,
        value: u64,
        allowed: String,
    },
    /// A frame announced a length above the codec's maximum. Nothing was
    /// allocated for it.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge { len: u64, max: u64 },
    /// A frame carried a type tag this version does not know.
    #[error("unknown frame type {tag:#04x}")]
    UnknownFrameType { tag: u8 },
    /// A structure ended before all of its fields could be read.
    #[error("truncated {what}: need {needed} bytes, have {available}")]
    Truncated {
        what: &'static str,
        needed: u64,
        available: u64,
    },
    /// A structure was complete but left unparsed bytes behind.
    #[error("{count} unexpected trailing bytes after {what}")]
    TrailingBytes { what: &'static str, count: u64 },
    /// A field held a value that violates the format.
    #[error("malformed {what}: {reason}")]
    Malformed { what: &'static str, reason: String },
    /// A block did not start with the block magic.
    #[error("bad block magic {found:02x?}")]
    BadMagic { found: [u8; 4] },
    /// A block was written by an unknown format version.
    #[error("unsupported block format version {version}")]
    UnsupportedVersion { version: u8 },
    /// A block names a codec this version does not know.
    #[error("unknown block codec {codec}")]
    UnknownCodec { codec: u8 },
    /// A block's payload does not match its CRC32C: the data is corrupt.
    #[error("checksum mismatch in block {block}: header says {expected:#010x}, payload has {actual:#010x}")]
    ChecksumMismatch {
        block: BlockId,
        expected: u32,
        actual: u32,
    },
    /// A block's payload could not be decompressed to its announced length.
    #[error("block {block} does not decompress: {reason}")]
    Decompress { block: BlockId, reason: String },
    /// A record is larger than a block may hold.
    #[error("record of {len} bytes exceeds the maximum of {max} bytes")]
    RecordTooLarge { len: u64, max: u64 },
}

impl ProtocolError {
    pub(crate) fn truncated(what: &'static str, needed: usize, available: usize) -> Self {
        ProtocolError::Truncated {
            what,
            needed: needed as u64,
            available: available as u64,
        }
    }

    pub(crate) fn malformed(what: &'static str, reason: impl Into<String>) -> Self {
        ProtocolError::Malformed {
            what,
            reason: reason.into(),
        }
    }
}
