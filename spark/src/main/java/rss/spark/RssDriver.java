package rss.spark;

import java.io.Serializable;
import java.util.BitSet;
import java.util.HashMap;
import java.util.Map;
import org.apache.spark.MapOutputTrackerMaster;
import org.apache.spark.SparkEnv;
import org.apache.spark.rpc.RpcCallContext;
import org.apache.spark.rpc.RpcEnv;
import org.apache.spark.rpc.ThreadSafeRpcEndpoint;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import scala.PartialFunction;
import scala.runtime.AbstractPartialFunction;
import scala.runtime.BoxedUnit;

/**
 * The driver's half of the plugin: per Spark shuffle, the service shuffle of
 * every generation (see {@link Generations}), and the endpoint (Spark's own
 * RPC, named {@value #NAME}) executors ask for a generation's handle and
 * report fetch failures to.
 *
 * <p>A reader whose fetch failed reports it here before it throws
 * {@code FetchFailedException}: the first report of a generation
 * unregisters every map output of the shuffle in Spark's map output
 * tracker, so Spark runs the whole map stage again (the exception carries
 * no block manager and map index -1, so Spark itself drops nothing, and no
 * healthy executor's state). The next stage attempt's writers ask for its
 * generation, which this registers on the servers that answer.
 */
final class RssDriver implements ThreadSafeRpcEndpoint {
  static final String NAME = "rss-shuffle-manager";
  private static final Logger LOG = LoggerFactory.getLogger(RssDriver.class);

  /** An executor asks for the handle of a generation; a writer may create it. */
  static final class GenerationRequest implements Serializable {
    private static final long serialVersionUID = 1L;
    final int shuffleId;
    final int generation;
    final boolean create;

    GenerationRequest(int shuffleId, int generation, boolean create) {
      this.shuffleId = shuffleId;
      this.generation = generation;
      this.create = create;
    }
  }

  /** A reader could not fetch from these generations of a shuffle. */
  static final class FetchFailure implements Serializable {
    private static final long serialVersionUID = 1L;
    final int shuffleId;
    final int[] generations;

    FetchFailure(int shuffleId, int[] generations) {
      this.shuffleId = shuffleId;
      this.generations = generations.clone();
    }
  }

  /** One Spark shuffle's generations. */
  private static final class Shuffle {
    final int maps;
    final int partitions;
    final Map<Integer, byte[]> handles = new HashMap<>();
    final BitSet failed = new BitSet();

    Shuffle(int maps, int partitions) {
      this.maps = maps;
      this.partitions = partitions;
    }
  }

  private final RpcEnv rpcEnv;
  private final RssShuffleManager manager;
  private final String app;
  private final Map<Integer, Shuffle> shuffles = new HashMap<>();

  RssDriver(RpcEnv rpcEnv, RssShuffleManager manager, String app) {
    this.rpcEnv = rpcEnv;
    this.manager = manager;
    this.app = app;
  }

  @Override
  public RpcEnv rpcEnv() {
    return rpcEnv;
  }

  /** Registers generation 0 of a new Spark shuffle on the servers live now. */
  synchronized byte[] register(int shuffleId, int maps, int partitions) throws RssException {
    byte[] handle =
        Native.registerShuffle(
            manager.client(),
            app,
            Generations.serviceShuffleId(shuffleId, 0),
            maps,
            partitions,
            manager.conf().mode);
    Shuffle s = new Shuffle(maps, partitions);
    s.handles.put(0, handle);
    shuffles.put(shuffleId, s);
    return handle;
  }

  /**
   * The handle of {@code generation} of {@code shuffleId}; with {@code
   * create}, registered on the servers live now if it is new.
   */
  synchronized byte[] generation(int shuffleId, int generation, boolean create) throws RssException {
    Shuffle s = shuffles.get(shuffleId);
    if (s == null) {
      throw new IllegalStateException("shuffle " + shuffleId + " is not registered with the service");
    }
    byte[] handle = s.handles.get(generation);
    if (handle != null) {
      return handle;
    }
    if (!create) {
      throw new IllegalStateException(
          "shuffle " + shuffleId + " has no generation " + generation + " (no map stage attempt wrote it)");
    }
    handle =
        Native.registerShuffle(
            manager.client(),
            app,
            Generations.serviceShuffleId(shuffleId, generation),
            s.maps,
            s.partitions,
            manager.conf().mode);
    s.handles.put(generation, handle);
    LOG.info("shuffle {}: map stage attempt {} writes a new service shuffle", shuffleId, generation);
    return handle;
  }

  /**
   * A reader lost data of {@code generations}: the first report of any of
   * them makes Spark forget every map output of the shuffle, so the map
   * stage runs again. Later reports of the same generations change nothing.
   */
  synchronized void fetchFailed(int shuffleId, int[] generations) {
    Shuffle s = shuffles.get(shuffleId);
    if (s == null) {
      return;
    }
    boolean fresh = false;
    for (int g : generations) {
      if (g >= 0 && !s.failed.get(g)) {
        s.failed.set(g);
        fresh = true;
      }
    }
    if (fresh) {
      LOG.warn(
          "shuffle {}: a read of generation(s) {} failed; every map output is dropped, so the map stage runs again",
          shuffleId,
          java.util.Arrays.toString(generations));
      ((MapOutputTrackerMaster) SparkEnv.get().mapOutputTracker())
          .unregisterAllMapAndMergeOutput(shuffleId);
    }
  }

  /** Forgets a shuffle; returns the handles of its generations, to unregister. */
  synchronized byte[][] remove(int shuffleId) {
    Shuffle s = shuffles.remove(shuffleId);
    return s == null ? new byte[0][] : s.handles.values().toArray(new byte[0][]);
  }

  @Override
  public PartialFunction<Object, BoxedUnit> receiveAndReply(RpcCallContext context) {
    return new AbstractPartialFunction<Object, BoxedUnit>() {
      @Override
      public boolean isDefinedAt(Object message) {
        return message instanceof GenerationRequest || message instanceof FetchFailure;
      }

      @Override
      public <A1, B1> B1 applyOrElse(A1 message, scala.Function1<A1, B1> otherwise) {
        if (!isDefinedAt(message)) {
          return otherwise.apply(message);
        }
        try {
          if (message instanceof GenerationRequest) {
            GenerationRequest r = (GenerationRequest) message;
            context.reply(generation(r.shuffleId, r.generation, r.create));
          } else {
            FetchFailure f = (FetchFailure) message;
            fetchFailed(f.shuffleId, f.generations);
            context.reply(Boolean.TRUE);
          }
        } catch (Exception e) {
          context.sendFailure(e);
        }
        @SuppressWarnings("unchecked")
        B1 unit = (B1) BoxedUnit.UNIT;
        return unit;
      }
    };
  }
}
