package rss.spark;

import java.io.ByteArrayOutputStream;

/** A byte stream whose buffer is handed to the native client without a copy. */
final class ChunkBuffer extends ByteArrayOutputStream {
  ChunkBuffer(int initial) {
    super(initial);
  }

  byte[] array() {
    return buf;
  }

  /** Appends {@code len} bytes of {@code other}'s buffer. */
  void append(ChunkBuffer other, int len) {
    write(other.buf, 0, len);
  }
}
