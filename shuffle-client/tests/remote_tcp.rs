//! The conformance suite against `RemoteShuffle` over TCP, one server.

mod conformance;
mod support;

remote_conformance!(1, shuffle_client::remote::Transport::Tcp);
