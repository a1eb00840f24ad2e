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
   * A fetch failure that makes Spark re-run the whole parent stage: no block
   * manager (so no executor's state is dropped), map index -1 (so every map
   * output of the shuffle is unregistered: the service lost a server or a
   * partition's data, not one executor's files).
   */
  static FetchFailedException fetchFailed(int shuffleId, int reduceId, String message, Throwable cause) {
    return new FetchFailedException(null, shuffleId, -1L, -1, reduceId, message, cause);
  }
}
