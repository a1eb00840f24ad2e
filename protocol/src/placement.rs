//! Where the copies of a partition live among the servers a shuffle was
//! placed over: the one formula shared by the client (which routes pushes
//! and reads with it) and the server (which counts the replica copies it
//! receives). Pure code.
//!
//! Partition `p` of a shuffle placed over `n` servers from offset `o` has
//! its primary on server `(p + o) % n` and, with replication 2, its replica
//! on the next server, `(p + o + 1) % n`. Two copies therefore never share
//! a server (the placement needs `n >= replication`), and every server is
//! primary for its share of partitions and replica for its neighbour's.

use crate::{PartitionId, ProtocolError};

/// The copies of each partition: 1 (no replica) or 2.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub struct Replication(u8);

impl Replication {
    /// One copy.
    pub const ONE: Replication = Replication(1);
    /// A primary and a replica.
    pub const TWO: Replication = Replication(2);

    /// Validates a factor from the wire, a config file or a flag.
    pub fn new(copies: u32) -> Result<Self, ProtocolError> {
        match copies {
            1 => Ok(Self::ONE),
            2 => Ok(Self::TWO),
            other => Err(ProtocolError::Malformed {
                what: "replication factor",
                reason: format!("{other} copies; 1 or 2 are served"),
            }),
        }
    }

    /// The number of copies.
    pub fn copies(self) -> usize {
        usize::from(self.0)
    }
}

impl Default for Replication {
    fn default() -> Self {
        Self::ONE
    }
}

impl std::fmt::Display for Replication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The index (among `servers`) of copy `copy` (0 = primary, 1 = replica)
/// of `partition`, for a placement starting at `offset`.
pub fn copy_server(partition: PartitionId, copy: usize, servers: usize, offset: u32) -> usize {
    let n = servers.max(1) as u64;
    ((u64::from(partition.0) + u64::from(offset) + copy as u64) % n) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_copies_are_on_different_servers_and_spread_evenly() {
        for servers in 2..6usize {
            for offset in 0..servers as u32 {
                let mut primaries = vec![0; servers];
                let mut replicas = vec![0; servers];
                for p in 0..(servers as u32 * 10) {
                    let a = copy_server(PartitionId(p), 0, servers, offset);
                    let b = copy_server(PartitionId(p), 1, servers, offset);
                    assert_ne!(a, b, "partition {p}, {servers} servers, offset {offset}");
                    primaries[a] += 1;
                    replicas[b] += 1;
                }
                assert!(primaries.iter().all(|&c| c == 10), "{primaries:?}");
                assert!(replicas.iter().all(|&c| c == 10), "{replicas:?}");
            }
        }
    }

    #[test]
    fn only_one_or_two_copies_are_accepted() {
        assert_eq!(Replication::new(1).expect("1").copies(), 1);
        assert_eq!(Replication::new(2).expect("2").copies(), 2);
        for bad in [0, 3, u32::MAX] {
            let e = Replication::new(bad).expect_err("refused").to_string();
            assert!(
                e.contains("replication factor") && e.contains(&bad.to_string()),
                "{e}"
            );
        }
    }
}
