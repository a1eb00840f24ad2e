package rss.spark;

import java.io.IOException;

/**
 * An error of the shuffle service or of its native client. {@link #kind()}
 * names the client error (for example {@code CommitConflict},
 * {@code Connection}); {@link #retryable()} says whether the same call may
 * succeed later; {@link #dataLost()} whether data already written cannot be
 * read back, so its producers must run again.
 */
public final class RssException extends IOException {
  private static final long serialVersionUID = 1L;

  private final String kind;
  private final boolean retryable;
  private final boolean dataLost;

  /** Called by the native library. */
  public RssException(String message, String kind, boolean retryable, boolean dataLost) {
    super(message);
    this.kind = kind;
    this.retryable = retryable;
    this.dataLost = dataLost;
  }

  public String kind() {
    return kind;
  }

  public boolean retryable() {
    return retryable;
  }

  public boolean dataLost() {
    return dataLost;
  }
}
