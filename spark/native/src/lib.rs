//! The native half of the Spark plugin: the remote client exposed to Java
//! (class `rss.spark.Native`) through JNI. Java speaks no wire protocol:
//! every control call, push, commit and fetch goes through
//! [`RemoteShuffle`], so there is one implementation of the protocol.
//!
//! Rules kept here:
//!
//! * **One runtime per process**: a multi-threaded tokio runtime made on
//!   first use; Java threads enter it with `block_on`. Rust never calls
//!   back into Java, and no Rust thread touches the JVM.
//! * **No per-record calls**: Java serializes records into chunks per
//!   partition and hands a chunk over as one byte array; the client stores
//!   each chunk as one record of its blocks (LZ4, CRC). A read returns one
//!   block's chunks per call.
//! * **Errors are exceptions**: every entry point catches panics and turns
//!   them and every [`ClientError`] into `rss.spark.RssException` (an
//!   `IOException`) carrying the error's kind and whether a retry can help
//!   or data was lost. An entry point that threw returns a null/zero value
//!   that Java never looks at.
//! * **Bounded native memory**: a writer buffers at most its
//!   `buffer_bytes` of records (sealed into blocks of `block_size`) plus
//!   `max_in_flight_pushes` (4) pushes of at most 4 MiB each; a reader holds
//!   one fetch chunk (about 1 MiB plus one block) and the block being handed
//!   over. Handles are boxed; Java frees each exactly once (`close*`,
//!   `commit`, `abort`).

pub mod handle;
mod jni_util;

use std::time::Duration;

use jni::objects::{JByteArray, JClass, JString};
use jni::sys::{jbyteArray, jint, jlong, jlongArray, jobjectArray};
use jni::JNIEnv;
use shuffle_client::protocol::{
    AppId, AttemptId, MapId, MapRange, PartitionId, Replication, ShuffleId, ShuffleMode, ShuffleSpec,
};
use shuffle_client::remote::{RemoteReader, RemoteWriter};
use shuffle_client::{
    ClientError, QuicTrust, RemoteOptions, RemoteShuffle, ShuffleClient, ShuffleReader, ShuffleWriter,
    WriterOptions,
};

use self::jni_util::{entry, from_ptr, into_ptr, runtime, take_ptr, text};

/// A connected client (`Native.connect`). Every shuffle it registers is
/// placed over the configured servers live at that moment, and it serves
/// handles placed over any of them: a generation registered after a
/// server was lost lives on the servers left.
#[derive(Debug)]
pub struct Client {
    shuffle: RemoteShuffle,
}

/// An open map-attempt writer (`Native.openWriter`).
#[derive(Debug)]
pub struct Writer {
    writer: RemoteWriter,
    /// Reused for every chunk Java hands over.
    scratch: Vec<i8>,
}

/// An open partition reader (`Native.openReader`).
#[derive(Debug)]
pub struct Reader {
    reader: RemoteReader,
}

/// `long connect(String urls, String quicPins, long connectTimeoutMs, long requestTimeoutMs, long retryWindowMs, int replication)`
#[no_mangle]
pub extern "system" fn Java_rss_spark_Native_connect<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    urls: JString<'l>,
    pins: JString<'l>,
    connect_ms: jlong,
    request_ms: jlong,
    retry_ms: jlong,
    replication: jint,
) -> jlong {
    entry(&mut env, 0, |env| {
        let urls = text(env, &urls)?;
        let pins = text(env, &pins)?;
        let millis = |ms: jlong| Duration::from_millis(u64::try_from(ms).unwrap_or(0));
        let mut options = RemoteOptions {
            connect_timeout: millis(connect_ms),
            request_timeout: millis(request_ms),
            retry_window: millis(retry_ms),
            replication: Replication::new(u32::try_from(replication).unwrap_or(0))
                .map_err(ClientError::InvalidArgument)?,
            ..RemoteOptions::default()
        };
        let pins: Vec<[u8; 32]> = pins
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(QuicTrust::parse_fingerprint)
            .collect::<Result<_, _>>()?;
        if !pins.is_empty() {
            options.quic_trust = QuicTrust::Pinned(pins);
        }
        let shuffle = runtime()?.block_on(RemoteShuffle::connect_str(&urls, options))?;
        Ok(into_ptr(Client { shuffle }))
    })
}

/// `void close(long client)`
#[no_mangle]
pub extern "system" fn Java_rss_spark_Native_close<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    client: jlong,
) {
    entry(&mut env, (), |_| {
        // SAFETY: Java passes a pointer from `connect`, once.
        drop(unsafe { take_ptr::<Client>(client) }?);
        Ok(())
    })
}

/// `byte[] registerShuffle(long client, String app, int shuffle, int maps, int partitions, String mode)`:
/// the handle, as bytes Java keeps, placed over the servers live now.
#[no_mangle]
pub extern "system" fn Java_rss_spark_Native_registerShuffle<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    client: jlong,
    app: JString<'l>,
    shuffle: jint,
    maps: jint,
    partitions: jint,
    mode: JString<'l>,
) -> jbyteArray {
    entry(&mut env, std::ptr::null_mut(), |env| {
        // SAFETY: a live pointer from `connect`.
        let client = unsafe { from_ptr::<Client>(client) }?;
        let app = AppId::new(text(env, &app)?).map_err(ClientError::InvalidArgument)?;
        let mode: ShuffleMode = text(env, &mode)?.parse().map_err(ClientError::InvalidArgument)?;
        let spec = ShuffleSpec::new(
            non_negative(maps, "maps")?,
            non_negative(partitions, "partitions")?,
            mode,
        )
        .map_err(ClientError::InvalidArgument)?;
        let shuffle = ShuffleId(non_negative(shuffle, "shuffle id")?);
        let handle = runtime()?.block_on(client.shuffle.register_shuffle(&app, shuffle, spec))?;
        let bytes = handle::encode(&handle)?;
        jni_util::byte_array(env, &bytes)
    })
}

/// `void unregisterShuffle(long client, byte[] handle)`
#[no_mangle]
pub extern "system" fn Java_rss_spark_Native_unregisterShuffle<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    client: jlong,
    handle: JByteArray<'l>,
) {
    entry(&mut env, (), |env| {
        // SAFETY: a live pointer from `connect`.
        let client = unsafe { from_ptr::<Client>(client) }?;
        let handle = handle::decode(&jni_util::bytes(env, &handle)?)?;
        Ok(runtime()?.block_on(async { client.shuffle.unregister_shuffle(&handle).await })?)
    })
}

/// `void unregisterApp(long client, String app)`
#[no_mangle]
pub extern "system" fn Java_rss_spark_Native_unregisterApp<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    client: jlong,
    app: JString<'l>,
) {
    entry(&mut env, (), |env| {
        // SAFETY: a live pointer from `connect`.
        let client = unsafe { from_ptr::<Client>(client) }?;
        let app = AppId::new(text(env, &app)?).map_err(ClientError::InvalidArgument)?;
        Ok(runtime()?.block_on(client.shuffle.unregister_app(&app))?)
    })
}

/// `long openWriter(long client, byte[] handle, int map, int attempt, int blockSize, long bufferBytes)`
#[no_mangle]
pub extern "system" fn Java_rss_spark_Native_openWriter<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    client: jlong,
    handle: JByteArray<'l>,
    map: jint,
    attempt: jint,
    block_size: jint,
    buffer_bytes: jlong,
) -> jlong {
    entry(&mut env, 0, |env| {
        // SAFETY: a live pointer from `connect`.
        let client = unsafe { from_ptr::<Client>(client) }?;
        let handle = handle::decode(&jni_util::bytes(env, &handle)?)?;
        let options = WriterOptions {
            block_size: non_negative(block_size, "block size")?.max(1) as usize,
            buffer_limit: usize::try_from(buffer_bytes.max(1)).unwrap_or(usize::MAX),
            compress: true,
        };
        let map = MapId(non_negative(map, "map")?);
        let attempt = AttemptId(non_negative(attempt, "attempt")?);
        let writer = runtime()?
            .block_on(async { client.shuffle.open_writer(&handle, map, attempt, options).await })?;
        Ok(into_ptr(Writer {
            writer,
            scratch: Vec::new(),
        }))
    })
}

/// `void write(long writer, int partition, byte[] chunk, int len)`: one
/// chunk of serialized records (the first `len` bytes), stored as one
/// record.
#[no_mangle]
pub extern "system" fn Java_rss_spark_Native_write<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    writer: jlong,
    partition: jint,
    chunk: JByteArray<'l>,
    len: jint,
) {
    entry(&mut env, (), |env| {
        // SAFETY: a live pointer from `openWriter`, used by one thread.
        let w = unsafe { from_ptr::<Writer>(writer) }?;
        let partition = PartitionId(non_negative(partition, "partition")?);
        let record = jni_util::region(env, &chunk, len, &mut w.scratch)?;
        Ok(runtime()?.block_on(w.writer.write(partition, record))?)
    })
}

/// `long[] commit(long writer)`: pushes the rest and commits; frees the
/// writer. Returns `[records, blocks, rawBytes, pushedBytes, bytes of
/// partition 0, 1, ...]` (pushed block bytes per partition).
#[no_mangle]
pub extern "system" fn Java_rss_spark_Native_commit<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    writer: jlong,
) -> jlongArray {
    entry(&mut env, std::ptr::null_mut(), |env| {
        // SAFETY: a pointer from `openWriter`, given back once.
        let w = unsafe { take_ptr::<Writer>(writer) }?;
        let (stats, sizes) = runtime()?.block_on(w.writer.commit_with_partition_bytes())?;
        let mut out = vec![stats.records, stats.blocks, stats.raw_bytes, stats.pushed_bytes];
        out.extend(sizes);
        jni_util::long_array(env, &out)
    })
}

/// `void abort(long writer)`: abandons the attempt (nothing is committed,
/// its blocks are never served); frees the writer.
#[no_mangle]
pub extern "system" fn Java_rss_spark_Native_abort<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    writer: jlong,
) {
    entry(&mut env, (), |_| {
        // SAFETY: a pointer from `openWriter`, given back once.
        let w = unsafe { take_ptr::<Writer>(writer) }?;
        // In-flight pushes are aborted with the writer's tasks.
        let _guard = runtime()?.enter();
        drop(w);
        Ok(())
    })
}

/// `long[] committedSizes(long client, byte[] handle, int map)`: `[the
/// committed attempt or -1, bytes of partition 0, 1, ...]` for `map`, or
/// for every committed map when `map` is negative (then the first entry
/// is -1).
#[no_mangle]
pub extern "system" fn Java_rss_spark_Native_committedSizes<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    client: jlong,
    handle: JByteArray<'l>,
    map: jint,
) -> jlongArray {
    entry(&mut env, std::ptr::null_mut(), |env| {
        // SAFETY: a live pointer from `connect`.
        let client = unsafe { from_ptr::<Client>(client) }?;
        let handle = handle::decode(&jni_util::bytes(env, &handle)?)?;
        let map = u32::try_from(map).ok().map(MapId);
        let sizes = runtime()?.block_on(async { client.shuffle.committed_sizes(&handle, map).await })?;
        let mut out = Vec::with_capacity(sizes.bytes.len() + 1);
        out.push(sizes.attempt.map_or(-1, |a| i64::from(a.0)));
        out.extend(sizes.bytes.iter().map(|&b| i64::try_from(b).unwrap_or(i64::MAX)));
        jni_util::signed_long_array(env, &out)
    })
}

/// `long openReader(long client, byte[] handle, int partition, int startMap, int endMap)`
#[no_mangle]
pub extern "system" fn Java_rss_spark_Native_openReader<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    client: jlong,
    handle: JByteArray<'l>,
    partition: jint,
    start_map: jint,
    end_map: jint,
) -> jlong {
    entry(&mut env, 0, |env| {
        // SAFETY: a live pointer from `connect`.
        let client = unsafe { from_ptr::<Client>(client) }?;
        let handle = handle::decode(&jni_util::bytes(env, &handle)?)?;
        let partition = PartitionId(non_negative(partition, "partition")?);
        let maps = MapRange::new(
            MapId(non_negative(start_map, "start map")?),
            MapId(non_negative(end_map, "end map")?),
        )
        .map_err(ClientError::InvalidArgument)?;
        let reader =
            runtime()?.block_on(async { client.shuffle.open_reader(&handle, partition, maps).await })?;
        Ok(into_ptr(Reader { reader }))
    })
}

/// `byte[][] nextBatch(long reader)`: the chunks of the next block, or
/// null at the end of the partition.
#[no_mangle]
pub extern "system" fn Java_rss_spark_Native_nextBatch<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    reader: jlong,
) -> jobjectArray {
    entry(&mut env, std::ptr::null_mut(), |env| {
        // SAFETY: a live pointer from `openReader`, used by one thread.
        let r = unsafe { from_ptr::<Reader>(reader) }?;
        let Some(batch) = runtime()?.block_on(r.reader.next_batch())? else {
            return Ok(std::ptr::null_mut());
        };
        let records = batch.collect::<Result<Vec<_>, _>>()?;
        jni_util::array_of_byte_arrays(env, &records)
    })
}

/// `long[] readStats(long reader)`: `[records, blocks, fetchedBytes]` so far.
#[no_mangle]
pub extern "system" fn Java_rss_spark_Native_readStats<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    reader: jlong,
) -> jlongArray {
    entry(&mut env, std::ptr::null_mut(), |env| {
        // SAFETY: a live pointer from `openReader`.
        let r = unsafe { from_ptr::<Reader>(reader) }?;
        let s = r.reader.stats();
        jni_util::long_array(env, &[s.records, s.blocks, s.fetched_bytes])
    })
}

/// `void closeReader(long reader)`
#[no_mangle]
pub extern "system" fn Java_rss_spark_Native_closeReader<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    reader: jlong,
) {
    entry(&mut env, (), |_| {
        // SAFETY: a pointer from `openReader`, given back once.
        let r = unsafe { take_ptr::<Reader>(reader) }?;
        let _guard = runtime()?.enter();
        drop(r);
        Ok(())
    })
}

fn non_negative(value: jint, what: &'static str) -> Result<u32, ClientError> {
    u32::try_from(value).map_err(|_| {
        ClientError::InvalidArgument(shuffle_client::protocol::ProtocolError::Malformed {
            what,
            reason: format!("{value} is negative"),
        })
    })
}
