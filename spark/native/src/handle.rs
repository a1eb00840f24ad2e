//! The shuffle handle as it crosses into Java and back: a few lines of
//! UTF-8 text, which Java keeps as opaque bytes inside its serializable
//! `RssShuffleHandle` and hands back on every call. Pure code.
//!
//! ```text
//! rss-handle 1
//! <app id>
//! <shuffle id> <maps> <partitions> <mode> <offset> [<replication>]
//! <server url>,<server url>,...
//! ```
//!
//! Bytes from Java are input like any other: a handle that does not parse
//! is an `InvalidArgument` error, never a panic.

use std::sync::Arc;

use shuffle_client::protocol::{AppId, ProtocolError, Replication, ShuffleId, ShuffleMode, ShuffleSpec};
use shuffle_client::{ClientError, Placement, ShuffleHandle};

const MAGIC: &str = "rss-handle 1";
/// Longest handle accepted (a few hundred servers' URLs).
const MAX_LEN: usize = 64 << 10;

/// Encodes `handle` (a spread placement: handles come from a remote client).
pub fn encode(handle: &ShuffleHandle) -> Result<Vec<u8>, ClientError> {
    let Placement::Spread {
        servers,
        offset,
        replication,
    } = handle.placement()
    else {
        return Err(bad(
            "a handle of an in-process shuffle cannot cross to Java".into()
        ));
    };
    let spec = handle.spec();
    Ok(format!(
        "{MAGIC}\n{}\n{} {} {} {} {offset} {replication}\n{}",
        handle.app(),
        handle.shuffle().0,
        spec.num_maps(),
        spec.num_partitions(),
        spec.mode().name(),
        servers.join(",")
    )
    .into_bytes())
}

/// Decodes and validates a handle from Java.
pub fn decode(bytes: &[u8]) -> Result<ShuffleHandle, ClientError> {
    if bytes.len() > MAX_LEN {
        return Err(bad(format!("{} bytes, more than {MAX_LEN}", bytes.len())));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| bad(format!("not UTF-8: {e}")))?;
    let mut lines = text.split('\n');
    if lines.next() != Some(MAGIC) {
        return Err(bad(format!("does not start with {MAGIC:?}")));
    }
    let app = lines.next().ok_or_else(|| bad("no app line".into()))?;
    let app = AppId::new(app).map_err(ClientError::InvalidArgument)?;
    let shape = lines.next().ok_or_else(|| bad("no shape line".into()))?;
    let fields: Vec<&str> = shape.split(' ').collect();
    // The replication field came later: a handle without it has one copy.
    let (shuffle, maps, partitions, mode, offset, replication) = match fields[..] {
        [s, m, p, mode, o] => (s, m, p, mode, o, "1"),
        [s, m, p, mode, o, r] => (s, m, p, mode, o, r),
        _ => return Err(bad(format!("shape line {shape:?} has not 5 or 6 fields"))),
    };
    let number = |what: &str, s: &str| s.parse::<u32>().map_err(|e| bad(format!("{what} {s:?}: {e}")));
    let shuffle = ShuffleId(number("shuffle id", shuffle)?);
    let mode: ShuffleMode = mode.parse().map_err(ClientError::InvalidArgument)?;
    let spec = ShuffleSpec::new(number("maps", maps)?, number("partitions", partitions)?, mode)
        .map_err(ClientError::InvalidArgument)?;
    let offset = number("offset", offset)?;
    let replication =
        Replication::new(number("replication", replication)?).map_err(ClientError::InvalidArgument)?;
    let servers: Arc<[String]> = lines
        .next()
        .ok_or_else(|| bad("no servers line".into()))?
        .split(',')
        .map(str::to_string)
        .collect();
    if servers.iter().any(String::is_empty) {
        return Err(bad("an empty server URL".into()));
    }
    if lines.next().is_some() {
        return Err(bad("trailing lines".into()));
    }
    if replication.copies() > servers.len() {
        return Err(bad(format!(
            "replication {replication} over {} servers",
            servers.len()
        )));
    }
    Ok(ShuffleHandle::from_parts(
        app,
        shuffle,
        spec,
        Placement::Spread {
            servers,
            offset,
            replication,
        },
    ))
}

pub(crate) fn bad(reason: String) -> ClientError {
    ClientError::InvalidArgument(ProtocolError::Malformed {
        what: "shuffle handle",
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle() -> ShuffleHandle {
        let spec = ShuffleSpec::new(3, 7, ShuffleMode::Blocking).expect("spec");
        let servers: Arc<[String]> =
            vec!["tcp://127.0.0.1:1".to_string(), "tcp://127.0.0.1:2".to_string()].into();
        ShuffleHandle::from_parts(
            AppId::new("app-1").expect("app"),
            ShuffleId(5),
            spec,
            Placement::Spread {
                servers,
                offset: 1,
                replication: Replication::TWO,
            },
        )
    }

    #[test]
    fn handles_round_trip() {
        let h = handle();
        assert_eq!(decode(&encode(&h).expect("encode")).expect("decode"), h);
    }

    #[test]
    fn bad_handles_are_typed_errors() {
        let good = String::from_utf8(encode(&handle()).expect("encode")).expect("utf8");
        let cases = [
            String::new(),
            good.replace("rss-handle 1", "rss-handle 2"),
            good.replace("app-1", "../x"),
            good.replace(" 3 7 ", " 3 "),
            good.replace(" 3 7 ", " 0 7 "),
            good.replace("blocking", "bogus"),
            good.replace("tcp://127.0.0.1:2", ""),
            format!("{good}\nmore"),
            "x".repeat(MAX_LEN + 1),
            good.replace(" 1 2\n", " 1 3\n"),
            good.replace(",tcp://127.0.0.1:2", ""),
        ];
        for case in cases {
            let e = decode(case.as_bytes()).expect_err(&case);
            assert!(matches!(e, ClientError::InvalidArgument(_)), "{case:?}: {e:?}");
        }
        assert!(decode(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn a_handle_without_replication_has_one_copy() {
        let good = String::from_utf8(encode(&handle()).expect("encode")).expect("utf8");
        let old = good.replace(" 1 2\n", " 1\n");
        let h = decode(old.as_bytes()).expect("decode");
        assert_eq!(h.placement().replication(), Replication::ONE);
    }
}
