//! Checksum and compression kernels, and the memory-copy baseline every
//! other micro-benchmark is stated against (`benches/MICRO.md`).
//!
//! `cargo bench -p benches --bench checksum`

mod common;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use common::{noise, raw_payload, MIB};

/// `copy_from_slice` of 1 MiB (the baseline: cache-resident, as a block
/// being sealed or read is) and of 64 MiB (main memory).
fn memcpy(c: &mut Criterion) {
    let mut group = c.benchmark_group("memcpy");
    for (name, len) in [("1MiB", MIB), ("64MiB", 64 * MIB)] {
        let src = noise(len);
        let mut dst = vec![0u8; len];
        dst.copy_from_slice(&src); // fault the pages in
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                dst.copy_from_slice(black_box(&src));
                black_box(&mut dst);
            })
        });
    }
    group.finish();
}

/// CRC32C as blocks are checked: on push, on read, and at seal.
fn crc32c(c: &mut Criterion) {
    let mut group = c.benchmark_group("crc32c");
    let buf = noise(MIB);
    for (name, len) in [("4KiB", 4 << 10), ("64KiB", 64 << 10), ("1MiB", MIB)] {
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), &buf[..len], |b, data| {
            b.iter(|| crc32c::crc32c(black_box(data)))
        });
    }
    group.finish();
}

/// The LZ4 block codec alone (what `Block::seal` and `Block::decompress`
/// call), on a 1 MiB payload of 100-byte records, into buffers allocated
/// once: no allocation and no CRC is timed.
fn lz4(c: &mut Criterion) {
    let (raw, _) = raw_payload(MIB);
    let mut compressed = vec![0u8; lz4_flex::block::get_maximum_output_size(raw.len())];
    let n = lz4_flex::block::compress_into(&raw, &mut compressed).expect("the bound fits");
    compressed.truncate(n);
    let mut out = vec![0u8; lz4_flex::block::get_maximum_output_size(raw.len())];

    let mut group = c.benchmark_group("lz4");
    group.throughput(Throughput::Bytes(raw.len() as u64));
    group.bench_function("compress", |b| {
        b.iter(|| lz4_flex::block::compress_into(black_box(&raw), &mut out).expect("the bound fits"))
    });
    out.truncate(raw.len());
    group.bench_function("decompress", |b| {
        b.iter(|| lz4_flex::block::decompress_into(black_box(&compressed), &mut out).expect("valid"))
    });
    group.finish();
}

criterion_group!(checksum, memcpy, crc32c, lz4);
criterion_main!(checksum);
