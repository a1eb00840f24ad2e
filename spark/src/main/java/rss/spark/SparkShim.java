package rss.spark;

import org.apache.spark.scheduler.MapStatus;
import org.apache.spark.scheduler.MapStatus$;
import org.apache.spark.shuffle.FetchFailedException;
import org.apache.spark.storage.BlockManagerId;

/**
 * What differs between Spark versions, in one place. Written and tested
 * against Spark 3.5 (3.5.9).
 */
final class SparkShim {
  private SparkShim() {}

  static MapStatus mapStatus(BlockManagerId location, long[] partitionLengths, long mapTaskId) {
    return MapStatus$.MODULE$.apply(location, partitionLengths, mapTaskId);
  }

  /**
   * A fetch failure that makes Spark run the parent stage again once the
   * driver has dropped the shuffle's map outputs ({@link RssDriver}): no
   * block manager, so Spark removes no executor and none of an executor's
   * state (a block manager would make it forget every output and cached
   * block of that executor); map index -1, so Spark itself unregisters
   * nothing (Spark 3.5 unregisters one map only when the map index and the
   * block manager both match its output).
   */
  static FetchFailedException fetchFailed(int shuffleId, int reduceId, String message, Throwable cause) {
    return new FetchFailedException(null, shuffleId, -1L, -1, reduceId, message, cause);
  }
}
