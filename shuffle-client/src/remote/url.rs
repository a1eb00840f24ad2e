//! Server URLs: `tcp://host:port` or `quic://host:port`, naming a server's
//! data plane. The control plane's port is learned from the server's hello.

use std::fmt;
use std::net::IpAddr;
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

    /// The servers this URL names: itself when its host is an address;
    /// when it is a DNS name, every address the name resolves to (the way a
    /// Kubernetes headless Service names each of its pods), named by
    /// address. See [`ServerUrl::fleet`] for the rule.
    pub(crate) async fn resolve(&self) -> Result<Vec<ServerUrl>, String> {
        if self.host.parse::<IpAddr>().is_ok() {
            return Ok(vec![self.clone()]);
        }
        let found = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("{} does not resolve: {e}", self.host))?;
        let addresses: Vec<IpAddr> = found.map(|a| a.ip()).collect();
        Ok(self.fleet(&addresses))
    }

    /// The servers a DNS name stands for, given the addresses it resolved
    /// to in the resolver's order (pure, so it is tested without DNS):
    /// - one address: the URL itself, by name (a single server);
    /// - several: one server per distinct address, sorted (so clients that
    ///   resolve the same set name the same servers in the same order),
    ///   of the family of the first answer only: a dual-stack pod has an
    ///   IPv4 and an IPv6 address, which would be one server counted twice.
    pub(crate) fn fleet(&self, addresses: &[IpAddr]) -> Vec<ServerUrl> {
        let Some(first) = addresses.first() else {
            return Vec::new();
        };
        let mut same_family: Vec<IpAddr> = addresses
            .iter()
            .copied()
            .filter(|a| a.is_ipv4() == first.is_ipv4())
            .collect();
        same_family.sort();
        same_family.dedup();
        if same_family.len() == 1 {
            return vec![self.clone()];
        }
        same_family
            .into_iter()
            .map(|ip| ServerUrl {
                transport: self.transport,
                host: ip.to_string(),
                port: self.port,
            })
            .collect()
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

    #[test]
    fn a_name_stands_for_every_address_of_one_family() {
        let url: ServerUrl = "quic://rss.svc:9000".parse().expect("valid");
        let ip = |s: &str| s.parse::<IpAddr>().expect("address");
        let names = |addresses: &[IpAddr]| -> Vec<String> {
            url.fleet(addresses).iter().map(ToString::to_string).collect()
        };
        assert!(names(&[]).is_empty());
        // One address (or the same one twice): the URL as given.
        assert_eq!(names(&[ip("10.0.0.2"), ip("10.0.0.2")]), ["quic://rss.svc:9000"]);
        // Several: sorted, deduplicated, by address, same transport and port.
        assert_eq!(
            names(&[ip("10.0.0.3"), ip("10.0.0.1"), ip("10.0.0.3"), ip("10.0.0.2")]),
            [
                "quic://10.0.0.1:9000",
                "quic://10.0.0.2:9000",
                "quic://10.0.0.3:9000"
            ]
        );
        // Dual stack: the family of the first answer only.
        assert_eq!(
            names(&[ip("fd00::2"), ip("10.0.0.1"), ip("fd00::1"), ip("10.0.0.2")]),
            ["quic://[fd00::1]:9000", "quic://[fd00::2]:9000"]
        );
        assert_eq!(names(&[ip("10.0.0.1"), ip("fd00::1")]), ["quic://rss.svc:9000"]);
    }
}
