//! The block and frame codecs on 1 MiB blocks of 100-byte records: seal
//! (LZ4 + CRC32C), encode/decode, decompress (CRC32C + LZ4), record
//! iteration, and a PushBlocks frame of four blocks through `FrameCodec`.
//!
//! `cargo bench -p benches --bench codec`
//!
//! Throughput counts raw record bytes (before compression) everywhere.

mod common;

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use protocol::frame::{Frame, FrameCodec, PushBlocks};
use protocol::records::{self, RecordIter};
use protocol::{AppId, Block};

use common::{block_id, codec_name, raw_payload, record, sealed_block, with_id, MIB, RECORD_LEN, SHUFFLE};

/// `Block::seal` of a 1 MiB raw payload: LZ4 (kept because it shrinks) and
/// CRC32C, or CRC32C alone. The payload is copied before the clock starts
/// (seal takes it by value).
fn seal(c: &mut Criterion) {
    let (raw, count) = raw_payload(MIB);
    let mut group = c.benchmark_group("seal");
    group.throughput(Throughput::Bytes(raw.len() as u64));
    for compress in [true, false] {
        group.bench_function(codec_name(compress), |b| {
            b.iter_batched(
                || raw.clone(),
                |raw| Block::seal(block_id(0, 0, 0), raw, count, compress).expect("seal"),
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

/// One benchmark per codec of `routine` on a sealed 1 MiB block.
fn on_sealed_block<R>(c: &mut Criterion, group: &str, routine: impl Fn(&Block) -> R) {
    let mut group = c.benchmark_group(group);
    for compress in [true, false] {
        let block = sealed_block(MIB, compress);
        group.throughput(Throughput::Bytes(u64::from(block.header.raw_len)));
        group.bench_function(codec_name(compress), |b| b.iter(|| routine(black_box(&block))));
    }
    group.finish();
}

/// `Block::encode` into a fresh buffer, then `Block::decode` of it (header
/// checks; the payload stays a zero-copy slice).
fn encode_decode(c: &mut Criterion) {
    on_sealed_block(c, "block_encode_decode", |block| {
        let mut out = BytesMut::with_capacity(block.encoded_len());
        block.encode(&mut out);
        Block::decode(&mut out.freeze()).expect("decode")
    });
}

/// `Block::decompress`: CRC32C of the stored payload, then LZ4 into a new
/// buffer (or, raw, a reference-counted clone).
fn decompress(c: &mut Criterion) {
    on_sealed_block(c, "decompress", |block| block.decompress().expect("valid"));
}

/// `RecordIter` over a 1 MiB raw payload: varint, bounds check and a
/// zero-copy `Bytes` slice per record.
fn record_iter(c: &mut Criterion) {
    let (raw, count) = raw_payload(MIB);
    let raw = Bytes::from(raw);
    let mut group = c.benchmark_group("record_iter");
    group.throughput(Throughput::Bytes(raw.len() as u64));
    group.bench_function("1MiB", |b| {
        b.iter(|| {
            let mut n = 0u32;
            for rec in RecordIter::new(black_box(&raw).clone()) {
                black_box(rec.expect("valid"));
                n += 1;
            }
            assert_eq!(n, count);
        })
    });
    group.finish();
}

/// `records::append` of 1 MiB of records, as a `Batcher` frames them: into
/// an empty `Vec` (what each partition buffer is after a seal) and into one
/// with the capacity reserved. The buffer is dropped outside the clock.
fn record_append(c: &mut Criterion) {
    let (raw, count) = raw_payload(MIB);
    let recs: Vec<[u8; RECORD_LEN]> = (0..u64::from(count)).map(record).collect();
    let mut group = c.benchmark_group("record_append");
    group.throughput(Throughput::Bytes(raw.len() as u64));
    for (name, capacity) in [("1MiB-grown", 0), ("1MiB-reserved", raw.len())] {
        group.bench_function(name, |b| {
            b.iter_with_large_drop(|| {
                let mut out = Vec::with_capacity(capacity);
                for rec in black_box(&recs) {
                    records::append(&mut out, rec).expect("fits");
                }
                out
            })
        });
    }
    group.finish();
}

/// `FrameCodec::encode_to_bytes` of a PushBlocks frame holding four 1 MiB
/// blocks (the client's 4 MiB push batch), then `FrameCodec::decode` of the
/// buffer as the server receives it.
fn push_frame(c: &mut Criterion) {
    let codec = FrameCodec::default();
    let app = AppId::new("bench-app").expect("a valid app id");
    let mut group = c.benchmark_group("push_frame_encode_decode");
    for compress in [true, false] {
        let template = sealed_block(MIB, compress);
        let blocks: Vec<Block> = (0..4).map(|p| with_id(&template, block_id(0, p, 0))).collect();
        let raw: u64 = blocks.iter().map(|b| u64::from(b.header.raw_len)).sum();
        let frame = Frame::PushBlocks(PushBlocks {
            request_id: 7,
            app: app.clone(),
            shuffle: SHUFFLE,
            blocks,
        });
        group.throughput(Throughput::Bytes(raw));
        group.bench_function(format!("4x1MiB-{}", codec_name(compress)), |b| {
            b.iter(|| {
                let wire = codec.encode_to_bytes(black_box(&frame)).expect("encode");
                let mut received = BytesMut::from(wire);
                codec
                    .decode(&mut received)
                    .expect("decode")
                    .expect("a whole frame")
            })
        });
    }
    group.finish();
}

criterion_group!(
    codec,
    seal,
    encode_decode,
    decompress,
    record_iter,
    record_append,
    push_frame
);
criterion_main!(codec);
