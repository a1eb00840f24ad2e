package rss.spark;

import org.apache.spark.ShuffleDependency;
import org.apache.spark.shuffle.BaseShuffleHandle;

/**
 * A shuffle registered with the service: the Spark shuffle id and
 * dependency, and the native client's handle (opaque bytes: app, service
 * shuffle id, shape, servers), which executors hand back to their own
 * native client.
 */
final class RssShuffleHandle<K, V, C> extends BaseShuffleHandle<K, V, C> {
  private static final long serialVersionUID = 1L;

  final byte[] nativeHandle;
  final int numMaps;

  RssShuffleHandle(int shuffleId, ShuffleDependency<K, V, C> dependency, byte[] nativeHandle, int numMaps) {
    super(shuffleId, dependency);
    this.nativeHandle = nativeHandle;
    this.numMaps = numMaps;
  }
}
