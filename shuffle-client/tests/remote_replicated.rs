//! The conformance suite against `RemoteShuffle` over TCP, three servers,
//! two copies of every blocking and hybrid-full partition: replication
//! keeps every promise a single copy keeps.

mod conformance;
mod support;

remote_conformance!(3, shuffle_client::remote::Transport::Tcp, replication = 2);
