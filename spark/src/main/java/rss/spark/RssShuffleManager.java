package rss.spark;

import java.util.concurrent.ConcurrentHashMap;
import org.apache.spark.ShuffleDependency;
import org.apache.spark.SparkConf;
import org.apache.spark.SparkEnv;
import org.apache.spark.TaskContext;
import org.apache.spark.rpc.RpcEndpointRef;
import org.apache.spark.rpc.RpcEnv;
import org.apache.spark.shuffle.ShuffleBlockResolver;
import org.apache.spark.shuffle.ShuffleHandle;
import org.apache.spark.shuffle.ShuffleManager;
import org.apache.spark.shuffle.ShuffleReadMetricsReporter;
import org.apache.spark.shuffle.ShuffleReader;
import org.apache.spark.shuffle.ShuffleWriteMetricsReporter;
import org.apache.spark.shuffle.ShuffleWriter;
import org.apache.spark.shuffle.sort.SortShuffleManager;
import org.apache.spark.util.RpcUtils;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import scala.reflect.ClassTag$;

/**
 * {@code spark.shuffle.manager=rss.spark.RssShuffleManager}: every shuffle
 * goes through the shuffle service. The driver registers each shuffle (the
 * app is the Spark application id; the native client heartbeats it) and
 * unregisters it and the app, and keeps each shuffle's generations (see
 * {@link Generations}, {@link RssDriver}); executors write and read
 * through their own native client. With {@code spark.rss.fallback=true} a shuffle whose
 * registration finds no server uses Spark's sort shuffle instead (logged).
 */
public final class RssShuffleManager implements ShuffleManager {
  private static final Logger LOG = LoggerFactory.getLogger(RssShuffleManager.class);

  private final SparkConf sparkConf;
  private final RssConf conf;
  private final boolean isDriver;
  /** Spark's own shuffle: fallback shuffles, and the block resolver Spark asks for. */
  private final SortShuffleManager sort;
  /** Executors: the handles of later generations, by (shuffle id, generation). */
  private final ConcurrentHashMap<Long, byte[]> generations = new ConcurrentHashMap<>();
  private long client;
  /** Driver: the shuffles' generations and the endpoint, made at the first registration. */
  private RssDriver driver;
  private RpcEndpointRef driverRef;
  private String registeredApp;

  public RssShuffleManager(SparkConf sparkConf, boolean isDriver) {
    this.sparkConf = sparkConf;
    this.conf = new RssConf(sparkConf);
    this.isDriver = isDriver;
    this.sort = new SortShuffleManager(sparkConf);
    if (conf.servers.isEmpty()) {
      throw new IllegalArgumentException("spark.rss.servers is required (tcp://host:port,...)");
    }
  }

  /** The process's native client, connected on first use. */
  synchronized long client() throws RssException {
    if (client == 0) {
      client =
          Native.connect(
              conf.servers,
              conf.quicPins,
              conf.connectTimeoutMs,
              conf.requestTimeoutMs,
              conf.retryWindowMs,
              conf.replication);
    }
    return client;
  }

  RssConf conf() {
    return conf;
  }

  private String appId() {
    return sparkConf.getAppId();
  }

  @Override
  public <K, V, C> ShuffleHandle registerShuffle(int shuffleId, ShuffleDependency<K, V, C> dependency) {
    int maps = dependency.rdd().partitions().length;
    int partitions = dependency.partitioner().numPartitions();
    try {
      byte[] handle = driver().register(shuffleId, maps, partitions);
      return new RssShuffleHandle<>(shuffleId, dependency, handle, maps);
    } catch (RssException e) {
      if (conf.fallback && e.retryable()) {
        LOG.warn(
            "shuffle {}: no shuffle server answered ({}); using Spark's sort shuffle (spark.rss.fallback)",
            shuffleId,
            e.getMessage());
        return sort.registerShuffle(shuffleId, dependency);
      }
      throw new IllegalStateException(
          "shuffle " + shuffleId + ": registering with the shuffle service failed: " + e.getMessage(), e);
    }
  }

  /** Driver: the endpoint and its state, set up on first use. */
  private synchronized RssDriver driver() throws RssException {
    if (driver == null) {
      client();
      RpcEnv rpcEnv = SparkEnv.get().rpcEnv();
      driver = new RssDriver(rpcEnv, this, appId());
      driverRef = rpcEnv.setupEndpoint(RssDriver.NAME, driver);
      registeredApp = appId();
    }
    return driver;
  }

  /** Executors: the driver's endpoint. */
  private synchronized RpcEndpointRef driverRef() {
    if (driverRef == null) {
      SparkEnv env = SparkEnv.get();
      driverRef = RpcUtils.makeDriverRef(RssDriver.NAME, sparkConf, env.rpcEnv());
    }
    return driverRef;
  }

  /**
   * The native handle of {@code generation} of a shuffle: generation 0 is in
   * the Spark handle; later ones come from the driver (a writer of a new
   * map stage attempt makes the driver register it), cached.
   */
  byte[] generation(RssShuffleHandle<?, ?, ?> handle, int generation, boolean create)
      throws RssException {
    if (generation == 0) {
      return handle.nativeHandle;
    }
    long key = ((long) handle.shuffleId() << 32) | generation;
    byte[] cached = generations.get(key);
    if (cached != null) {
      return cached;
    }
    byte[] bytes;
    if (isDriver) {
      bytes = driver().generation(handle.shuffleId(), generation, create);
    } else {
      try {
        bytes =
            driverRef()
                .askSync(
                    new RssDriver.GenerationRequest(handle.shuffleId(), generation, create),
                    ClassTag$.MODULE$.apply(byte[].class));
      } catch (RuntimeException e) {
        throw new RssException(
            "shuffle " + handle.shuffleId() + " generation " + generation + ": the driver did not answer: " + e,
            "Connection",
            true,
            false);
      }
    }
    generations.put(key, bytes);
    return bytes;
  }

  /** Tells the driver a read of these generations failed (see {@link RssDriver#fetchFailed}). */
  void reportFetchFailure(int shuffleId, int[] generations) {
    try {
      if (isDriver) {
        driver().fetchFailed(shuffleId, generations);
      } else {
        driverRef()
            .askSync(new RssDriver.FetchFailure(shuffleId, generations), ClassTag$.MODULE$.Boolean());
      }
    } catch (RuntimeException | RssException e) {
      // Spark then retries the reading stage without running the map stage
      // again; it gives up after spark.stage.maxConsecutiveAttempts.
      LOG.warn("shuffle {}: reporting a fetch failure to the driver failed: {}", shuffleId, e.toString());
    }
  }

  @Override
  @SuppressWarnings("unchecked")
  public <K, V> ShuffleWriter<K, V> getWriter(
      ShuffleHandle handle, long mapId, TaskContext context, ShuffleWriteMetricsReporter metrics) {
    if (!(handle instanceof RssShuffleHandle)) {
      return sort.getWriter(handle, mapId, context, metrics);
    }
    return new RssShuffleWriter<>(this, (RssShuffleHandle<K, V, ?>) handle, mapId, context, metrics);
  }

  @Override
  @SuppressWarnings("unchecked")
  public <K, C> ShuffleReader<K, C> getReader(
      ShuffleHandle handle,
      int startMapIndex,
      int endMapIndex,
      int startPartition,
      int endPartition,
      TaskContext context,
      ShuffleReadMetricsReporter metrics) {
    if (!(handle instanceof RssShuffleHandle)) {
      return sort.getReader(
          handle, startMapIndex, endMapIndex, startPartition, endPartition, context, metrics);
    }
    RssShuffleHandle<K, ?, C> rss = (RssShuffleHandle<K, ?, C>) handle;
    int endMap = Math.min(endMapIndex, rss.numMaps);
    return new RssShuffleReader<>(
        this, rss, startMapIndex, endMap, startPartition, endPartition, context, metrics);
  }

  /**
   * Driver: deletes the shuffle's data on the servers (Spark's cleaner calls
   * this once the shuffle is out of use). Spark's own files exist only for
   * shuffles that fell back.
   */
  @Override
  public boolean unregisterShuffle(int shuffleId) {
    sort.unregisterShuffle(shuffleId);
    RssDriver d;
    synchronized (this) {
      d = driver;
    }
    if (d == null) {
      return true;
    }
    for (byte[] handle : d.remove(shuffleId)) {
      try {
        Native.unregisterShuffle(client(), handle);
      } catch (RssException e) {
        LOG.warn("unregistering shuffle {} failed: {}", shuffleId, e.getMessage());
      }
    }
    return true;
  }

  @Override
  public ShuffleBlockResolver shuffleBlockResolver() {
    return sort.shuffleBlockResolver();
  }

  @Override
  public synchronized void stop() {
    sort.stop();
    if (driver != null && driverRef != null) {
      try {
        driver.rpcEnv().stop(driverRef);
      } catch (RuntimeException e) {
        LOG.warn("stopping the driver endpoint failed: {}", e.toString());
      }
    }
    if (client == 0) {
      return;
    }
    try {
      if (isDriver && registeredApp != null) {
        Native.unregisterApp(client, registeredApp);
      }
    } catch (RssException e) {
      LOG.warn("unregistering app {} failed: {}", registeredApp, e.getMessage());
    }
    try {
      Native.close(client);
    } catch (RssException e) {
      LOG.warn("closing the shuffle client failed: {}", e.getMessage());
    }
    client = 0;
  }

  /** The block manager id executors report in their map statuses. */
  static org.apache.spark.storage.BlockManagerId location() {
    return SparkEnv.get().blockManager().shuffleServerId();
  }
}
