//! The client's TLS configuration: which server certificates it accepts, and the client
//! certificate it presents when the server asks for one ([`ClientCert`], for gateways in
//! certificate-authentication mode).
//!
//! A lab gateway has a self-signed certificate, so the harness accepts it by its
//! `pin-sha256:<base64 SHA-256 of SubjectPublicKeyInfo>` value (openconnect's `--servercert`), or
//! with no check at all. Handshake signatures are still verified with the certificate's key either
//! way. Session resumption is off, so every connection is a full handshake, as a fresh openconnect
//! process makes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
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
    client_config_with_cert(verify, None)
}

/// Like [`client_config`], presenting `cert` when the server asks for a client certificate
/// (`None`: no certificate).
pub fn client_config_with_cert(
    verify: Verify,
    cert: Option<&ClientCert>,
) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Verifier { verify, provider }));
    let mut cfg = match cert {
        Some(c) => builder.with_client_auth_cert(c.chain.clone(), c.key.clone_key())?,
        None => builder.with_no_client_auth(),
    };
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(cfg))
}

/// A client certificate chain (leaf first) and its private key.
#[derive(Debug)]
pub struct ClientCert {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

/// Why a client certificate or key file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientCertError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The certificate file holds no PEM certificate.
    #[error("no PEM certificate in {}", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The key file holds no PEM private key (PKCS#8, PKCS#1 or SEC1).
    #[error("no PEM private key in {}", path.display())]
    NoKey {
        /// The file.
        path: PathBuf,
    },
}

impl ClientCert {
    /// Reads a PEM certificate chain (leaf first) and a PEM private key.
    pub fn load_pem(cert: &Path, key: &Path) -> Result<Self, ClientCertError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| ClientCertError::Read {
                path: path.to_owned(),
                source,
            })
        };
        let cert_pem = read(cert)?;
        let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_slice())
            .collect::<Result<_, _>>()
            .map_err(|source| ClientCertError::Read {
                path: cert.to_owned(),
                source,
            })?;
        if chain.is_empty() {
            return Err(ClientCertError::NoCertificate {
                path: cert.to_owned(),
            });
        }
        let key_pem = read(key)?;
        let key_der = rustls_pemfile::private_key(&mut key_pem.as_slice())
            .map_err(|source| ClientCertError::Read {
                path: key.to_owned(),
                source,
            })?
            .ok_or_else(|| ClientCertError::NoKey {
                path: key.to_owned(),
            })?;
        Ok(Self {
            chain,
            key: key_der,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed_pem() -> (Vec<u8>, Vec<u8>) {
        use openssl::asn1::Asn1Time;
        use openssl::ec::{EcGroup, EcKey};
        use openssl::hash::MessageDigest;
        use openssl::nid::Nid;
        use openssl::pkey::PKey;
        let key = PKey::from_ec_key(
            EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap()).unwrap(),
        )
        .unwrap();
        let mut name = openssl::x509::X509NameBuilder::new().unwrap();
        name.append_entry_by_nid(Nid::COMMONNAME, "bench0").unwrap();
        let name = name.build();
        let mut b = openssl::x509::X509::builder().unwrap();
        b.set_version(2).unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(&name).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::days_from_now(1).unwrap())
            .unwrap();
        b.sign(&key, MessageDigest::sha256()).unwrap();
        (
            b.build().to_pem().unwrap(),
            key.private_key_to_pem_pkcs8().unwrap(),
        )
    }

    #[test]
    fn client_cert_loads_and_goes_into_a_client_config() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_pem, key_pem) = self_signed_pem();
        let (cert, key) = (dir.path().join("u.pem"), dir.path().join("u.key"));
        std::fs::write(&cert, &cert_pem).unwrap();
        std::fs::write(&key, &key_pem).unwrap();
        let c = ClientCert::load_pem(&cert, &key).unwrap();
        let cfg = client_config_with_cert(Verify::Insecure, Some(&c)).unwrap();
        assert!(cfg.client_auth_cert_resolver.has_certs());
        assert!(!client_config(Verify::Insecure)
            .unwrap()
            .client_auth_cert_resolver
            .has_certs());
    }

    #[test]
    fn missing_certificate_or_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_pem, _) = self_signed_pem();
        let (cert, key) = (dir.path().join("u.pem"), dir.path().join("u.key"));
        assert!(matches!(
            ClientCert::load_pem(&cert, &key),
            Err(ClientCertError::Read { .. })
        ));
        std::fs::write(&cert, "no pem here\n").unwrap();
        assert!(matches!(
            ClientCert::load_pem(&cert, &key),
            Err(ClientCertError::NoCertificate { .. })
        ));
        std::fs::write(&cert, &cert_pem).unwrap();
        std::fs::write(&key, &cert_pem).unwrap();
        let e = ClientCert::load_pem(&cert, &key).unwrap_err();
        assert!(matches!(e, ClientCertError::NoKey { .. }), "{e}");
        assert!(e.to_string().contains("u.key"), "{e}");
    }
}
