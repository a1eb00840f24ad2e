//! The data-plane frame codec, shared by every transport (TCP and QUIC).
//!
//! A frame is `len: u32 LE | tag: u8 | body`, where `len` counts the tag and
//! the body. The decoder checks `len` against the codec's maximum before it
//! reserves any memory, returns `Ok(None)` while a frame is incomplete, and
//! a typed [`ProtocolError`] (never a panic) for anything malformed. Bodies
//! are parsed from [`bytes::Buf`]; block payloads stay zero-copy slices of
//! the received buffer.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::block::BLOCK_HEADER_LEN;
use crate::{wire, AppId, Block, MapId, MapRange, PartitionId, ProtocolError, ServiceError, ShuffleId};

/// Version of the frame protocol, exchanged in [`Frame::Hello`]. 2: the
/// hello carries the sender's frame limit.
pub const PROTOCOL_VERSION: u16 = 2;
/// Bytes before the body: the length prefix and the tag.
pub const FRAME_PREFIX_LEN: usize = 5;
/// Default maximum frame length (tag + body): 64 MiB, which fits a push of
/// at least one largest block.
pub const DEFAULT_MAX_FRAME_LEN: u32 = 64 << 20;

/// First frame each side sends on a new connection.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Hello {
    pub protocol_version: u16,
    /// The server's gRPC control-plane port (0 from a client): a client
    /// that knows only the data-plane URL finds the control plane with it.
    pub grpc_port: u16,
    /// The largest frame (tag + body) the sender accepts: a client sizes
    /// its pushes to fit the server's.
    pub max_frame_len: u32,
}

/// Blocks of one shuffle, for any number of partitions.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PushBlocks {
    pub request_id: u64,
    pub app: AppId,
    pub shuffle: ShuffleId,
    pub blocks: Vec<Block>,
}

/// The server stored a push: `stored` new blocks, `duplicates` dropped.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PushAck {
    pub request_id: u64,
    pub stored: u32,
    pub duplicates: u32,
}

/// Asks for one partition's blocks from a range of maps, starting at block
/// index `resume_from` of the stream (0 for a fresh read).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct FetchRequest {
    pub request_id: u64,
    pub app: AppId,
    pub shuffle: ShuffleId,
    pub partition: PartitionId,
    pub maps: MapRange,
    pub resume_from: u64,
}

/// Part of a fetch stream: `blocks` are stream positions
/// `first_index..first_index + blocks.len()`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct FetchBlocks {
    pub request_id: u64,
    pub first_index: u64,
    pub blocks: Vec<Block>,
}

/// A fetch stream is complete after `total_blocks` blocks.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct FetchEnd {
    pub request_id: u64,
    pub total_blocks: u64,
}

/// A request failed (or, with `request_id` 0, the connection is unusable).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ErrorFrame {
    pub request_id: u64,
    pub error: ServiceError,
}

/// Every data-plane frame.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Frame {
    Hello(Hello),
    PushBlocks(PushBlocks),
    PushAck(PushAck),
    Fetch(FetchRequest),
    FetchBlocks(FetchBlocks),
    FetchEnd(FetchEnd),
    Error(ErrorFrame),
}

/// Largest frame that [`is_control_frame`] can call control.
pub const MAX_CONTROL_FRAME_LEN: u32 = 4096;

/// True for a frame of tag `tag` and length `len` (tag + body) that carries
/// no block data: a hello or a fetch request, small and bounded. A server
/// reads these without waiting for memory credit, so a reader can always
/// attach, even when the budget is full of blocks waiting for it.
pub fn is_control_frame(tag: u8, len: u32) -> bool {
    matches!(tag, TAG_HELLO | TAG_FETCH) && len <= MAX_CONTROL_FRAME_LEN
}

const TAG_HELLO: u8 = 0x01;
const TAG_PUSH_BLOCKS: u8 = 0x02;
const TAG_PUSH_ACK: u8 = 0x03;
const TAG_FETCH: u8 = 0x04;
const TAG_FETCH_BLOCKS: u8 = 0x05;
const TAG_FETCH_END: u8 = 0x06;
const TAG_ERROR: u8 = 0x07;

impl Frame {
    /// A short name of the frame's type, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Frame::Hello(_) => "hello",
            Frame::PushBlocks(_) => "push",
            Frame::PushAck(_) => "push ack",
            Frame::Fetch(_) => "fetch",
            Frame::FetchBlocks(_) => "fetch blocks",
            Frame::FetchEnd(_) => "fetch end",
            Frame::Error(_) => "error",
        }
    }

    fn tag(&self) -> u8 {
        match self {
            Frame::Hello(_) => TAG_HELLO,
            Frame::PushBlocks(_) => TAG_PUSH_BLOCKS,
            Frame::PushAck(_) => TAG_PUSH_ACK,
            Frame::Fetch(_) => TAG_FETCH,
            Frame::FetchBlocks(_) => TAG_FETCH_BLOCKS,
            Frame::FetchEnd(_) => TAG_FETCH_END,
            Frame::Error(_) => TAG_ERROR,
        }
    }

    fn encode_body(&self, out: &mut impl BufMut) {
        match self {
            Frame::Hello(h) => {
                out.put_u16_le(h.protocol_version);
                out.put_u16_le(h.grpc_port);
                out.put_u32_le(h.max_frame_len);
            }
            Frame::PushBlocks(_) | Frame::FetchBlocks(_) => {
                let blocks = self.put_head(out);
                put_blocks(out, blocks);
            }
            Frame::PushAck(a) => {
                out.put_u64_le(a.request_id);
                out.put_u32_le(a.stored);
                out.put_u32_le(a.duplicates);
            }
            Frame::Fetch(f) => {
                out.put_u64_le(f.request_id);
                wire::put_string(out, f.app.as_str());
                out.put_u32_le(f.shuffle.0);
                out.put_u32_le(f.partition.0);
                out.put_u32_le(f.maps.start().0);
                out.put_u32_le(f.maps.end().0);
                out.put_u64_le(f.resume_from);
            }
            Frame::FetchEnd(e) => {
                out.put_u64_le(e.request_id);
                out.put_u64_le(e.total_blocks);
            }
            Frame::Error(e) => {
                out.put_u64_le(e.request_id);
                e.error.encode(out);
            }
        }
    }

    /// For frames that carry blocks: writes the fields before the block list
    /// and returns the blocks. Other frames write nothing.
    fn put_head(&self, out: &mut impl BufMut) -> &[Block] {
        match self {
            Frame::PushBlocks(p) => {
                out.put_u64_le(p.request_id);
                wire::put_string(out, p.app.as_str());
                out.put_u32_le(p.shuffle.0);
                &p.blocks
            }
            Frame::FetchBlocks(f) => {
                out.put_u64_le(f.request_id);
                out.put_u64_le(f.first_index);
                &f.blocks
            }
            _ => &[],
        }
    }

    /// Parses a frame body. The whole body must be consumed.
    pub fn decode_body(tag: u8, body: &mut impl Buf) -> Result<Frame, ProtocolError> {
        let frame = match tag {
            TAG_HELLO => Frame::Hello(Hello {
                protocol_version: wire::u16(body, "hello")?,
                grpc_port: wire::u16(body, "hello")?,
                max_frame_len: wire::u32(body, "hello")?,
            }),
            TAG_PUSH_BLOCKS => Frame::PushBlocks(PushBlocks {
                request_id: wire::u64(body, "push request id")?,
                app: app_id(body)?,
                shuffle: ShuffleId(wire::u32(body, "push shuffle id")?),
                blocks: get_blocks(body)?,
            }),
            TAG_PUSH_ACK => Frame::PushAck(PushAck {
                request_id: wire::u64(body, "push ack")?,
                stored: wire::u32(body, "push ack")?,
                duplicates: wire::u32(body, "push ack")?,
            }),
            TAG_FETCH => {
                let request_id = wire::u64(body, "fetch request id")?;
                let app = app_id(body)?;
                let shuffle = ShuffleId(wire::u32(body, "fetch shuffle id")?);
                let partition = PartitionId(wire::u32(body, "fetch partition")?);
                let start = MapId(wire::u32(body, "fetch map range")?);
                let end = MapId(wire::u32(body, "fetch map range")?);
                Frame::Fetch(FetchRequest {
                    request_id,
                    app,
                    shuffle,
                    partition,
                    maps: MapRange::new(start, end)?,
                    resume_from: wire::u64(body, "fetch resume index")?,
                })
            }
            TAG_FETCH_BLOCKS => Frame::FetchBlocks(FetchBlocks {
                request_id: wire::u64(body, "fetch blocks")?,
                first_index: wire::u64(body, "fetch blocks")?,
                blocks: get_blocks(body)?,
            }),
            TAG_FETCH_END => Frame::FetchEnd(FetchEnd {
                request_id: wire::u64(body, "fetch end")?,
                total_blocks: wire::u64(body, "fetch end")?,
            }),
            TAG_ERROR => Frame::Error(ErrorFrame {
                request_id: wire::u64(body, "error frame")?,
                error: ServiceError::decode(body)?,
            }),
            tag => return Err(ProtocolError::UnknownFrameType { tag }),
        };
        if body.has_remaining() {
            return Err(ProtocolError::TrailingBytes {
                what: "frame body",
                count: body.remaining() as u64,
            });
        }
        Ok(frame)
    }
}

fn app_id(body: &mut impl Buf) -> Result<AppId, ProtocolError> {
    AppId::new(wire::string(body, "app id")?)
}

fn put_blocks(out: &mut impl BufMut, blocks: &[Block]) {
    out.put_u32_le(blocks.len() as u32);
    for b in blocks {
        b.encode(out);
    }
}

fn get_blocks(body: &mut impl Buf) -> Result<Vec<Block>, ProtocolError> {
    let count = wire::u32(body, "block count")? as usize;
    // Each block needs at least its header: refuse a count the body cannot
    // hold before allocating the vector.
    let needed = count.saturating_mul(BLOCK_HEADER_LEN);
    if needed > body.remaining() {
        return Err(ProtocolError::truncated("blocks", needed, body.remaining()));
    }
    let mut blocks = Vec::with_capacity(count);
    for _ in 0..count {
        blocks.push(Block::decode(body)?);
    }
    Ok(blocks)
}

/// Splits a byte stream into frames and writes frames into one.
#[derive(Clone, Copy, Debug)]
pub struct FrameCodec {
    max_frame_len: u32,
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec::new(DEFAULT_MAX_FRAME_LEN)
    }
}

impl FrameCodec {
    /// A codec refusing frames longer than `max_frame_len` (tag + body).
    pub fn new(max_frame_len: u32) -> Self {
        FrameCodec { max_frame_len }
    }

    /// The largest accepted frame (tag + body).
    pub fn max_frame_len(&self) -> u32 {
        self.max_frame_len
    }

    /// Validates a length prefix and returns the length of tag + body. Lets
    /// a reader that takes frames off a stream itself (to wait for memory
    /// credit before reading a body) apply the same rule as [`Self::decode`].
    pub fn check_prefix(&self, prefix: [u8; 4]) -> Result<u32, ProtocolError> {
        let len = u32::from_le_bytes(prefix);
        if len == 0 {
            return Err(ProtocolError::malformed("frame", "zero length (no type tag)"));
        }
        if len > self.max_frame_len {
            return Err(ProtocolError::FrameTooLarge {
                len: u64::from(len),
                max: u64::from(self.max_frame_len),
            });
        }
        Ok(len)
    }

    /// Parses the `len` bytes that follow a checked prefix: tag and body.
    pub fn decode_payload(&self, mut payload: Bytes) -> Result<Frame, ProtocolError> {
        if !payload.has_remaining() {
            return Err(ProtocolError::malformed("frame", "zero length (no type tag)"));
        }
        let tag = payload.get_u8();
        Frame::decode_body(tag, &mut payload)
    }

    /// Encodes one frame into a new buffer.
    pub fn encode_to_bytes(&self, frame: &Frame) -> Result<Bytes, ProtocolError> {
        let mut out = BytesMut::new();
        self.encode(frame, &mut out)?;
        Ok(out.freeze())
    }

    /// Encodes `frame` as segments to write in order, with vectored I/O:
    /// block payloads are not copied, each is the block's own `Bytes`.
    /// Concatenated, the segments are exactly [`Self::encode`]'s bytes.
    pub fn encode_segments(&self, frame: &Frame) -> Result<Vec<Bytes>, ProtocolError> {
        if !matches!(frame, Frame::PushBlocks(_) | Frame::FetchBlocks(_)) {
            return Ok(vec![self.encode_to_bytes(frame)?]);
        }
        let mut meta = BytesMut::new();
        meta.put_u32_le(0);
        meta.put_u8(frame.tag());
        let blocks = frame.put_head(&mut meta);
        meta.put_u32_le(blocks.len() as u32);
        let len = meta.len() - 4 + blocks.iter().map(Block::encoded_len).sum::<usize>();
        if len > self.max_frame_len as usize {
            return Err(ProtocolError::FrameTooLarge {
                len: len as u64,
                max: u64::from(self.max_frame_len),
            });
        }
        meta[..4].copy_from_slice(&(len as u32).to_le_bytes());
        meta.reserve(blocks.len() * BLOCK_HEADER_LEN);
        let mut segments = Vec::with_capacity(1 + 2 * blocks.len());
        segments.push(meta.split().freeze());
        for block in blocks {
            block.header.encode(&mut meta);
            segments.push(meta.split().freeze());
            if !block.payload.is_empty() {
                segments.push(block.payload.clone());
            }
        }
        Ok(segments)
    }

    /// Takes one frame off the front of `src`. `Ok(None)` means more bytes
    /// are needed; an error means the stream is unusable and the connection
    /// should be closed.
    pub fn decode(&self, src: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
        if src.len() < 4 {
            return Ok(None);
        }
        let len = self.check_prefix([src[0], src[1], src[2], src[3]])?;
        let total = 4 + len as usize;
        if src.len() < total {
            src.reserve(total - src.len());
            return Ok(None);
        }
        src.advance(4);
        self.decode_payload(src.split_to(len as usize).freeze()).map(Some)
    }

    /// Appends `frame` to `dst`. A frame over the maximum is refused and
    /// `dst` is left as it was.
    pub fn encode(&self, frame: &Frame, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        let start = dst.len();
        dst.put_u32_le(0);
        dst.put_u8(frame.tag());
        frame.encode_body(dst);
        let len = dst.len() - start - 4;
        if len > self.max_frame_len as usize {
            dst.truncate(start);
            return Err(ProtocolError::FrameTooLarge {
                len: len as u64,
                max: u64::from(self.max_frame_len),
            });
        }
        dst[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::BlockId;
    use crate::{records, AttemptId};
    use proptest::prelude::*;

    fn block(map: u32, partition: u32, seq: u32, len: usize) -> Block {
        let mut raw = Vec::new();
        records::append(&mut raw, &vec![(seq % 251) as u8; len]).expect("fits");
        let id = BlockId {
            shuffle: ShuffleId(9),
            map: MapId(map),
            attempt: AttemptId(0),
            partition: PartitionId(partition),
            seq,
        };
        Block::seal(id, raw, 1, seq % 2 == 0).expect("seal")
    }

    fn app() -> AppId {
        AppId::new("app-1").expect("valid")
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        let blocks =
            proptest::collection::vec((0u32..4, 0u32..8, any::<u32>(), 0usize..300), 0..6).prop_map(|v| {
                v.into_iter()
                    .map(|(m, p, s, l)| block(m, p, s, l))
                    .collect::<Vec<_>>()
            });
        prop_oneof![
            (any::<u16>(), any::<u16>(), any::<u32>()).prop_map(|(v, g, m)| Frame::Hello(Hello {
                protocol_version: v,
                grpc_port: g,
                max_frame_len: m,
            })),
            (any::<u64>(), any::<u32>(), blocks.clone()).prop_map(|(r, s, blocks)| {
                Frame::PushBlocks(PushBlocks {
                    request_id: r,
                    app: app(),
                    shuffle: ShuffleId(s),
                    blocks,
                })
            }),
            (any::<u64>(), any::<u32>(), any::<u32>()).prop_map(|(r, s, d)| {
                Frame::PushAck(PushAck {
                    request_id: r,
                    stored: s,
                    duplicates: d,
                })
            }),
            (any::<u64>(), any::<u32>(), 0u32..100, 0u32..100, any::<u64>()).prop_map(
                |(r, p, a, b, resume)| {
                    Frame::Fetch(FetchRequest {
                        request_id: r,
                        app: app(),
                        shuffle: ShuffleId(1),
                        partition: PartitionId(p),
                        maps: MapRange::new(MapId(a.min(b)), MapId(a.max(b))).expect("ordered"),
                        resume_from: resume,
                    })
                }
            ),
            (any::<u64>(), any::<u64>(), blocks).prop_map(|(r, f, blocks)| {
                Frame::FetchBlocks(FetchBlocks {
                    request_id: r,
                    first_index: f,
                    blocks,
                })
            }),
            (any::<u64>(), any::<u64>()).prop_map(|(r, t)| Frame::FetchEnd(FetchEnd {
                request_id: r,
                total_blocks: t
            })),
            (any::<u64>(), ".{0,40}").prop_map(|(r, m)| {
                Frame::Error(ErrorFrame {
                    request_id: r,
                    error: ServiceError::Internal { reason: m },
                })
            }),
            (any::<u64>(), any::<u32>(), any::<u32>()).prop_map(|(r, m, a)| {
                Frame::Error(ErrorFrame {
                    request_id: r,
                    error: ServiceError::AttemptFailed {
                        map: MapId(m),
                        attempt: crate::AttemptId(a),
                    },
                })
            }),
            (any::<u64>(), any::<u32>(), any::<u32>()).prop_map(|(r, p, m)| {
                Frame::Error(ErrorFrame {
                    request_id: r,
                    error: ServiceError::DataGone {
                        partition: PartitionId(p),
                        map: MapId(m),
                    },
                })
            }),
        ]
    }

    proptest! {
        #[test]
        fn frames_round_trip_even_when_split_anywhere(frames in proptest::collection::vec(arb_frame(), 1..5), cut in any::<prop::sample::Index>()) {
            let codec = FrameCodec::default();
            let mut wire = BytesMut::new();
            for f in &frames {
                codec.encode(f, &mut wire).expect("fits");
            }
            // Feed the stream in two pieces, cut at an arbitrary byte.
            let cut = cut.index(wire.len() + 1);
            let second = wire.split_off(cut);
            let mut src = wire;
            let mut out = Vec::new();
            while let Some(f) = codec.decode(&mut src).expect("valid") {
                out.push(f);
            }
            src.extend_from_slice(&second);
            while let Some(f) = codec.decode(&mut src).expect("valid") {
                out.push(f);
            }
            prop_assert!(src.is_empty());
            prop_assert_eq!(out, frames);
        }

        #[test]
        fn segments_concatenate_to_the_encoding(frame in arb_frame()) {
            let codec = FrameCodec::default();
            let whole = codec.encode_to_bytes(&frame).expect("fits");
            let joined: Vec<u8> = codec.encode_segments(&frame).expect("fits").iter().flat_map(|s| s.to_vec()).collect();
            prop_assert_eq!(joined, whole.to_vec());
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_frame_decoder(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            let codec = FrameCodec::new(1024);
            let mut src = BytesMut::from(&data[..]);
            while let Ok(Some(_)) = codec.decode(&mut src) {}
        }

        #[test]
        fn arbitrary_bodies_never_panic(tag in 0u8..10, data in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Frame::decode_body(tag, &mut Bytes::from(data));
        }
    }

    #[test]
    fn oversized_length_prefix_is_refused_without_reserving() {
        let codec = FrameCodec::new(1 << 20);
        let mut src = BytesMut::new();
        src.put_u32_le(u32::MAX);
        src.put_u8(TAG_HELLO);
        let cap = src.capacity();
        assert!(
            matches!(codec.decode(&mut src), Err(ProtocolError::FrameTooLarge { len, .. }) if len == u64::from(u32::MAX))
        );
        assert_eq!(src.capacity(), cap);
    }

    #[test]
    fn hostile_block_count_is_refused_before_allocating() {
        let mut body = BytesMut::new();
        body.put_u64_le(1);
        body.put_u64_le(0);
        body.put_u32_le(u32::MAX);
        assert!(matches!(
            Frame::decode_body(TAG_FETCH_BLOCKS, &mut body.freeze()),
            Err(ProtocolError::Truncated { what: "blocks", .. })
        ));
    }

    #[test]
    fn unknown_tags_zero_lengths_and_trailing_bytes_are_errors() {
        let codec = FrameCodec::default();
        let mut src = BytesMut::from(&[1u8, 0, 0, 0, 0xee][..]);
        assert_eq!(
            codec.decode(&mut src),
            Err(ProtocolError::UnknownFrameType { tag: 0xee })
        );
        let mut src = BytesMut::from(&[0u8, 0, 0, 0][..]);
        assert!(matches!(
            codec.decode(&mut src),
            Err(ProtocolError::Malformed { .. })
        ));
        let mut src = BytesMut::from(&[10u8, 0, 0, 0, TAG_HELLO, 1, 0, 0, 0, 0, 0, 1, 0, 9][..]);
        assert!(matches!(
            codec.decode(&mut src),
            Err(ProtocolError::TrailingBytes { count: 1, .. })
        ));
    }

    #[test]
    fn hostile_app_ids_on_the_wire_are_refused() {
        let mut body = BytesMut::new();
        body.put_u64_le(1);
        wire::put_string(&mut body, "../../etc");
        body.put_u32_le(0);
        body.put_u32_le(0);
        assert!(matches!(
            Frame::decode_body(TAG_PUSH_BLOCKS, &mut body.freeze()),
            Err(ProtocolError::InvalidId { .. })
        ));
    }

    #[test]
    fn encode_refuses_frames_over_the_maximum() {
        let codec = FrameCodec::new(100);
        let frame = Frame::PushBlocks(PushBlocks {
            request_id: 1,
            app: app(),
            shuffle: ShuffleId(1),
            blocks: vec![block(0, 0, 1, 500)],
        });
        let mut dst = BytesMut::from(&b"keep"[..]);
        assert!(matches!(
            codec.encode(&frame, &mut dst),
            Err(ProtocolError::FrameTooLarge { .. })
        ));
        assert_eq!(&dst[..], b"keep");
    }
}
