package rss.spark;

import java.util.Collections;
import java.util.Map;
import org.apache.spark.SparkConf;
import org.apache.spark.shuffle.api.ShuffleDataIO;
import org.apache.spark.shuffle.api.ShuffleDriverComponents;
import org.apache.spark.shuffle.api.ShuffleExecutorComponents;
import org.apache.spark.shuffle.sort.io.LocalDiskShuffleDataIO;

/**
 * For {@code spark.shuffle.sort.io.plugin.class}: says shuffle storage is
 * reliable, so Spark keeps map outputs when an executor goes away (dynamic
 * allocation without an external shuffle service). Executor components are
 * Spark's local-disk ones, used only by shuffles that fell back to Spark's
 * own sort shuffle ({@code spark.rss.fallback}).
 */
public final class RssShuffleDataIO implements ShuffleDataIO {
  private final LocalDiskShuffleDataIO local;

  public RssShuffleDataIO(SparkConf conf) {
    this.local = new LocalDiskShuffleDataIO(conf);
  }

  @Override
  public ShuffleExecutorComponents executor() {
    return local.executor();
  }

  @Override
  public ShuffleDriverComponents driver() {
    return new ShuffleDriverComponents() {
      @Override
      public Map<String, String> initializeApplication() {
        return Collections.emptyMap();
      }

      @Override
      public void cleanupApplication() {}

      @Override
      public boolean supportsReliableStorage() {
        return true;
      }
    };
  }
}
