package rss.spark;

import java.io.IOException;
import java.io.InputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;

/**
 * The native client (Rust, {@code spark/native}). Every method may throw
 * {@link RssException}. Handles ({@code long}) are owned by one Java object
 * each and freed exactly once ({@code close}, {@code commit}, {@code abort},
 * {@code closeReader}).
 *
 * <p>The library is loaded from the path in {@code RSS_NATIVE_LIB} if set,
 * otherwise extracted from this jar ({@code /native/librss_spark.so}) into a
 * temporary file.
 */
final class Native {
  private Native() {}

  static {
    load();
  }

  private static void load() {
    String path = System.getenv("RSS_NATIVE_LIB");
    if (path != null && !path.isEmpty()) {
      System.load(path);
      return;
    }
    String resource = "/native/" + System.mapLibraryName("rss_spark");
    try (InputStream in = Native.class.getResourceAsStream(resource)) {
      if (in == null) {
        throw new UnsatisfiedLinkError(
            "the rss-spark jar holds no " + resource + " and RSS_NATIVE_LIB is not set");
      }
      Path file = Files.createTempFile("rss_spark", ".so");
      file.toFile().deleteOnExit();
      Files.copy(in, file, StandardCopyOption.REPLACE_EXISTING);
      System.load(file.toString());
    } catch (IOException e) {
      throw new UnsatisfiedLinkError("cannot extract " + resource + ": " + e);
    }
  }

  static native long connect(
      String urls,
      String quicPins,
      long connectTimeoutMs,
      long requestTimeoutMs,
      long retryWindowMs,
      int replication)
      throws RssException;

  static native void close(long client) throws RssException;

  static native byte[] registerShuffle(
      long client, String app, int shuffle, int maps, int partitions, String mode)
      throws RssException;

  static native void unregisterShuffle(long client, byte[] handle) throws RssException;

  static native void unregisterApp(long client, String app) throws RssException;

  static native long openWriter(
      long client, byte[] handle, int map, int attempt, int blockSize, long bufferBytes)
      throws RssException;

  static native void write(long writer, int partition, byte[] chunk, int len) throws RssException;

  /** {@code [records, blocks, rawBytes, pushedBytes, bytes of partition 0, 1, ...]}. */
  static native long[] commit(long writer) throws RssException;

  static native void abort(long writer) throws RssException;

  /**
   * {@code [committed attempt or -1, bytes of partition 0, 1, ...]} for {@code map}, or for
   * every committed map when {@code map} is negative.
   */
  static native long[] committedSizes(long client, byte[] handle, int map) throws RssException;

  static native long openReader(
      long client, byte[] handle, int partition, int startMap, int endMap) throws RssException;

  /** The chunks of the next block, or null at the end. */
  static native byte[][] nextBatch(long reader) throws RssException;

  /** {@code [records, blocks, fetchedBytes]} so far. */
  static native long[] readStats(long reader) throws RssException;

  static native void closeReader(long reader) throws RssException;
}
