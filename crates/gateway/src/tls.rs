//! The server certificate and the rustls server configuration.
//!
//! [`load_certificate`] turns the `[tls]` table into a [`LoadedCert`]: a PEM certificate chain
//! and key, or a PKCS#12 (`.pfx`) bundle, or — when neither is configured — a self-signed ECDSA
//! P-256 certificate generated once in `server.state_dir` and reused afterwards. Whatever the
//! source, the certificate is checked before the daemon starts listening: the key must belong to
//! the certificate, the certificate must be within its validity period and rustls must support the
//! key. Each error names the configuration field and the file, so the operator knows what to fix.
//!
//! [`server_config`] builds the rustls [`ServerConfig`](rustls::ServerConfig) (aws-lc-rs provider,
//! TLS 1.3 and 1.2 only, the server's cipher-suite order; client certificates only in
//! `auth.method = "certificate"`).
//!
//! OpenSSL (the `openssl` crate) is used to read PKCS#12, to compare keys, to read validity dates
//! and to generate the self-signed certificate; rustls does the TLS.

use std::cmp::Ordering;
use std::fs;
use std::io;
use std::net::IpAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::atomic_file::write_atomically;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkcs12::Pkcs12;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::x509::extension::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName, SubjectKeyIdentifier,
};
use openssl::x509::{X509NameBuilder, X509NameRef, X509};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::config::{Config, TlsConfig, TlsVersion};

/// File name of the generated self-signed certificate in `server.state_dir`.
pub const SELF_SIGNED_CERT_FILE: &str = "selfsigned-cert.pem";
/// File name of the generated self-signed certificate's private key in `server.state_dir`.
pub const SELF_SIGNED_KEY_FILE: &str = "selfsigned-key.pem";
/// Validity of a generated self-signed certificate, in days.
const SELF_SIGNED_DAYS: u32 = 365;

/// A server certificate chain and key that have been checked and are ready for rustls.
#[derive(Debug)]
pub struct LoadedCert {
    /// The certificate chain, leaf first, then intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf certificate's private key.
    pub key: PrivateKeyDer<'static>,
    /// The leaf's public-key pin as openconnect's `--servercert` takes it:
    /// `pin-sha256:` followed by the base64 SHA-256 of the SubjectPublicKeyInfo DER.
    pub pin_sha256: String,
    /// The leaf's notAfter date, in OpenSSL's format (e.g. `Jun  1 12:00:00 2027 GMT`).
    pub not_after: String,
    /// The leaf's subject, e.g. `CN=vpn.example.com, O=Example`.
    pub subject: String,
}

impl Clone for LoadedCert {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            pin_sha256: self.pin_sha256.clone(),
            not_after: self.not_after.clone(),
            subject: self.subject.clone(),
        }
    }
}

/// Why the server certificate could not be loaded or used. `field` is the configuration field
/// (`tls.cert`, `tls.key`, `tls.pfx`, `tls.pfx_password_file`, or `server.state_dir` for the
/// self-signed certificate) and `path` the file concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file named in the configuration could not be read (missing, permissions, ...).
    #[error("{field}: cannot read {}: {source}", path.display())]
    Read {
        /// The configuration field naming the file.
        field: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },
    /// The file holds no certificate.
    #[error("{field}: no certificate found in {} (expected a PEM \"-----BEGIN CERTIFICATE-----\" block)", path.display())]
    NoCertificate {
        /// The configuration field naming the file.
        field: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// A certificate in the file could not be parsed.
    #[error("{field}: invalid certificate in {}: {reason}", path.display())]
    BadCertificate {
        /// The configuration field naming the file.
        field: &'static str,
        /// The file.
        path: PathBuf,
        /// The parser's explanation.
        reason: String,
    },
    /// The file holds no private key that can be read (absent, encrypted, or malformed).
    #[error("{field}: no usable private key in {}: {reason}", path.display())]
    NoKey {
        /// The configuration field naming the file.
        field: &'static str,
        /// The file.
        path: PathBuf,
        /// What was found instead.
        reason: String,
    },
    /// The private key's algorithm or size is not supported for TLS (e.g. RSA under 2048 bits,
    /// DSA).
    #[error("{field}: unsupported private key in {}: {reason} (use RSA of 2048 bits or more, ECDSA P-256/P-384, or Ed25519)", path.display())]
    UnsupportedKey {
        /// The configuration field naming the file.
        field: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it is unsupported.
        reason: String,
    },
    /// The private key is not the key of the (first) certificate.
    #[error("{key_field} ({}) does not match the certificate in {cert_field} ({}): their public keys differ{hint}", key_path.display(), cert_path.display())]
    KeyMismatch {
        /// The configuration field naming the certificate file.
        cert_field: &'static str,
        /// The certificate file.
        cert_path: PathBuf,
        /// The configuration field naming the key file.
        key_field: &'static str,
        /// The key file.
        key_path: PathBuf,
        /// Extra advice, e.g. that the key matches a later certificate in the file (empty if
        /// none).
        hint: String,
    },
    /// The certificate's validity period has ended.
    #[error("{field}: the certificate in {} ({subject}) expired on {not_after}", path.display())]
    Expired {
        /// The configuration field naming the file.
        field: &'static str,
        /// The file.
        path: PathBuf,
        /// The certificate's subject.
        subject: String,
        /// The date it expired.
        not_after: String,
    },
    /// The certificate's validity period has not started yet (or the clock is wrong).
    #[error("{field}: the certificate in {} ({subject}) is not valid before {not_before} (check the system clock)", path.display())]
    NotYetValid {
        /// The configuration field naming the file.
        field: &'static str,
        /// The file.
        path: PathBuf,
        /// The certificate's subject.
        subject: String,
        /// The date it becomes valid.
        not_before: String,
    },
    /// The PKCS#12 password is wrong.
    #[error("tls.pfx: wrong password for {} (set tls.pfx_password or tls.pfx_password_file)", path.display())]
    PfxPassword {
        /// The PKCS#12 file.
        path: PathBuf,
    },
    /// The PKCS#12 file could not be parsed or decrypted for another reason than the password.
    #[error("tls.pfx: cannot read PKCS#12 file {}: {reason}", path.display())]
    PfxInvalid {
        /// The PKCS#12 file.
        path: PathBuf,
        /// OpenSSL's explanation, with advice where there is some.
        reason: String,
    },
    /// The self-signed certificate could not be generated or written.
    #[error("server.state_dir: cannot create the self-signed certificate {}: {reason}", path.display())]
    SelfSigned {
        /// The file or directory concerned.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The client CA or a CRL (`[auth]`, certificate mode) cannot be used.
    #[error(transparent)]
    ClientCa(#[from] crate::client_cert::ClientCaError),
    /// rustls refused the configuration (should not happen after the checks above).
    #[error("TLS configuration rejected by rustls: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Loads and checks the server certificate named by `cfg.tls`, or loads (generating it the first
/// time) the self-signed certificate in `cfg.server.state_dir` when `[tls]` names none.
///
/// The self-signed certificate is ECDSA P-256, valid for one year, with CN and subjectAltName set
/// to `server.server_name` or else the machine's host name; its key file is written with mode
/// 0600. An expired self-signed certificate is replaced by a new one (the pin changes, and is
/// logged). Its pin is logged at `info` on every start so that it can be given to clients.
pub fn load_certificate(cfg: &Config) -> Result<LoadedCert, TlsError> {
    let tls = &cfg.tls;
    if let Some(pfx) = &tls.pfx {
        let password = match (&tls.pfx_password, &tls.pfx_password_file) {
            (Some(p), _) => p.clone(),
            (None, Some(file)) => read_password_file(file)?,
            (None, None) => String::new(),
        };
        return load_pfx(pfx, &password);
    }
    if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
        return load_pem(cert, "tls.cert", key, "tls.key");
    }
    load_or_generate_self_signed(&cfg.server.state_dir, cfg.server.server_name.as_deref())
}

/// The cipher suites offered when `tls.cipher_suites` is empty, most preferred first: AES-128-GCM
/// ahead of AES-256-GCM. Both are fast with AES-NI, but a TLS 1.3 AES-256 suite hashes with
/// SHA-384, which CPUs have no instructions for (SHA-256 has them): its key schedule took about a
/// tenth of the server's CPU per certificate login here. Then ChaCha20-Poly1305, for CPUs without
/// AES instructions. TLS 1.2 suites are ECDHE only.
pub const DEFAULT_CIPHER_SUITES: &[&str] = &[
    "TLS13_AES_128_GCM_SHA256",
    "TLS13_AES_256_GCM_SHA384",
    "TLS13_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
];

/// The cipher suite with this IANA name (as in [`DEFAULT_CIPHER_SUITES`]), if the crypto
/// provider has it.
pub fn cipher_suite(name: &str) -> Option<rustls::SupportedCipherSuite> {
    rustls::crypto::aws_lc_rs::ALL_CIPHER_SUITES
        .iter()
        .find(|s| s.suite().as_str() == Some(name))
        .copied()
}

/// The suites of these names, in this order (names the provider lacks are skipped; config
/// validation has refused them already).
fn cipher_suites<'a>(
    names: impl IntoIterator<Item = &'a str>,
) -> Vec<rustls::SupportedCipherSuite> {
    names.into_iter().filter_map(cipher_suite).collect()
}

/// Builds the rustls server configuration: aws-lc-rs provider; TLS 1.3 and 1.2 (1.3 preferred),
/// or 1.3 only when `tls.min_version` is [`TlsVersion::V1_3`]; the cipher suites of
/// `tls.cipher_suites` (else [`DEFAULT_CIPHER_SUITES`]) in that order, which wins over the
/// client's; no ALPN; no 0-RTT early data; no TLS 1.3 session tickets (see below). Client
/// certificates are asked for (and verified, but not required) only when
/// `auth.method = "certificate"` (see [`crate::client_cert::verifier`], which reads
/// `auth.ca_file` and `auth.crl_files` here).
///
/// No session tickets: rustls keeps resumable sessions in a 256-entry memory cache, which a
/// gateway with thousands of devices turns over long before a device reconnects, so the ticket
/// every login would send (one more record and `send` each) would almost never be used. A
/// reconnecting device presents its cookie instead (protocol doc §5), which skips the login.
pub fn server_config(
    cert: &LoadedCert,
    tls: &TlsConfig,
    auth: &crate::config::AuthConfig,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let versions: &[&'static rustls::SupportedProtocolVersion] = match tls.min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites = if tls.cipher_suites.is_empty() {
        cipher_suites(DEFAULT_CIPHER_SUITES.iter().copied())
    } else {
        cipher_suites(tls.cipher_suites.iter().map(String::as_str))
    };
    let builder = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)?;
    let builder = match crate::client_cert::verifier(auth)? {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(cert.chain.clone(), cert.key.clone_key())?;
    config.max_early_data_size = 0;
    config.alpn_protocols = Vec::new();
    config.ignore_client_order = true;
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// Reads a PKCS#12 password file, dropping one trailing line break.
fn read_password_file(path: &Path) -> Result<String, TlsError> {
    let text = fs::read_to_string(path).map_err(|source| TlsError::Read {
        field: "tls.pfx_password_file",
        path: path.to_owned(),
        source,
    })?;
    let text = text.strip_suffix('\n').unwrap_or(&text);
    Ok(text.strip_suffix('\r').unwrap_or(text).to_owned())
}

fn read_file(field: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::Read {
        field,
        path: path.to_owned(),
        source,
    })
}

/// PEM certificate chain plus PEM key.
fn load_pem(
    cert_path: &Path,
    cert_field: &'static str,
    key_path: &Path,
    key_field: &'static str,
) -> Result<LoadedCert, TlsError> {
    let cert_pem = read_file(cert_field, cert_path)?;
    let chain = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadCertificate {
            field: cert_field,
            path: cert_path.to_owned(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            field: cert_field,
            path: cert_path.to_owned(),
        });
    }

    let key_pem = read_file(key_field, key_path)?;
    let no_key = |reason: String| TlsError::NoKey {
        field: key_field,
        path: key_path.to_owned(),
        reason,
    };
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| no_key(e.to_string()))?
        .ok_or_else(|| {
            let text = String::from_utf8_lossy(&key_pem);
            no_key(if text.contains("ENCRYPTED") {
                "the key is encrypted; store it unencrypted with mode 0600 (`openssl pkey -in KEY -out KEY.plain`) or use tls.pfx".to_owned()
            } else {
                "expected a PEM \"PRIVATE KEY\", \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\" block"
                    .to_owned()
            })
        })?;
    let pkey = openssl_private_key(&key).map_err(|e| no_key(e.to_string()))?;

    let files = Files {
        cert_field,
        cert_path,
        key_field,
        key_path,
    };
    finish(chain, key, &pkey, &files)
}

/// Where a certificate and key came from, for error messages.
struct Files<'a> {
    cert_field: &'static str,
    cert_path: &'a Path,
    key_field: &'static str,
    key_path: &'a Path,
}

/// Common checks: key matches the leaf, leaf currently valid, key supported by rustls; then
/// the pin and the descriptive fields.
fn finish(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    pkey: &PKey<Private>,
    files: &Files<'_>,
) -> Result<LoadedCert, TlsError> {
    let bad_cert = |reason: String| TlsError::BadCertificate {
        field: files.cert_field,
        path: files.cert_path.to_owned(),
        reason,
    };
    let x509s = chain
        .iter()
        .map(|c| X509::from_der(c.as_ref()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_cert(e.to_string()))?;
    let Some(leaf) = x509s.first() else {
        return Err(TlsError::NoCertificate {
            field: files.cert_field,
            path: files.cert_path.to_owned(),
        });
    };
    let subject = name_to_string(leaf.subject_name());

    // The key must be the leaf's.
    let leaf_pub = leaf.public_key().map_err(|e| bad_cert(e.to_string()))?;
    if !leaf_pub.public_eq(pkey) {
        let later = x509s
            .iter()
            .skip(1)
            .position(|c| c.public_key().is_ok_and(|p| p.public_eq(pkey)));
        let hint = match later {
            Some(i) => format!(
                " (the key belongs to certificate #{} in the file: the server's own certificate must come first)",
                i + 2
            ),
            None => String::new(),
        };
        return Err(TlsError::KeyMismatch {
            cert_field: files.cert_field,
            cert_path: files.cert_path.to_owned(),
            key_field: files.key_field,
            key_path: files.key_path.to_owned(),
            hint,
        });
    }

    // Validity period.
    let now = Asn1Time::days_from_now(0).map_err(|e| bad_cert(e.to_string()))?;
    let not_after = leaf.not_after().to_string();
    if leaf
        .not_after()
        .compare(&now)
        .map_err(|e| bad_cert(e.to_string()))?
        == Ordering::Less
    {
        return Err(TlsError::Expired {
            field: files.cert_field,
            path: files.cert_path.to_owned(),
            subject,
            not_after,
        });
    }
    if leaf
        .not_before()
        .compare(&now)
        .map_err(|e| bad_cert(e.to_string()))?
        == Ordering::Greater
    {
        return Err(TlsError::NotYetValid {
            field: files.cert_field,
            path: files.cert_path.to_owned(),
            subject,
            not_before: leaf.not_before().to_string(),
        });
    }

    // rustls (aws-lc-rs) must be able to sign with the key.
    rustls::crypto::aws_lc_rs::sign::any_supported_type(&key).map_err(|e| {
        TlsError::UnsupportedKey {
            field: files.key_field,
            path: files.key_path.to_owned(),
            reason: e.to_string(),
        }
    })?;

    let pin_sha256 = spki_pin(leaf).map_err(|e| bad_cert(e.to_string()))?;
    Ok(LoadedCert {
        chain,
        key,
        pin_sha256,
        not_after,
        subject,
    })
}

/// `pin-sha256:` + base64(SHA-256(SubjectPublicKeyInfo DER)), as openconnect's `--servercert`.
fn spki_pin(cert: &X509) -> Result<String, ErrorStack> {
    let spki = cert.public_key()?.public_key_to_der()?;
    let digest = openssl::sha::sha256(&spki);
    Ok(format!(
        "pin-sha256:{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    ))
}

/// `CN=a, O=b` from an X.509 name.
fn name_to_string(name: &X509NameRef) -> String {
    name.entries()
        .map(|e| {
            let key = e.object().nid().short_name().unwrap_or("?");
            let value = e.data().to_string().unwrap_or_else(|_| "?".to_owned());
            format!("{key}={value}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Converts a rustls key to an OpenSSL key (for comparing public keys).
fn openssl_private_key(key: &PrivateKeyDer<'_>) -> Result<PKey<Private>, ErrorStack> {
    match key {
        PrivateKeyDer::Pkcs1(k) => PKey::from_rsa(Rsa::private_key_from_der(k.secret_pkcs1_der())?),
        PrivateKeyDer::Sec1(k) => {
            PKey::from_ec_key(EcKey::private_key_from_der(k.secret_sec1_der())?)
        }
        PrivateKeyDer::Pkcs8(k) => PKey::private_key_from_pkcs8(k.secret_pkcs8_der()),
        _ => PKey::private_key_from_der(key.secret_der()),
    }
}

/// PKCS#12 bundle.
fn load_pfx(path: &Path, password: &str) -> Result<LoadedCert, TlsError> {
    let der = read_file("tls.pfx", path)?;
    let invalid = |reason: String| TlsError::PfxInvalid {
        path: path.to_owned(),
        reason,
    };
    let pkcs12 = Pkcs12::from_der(&der).map_err(|e| {
        invalid(format!(
            "not a DER PKCS#12 file ({e}); a PEM file belongs in tls.cert/tls.key"
        ))
    })?;
    let parsed = pkcs12.parse2(password).map_err(|e| {
        let mac_failure = e.errors().iter().any(|err| {
            err.reason()
                .is_some_and(|r| r.to_ascii_lowercase().contains("mac verify"))
        });
        if mac_failure {
            TlsError::PfxPassword {
                path: path.to_owned(),
            }
        } else {
            invalid(format!(
                "{e}; if it uses legacy encryption (RC2/3DES), re-export it with AES: `openssl pkcs12 -legacy -in OLD -nodes | openssl pkcs12 -export -out NEW`"
            ))
        }
    })?;
    let Some(leaf) = parsed.cert else {
        return Err(TlsError::NoCertificate {
            field: "tls.pfx",
            path: path.to_owned(),
        });
    };
    let Some(pkey) = parsed.pkey else {
        return Err(TlsError::NoKey {
            field: "tls.pfx",
            path: path.to_owned(),
            reason: "the PKCS#12 file contains no private key".to_owned(),
        });
    };
    let cas: Vec<X509> = parsed
        .ca
        .map(|s| s.into_iter().collect())
        .unwrap_or_default();
    let ordered = order_chain(leaf, cas);
    let chain = ordered
        .iter()
        .map(|c| c.to_der().map(CertificateDer::from))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(e.to_string()))?;
    let key_der = pkey
        .private_key_to_pkcs8()
        .map_err(|e| invalid(e.to_string()))?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der));
    let files = Files {
        cert_field: "tls.pfx",
        cert_path: path,
        key_field: "tls.pfx",
        key_path: path,
    };
    finish(chain, key, &pkey, &files)
}

/// Orders a leaf and a bag of CA certificates into a chain: each next certificate is the issuer
/// of the previous one. Certificates that do not link are appended at the end, in their order.
fn order_chain(leaf: X509, mut rest: Vec<X509>) -> Vec<X509> {
    let mut chain = vec![leaf];
    while let Some(last) = chain.last() {
        // A self-signed certificate ends the chain.
        if last.issuer_name().try_cmp(last.subject_name()).ok() == Some(Ordering::Equal) {
            break;
        }
        let next = rest.iter().position(|c| {
            last.issuer_name().try_cmp(c.subject_name()).ok() == Some(Ordering::Equal)
        });
        match next {
            Some(i) => chain.push(rest.remove(i)),
            None => break,
        }
    }
    chain.extend(rest);
    chain
}

/// Loads the self-signed certificate from `dir`, generating it if it is missing or expired.
fn load_or_generate_self_signed(
    dir: &Path,
    server_name: Option<&str>,
) -> Result<LoadedCert, TlsError> {
    let cert_path = dir.join(SELF_SIGNED_CERT_FILE);
    let key_path = dir.join(SELF_SIGNED_KEY_FILE);
    if cert_path.exists() && key_path.exists() {
        match load_pem(
            &cert_path,
            "server.state_dir",
            &key_path,
            "server.state_dir",
        ) {
            Ok(loaded) => {
                tracing::info!(
                    pin = %loaded.pin_sha256,
                    subject = %loaded.subject,
                    not_after = %loaded.not_after,
                    path = %cert_path.display(),
                    "using self-signed certificate; clients must pin it with `openconnect --servercert <pin>`"
                );
                return Ok(loaded);
            }
            Err(TlsError::Expired { not_after, .. }) => {
                tracing::warn!(
                    path = %cert_path.display(),
                    %not_after,
                    "self-signed certificate expired; generating a new one (its pin changes)"
                );
            }
            Err(e) => return Err(e),
        }
    } else if cert_path.exists() || key_path.exists() {
        tracing::warn!(
            dir = %dir.display(),
            "only one of {SELF_SIGNED_CERT_FILE} and {SELF_SIGNED_KEY_FILE} exists; generating both anew"
        );
    }

    let name = match server_name {
        Some(n) => n.to_owned(),
        None => local_hostname(),
    };
    let failed = |path: &Path, reason: String| TlsError::SelfSigned {
        path: path.to_owned(),
        reason,
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| failed(dir, e.to_string()))?;
    let (cert, pkey) =
        generate_self_signed(&name, SELF_SIGNED_DAYS).map_err(|e| failed(dir, e.to_string()))?;
    let key_pem = pkey
        .private_key_to_pem_pkcs8()
        .map_err(|e| failed(&key_path, e.to_string()))?;
    let cert_pem = cert
        .to_pem()
        .map_err(|e| failed(&cert_path, e.to_string()))?;
    write_atomically(&key_path, &key_pem, 0o600, None)
        .map_err(|e| failed(&key_path, e.to_string()))?;
    write_atomically(&cert_path, &cert_pem, 0o644, None)
        .map_err(|e| failed(&cert_path, e.to_string()))?;

    let loaded = load_pem(
        &cert_path,
        "server.state_dir",
        &key_path,
        "server.state_dir",
    )?;
    tracing::info!(
        pin = %loaded.pin_sha256,
        subject = %loaded.subject,
        not_after = %loaded.not_after,
        path = %cert_path.display(),
        "generated self-signed certificate; clients must pin it with `openconnect --servercert <pin>`"
    );
    Ok(loaded)
}

/// The machine's host name, or `localhost` if it cannot be read.
fn local_hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| fs::read_to_string(p).ok())
        .map(|s| s.trim().to_owned())
        .find(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// Generates a self-signed ECDSA P-256 server certificate for `name` (a DNS name or an IP
/// address), valid from five minutes ago (clock skew) for `days` days.
fn generate_self_signed(name: &str, days: u32) -> Result<(X509, PKey<Private>), ErrorStack> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    let pkey = PKey::from_ec_key(EcKey::generate(&group)?)?;

    let mut subject = X509NameBuilder::new()?;
    subject.append_entry_by_nid(Nid::COMMONNAME, name)?;
    let subject = subject.build();

    let mut serial = BigNum::new()?;
    serial.rand(127, MsbOption::MAYBE_ZERO, false)?;

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let now = i64::try_from(now).unwrap_or(i64::MAX);
    let not_before = Asn1Time::from_unix(now.saturating_sub(300))?;
    let not_after =
        Asn1Time::from_unix(now.saturating_add(i64::from(days).saturating_mul(86_400)))?;

    let mut b = X509::builder()?;
    b.set_version(2)?;
    let serial = serial.to_asn1_integer()?;
    b.set_serial_number(&serial)?;
    b.set_subject_name(&subject)?;
    b.set_issuer_name(&subject)?;
    b.set_pubkey(&pkey)?;
    b.set_not_before(&not_before)?;
    b.set_not_after(&not_after)?;
    b.append_extension(BasicConstraints::new().critical().build()?)?;
    b.append_extension(KeyUsage::new().critical().digital_signature().build()?)?;
    b.append_extension(ExtendedKeyUsage::new().server_auth().build()?)?;
    let ski = SubjectKeyIdentifier::new().build(&b.x509v3_context(None, None))?;
    b.append_extension(ski)?;
    let mut san = SubjectAlternativeName::new();
    if name.parse::<IpAddr>().is_ok() {
        san.ip(name);
    } else {
        san.dns(name);
    }
    let san = san.build(&b.x509v3_context(None, None))?;
    b.append_extension(san)?;
    b.sign(&pkey, MessageDigest::sha256())?;
    Ok((b.build(), pkey))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use openssl::pkey::Public;
    use openssl::stack::Stack;
    use openssl::x509::X509Builder;
    use std::os::unix::fs::PermissionsExt;
    use tempfile::TempDir;

    /// Builds a certificate for `pub_key` signed by `signer` (self-signed when `issuer` is None),
    /// valid from `from` to `to` (unix seconds).
    fn make_cert(
        cn: &str,
        pub_key: &PKey<Private>,
        issuer: Option<(&X509, &PKey<Private>)>,
        from: i64,
        to: i64,
        ca: bool,
    ) -> X509 {
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_nid(Nid::COMMONNAME, cn).unwrap();
        let name = name.build();
        let mut b = X509Builder::new().unwrap();
        b.set_version(2).unwrap();
        let mut serial = BigNum::new().unwrap();
        serial.rand(64, MsbOption::MAYBE_ZERO, false).unwrap();
        b.set_serial_number(&serial.to_asn1_integer().unwrap())
            .unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(issuer.map_or(&*name, |(c, _)| c.subject_name()))
            .unwrap();
        b.set_pubkey(pub_key).unwrap();
        b.set_not_before(&Asn1Time::from_unix(from).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::from_unix(to).unwrap()).unwrap();
        if ca {
            b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
                .unwrap();
        }
        let signer = issuer.map_or(pub_key, |(_, k)| k);
        b.sign(signer, MessageDigest::sha256()).unwrap();
        b.build()
    }

    fn now() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    fn ec_key() -> PKey<Private> {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
    }

    fn rsa_key(bits: u32) -> PKey<Private> {
        PKey::from_rsa(Rsa::generate(bits).unwrap()).unwrap()
    }

    fn valid_cert(cn: &str, key: &PKey<Private>) -> X509 {
        make_cert(cn, key, None, now() - 60, now() + 86_400, false)
    }

    struct Pem {
        _dir: TempDir,
        cert: PathBuf,
        key: PathBuf,
    }

    fn write_pem(certs: &[&X509], key_pem: &[u8]) -> Pem {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        let mut pem = Vec::new();
        for c in certs {
            pem.extend(c.to_pem().unwrap());
        }
        fs::write(&cert, pem).unwrap();
        fs::write(&key, key_pem).unwrap();
        Pem {
            _dir: dir,
            cert,
            key,
        }
    }

    fn config_pem(p: &Pem) -> Config {
        let mut c = Config::default();
        c.tls.cert = Some(p.cert.clone());
        c.tls.key = Some(p.key.clone());
        c
    }

    /// Runs a full in-memory handshake against `server`, with a client that accepts only the
    /// given pin (like `openconnect --servercert pin-sha256:...`), offering `versions`.
    fn handshake(
        server: Arc<rustls::ServerConfig>,
        pin: &str,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Result<rustls::ProtocolVersion, rustls::Error> {
        handshake_offering(server, pin, versions, &[]).map(|(v, _)| v)
    }

    /// [`handshake`] with a client offering the cipher suites `suites` in that order (all of
    /// rustls' when empty); returns the version and the suite agreed.
    fn handshake_offering(
        server: Arc<rustls::ServerConfig>,
        pin: &str,
        versions: &[&'static rustls::SupportedProtocolVersion],
        suites: &[&str],
    ) -> Result<(rustls::ProtocolVersion, rustls::CipherSuite), rustls::Error> {
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        if !suites.is_empty() {
            provider.cipher_suites = cipher_suites(suites.iter().copied());
        }
        let provider = Arc::new(provider);
        let verifier = Arc::new(PinVerifier {
            pin: pin.to_owned(),
            provider: provider.clone(),
        });
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        let mut c = rustls::ClientConnection::new(
            Arc::new(client),
            rustls::pki_types::ServerName::try_from("vpn.test").unwrap(),
        )
        .unwrap();
        let mut s = rustls::ServerConnection::new(server).unwrap();
        for _ in 0..20 {
            let mut buf = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut buf).unwrap();
            }
            let mut rd = buf.as_slice();
            while !rd.is_empty() {
                s.read_tls(&mut rd).unwrap();
            }
            s.process_new_packets()?;
            let mut buf = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut buf).unwrap();
            }
            let mut rd = buf.as_slice();
            while !rd.is_empty() {
                c.read_tls(&mut rd).unwrap();
            }
            c.process_new_packets()?;
            if !c.is_handshaking() && !s.is_handshaking() {
                let suite = c.negotiated_cipher_suite().unwrap().suite();
                return Ok((c.protocol_version().unwrap(), suite));
            }
        }
        panic!("handshake did not complete");
    }

    /// A server configuration on a fresh self-signed certificate (defaults otherwise), and a
    /// client configuration that trusts it by its pin.
    pub(crate) fn config_pair() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Config::default();
        c.server.state_dir = dir.path().join("state");
        let cert = load_certificate(&c).unwrap();
        let server = server_config(&cert, &Default::default(), &Default::default()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = Arc::new(PinVerifier {
            pin: cert.pin_sha256.clone(),
            provider: provider.clone(),
        });
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        (server, Arc::new(client))
    }

    #[derive(Debug)]
    struct PinVerifier {
        pin: String,
        provider: Arc<rustls::crypto::CryptoProvider>,
    }

    impl rustls::client::danger::ServerCertVerifier for PinVerifier {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &rustls::pki_types::ServerName<'_>,
            _ocsp: &[u8],
            _now: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            let x = X509::from_der(end_entity.as_ref()).unwrap();
            if spki_pin(&x).unwrap() == self.pin {
                Ok(rustls::client::danger::ServerCertVerified::assertion())
            } else {
                Err(rustls::Error::General("pin mismatch".into()))
            }
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
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
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    }

    use rustls::version::{TLS12, TLS13};

    #[test]
    fn ecdsa_and_rsa_pem_keys_handshake_with_tls12_and_tls13() {
        for (label, key, key_pem) in [
            ("ec-pkcs8", ec_key(), None),
            ("rsa-pkcs8", rsa_key(2048), None),
            ("rsa-pkcs1", rsa_key(2048), Some("pkcs1")),
            ("ec-sec1", ec_key(), Some("sec1")),
        ] {
            let cert = valid_cert("vpn.test", &key);
            let pem = match key_pem {
                None => key.private_key_to_pem_pkcs8().unwrap(),
                Some("pkcs1") => key.rsa().unwrap().private_key_to_pem().unwrap(),
                Some(_) => key.ec_key().unwrap().private_key_to_pem().unwrap(),
            };
            let files = write_pem(&[&cert], &pem);
            let loaded = load_certificate(&config_pem(&files)).unwrap();
            assert_eq!(loaded.subject, "CN=vpn.test", "{label}");
            assert_eq!(loaded.chain.len(), 1);
            let server = server_config(&loaded, &Default::default(), &Default::default()).unwrap();
            assert_eq!(
                handshake(server.clone(), &loaded.pin_sha256, &[&TLS13, &TLS12]).unwrap(),
                rustls::ProtocolVersion::TLSv1_3,
                "{label}: 1.3 preferred"
            );
            assert_eq!(
                handshake(server, &loaded.pin_sha256, &[&TLS12]).unwrap(),
                rustls::ProtocolVersion::TLSv1_2,
                "{label}"
            );
        }
    }

    /// An ECDSA P-256 certificate for vpn.test, loaded from PEM files as the daemon loads it.
    fn loaded_ec_cert() -> LoadedCert {
        let key = ec_key();
        let files = write_pem(
            &[&valid_cert("vpn.test", &key)],
            &key.private_key_to_pem_pkcs8().unwrap(),
        );
        load_certificate(&config_pem(&files)).unwrap()
    }

    #[test]
    fn min_version_13_refuses_tls12_clients() {
        let loaded = loaded_ec_cert();
        let server = server_config(
            &loaded,
            &TlsConfig {
                min_version: TlsVersion::V1_3,
                ..Default::default()
            },
            &Default::default(),
        )
        .unwrap();
        assert!(handshake(server.clone(), &loaded.pin_sha256, &[&TLS12]).is_err());
        assert_eq!(
            handshake(server.clone(), &loaded.pin_sha256, &[&TLS13, &TLS12]).unwrap(),
            rustls::ProtocolVersion::TLSv1_3
        );
        assert_eq!(server.max_early_data_size, 0);
        assert!(server.alpn_protocols.is_empty());
    }

    #[test]
    fn the_server_order_of_cipher_suites_wins_and_tls_cipher_suites_restricts_it() {
        use rustls::CipherSuite as S;
        let loaded = loaded_ec_cert();
        let pin = loaded.pin_sha256.clone();
        // openconnect (GnuTLS) offers AES-256-GCM first; the default order picks AES-128-GCM.
        let offer = [
            "TLS13_AES_256_GCM_SHA384",
            "TLS13_CHACHA20_POLY1305_SHA256",
            "TLS13_AES_128_GCM_SHA256",
            "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        ];
        let server = server_config(&loaded, &Default::default(), &Default::default()).unwrap();
        let agreed = |server: &Arc<rustls::ServerConfig>,
                      versions: &[&'static rustls::SupportedProtocolVersion],
                      offer: &[&str]| {
            handshake_offering(server.clone(), &pin, versions, offer).map(|(_, s)| s)
        };
        assert_eq!(
            agreed(&server, &[&TLS13], &offer).unwrap(),
            S::TLS13_AES_128_GCM_SHA256
        );
        assert_eq!(
            agreed(&server, &[&TLS12], &offer).unwrap(),
            S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        );
        // A client without AES-128 still gets the next suite of the server's order.
        assert_eq!(
            agreed(&server, &[&TLS13], &offer[..2]).unwrap(),
            S::TLS13_AES_256_GCM_SHA384
        );
        // An operator's list: AES-256 only. A client offering nothing of it is refused.
        let only256 = TlsConfig {
            cipher_suites: vec![
                "TLS13_AES_256_GCM_SHA384".into(),
                "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384".into(),
            ],
            ..Default::default()
        };
        let server = server_config(&loaded, &only256, &Default::default()).unwrap();
        assert_eq!(
            agreed(&server, &[&TLS13], &offer).unwrap(),
            S::TLS13_AES_256_GCM_SHA384
        );
        assert_eq!(
            agreed(&server, &[&TLS12], &offer).unwrap(),
            S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
        );
        assert!(agreed(&server, &[&TLS13], &["TLS13_AES_128_GCM_SHA256"]).is_err());
        assert_eq!(server.send_tls13_tickets, 0);
    }

    #[test]
    fn every_default_cipher_suite_is_known_to_the_provider() {
        for name in DEFAULT_CIPHER_SUITES {
            assert!(cipher_suite(name).is_some(), "{name}");
        }
        assert!(cipher_suite("TLS_RSA_WITH_AES_128_CBC_SHA").is_none());
    }

    #[test]
    fn pin_matches_the_openssl_command_line() {
        let key = rsa_key(2048);
        let cert = valid_cert("vpn.test", &key);
        let files = write_pem(&[&cert], &key.private_key_to_pem_pkcs8().unwrap());
        let loaded = load_certificate(&config_pem(&files)).unwrap();
        // Independent computation through the public key PEM.
        let pub_pem = cert.public_key().unwrap().public_key_to_pem().unwrap();
        let pubkey: PKey<Public> = PKey::public_key_from_pem(&pub_pem).unwrap();
        let digest = openssl::sha::sha256(&pubkey.public_key_to_der().unwrap());
        let expected = format!(
            "pin-sha256:{}",
            base64::engine::general_purpose::STANDARD.encode(digest)
        );
        assert_eq!(loaded.pin_sha256, expected);
        // And the documented shell pipeline, when the openssl binary is installed.
        let script = format!(
            "openssl x509 -in {} -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64",
            files.cert.display()
        );
        if let Ok(out) = std::process::Command::new("sh")
            .args(["-c", &script])
            .output()
        {
            let b64 = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if out.status.success() && !b64.is_empty() {
                assert_eq!(loaded.pin_sha256, format!("pin-sha256:{b64}"));
            }
        }
    }

    #[test]
    fn chain_is_kept_leaf_first() {
        let ca_key = ec_key();
        let ca = make_cert("Test CA", &ca_key, None, now() - 60, now() + 86_400, true);
        let key = ec_key();
        let leaf = make_cert(
            "vpn.test",
            &key,
            Some((&ca, &ca_key)),
            now() - 60,
            now() + 86_400,
            false,
        );
        let files = write_pem(&[&leaf, &ca], &key.private_key_to_pem_pkcs8().unwrap());
        let loaded = load_certificate(&config_pem(&files)).unwrap();
        assert_eq!(loaded.chain.len(), 2);
        assert_eq!(loaded.chain[0].as_ref(), leaf.to_der().unwrap().as_slice());
    }

    #[test]
    fn key_not_matching_the_certificate_is_rejected() {
        let key = ec_key();
        let other = ec_key();
        let files = write_pem(
            &[&valid_cert("vpn.test", &key)],
            &other.private_key_to_pem_pkcs8().unwrap(),
        );
        let e = load_certificate(&config_pem(&files)).unwrap_err();
        assert!(matches!(e, TlsError::KeyMismatch { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains("tls.key") && msg.contains("tls.cert") && msg.contains("key.pem"));

        // Intermediate first, leaf second: the hint says so.
        let ca_key = ec_key();
        let ca = make_cert("Test CA", &ca_key, None, now() - 60, now() + 86_400, true);
        let leaf = make_cert(
            "vpn.test",
            &key,
            Some((&ca, &ca_key)),
            now() - 60,
            now() + 86_400,
            false,
        );
        let files = write_pem(&[&ca, &leaf], &key.private_key_to_pem_pkcs8().unwrap());
        let e = load_certificate(&config_pem(&files))
            .unwrap_err()
            .to_string();
        assert!(e.contains("must come first"), "{e}");
    }

    #[test]
    fn expired_and_future_certificates_are_rejected_naming_the_date() {
        let key = ec_key();
        let expired = make_cert(
            "old",
            &key,
            None,
            now() - 10 * 86_400,
            now() - 86_400,
            false,
        );
        let files = write_pem(&[&expired], &key.private_key_to_pem_pkcs8().unwrap());
        let e = load_certificate(&config_pem(&files)).unwrap_err();
        let TlsError::Expired {
            not_after, field, ..
        } = &e
        else {
            panic!("{e:?}")
        };
        assert_eq!(*field, "tls.cert");
        assert!(e.to_string().contains(not_after.as_str()));
        assert!(e.to_string().contains("CN=old"));

        let future = make_cert(
            "new",
            &key,
            None,
            now() + 86_400,
            now() + 10 * 86_400,
            false,
        );
        let files = write_pem(&[&future], &key.private_key_to_pem_pkcs8().unwrap());
        let e = load_certificate(&config_pem(&files)).unwrap_err();
        assert!(matches!(e, TlsError::NotYetValid { .. }), "{e:?}");
    }

    #[test]
    fn missing_and_empty_files_name_the_field() {
        let key = ec_key();
        let files = write_pem(&[], &key.private_key_to_pem_pkcs8().unwrap());
        let e = load_certificate(&config_pem(&files)).unwrap_err();
        assert!(
            matches!(
                e,
                TlsError::NoCertificate {
                    field: "tls.cert",
                    ..
                }
            ),
            "{e:?}"
        );

        let files = write_pem(&[&valid_cert("x", &key)], b"not a key\n");
        let e = load_certificate(&config_pem(&files)).unwrap_err();
        assert!(
            matches!(
                e,
                TlsError::NoKey {
                    field: "tls.key",
                    ..
                }
            ),
            "{e:?}"
        );

        let encrypted = key
            .private_key_to_pem_pkcs8_passphrase(openssl::symm::Cipher::aes_128_cbc(), b"pw")
            .unwrap();
        let files = write_pem(&[&valid_cert("x", &key)], &encrypted);
        let e = load_certificate(&config_pem(&files))
            .unwrap_err()
            .to_string();
        assert!(e.contains("encrypted"), "{e}");

        let mut c = Config::default();
        c.tls.cert = Some("/nonexistent/cert.pem".into());
        c.tls.key = Some("/nonexistent/key.pem".into());
        let e = load_certificate(&c).unwrap_err();
        assert!(
            matches!(
                e,
                TlsError::Read {
                    field: "tls.cert",
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("/nonexistent/cert.pem"));
    }

    #[test]
    fn small_rsa_key_is_unsupported() {
        let key = rsa_key(1024);
        let files = write_pem(
            &[&valid_cert("x", &key)],
            &key.private_key_to_pem_pkcs8().unwrap(),
        );
        let e = load_certificate(&config_pem(&files)).unwrap_err();
        assert!(
            matches!(
                e,
                TlsError::UnsupportedKey {
                    field: "tls.key",
                    ..
                }
            ),
            "{e:?}"
        );
    }

    fn write_pfx(
        dir: &Path,
        password: &str,
        key: &PKey<Private>,
        cert: &X509,
        cas: &[&X509],
    ) -> PathBuf {
        let mut b = Pkcs12::builder();
        b.name("server").pkey(key).cert(cert);
        if !cas.is_empty() {
            let mut stack = Stack::new().unwrap();
            for c in cas {
                stack.push((*c).clone()).unwrap();
            }
            b.ca(stack);
        }
        let der = b.build2(password).unwrap().to_der().unwrap();
        let path = dir.join("server.pfx");
        fs::write(&path, der).unwrap();
        path
    }

    #[test]
    fn pfx_with_password_file_and_chain_loads() {
        let dir = tempfile::tempdir().unwrap();
        let root_key = rsa_key(2048);
        let root = make_cert("Root", &root_key, None, now() - 60, now() + 86_400, true);
        let int_key = ec_key();
        let int = make_cert(
            "Intermediate",
            &int_key,
            Some((&root, &root_key)),
            now() - 60,
            now() + 86_400,
            true,
        );
        let key = rsa_key(2048);
        let leaf = make_cert(
            "vpn.test",
            &key,
            Some((&int, &int_key)),
            now() - 60,
            now() + 86_400,
            false,
        );
        // Put the CAs in the "wrong" order: the loader orders them.
        let pfx = write_pfx(dir.path(), "s3cret", &key, &leaf, &[&root, &int]);
        let pwfile = dir.path().join("pw");
        fs::write(&pwfile, "s3cret\n").unwrap();
        let mut c = Config::default();
        c.tls.pfx = Some(pfx.clone());
        c.tls.pfx_password_file = Some(pwfile);
        let loaded = load_certificate(&c).unwrap();
        let subjects: Vec<String> = loaded
            .chain
            .iter()
            .map(|d| name_to_string(X509::from_der(d.as_ref()).unwrap().subject_name()))
            .collect();
        assert_eq!(subjects, ["CN=vpn.test", "CN=Intermediate", "CN=Root"]);
        let server = server_config(&loaded, &Default::default(), &Default::default()).unwrap();
        handshake(server, &loaded.pin_sha256, &[&TLS13, &TLS12]).unwrap();

        // Inline password works too.
        c.tls.pfx_password_file = None;
        c.tls.pfx_password = Some("s3cret".into());
        assert_eq!(load_certificate(&c).unwrap().pin_sha256, loaded.pin_sha256);
    }

    #[test]
    fn pfx_wrong_password_and_garbage_are_distinguished() {
        let dir = tempfile::tempdir().unwrap();
        let key = ec_key();
        let pfx = write_pfx(dir.path(), "right", &key, &valid_cert("x", &key), &[]);
        let mut c = Config::default();
        c.tls.pfx = Some(pfx.clone());
        c.tls.pfx_password = Some("wrong".into());
        let e = load_certificate(&c).unwrap_err();
        assert!(matches!(e, TlsError::PfxPassword { .. }), "{e:?}");
        assert!(e.to_string().contains("server.pfx"));

        fs::write(&pfx, b"garbage").unwrap();
        let e = load_certificate(&c).unwrap_err();
        assert!(matches!(e, TlsError::PfxInvalid { .. }), "{e:?}");
    }

    #[test]
    fn pfx_with_empty_password() {
        let dir = tempfile::tempdir().unwrap();
        let key = ec_key();
        let pfx = write_pfx(dir.path(), "", &key, &valid_cert("x", &key), &[]);
        let mut c = Config::default();
        c.tls.pfx = Some(pfx);
        load_certificate(&c).unwrap();
    }

    #[test]
    fn self_signed_is_generated_once_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let mut c = Config::default();
        c.server.state_dir = state.clone();
        c.server.server_name = Some("vpn.example.com".into());
        let first = load_certificate(&c).unwrap();
        assert_eq!(first.subject, "CN=vpn.example.com");
        assert!(first.pin_sha256.starts_with("pin-sha256:"));
        let key_mode = fs::metadata(state.join(SELF_SIGNED_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(key_mode & 0o777, 0o600);
        let leaf = X509::from_der(first.chain[0].as_ref()).unwrap();
        let san = leaf.subject_alt_names().unwrap();
        assert_eq!(san.get(0).unwrap().dnsname(), Some("vpn.example.com"));
        assert_eq!(leaf.public_key().unwrap().bits(), 256);
        // about one year
        let days = Asn1Time::days_from_now(0)
            .unwrap()
            .diff(leaf.not_after())
            .unwrap()
            .days;
        assert!((364..=365).contains(&days), "{days}");

        let second = load_certificate(&c).unwrap();
        assert_eq!(first.pin_sha256, second.pin_sha256);
        handshake(
            server_config(&second, &Default::default(), &Default::default()).unwrap(),
            &second.pin_sha256,
            &[&TLS13, &TLS12],
        )
        .unwrap();
    }

    #[test]
    fn expired_self_signed_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let key = ec_key();
        let old = make_cert(
            "old",
            &key,
            None,
            now() - 10 * 86_400,
            now() - 86_400,
            false,
        );
        fs::write(
            dir.path().join(SELF_SIGNED_CERT_FILE),
            old.to_pem().unwrap(),
        )
        .unwrap();
        fs::write(
            dir.path().join(SELF_SIGNED_KEY_FILE),
            key.private_key_to_pem_pkcs8().unwrap(),
        )
        .unwrap();
        let mut c = Config::default();
        c.server.state_dir = dir.path().to_owned();
        c.server.server_name = Some("192.0.2.7".into());
        let loaded = load_certificate(&c).unwrap();
        assert_eq!(loaded.subject, "CN=192.0.2.7");
        let leaf = X509::from_der(loaded.chain[0].as_ref()).unwrap();
        let san = leaf.subject_alt_names().unwrap();
        assert_eq!(san.get(0).unwrap().ipaddress(), Some(&[192u8, 0, 2, 7][..]));
    }

    #[test]
    fn self_signed_uses_the_hostname_without_server_name() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Config::default();
        c.server.state_dir = dir.path().to_owned();
        let loaded = load_certificate(&c).unwrap();
        assert_eq!(loaded.subject, format!("CN={}", local_hostname()));
    }
}
