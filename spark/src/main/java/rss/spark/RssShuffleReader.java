package rss.spark;

import java.io.ByteArrayInputStream;
import java.io.IOException;
import java.util.NoSuchElementException;
import org.apache.spark.Aggregator;
import org.apache.spark.InterruptibleIterator;
import org.apache.spark.ShuffleDependency;
import org.apache.spark.TaskContext;
import org.apache.spark.serializer.SerializerInstance;
import org.apache.spark.shuffle.FetchFailedException;
import org.apache.spark.shuffle.ShuffleReadMetricsReporter;
import org.apache.spark.shuffle.ShuffleReader;
import org.apache.spark.util.TaskCompletionListener;
import org.apache.spark.util.collection.ExternalSorter;
import scala.Option;
import scala.Product2;
import scala.Tuple2;
import scala.collection.AbstractIterator;
import scala.collection.Iterator;
import scala.math.Ordering;

/**
 * Reads partitions {@code [startPartition, endPartition)} for maps
 * {@code [startMap, endMap)} (AQE's coalesced partitions and skew splits)
 * from the service: exactly the committed attempts, each map range served
 * from the write-time index. Applies the dependency's aggregator and key
 * ordering as Spark's own reader does. A lost server or lost data becomes
 * a {@link FetchFailedException}, so Spark re-runs the parent stage.
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

  /** Every record of the range, partition after partition. */
  private final class Records extends AbstractIterator<Product2<Object, Object>> {
    private final SerializerInstance serializer = dep.serializer().newInstance();
    private int partition = startPartition;
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
          if (partition >= endPartition || startMap >= endMap) {
            // Spark's own reader does this when its records are exhausted.
            context.taskMetrics().mergeShuffleReadMetrics();
            return false;
          }
          if (!closeHooked) {
            closeHooked = true;
            context.addTaskCompletionListener((TaskCompletionListener) ctx -> close());
          }
          reader = Native.openReader(manager.client(), handle.nativeHandle, partition, startMap, endMap);
        }
        long waitStarted = System.nanoTime();
        batch = Native.nextBatch(reader);
        metrics.incFetchWaitTime((System.nanoTime() - waitStarted) / 1_000_000);
        nextChunk = 0;
        if (batch == null) {
          finishPartition();
        }
      }
    }

    /** Counts what the partition's reader fetched, closes it, moves on. */
    private void finishPartition() throws RssException {
      long[] stats = Native.readStats(reader);
      metrics.incRemoteBlocksFetched(stats[1]);
      metrics.incRemoteBytesRead(stats[2]);
      long r = reader;
      reader = 0;
      Native.closeReader(r);
      partition++;
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
     * shuffle) is a fetch failure; anything else (a bug, a bad argument)
     * fails the task as it is.
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
      String message =
          "shuffle service read of shuffle "
              + handle.shuffleId()
              + " partition "
              + partition
              + " failed ("
              + e.kind()
              + "): "
              + e.getMessage();
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
