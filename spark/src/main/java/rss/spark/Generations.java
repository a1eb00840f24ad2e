package rss.spark;

import java.io.IOException;

/**
 * A Spark shuffle lives in one service shuffle per attempt of the map stage
 * that wrote it: generation {@code g} is what stage attempt {@code g} wrote
 * (generation 0 is registered with the shuffle; later ones when the map
 * stage runs again after a fetch failure, placed on the servers that answer
 * then). The driver keeps the list ({@link RssDriver}); each map output
 * says which generation holds it in the top bits of its {@code MapStatus}
 * map id, so a reader reads every map from the generation Spark's map
 * output tracker names, even when a stage attempt re-ran only some maps.
 *
 * <ul>
 *   <li>service shuffle id = {@code sparkShuffleId * 256 + generation}
 *       (Spark shuffle ids below 2^23, generations below 256: Spark's
 *       {@code spark.stage.maxConsecutiveAttempts} defaults to 4);
 *   <li>map id = {@code generation << 48 | taskAttemptId} (task attempt
 *       ids below 2^48), unique per map output as Spark requires.
 * </ul>
 */
final class Generations {
  static final int MAX = 256;
  private static final int GEN_SHIFT = 48;
  private static final long TASK_MASK = (1L << GEN_SHIFT) - 1;

  private Generations() {}

  static int serviceShuffleId(int sparkShuffleId, int generation) {
    if (sparkShuffleId < 0 || sparkShuffleId >= (1 << 23) || generation < 0 || generation >= MAX) {
      throw new IllegalArgumentException(
          "Spark shuffle "
              + sparkShuffleId
              + " generation "
              + generation
              + " does not fit a service shuffle id (shuffle ids below 2^23, generations below 256)");
    }
    return sparkShuffleId * MAX + generation;
  }

  static long mapId(int generation, long taskAttemptId) throws IOException {
    if (taskAttemptId < 0 || taskAttemptId > TASK_MASK || generation < 0 || generation >= MAX) {
      throw new IOException(
          "task attempt " + taskAttemptId + " / generation " + generation + " do not fit a map id");
    }
    return ((long) generation << GEN_SHIFT) | taskAttemptId;
  }

  static int ofMapId(long mapId) {
    return (int) ((mapId >>> GEN_SHIFT) & (MAX - 1));
  }
}
