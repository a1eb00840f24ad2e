//! QUIC client TLS: trust a server by the SHA-256 fingerprint of its
//! certificate (for the self-signed development certificate), or by roots.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use protocol::ProtocolError;

use crate::ClientError;

/// How a QUIC client decides to trust a server.
#[derive(Clone, Debug, Default)]
pub enum QuicTrust {
    /// Trust nothing: QUIC connections fail with a clear error.
    #[default]
    None,
    /// Trust certificates whose SHA-256 fingerprint is listed.
    Pinned(Vec<[u8; 32]>),
    /// Trust certificates signed by these roots (names are checked).
    Roots(Vec<CertificateDer<'static>>),
}

impl QuicTrust {
    /// Parses a fingerprint as 64 hex digits (colons allowed). A bad one
    /// is [`ClientError::InvalidArgument`].
    pub fn parse_fingerprint(text: &str) -> Result<[u8; 32], ClientError> {
        let bad = |reason: String| {
            ClientError::InvalidArgument(ProtocolError::Malformed {
                what: "certificate fingerprint",
                reason,
            })
        };
        let hex: String = text.chars().filter(|c| *c != ':').collect();
        if hex.len() != 64 || !hex.is_ascii() {
            return Err(bad(format!(
                "{text:?} is not a SHA-256 fingerprint (64 hex digits)"
            )));
        }
        let mut out = [0u8; 32];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                .map_err(|_| bad(format!("{text:?} is not hexadecimal")))?;
        }
        Ok(out)
    }

    /// Reads PEM certificates to trust as roots. Unreadable PEM, or none
    /// in it, is [`ClientError::InvalidArgument`].
    pub fn roots_from_pem(pem: &[u8]) -> Result<Self, ClientError> {
        let bad = |reason: String| {
            ClientError::InvalidArgument(ProtocolError::Malformed {
                what: "PEM certificates",
                reason,
            })
        };
        let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &pem[..])
            .collect::<Result<_, _>>()
            .map_err(|e| bad(e.to_string()))?;
        if certs.is_empty() {
            return Err(bad("no certificate in the PEM data".into()));
        }
        Ok(QuicTrust::Roots(certs))
    }
}

pub(crate) fn client_crypto(trust: &QuicTrust, alpn: &[u8]) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?;
    let mut config = match trust {
        QuicTrust::None => {
            return Err("QUIC needs a trusted server: pin its certificate fingerprint or give its CA".into())
        }
        QuicTrust::Pinned(pins) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                pins: pins.clone(),
                provider,
            }))
            .with_no_client_auth(),
        QuicTrust::Roots(roots) => {
            let mut store = rustls::RootCertStore::empty();
            for cert in roots {
                store.add(cert.clone()).map_err(|e| e.to_string())?;
            }
            builder.with_root_certificates(store).with_no_client_auth()
        }
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

/// Accepts exactly the pinned certificates; still checks that the server
/// holds the certificate's key (handshake signatures).
#[derive(Debug)]
struct PinnedVerifier {
    pins: Vec<[u8; 32]>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let digest = ring::digest::digest(&ring::digest::SHA256, end_entity.as_ref());
        if self.pins.iter().any(|p| p.as_slice() == digest.as_ref()) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "server certificate does not match the pinned fingerprint".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse() {
        let hex = "ab".repeat(32);
        assert_eq!(QuicTrust::parse_fingerprint(&hex).expect("valid"), [0xab; 32]);
        let colons: Vec<String> = (0..32).map(|_| "AB".to_string()).collect();
        assert_eq!(
            QuicTrust::parse_fingerprint(&colons.join(":")).expect("valid"),
            [0xab; 32]
        );
        for bad in ["abc".to_string(), "zz".repeat(32), "é".repeat(32)] {
            let e = QuicTrust::parse_fingerprint(&bad).expect_err("refused");
            assert!(matches!(e, ClientError::InvalidArgument(_)), "{e:?}");
        }
        assert!(QuicTrust::roots_from_pem(b"not pem").is_err());
        assert!(client_crypto(&QuicTrust::None, b"x").is_err());
    }
}
