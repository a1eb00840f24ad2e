//! Replication on the client side: the client pushes every block of a
//! replicated partition to both of its copies itself, commits on both, and
//! reads from the primary, failing over to the replica (see `reader`).
//!
//! Why the client and not a forwarding primary: the client already holds
//! the block, so a second push costs it one more send of bytes it has, and
//! a copy that dies is noticed by the party that can act on it (go on with
//! the other copy) without a server-to-server protocol, its own retries and
//! its own failure modes. The measured cost is in `benches/README.md`
//! ("Replication").
//!
//! A copy found unable to serve (`ClientError::loses_copy`) is remembered
//! here, so later pushes, commits and reads of this shuffle by this client
//! skip it at once instead of waiting out the retry window again. A mark
//! is for one shuffle only, even when the whole server was lost: other
//! processes of the job (a worker that reads what this one writes) do not
//! see this client's marks, so a copy this client stops writing must be
//! one they also find unable to serve. A server lost for good restarts
//! without the shuffles it had not sealed (they are deleted at recovery),
//! so a reader finds that copy missing and fails over; a shuffle placed
//! on the server after it came back is written and read there as usual.
//! (A server that was unreachable for the whole window without restarting
//! and comes back with the shuffle is the one case a streaming reader in
//! another process could wait on: its copy is never sealed there.)
//!
//! Servers found lost are also remembered on their own, so that releasing
//! an app does not wait out the window on each again; one that answers a
//! status call is taken back ([`LostCopies::revive`]).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use protocol::{AppId, ShuffleId};

use crate::ClientError;

type Key = (String, AppId, ShuffleId);

/// The copies this client found lost, and why.
#[derive(Debug, Default)]
pub(crate) struct LostCopies {
    copies: Mutex<HashMap<Key, String>>,
    /// Servers whose connection errors outlasted a retry window.
    servers: Mutex<HashMap<String, String>>,
}

impl LostCopies {
    /// Remembers that `server`'s copy of `shuffle` failed with `error`.
    /// Logged once.
    pub fn mark(&self, server: &str, app: &AppId, shuffle: ShuffleId, error: &ClientError) {
        if matches!(error, ClientError::ServerLost { .. }) {
            let mut servers = self.servers.lock().unwrap_or_else(PoisonError::into_inner);
            servers.insert(server.to_string(), error.to_string());
        }
        let mut copies = self.copies.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (server.to_string(), app.clone(), shuffle);
        if let std::collections::hash_map::Entry::Vacant(slot) = copies.entry(key) {
            tracing::warn!(server, %shuffle, "a copy is lost, going on degraded with the other: {error}");
            slot.insert(error.to_string());
        }
    }

    /// Why `server`'s copy of `shuffle` is lost, if it is.
    pub fn why(&self, server: &str, app: &AppId, shuffle: ShuffleId) -> Option<String> {
        let copies = self.copies.lock().unwrap_or_else(PoisonError::into_inner);
        copies.get(&(server.to_string(), app.clone(), shuffle)).cloned()
    }

    /// Whether `server` itself was found lost (and has not answered since).
    pub fn server_lost(&self, server: &str) -> bool {
        let servers = self.servers.lock().unwrap_or_else(PoisonError::into_inner);
        servers.contains_key(server)
    }

    /// `server` answered again (its copies of older shuffles stay marked).
    pub fn revive(&self, server: &str) {
        let mut servers = self.servers.lock().unwrap_or_else(PoisonError::into_inner);
        if servers.remove(server).is_some() {
            tracing::info!(server, "answers again: back in service");
        }
    }
}

/// Why the copies of a partition could not serve, gathered until every
/// copy failed.
#[derive(Debug, Default)]
pub(crate) struct CopyFailures {
    why: Vec<String>,
    /// The first failure that is not a lost server: the typed error to
    /// return when it is the same on every copy (a shuffle never
    /// registered, a bad block...).
    first_typed: Option<ClientError>,
}

impl CopyFailures {
    /// A copy left out because it was found lost before.
    pub fn skipped(&mut self, server: &str, reason: &str) {
        self.why.push(format!("{server}: {reason}"));
    }

    /// A copy that failed with `error`.
    pub fn failed(&mut self, error: ClientError) {
        self.why.push(error.to_string());
        if !matches!(error, ClientError::ServerLost { .. }) && self.first_typed.is_none() {
            self.first_typed = Some(error);
        }
    }

    /// The error for a partition whose every copy failed: the first typed
    /// error, or `ServerLost` (the data is gone; the engine runs its
    /// producers again) when the copies were lost with their servers.
    pub fn into_error(self, servers: &[&str], shuffle: ShuffleId) -> ClientError {
        self.first_typed.unwrap_or_else(|| ClientError::ServerLost {
            server: servers.join(","),
            shuffle,
            reason: format!("every copy is lost: {}", self.why.join("; ")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lost(server: &str, shuffle: u32) -> ClientError {
        ClientError::ServerLost {
            server: server.into(),
            shuffle: ShuffleId(shuffle),
            reason: "gone".into(),
        }
    }

    #[test]
    fn a_copy_is_lost_for_its_shuffle_only_and_a_lost_server_until_it_answers() {
        let app = AppId::new("a").expect("app");
        let copies = LostCopies::default();
        copies.mark("s1", &app, ShuffleId(1), &lost("s1", 1));
        assert!(copies.why("s1", &app, ShuffleId(1)).is_some());
        // Another shuffle (placed there later, or read by another process)
        // is not skipped.
        assert!(copies.why("s1", &app, ShuffleId(7)).is_none());
        assert!(copies.server_lost("s1"));
        let missing = ClientError::UnknownShuffle {
            app: app.clone(),
            shuffle: ShuffleId(2),
        };
        copies.mark("s2", &app, ShuffleId(2), &missing);
        assert!(copies.why("s2", &app, ShuffleId(2)).is_some());
        assert!(copies.why("s2", &app, ShuffleId(3)).is_none());
        assert!(!copies.server_lost("s2"));
        copies.revive("s1");
        assert!(!copies.server_lost("s1"));
        assert!(
            copies.why("s1", &app, ShuffleId(1)).is_some(),
            "its old copy stays lost"
        );
    }
}
