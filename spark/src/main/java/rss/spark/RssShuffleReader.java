package rss.spark;

import java.io.ByteArrayInputStream;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.NoSuchElementException;
import org.apache.spark.Aggregator;
import org.apache.spark.InterruptibleIterator;
import org.apache.spark.ShuffleDependency;
import org.apache.spark.SparkEnv;
import org.apache.spark.TaskContext;
import org.apache.spark.serializer.SerializerInstance;
import org.apache.spark.shuffle.FetchFailedException;
import org.apache.spark.shuffle.ShuffleReadMetricsReporter;
import org.apache.spark.shuffle.ShuffleReader;
import org.apache.spark.storage.BlockId;
import org.apache.spark.storage.BlockManagerId;
import org.apache.spark.storage.ShuffleBlockId;
import org.apache.spark.util.TaskCompletionListener;
import org.apache.spark.util.collection.ExternalSorter;
import scala.Option;
import scala.Product2;
import scala.Tuple2;
import scala.Tuple3;
import scala.collection.AbstractIterator;
import scala.collection.Iterator;
import scala.collection.Seq;
import scala.math.Ordering;

/**
 * Reads partitions {@code [startPartition, endPartition)} for maps
 * {@code [startMap, endMap)} (AQE's coalesced partitions and skew splits)
 * from the service: exactly the committed attempts, each map range served
 * from the write-time index. Applies the dependency's aggregator and key
 * ordering as Spark's own reader does. Each map is read from the
 * generation its map status names (see {@link Generations}). A lost server
 * or lost data becomes a {@link FetchFailedException}, so Spark re-runs the
 * parent stage.
 */
final class RssShuffleReader<K, C> implements ShuffleReader<K, C> {
  private final RssShuffleManager manager;
  private final RssShuffleHandle<K, ?, C> handle;
  private final ShuffleDependency<K, ?, C> dep;
  private final int startMap;
  private final int endMap;
  private final int startPartition;
  private final int endPartition;
  private final TaskContext context;
  private final ShuffleReadMetricsReporter metrics;

  RssShuffleReader(
      RssShuffleManager manager,
      RssShuffleHandle<K, ?, C> handle,
      int startMap,
      int endMap,
      int startPartition,
      int endPartition,
      TaskContext context,
      ShuffleReadMetricsReporter metrics) {
    this.manager = manager;
    this.handle = handle;
    this.dep = handle.dependency();
    this.startMap = startMap;
    this.endMap = endMap;
    this.startPartition = startPartition;
    this.endPartition = endPartition;
    this.context = context;
    this.metrics = metrics;
  }

  @Override
  @SuppressWarnings({"unchecked", "rawtypes"})
  public Iterator<Product2<K, C>> read() {
    Iterator<Product2<Object, Object>> records = new Records();
    Iterator result;
    Option<Aggregator<K, ?, C>> aggregator = (Option) dep.aggregator();
    if (aggregator.isDefined()) {
      if (dep.mapSideCombine()) {
        result = ((Aggregator) aggregator.get()).combineCombinersByKey(records, context);
      } else {
        result = ((Aggregator) aggregator.get()).combineValuesByKey(records, context);
      }
    } else {
      result = records;
    }
    Option<Ordering<K>> ordering = dep.keyOrdering();
    if (ordering.isDefined()) {
      ExternalSorter sorter =
          new ExternalSorter(context, Option.empty(), Option.empty(), ordering, dep.serializer());
      sorter.insertAll(result);
      context.taskMetrics().incMemoryBytesSpilled(sorter.memoryBytesSpilled());
      context.taskMetrics().incDiskBytesSpilled(sorter.diskBytesSpilled());
      context.taskMetrics().incPeakExecutionMemory(sorter.peakMemoryUsedBytes());
      context.addTaskCompletionListener((TaskCompletionListener) ctx -> sorter.stop());
      result = sorter.iterator();
    }
    return new InterruptibleIterator(context, result);
  }

  /** One stream to read: partition {@code partition} of maps {@code [startMap, endMap)} in one generation. */
  private static final class Read {
    final int partition;
    final int generation;
    final int startMap;
    final int endMap;

    Read(int partition, int generation, int startMap, int endMap) {
      this.partition = partition;
      this.generation = generation;
      this.startMap = startMap;
      this.endMap = endMap;
    }
  }

  /**
   * The streams to read, from Spark's map output tracker (as Spark's own
   * reader asks it; a missing map output throws its fetch failure): for
   * each partition, the maps holding bytes of it, in runs of one
   * generation. A map with no bytes in a partition joins the run beside
   * it, since reading it yields nothing; a partition no map wrote to is
   * not read at all.
   */
  @SuppressWarnings({"unchecked", "rawtypes"})
  private List<Read> plan() {
    int maps = endMap - startMap;
    int[][] generations = new int[endPartition - startPartition][];
    Iterator<Tuple2<BlockManagerId, Seq<Tuple3<BlockId, Object, Object>>>> outputs =
        (Iterator)
            SparkEnv.get()
                .mapOutputTracker()
                .getMapSizesByExecutorId(handle.shuffleId(), startMap, endMap, startPartition, endPartition);
    while (outputs.hasNext()) {
      Iterator<Tuple3<BlockId, Object, Object>> blocks = outputs.next()._2().iterator();
      while (blocks.hasNext()) {
        Tuple3<BlockId, Object, Object> block = blocks.next();
        if (!(block._1() instanceof ShuffleBlockId)) {
          throw new IllegalStateException("unexpected block " + block._1() + " in a map output");
        }
        ShuffleBlockId id = (ShuffleBlockId) block._1();
        if ((Long) block._2() == 0) {
          continue;
        }
        int p = id.reduceId() - startPartition;
        int m = (Integer) block._3() - startMap;
        if (p < 0 || p >= generations.length || m < 0 || m >= maps) {
          throw new IllegalStateException("map output " + id + " outside the range read");
        }
        if (generations[p] == null) {
          generations[p] = new int[maps];
          Arrays.fill(generations[p], -1);
        }
        generations[p][m] = Generations.ofMapId(id.mapId());
      }
    }
    List<Read> reads = new ArrayList<>();
    for (int p = 0; p < generations.length; p++) {
      int[] g = generations[p];
      if (g == null) {
        continue;
      }
      int runStart = 0;
      int runGeneration = -1;
      for (int m = 0; m < maps; m++) {
        if (g[m] < 0 || g[m] == runGeneration) {
          continue;
        }
        if (runGeneration >= 0) {
          reads.add(new Read(startPartition + p, runGeneration, startMap + runStart, startMap + m));
          runStart = m;
        }
        runGeneration = g[m];
      }
      reads.add(new Read(startPartition + p, runGeneration, startMap + runStart, endMap));
    }
    return reads;
  }

  /** Every record of the range, stream after stream. */
  private final class Records extends AbstractIterator<Product2<Object, Object>> {
    private final SerializerInstance serializer = dep.serializer().newInstance();
    private List<Read> reads;
    private int nextRead;
    private Read read;
    private long reader;
    private byte[][] batch;
    private int nextChunk;
    private Iterator<Tuple2<Object, Object>> current;
    private boolean closeHooked;

    @Override
    public boolean hasNext() {
      try {
        while (current == null || !current.hasNext()) {
          if (!advance()) {
            return false;
          }
        }
        return true;
      } catch (RssException e) {
        close();
        throw failure(e);
      }
    }

    @Override
    public Product2<Object, Object> next() {
      if (!hasNext()) {
        throw new NoSuchElementException();
      }
      metrics.incRecordsRead(1);
      return current.next();
    }

    /** Opens the next chunk's stream; false at the end of the range. */
    private boolean advance() throws RssException {
      while (true) {
        if (batch != null && nextChunk < batch.length) {
          byte[] chunk = batch[nextChunk++];
          current = serializer.deserializeStream(new ByteArrayInputStream(chunk)).asKeyValueIterator();
          return true;
        }
        if (reader == 0) {
          if (reads == null) {
            reads = startMap < endMap ? plan() : new ArrayList<>();
          }
          if (nextRead >= reads.size()) {
            // Spark's own reader does this when its records are exhausted.
            context.taskMetrics().mergeShuffleReadMetrics();
            return false;
          }
          if (!closeHooked) {
            closeHooked = true;
            context.addTaskCompletionListener((TaskCompletionListener) ctx -> close());
          }
          read = reads.get(nextRead++);
          byte[] nativeHandle = manager.generation(handle, read.generation, false);
          reader =
              Native.openReader(manager.client(), nativeHandle, read.partition, read.startMap, read.endMap);
        }
        long waitStarted = System.nanoTime();
        batch = Native.nextBatch(reader);
        metrics.incFetchWaitTime((System.nanoTime() - waitStarted) / 1_000_000);
        nextChunk = 0;
        if (batch == null) {
          finishRead();
        }
      }
    }

    /** Counts what the stream fetched, closes it, moves on. */
    private void finishRead() throws RssException {
      long[] stats = Native.readStats(reader);
      metrics.incRemoteBlocksFetched(stats[1]);
      metrics.incRemoteBytesRead(stats[2]);
      long r = reader;
      reader = 0;
      Native.closeReader(r);
    }

    private void close() {
      // Idempotent: it sets the task's values from every reader's counts.
      context.taskMetrics().mergeShuffleReadMetrics();
      if (reader != 0) {
        long r = reader;
        reader = 0;
        try {
          Native.closeReader(r);
        } catch (RssException e) {
          // Freed either way.
        }
      }
    }

    /**
     * A read failure Spark can recover from by re-running the parent stage
     * (a lost or unreachable server, lost or corrupt data, an unknown
     * shuffle) is reported to the driver, which drops the shuffle's map
     * outputs, and becomes a fetch failure; anything else (a bug, a bad
     * argument) fails the task as it is.
     */
    private RuntimeException failure(RssException e) {
      boolean recoverable =
          e.retryable()
              || e.dataLost()
              || e.kind().equals("UnknownShuffle")
              || e.kind().equals("UnknownApp");
      if (!recoverable) {
        return sneaky(e);
      }
      int partition = read == null ? startPartition : read.partition;
      int generation = read == null ? 0 : read.generation;
      String message =
          "shuffle service read of shuffle "
              + handle.shuffleId()
              + " generation "
              + generation
              + " partition "
              + partition
              + " failed ("
              + e.kind()
              + "): "
              + e.getMessage();
      manager.reportFetchFailure(handle.shuffleId(), new int[] {generation});
      FetchFailedException failed = SparkShim.fetchFailed(handle.shuffleId(), partition, message, e);
      return sneaky(failed);
    }
  }

  /** Throws a checked exception through Scala's iterator interface (as Scala code does). */
  @SuppressWarnings("unchecked")
  private static <E extends Throwable> RuntimeException sneaky(Throwable e) throws E {
    throw (E) e;
  }
}
