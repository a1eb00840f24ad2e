//! Server URLs: `tcp://host:port` or `quic://host:port`, naming a server's
//! data plane. The control plane's port is learned from the server's hello.

use std::fmt;
use std::str::FromStr;

use protocol::ProtocolError;

/// The data-plane transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Tcp,
    Quic,
}

/// A parsed server URL.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServerUrl {
    pub transport: Transport,
    /// A host name or an IP address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
}

impl ServerUrl {
    /// `host:port` (with brackets around an IPv6 host).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The same host on another port.
    pub(crate) fn authority_with_port(&self, port: u16) -> String {
        ServerUrl { port, ..self.clone() }.authority()
    }
}

impl fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.transport {
            Transport::Tcp => "tcp",
            Transport::Quic => "quic",
        };
        write!(f, "{scheme}://{}", self.authority())
    }
}

impl FromStr for ServerUrl {
    type Err = ProtocolError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| ProtocolError::Malformed {
            what: "server url",
            reason: format!("{s:?}: {reason} (expected tcp://host:port or quic://host:port)"),
        };
        let (scheme, rest) = s.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let transport = match scheme {
            "tcp" => Transport::Tcp,
            "quic" => Transport::Quic,
            _ => return Err(bad("unknown scheme")),
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = if let Some(inner) = rest.strip_prefix('[') {
            let (host, after) = inner.split_once(']').ok_or_else(|| bad("unclosed ["))?;
            (host, after.strip_prefix(':').ok_or_else(|| bad("no port"))?)
        } else {
            rest.rsplit_once(':').ok_or_else(|| bad("no port"))?
        };
        if host.is_empty() || host.contains('/') {
            return Err(bad("bad host"));
        }
        let port: u16 = port.parse().map_err(|_| bad("bad port"))?;
        if port == 0 {
            return Err(bad("port 0"));
        }
        Ok(ServerUrl {
            transport,
            host: host.to_string(),
            port,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_print() {
        let u: ServerUrl = "tcp://127.0.0.1:19000".parse().expect("valid");
        assert_eq!(
            (u.transport, u.host.as_str(), u.port),
            (Transport::Tcp, "127.0.0.1", 19000)
        );
        assert_eq!(u.to_string(), "tcp://127.0.0.1:19000");
        let v: ServerUrl = "quic://[::1]:19001".parse().expect("valid");
        assert_eq!((v.transport, v.host.as_str()), (Transport::Quic, "::1"));
        assert_eq!(v.to_string(), "quic://[::1]:19001");
        for bad in [
            "127.0.0.1:1",
            "http://h:1",
            "tcp://h",
            "tcp://:1",
            "tcp://h:99999",
            "tcp://h:0",
            "tcp://[::1:1",
        ] {
            assert!(bad.parse::<ServerUrl>().is_err(), "{bad}");
        }
    }
}
