package rss.spark;

import java.io.IOException;
import org.apache.spark.Partitioner;
import org.apache.spark.ShuffleDependency;
import org.apache.spark.TaskContext;
import org.apache.spark.scheduler.MapStatus;
import org.apache.spark.serializer.SerializationStream;
import org.apache.spark.serializer.SerializerInstance;
import org.apache.spark.shuffle.ShuffleWriteMetricsReporter;
import org.apache.spark.shuffle.ShuffleWriter;
import scala.Option;
import scala.Product2;
import scala.reflect.ClassTag;
import scala.reflect.ClassTag$;

/**
 * Writes one map task's output: records are serialized with the
 * dependency's serializer into a chunk per partition, and each full chunk
 * (about {@code spark.rss.chunkSize}) is handed to the native writer as one
 * record, which packs chunks into LZ4 blocks and pushes them. Spark's own
 * compression codec is not applied: the blocks are compressed once, by the
 * client.
 *
 * <p>Serializers that support relocation (Kryo, Spark SQL's row
 * serializer) share one serialization stream: each record's bytes are
 * copied into its partition's chunk. Others (Java serialization) get a
 * stream per partition, restarted for every chunk, so every chunk is a
 * whole stream the reader can open on its own.
 *
 * <p>Memory: at most {@code spark.rss.writerBufferSize} of chunks in Java
 * (past it every chunk is handed over) and {@code spark.rss.nativeBufferSize}
 * plus the pushes in flight in the native client.
 *
 * <p>Attempt ids: the service's attempt is {@code stageAttempt << 16 |
 * taskAttempt} (both below 65,536), unique per map across the stage's
 * attempts. Stage attempt {@code g} writes generation {@code g} of the
 * shuffle (see {@link Generations}), which its map status names.
 */
final class RssShuffleWriter<K, V, C> extends ShuffleWriter<K, V> {
  private static final ClassTag<Object> ANY = ClassTag$.MODULE$.Any();

  private final RssShuffleManager manager;
  private final RssShuffleHandle<K, V, C> handle;
  private final ShuffleDependency<K, V, C> dep;
  private final long mapTaskId;
  private final TaskContext context;
  private final ShuffleWriteMetricsReporter metrics;
  private final Partitioner partitioner;
  private final SerializerInstance serializer;
  private final boolean relocatable;
  private final int chunkSize;
  private final long bufferLimit;
  private final ChunkBuffer[] chunks;
  /** Per-partition streams (non-relocatable serializers). */
  private final SerializationStream[] streams;
  /** The shared stream and its scratch buffer (relocatable serializers). */
  private ChunkBuffer scratch;
  private SerializationStream shared;
  private long buffered;
  private long records;
  private long writer;
  private long[] partitionLengths;
  private boolean stopped;
  /** The stage attempt, so the generation this map writes. */
  private int generation;
  private byte[] nativeHandle;
  /** The map id of this output's map status: the generation and the task attempt. */
  private long statusMapId;

  RssShuffleWriter(
      RssShuffleManager manager,
      RssShuffleHandle<K, V, C> handle,
      long mapTaskId,
      TaskContext context,
      ShuffleWriteMetricsReporter metrics) {
    this.manager = manager;
    this.handle = handle;
    this.dep = handle.dependency();
    this.mapTaskId = mapTaskId;
    this.context = context;
    this.metrics = metrics;
    this.partitioner = dep.partitioner();
    this.serializer = dep.serializer().newInstance();
    this.relocatable = dep.serializer().supportsRelocationOfSerializedObjects();
    this.chunkSize = manager.conf().chunkSize;
    this.bufferLimit = manager.conf().writerBuffer;
    int partitions = partitioner.numPartitions();
    this.chunks = new ChunkBuffer[partitions];
    this.streams = relocatable ? null : new SerializationStream[partitions];
    this.partitionLengths = new long[partitions];
  }

  private static int attemptId(TaskContext context) throws IOException {
    int stage = context.stageAttemptNumber();
    int task = context.attemptNumber();
    if (stage < 0 || stage > 0xffff || task < 0 || task > 0xffff) {
      throw new IOException(
          "stage attempt " + stage + " / task attempt " + task + " do not fit the service's attempt id");
    }
    return (stage << 16) | task;
  }

  @Override
  public void write(scala.collection.Iterator<Product2<K, V>> input) throws IOException {
    long started = System.nanoTime();
    generation = context.stageAttemptNumber();
    statusMapId = Generations.mapId(generation, mapTaskId);
    nativeHandle = manager.generation(handle, generation, true);
    try {
      writeAndCommit(input);
    } catch (RssException e) {
      if (!e.kind().equals("CommitConflict") && !e.kind().equals("AttemptSuperseded")) {
        throw e;
      }
      // An earlier attempt of this map committed (its executor was lost
      // after the commit, or a speculative copy won): that output stands,
      // so this attempt succeeds with its sizes. Nothing of this attempt is
      // ever served, so it reports no records or bytes written.
      abortNative();
      long[] sizes = Native.committedSizes(manager.client(), nativeHandle, context.partitionId());
      if (sizes[0] < 0) {
        throw e;
      }
      System.arraycopy(sizes, 1, partitionLengths, 0, partitionLengths.length);
    }
    metrics.incWriteTime(System.nanoTime() - started);
  }

  @SuppressWarnings("unchecked")
  private void writeAndCommit(scala.collection.Iterator<Product2<K, V>> input) throws IOException {
    writer =
        Native.openWriter(
            manager.client(),
            nativeHandle,
            context.partitionId(),
            attemptId(context),
            manager.conf().blockSize,
            manager.conf().nativeBuffer);
    scala.collection.Iterator<? extends Product2<K, ?>> it;
    if (dep.mapSideCombine()) {
      if (dep.aggregator().isEmpty()) {
        throw new IllegalStateException("map-side combine without an aggregator");
      }
      it = dep.aggregator().get().combineValuesByKey(input, context);
    } else {
      it = input;
    }
    if (relocatable) {
      scratch = new ChunkBuffer(4096);
      shared = serializer.serializeStream(scratch);
    }
    while (it.hasNext()) {
      Product2<K, ?> record = it.next();
      K key = record._1();
      int p = partitioner.getPartition(key);
      ChunkBuffer chunk = chunks[p];
      if (chunk == null) {
        chunk = new ChunkBuffer(Math.min(chunkSize, 4096));
        chunks[p] = chunk;
      }
      int before = chunk.size();
      if (relocatable) {
        scratch.reset();
        shared.writeKey(key, ANY);
        shared.writeValue(record._2(), ANY);
        shared.flush();
        chunk.append(scratch, scratch.size());
      } else {
        SerializationStream s = streams[p];
        if (s == null) {
          s = serializer.serializeStream(chunk);
          streams[p] = s;
        }
        s.writeKey(key, ANY);
        s.writeValue(record._2(), ANY);
        s.flush();
      }
      buffered += chunk.size() - before;
      records++;
      if (chunk.size() >= chunkSize) {
        handOver(p);
      }
      if (buffered > bufferLimit) {
        for (int q = 0; q < chunks.length; q++) {
          handOver(q);
        }
      }
    }
    for (int q = 0; q < chunks.length; q++) {
      handOver(q);
    }
    long w = writer;
    writer = 0;
    long[] stats = Native.commit(w);
    metrics.incRecordsWritten(records);
    // What the servers store: block headers plus (compressed) payloads.
    metrics.incBytesWritten(stats[3]);
    System.arraycopy(stats, 4, partitionLengths, 0, partitionLengths.length);
  }

  /** Hands partition {@code p}'s chunk, if any, to the native writer. */
  private void handOver(int p) throws IOException {
    ChunkBuffer chunk = chunks[p];
    if (chunk == null || chunk.size() == 0) {
      return;
    }
    if (!relocatable && streams[p] != null) {
      // Close the stream so the chunk is a whole stream; the next chunk
      // starts a new one.
      streams[p].close();
      streams[p] = null;
    }
    Native.write(writer, p, chunk.array(), chunk.size());
    buffered = Math.max(0, buffered - chunk.size());
    chunk.reset();
  }

  /** Abandons the native writer, if open: its blocks are never served. */
  private void abortNative() {
    if (writer != 0) {
      long w = writer;
      writer = 0;
      try {
        Native.abort(w);
      } catch (RssException e) {
        // Freed either way.
      }
    }
  }

  @Override
  public Option<MapStatus> stop(boolean success) {
    if (stopped) {
      return Option.empty();
    }
    stopped = true;
    abortNative();
    if (!success) {
      return Option.empty();
    }
    return Option.apply(
        SparkShim.mapStatus(RssShuffleManager.location(), partitionLengths, statusMapId));
  }

  @Override
  public long[] getPartitionLengths() {
    return partitionLengths;
  }
}
