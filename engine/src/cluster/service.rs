//! Reaching the shuffle service: the servers named on the command line, or
//! the embedded one.

use shuffle_client::protocol::Replication;
use shuffle_client::{QuicTrust, RemoteOptions, RemoteShuffle};

use super::wire::ServiceSpec;
use crate::EngineError;

/// The QUIC trust a service spec asks for: roots from a PEM file, pinned
/// fingerprints, or none (TCP only).
pub fn quic_trust(spec: &ServiceSpec) -> Result<QuicTrust, EngineError> {
    if let Some(file) = &spec.quic_ca {
        let pem = std::fs::read(file).map_err(EngineError::io("read --quic-ca", file))?;
        return QuicTrust::roots_from_pem(&pem).map_err(|e| EngineError::InvalidArgument {
            what: "quic_ca",
            reason: format!("{}: {e}", file.display()),
        });
    }
    if spec.quic_pins.is_empty() {
        return Ok(QuicTrust::None);
    }
    let pins = spec
        .quic_pins
        .iter()
        .map(|p| {
            QuicTrust::parse_fingerprint(p).map_err(|e| EngineError::InvalidArgument {
                what: "quic_pin",
                reason: e.to_string(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(QuicTrust::Pinned(pins))
}

/// Connects to the servers of `spec`.
pub async fn connect_remote(spec: &ServiceSpec) -> Result<RemoteShuffle, EngineError> {
    if spec.urls.is_empty() {
        return Err(EngineError::InvalidArgument {
            what: "shuffle_servers",
            reason: "a worker process needs shuffle server URLs".into(),
        });
    }
    let defaults = RemoteOptions::default();
    let options = RemoteOptions {
        quic_trust: quic_trust(spec)?,
        retry_window: spec
            .retry_window_ms
            .map_or(defaults.retry_window, std::time::Duration::from_millis),
        replication: Replication::new(spec.replication).map_err(|e| EngineError::InvalidArgument {
            what: "replication",
            reason: e.to_string(),
        })?,
        ..defaults
    };
    let urls = spec.urls.join(",");
    RemoteShuffle::connect_str(&urls, options)
        .await
        .map_err(|source| EngineError::ServiceUnreachable { urls, source })
}
