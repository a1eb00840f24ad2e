package rss.spark;

import org.apache.spark.SparkConf;

/**
 * The plugin's settings, read once from the SparkConf. Every name is
 * {@code spark.rss.*}; defaults are written beside each.
 */
final class RssConf {
  /** {@code spark.rss.servers}: {@code tcp://host:port,...} or {@code quic://...}. Required. */
  final String servers;
  /** {@code spark.rss.quicPin}: SHA-256 fingerprints (comma-separated) of QUIC servers. */
  final String quicPins;
  /** {@code spark.rss.mode}: the shuffle mode. Default {@code blocking} (the only one Spark uses). */
  final String mode;
  /** {@code spark.rss.fallback}: use Spark's sort shuffle when no server answers. Default false. */
  final boolean fallback;
  /** {@code spark.rss.chunkSize}: serialized bytes per chunk handed to the native client. Default 64k. */
  final int chunkSize;
  /** {@code spark.rss.writerBufferSize}: Java-side bytes buffered per writer. Default 32m. */
  final long writerBuffer;
  /** {@code spark.rss.blockSize}: raw bytes per block. Default 1m. */
  final int blockSize;
  /** {@code spark.rss.nativeBufferSize}: native bytes buffered per writer. Default 32m. */
  final long nativeBuffer;
  /** {@code spark.rss.connectTimeout}: default 5s. */
  final long connectTimeoutMs;
  /** {@code spark.rss.requestTimeout}: default 120s. */
  final long requestTimeoutMs;
  /** {@code spark.rss.retryWindow}: how long connection errors are retried. Default 30s. */
  final long retryWindowMs;
  /**
   * {@code spark.rss.replication}: copies of each partition, 1 or 2 (a replica on another server:
   * a lost server then costs no stage re-run). Default 1.
   */
  final int replication;

  RssConf(SparkConf conf) {
    servers = conf.get("spark.rss.servers", "").trim();
    quicPins = conf.get("spark.rss.quicPin", "");
    mode = conf.get("spark.rss.mode", "blocking");
    fallback = conf.getBoolean("spark.rss.fallback", false);
    chunkSize = (int) Math.min(conf.getSizeAsBytes("spark.rss.chunkSize", "64k"), 16L << 20);
    writerBuffer = conf.getSizeAsBytes("spark.rss.writerBufferSize", "32m");
    blockSize = (int) Math.min(conf.getSizeAsBytes("spark.rss.blockSize", "1m"), 32L << 20);
    nativeBuffer = conf.getSizeAsBytes("spark.rss.nativeBufferSize", "32m");
    connectTimeoutMs = conf.getTimeAsMs("spark.rss.connectTimeout", "5s");
    requestTimeoutMs = conf.getTimeAsMs("spark.rss.requestTimeout", "120s");
    retryWindowMs = conf.getTimeAsMs("spark.rss.retryWindow", "30s");
    replication = conf.getInt("spark.rss.replication", 1);
    if (replication != 1 && replication != 2) {
      throw new IllegalArgumentException(
          "spark.rss.replication=" + replication + ": 1 or 2 copies are served");
    }
    if (!mode.equals("blocking")) {
      throw new IllegalArgumentException(
          "spark.rss.mode=" + mode + ": Spark shuffles through the service in blocking mode only");
    }
    if (chunkSize <= 0 || blockSize <= 0 || writerBuffer <= 0 || nativeBuffer <= 0) {
      throw new IllegalArgumentException("spark.rss sizes must be positive");
    }
  }
}
