//! Identifiers. Each is a newtype so that a map id can never be passed where a
//! partition id is expected; string ids are validated once, on construction.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::ProtocolError;

/// Longest accepted [`AppId`], in bytes.
pub const MAX_APP_ID_LEN: usize = 128;

/// An application id: 1 to 128 characters of `[A-Za-z0-9._-]`, not starting
/// with `.`.
///
/// Because of that rule an `AppId` is always safe to use as one path
/// component: it cannot contain a separator, a NUL, or climb out of a folder
/// (`.` and `..` are refused), and it never names a hidden entry, so the
/// server keeps its own folders (such as `.quarantine`) beside the apps'
/// without a clash.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AppId(Arc<str>);

impl AppId {
    /// Validates `value` and wraps it.
    pub fn new(value: impl AsRef<str>) -> Result<Self, ProtocolError> {
        let value = value.as_ref();
        let reject = |reason| ProtocolError::InvalidId {
            kind: "app id",
            value: value.chars().take(64).collect(),
            reason,
        };
        if value.is_empty() {
            return Err(reject("must not be empty"));
        }
        if value.len() > MAX_APP_ID_LEN {
            return Err(reject("longer than 128 bytes"));
        }
        if value.starts_with('.') {
            return Err(reject("must not start with `.`"));
        }
        if !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(reject("only A-Z, a-z, 0-9, `.`, `_` and `-` are allowed"));
        }
        Ok(AppId(Arc::from(value)))
    }

    /// The id as text; always a single safe path component.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AppId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for AppId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AppId({:?})", &*self.0)
    }
}

impl FromStr for AppId {
    type Err = ProtocolError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AppId::new(s)
    }
}

macro_rules! numeric_id {
    ($(#[$doc:meta])* $name:ident, $label:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
        pub struct $name(pub u32);

        impl $name {
            /// The raw number.
            pub const fn get(self) -> u32 {
                self.0
            }
            /// The number as an index into a vector.
            pub const fn index(self) -> usize {
                self.0 as usize
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($label, "{}"), self.0)
            }
        }

        impl From<u32> for $name {
            fn from(v: u32) -> Self {
                $name(v)
            }
        }
    };
}

numeric_id!(
    /// A shuffle, unique within its application.
    ShuffleId,
    "shuffle-"
);
numeric_id!(
    /// A map task (producer), `0..num_maps` within its shuffle.
    MapId,
    "map-"
);
numeric_id!(
    /// One try of a map task. Any number of attempts may write; at most one
    /// per map is ever committed.
    AttemptId,
    "attempt-"
);
numeric_id!(
    /// A reduce partition, `0..num_partitions` within its shuffle.
    PartitionId,
    "partition-"
);

/// A half-open range of map ids, `start..end`, used to read part of a
/// partition (for example one split of a skewed partition).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct MapRange {
    start: MapId,
    end: MapId,
}

impl MapRange {
    /// The range `start..end`; refused when `start > end`.
    pub fn new(start: MapId, end: MapId) -> Result<Self, ProtocolError> {
        if start > end {
            return Err(ProtocolError::malformed(
                "map range",
                format!("start {} is after end {}", start.0, end.0),
            ));
        }
        Ok(MapRange { start, end })
    }

    /// Every map of a shuffle with `num_maps` maps.
    pub fn all(num_maps: u32) -> Self {
        MapRange {
            start: MapId(0),
            end: MapId(num_maps),
        }
    }

    /// First map in the range.
    pub fn start(&self) -> MapId {
        self.start
    }

    /// One past the last map in the range.
    pub fn end(&self) -> MapId {
        self.end
    }

    /// The maps in order.
    pub fn iter(&self) -> impl Iterator<Item = MapId> {
        (self.start.0..self.end.0).map(MapId)
    }

    /// True when the range holds no map.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_id_accepts_the_documented_alphabet() {
        for ok in ["a", "app-1", "A.b_c-9", "x..", "a.hidden", &"x".repeat(128)] {
            assert_eq!(AppId::new(ok).map(|a| a.to_string()), Ok(ok.to_string()));
        }
    }

    #[test]
    fn app_id_refuses_hostile_values() {
        let long = "x".repeat(129);
        for bad in [
            "", ".", "..", "../x", ".hidden", "..x", "/etc", "a/b", "a\\b", "a\0b", "a b", "é", "~", &long,
        ] {
            let err = AppId::new(bad).expect_err(bad);
            assert!(matches!(err, ProtocolError::InvalidId { kind: "app id", .. }));
        }
    }

    #[test]
    fn map_range_rejects_inverted_bounds() {
        assert!(MapRange::new(MapId(3), MapId(2)).is_err());
        let r = MapRange::new(MapId(1), MapId(3)).expect("valid");
        assert_eq!(r.iter().collect::<Vec<_>>(), vec![MapId(1), MapId(2)]);
        assert!(MapRange::all(0).is_empty());
    }
}
