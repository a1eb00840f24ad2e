//! The conformance suite against `RemoteShuffle` over TCP, three servers at once.

mod conformance;
mod support;

remote_conformance!(3, shuffle_client::remote::Transport::Tcp);
