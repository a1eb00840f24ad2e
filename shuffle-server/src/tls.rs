//! The QUIC endpoint's TLS identity: loaded from PEM files, or a
//! self-signed certificate generated at start for development, which a
//! client pins by its SHA-256 fingerprint.

use std::path::Path;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::ServerError;

use protocol::net::ALPN;

/// A certificate chain and its private key.
#[derive(Debug)]
pub struct QuicIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Clone for QuicIdentity {
    fn clone(&self) -> Self {
        QuicIdentity {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

fn tls_error(field: &'static str, reason: impl std::fmt::Display) -> ServerError {
    ServerError::InvalidConfig {
        field,
        reason: reason.to_string(),
    }
}

impl QuicIdentity {
    /// A fresh self-signed certificate for `names` (DNS names or IPs).
    pub fn self_signed(names: &[&str]) -> Result<Self, ServerError> {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let certified = rcgen::generate_simple_self_signed(names).map_err(|e| tls_error("quic_cert", e))?;
        Ok(QuicIdentity {
            chain: vec![certified.cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der())),
        })
    }

    /// Loads a PEM certificate chain and a PEM private key.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, ServerError> {
        let cert_pem = std::fs::read(cert).map_err(ServerError::io("read", cert))?;
        let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_slice())
            .collect::<Result<_, _>>()
            .map_err(|e| tls_error("quic_cert", format!("{}: {e}", cert.display())))?;
        if chain.is_empty() {
            return Err(tls_error(
                "quic_cert",
                format!("{} holds no certificate", cert.display()),
            ));
        }
        let key_pem = std::fs::read(key).map_err(ServerError::io("read", key))?;
        let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
            .map_err(|e| tls_error("quic_key", format!("{}: {e}", key.display())))?
            .ok_or_else(|| tls_error("quic_key", format!("{} holds no private key", key.display())))?;
        Ok(QuicIdentity { chain, key })
    }

    /// The leaf certificate, DER.
    pub fn certificate_der(&self) -> &[u8] {
        self.chain.first().map(|c| c.as_ref()).unwrap_or_default()
    }

    /// SHA-256 of the leaf certificate, lowercase hex: what a client pins.
    pub fn fingerprint(&self) -> String {
        fingerprint_hex(self.certificate_der())
    }

    /// The leaf certificate as PEM, for clients that trust it as a root.
    pub fn certificate_pem(&self) -> String {
        pem_encode("CERTIFICATE", self.certificate_der())
    }

    pub(crate) fn server_crypto(&self) -> Result<rustls::ServerConfig, ServerError> {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| tls_error("quic_cert", e))?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| tls_error("quic_cert", e))?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }
}

/// SHA-256 of `der`, lowercase hex.
pub fn fingerprint_hex(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_identity_round_trips_through_pem() {
        let id = QuicIdentity::self_signed(&["localhost", "127.0.0.1"]).expect("generate");
        assert_eq!(id.fingerprint().len(), 64);
        let tmp = tempfile::tempdir().expect("tmp");
        let cert = tmp.path().join("cert.pem");
        std::fs::write(&cert, id.certificate_pem()).expect("write");
        let key = tmp.path().join("key.pem");
        let key_der = match &id.key {
            PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der().to_vec(),
            _ => unreachable!("generated keys are PKCS#8"),
        };
        std::fs::write(&key, pem_encode("PRIVATE KEY", &key_der)).expect("write");
        let loaded = QuicIdentity::from_pem_files(&cert, &key).expect("load");
        assert_eq!(loaded.fingerprint(), id.fingerprint());
        assert!(loaded.server_crypto().is_ok());
    }

    #[test]
    fn unusable_files_are_config_errors() {
        let tmp = tempfile::tempdir().expect("tmp");
        let empty = tmp.path().join("empty.pem");
        std::fs::write(&empty, "").expect("write");
        let err = QuicIdentity::from_pem_files(&empty, &empty).expect_err("no cert");
        assert!(matches!(
            err,
            ServerError::InvalidConfig {
                field: "quic_cert",
                ..
            }
        ));
        let err = QuicIdentity::from_pem_files(&tmp.path().join("missing"), &empty).expect_err("missing");
        assert!(matches!(err, ServerError::Io { .. }));
    }
}
