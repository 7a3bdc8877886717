//! The client's TLS configuration: which server certificates it accepts.
//!
//! A lab gateway has a self-signed certificate, so the harness accepts it by its
//! `pin-sha256:<base64 SHA-256 of SubjectPublicKeyInfo>` value (openconnect's `--servercert`), or
//! with no check at all. Handshake signatures are still verified with the certificate's key either
//! way. Session resumption is off, so every connection is a full handshake, as a fresh openconnect
//! process makes.

use std::sync::Arc;

use base64::Engine as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Which server certificates to accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verify {
    /// Only a certificate whose key has this `pin-sha256:...` value (the prefix is optional).
    Pin(String),
    /// Any certificate (a lab only).
    Insecure,
}

/// `pin-sha256:<base64>` of a DER certificate's SubjectPublicKeyInfo, or `None` if it isn't one.
#[must_use]
pub fn pin_of(cert_der: &[u8]) -> Option<String> {
    let cert = openssl::x509::X509::from_der(cert_der).ok()?;
    let spki = cert.public_key().ok()?.public_key_to_der().ok()?;
    let digest = openssl::sha::sha256(&spki);
    Some(format!(
        "pin-sha256:{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    ))
}

#[derive(Debug)]
struct Verifier {
    verify: Verify,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.verify {
            Verify::Insecure => Ok(ServerCertVerified::assertion()),
            Verify::Pin(want) => {
                let want = want.strip_prefix("pin-sha256:").unwrap_or(want);
                match pin_of(end_entity) {
                    Some(got) if got.strip_prefix("pin-sha256:") == Some(want) => {
                        Ok(ServerCertVerified::assertion())
                    }
                    _ => Err(rustls::Error::InvalidCertificate(
                        rustls::CertificateError::ApplicationVerificationFailure,
                    )),
                }
            }
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

/// A rustls client configuration that accepts server certificates as `verify` says, with
/// resumption disabled (every handshake is a full one).
pub fn client_config(verify: Verify) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Verifier { verify, provider }))
        .with_no_client_auth();
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(cfg))
}
