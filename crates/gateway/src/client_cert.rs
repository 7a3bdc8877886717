//! Client-certificate authentication (`auth.method = "certificate"`): the rustls verifier that
//! checks device certificates, and the login decision made from a verified certificate.
//!
//! Verification is rustls-webpki's ([`WebPkiClientVerifier`]): the chain must reach a CA of
//! `auth.ca_file`, every certificate must be within its validity dates, the leaf must allow client
//! authentication (extendedKeyUsage, when present), and a certificate listed in a CRL of
//! `auth.crl_files` is refused. A certificate whose issuer has no CRL here is not checked for
//! revocation (as ocserv does), and an expired CRL still applies. The verifier *asks* every client
//! for a certificate but lets clients without one finish the handshake, so health probes work;
//! the login step ([`login_identity`]) then requires one.
//!
//! The username is read from the verified leaf with `x509-parser` (zero-copy; OpenSSL 3's parser,
//! tried first, decodes the public key through its provider machinery and took over a quarter of a
//! certificate login's CPU), never by hand.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::oid_registry::OID_USERID;
use x509_parser::prelude::FromDer;
use x509_parser::x509::AttributeTypeAndValue;

use crate::config::{AuthConfig, AuthMethod, CertUsername};
use crate::users::UserDb;

/// Why the client CA or a CRL could not be loaded. Each names the configuration field and file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientCaError {
    /// A file could not be read.
    #[error("{field}: cannot read {}: {source}", path.display())]
    Read {
        /// `auth.ca_file` or `auth.crl_files[i]`.
        field: String,
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },
    /// `auth.ca_file` holds no PEM certificate.
    #[error("auth.ca_file: no certificate found in {} (expected PEM \"-----BEGIN CERTIFICATE-----\" blocks)", path.display())]
    NoCa {
        /// The file.
        path: PathBuf,
    },
    /// A certificate of `auth.ca_file` is not usable as a trust anchor.
    #[error("auth.ca_file: certificate {index} in {} is not usable as a CA: {reason}", path.display())]
    BadCa {
        /// The file.
        path: PathBuf,
        /// Position of the certificate in the file, from 1.
        index: usize,
        /// The parser's explanation.
        reason: String,
    },
    /// A CRL file could not be parsed (or holds none).
    #[error("{field}: invalid CRL in {}: {reason}", path.display())]
    BadCrl {
        /// `auth.crl_files[i]`.
        field: String,
        /// The file.
        path: PathBuf,
        /// The parser's explanation.
        reason: String,
    },
    /// rustls refused the verifier (should not happen after the checks above).
    #[error("auth.ca_file: client certificate verifier: {0}")]
    Verifier(String),
}

fn read(field: &str, path: &Path) -> Result<Vec<u8>, ClientCaError> {
    fs::read(path).map_err(|source| ClientCaError::Read {
        field: field.to_owned(),
        path: path.to_owned(),
        source,
    })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The CRLs of one file: every PEM `X509 CRL` block, or the whole file as DER.
fn read_crls(
    field: &str,
    path: &Path,
) -> Result<Vec<CertificateRevocationListDer<'static>>, ClientCaError> {
    let bytes = read(field, path)?;
    let bad = |reason: String| ClientCaError::BadCrl {
        field: field.to_owned(),
        path: path.to_owned(),
        reason,
    };
    if bytes.windows(10).any(|w| w == b"-----BEGIN") {
        let crls = rustls_pemfile::crls(&mut bytes.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(e.to_string()))?;
        if crls.is_empty() {
            return Err(bad("no \"-----BEGIN X509 CRL-----\" block".to_owned()));
        }
        Ok(crls)
    } else {
        Ok(vec![CertificateRevocationListDer::from(bytes)])
    }
}

/// Builds the client-certificate verifier for `auth`: `None` in password mode. Reads
/// `auth.ca_file` and every `auth.crl_files` entry; each CRL is checked on its own first, so a bad
/// one is reported by its field.
pub fn verifier(auth: &AuthConfig) -> Result<Option<Arc<dyn ClientCertVerifier>>, ClientCaError> {
    if auth.method != AuthMethod::Certificate {
        return Ok(None);
    }
    // Validation guarantees ca_file in certificate mode; an empty path fails to read below.
    let ca_path = auth.ca_file.clone().unwrap_or_default();
    let pem = read("auth.ca_file", &ca_path)?;
    let cas: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| ClientCaError::BadCa {
            path: ca_path.clone(),
            index: 1,
            reason: e.to_string(),
        })?;
    if cas.is_empty() {
        return Err(ClientCaError::NoCa { path: ca_path });
    }
    let mut roots = RootCertStore::empty();
    for (i, ca) in cas.into_iter().enumerate() {
        roots.add(ca).map_err(|e| ClientCaError::BadCa {
            path: ca_path.clone(),
            index: i + 1,
            reason: e.to_string(),
        })?;
    }
    let cas = roots.len();
    let roots = Arc::new(roots);
    let mut crls = Vec::new();
    for (i, path) in auth.crl_files.iter().enumerate() {
        let field = format!("auth.crl_files[{i}]");
        let these = read_crls(&field, path)?;
        // The parser rustls will use, one file at a time, so that the error names the file.
        WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), provider())
            .with_crls(these.iter().cloned())
            .build()
            .map_err(|e| ClientCaError::BadCrl {
                field: field.clone(),
                path: path.clone(),
                reason: e.to_string(),
            })?;
        crls.extend(these);
    }
    tracing::info!(
        ca_file = %ca_path.display(),
        cas,
        crls = crls.len(),
        "client certificate authorities loaded"
    );
    let built = WebPkiClientVerifier::builder_with_provider(roots, provider())
        .with_crls(crls)
        .allow_unknown_revocation_status()
        .allow_unauthenticated()
        .build()
        .map_err(|e| ClientCaError::Verifier(e.to_string()))?;
    Ok(Some(built))
}

/// Why a certificate login was refused. The reason is logged and counted; the client is told only
/// that authentication failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertLoginRefusal {
    /// The TLS connection carries no client certificate.
    #[error("no client certificate")]
    NoCertificate,
    /// The verified certificate has no usable username in the configured field.
    #[error("certificate has no usable {field}: {reason}")]
    NoUsername {
        /// `cn`, `uid` or `email`.
        field: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The certificate's user is locked in the users file.
    #[error("user {0:?} is locked in the users file")]
    Locked(String),
}

impl CertLoginRefusal {
    /// The `reason` label of `tunneld_auth_failures_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::NoCertificate => "no_certificate",
            Self::NoUsername { .. } => "certificate_username",
            Self::Locked(_) => "locked",
        }
    }
}

/// Decides a certificate login: the username from the verified leaf (`peer_certs[0]`, as rustls
/// hands it over after verification), refused when absent or locked in `users`; the group is the
/// users file's for a listed user, else none.
pub fn login_identity(
    peer_certs: Option<&[CertificateDer<'_>]>,
    field: CertUsername,
    users: &UserDb,
) -> Result<(String, Option<String>), CertLoginRefusal> {
    let leaf = peer_certs
        .and_then(<[CertificateDer<'_>]>::first)
        .ok_or(CertLoginRefusal::NoCertificate)?;
    let name = username(leaf.as_ref(), field)?;
    if users.is_locked(&name) {
        return Err(CertLoginRefusal::Locked(name));
    }
    let group = users.group(&name).map(str::to_owned);
    Ok((name, group))
}

fn field_name(field: CertUsername) -> &'static str {
    match field {
        CertUsername::Cn => "cn",
        CertUsername::Uid => "uid",
        CertUsername::Email => "email",
    }
}

/// The username in `field` of the DER certificate `der`: the first such subject attribute (or,
/// for `email`, the first subjectAltName rfc822Name, else the subject emailAddress). It must be
/// valid UTF-8 and a storable username (no `:`, no control characters, ...).
pub fn username(der: &[u8], field: CertUsername) -> Result<String, CertLoginRefusal> {
    let refuse = |reason: String| CertLoginRefusal::NoUsername {
        field: field_name(field),
        reason,
    };
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| refuse(format!("unparsable certificate: {e}")))?;
    let subject = cert.subject();
    let text =
        |attr: Option<&AttributeTypeAndValue<'_>>| -> Result<Option<String>, CertLoginRefusal> {
            attr.map(|a| {
                a.as_str()
                    .map(str::to_owned)
                    .map_err(|e| refuse(format!("not a text value: {e}")))
            })
            .transpose()
        };
    let found = match field {
        CertUsername::Cn => text(subject.iter_common_name().next())?,
        CertUsername::Uid => text(subject.iter_by_oid(&OID_USERID).next())?,
        CertUsername::Email => {
            let san = cert
                .subject_alternative_name()
                .map_err(|e| refuse(format!("unparsable subjectAltName: {e}")))?
                .and_then(|ext| {
                    ext.value.general_names.iter().find_map(|n| match n {
                        GeneralName::RFC822Name(s) => Some((*s).to_owned()),
                        _ => None,
                    })
                });
            match san {
                Some(s) => Some(s),
                None => text(subject.iter_email().next())?,
            }
        }
    };
    let name = found.ok_or_else(|| refuse("absent".to_owned()))?;
    crate::users::check_username(&name).map_err(|r| refuse(format!("{name:?} {r}")))?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::asn1::Asn1Time;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::pkey::PKey;
    use openssl::x509::extension::SubjectAlternativeName;
    use openssl::x509::X509NameBuilder;
    use openssl::x509::X509;

    fn cert(subject: &[(Nid, &str)], san_email: Option<&str>) -> Vec<u8> {
        let key = PKey::from_ec_key(
            EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap()).unwrap(),
        )
        .unwrap();
        let mut name = X509NameBuilder::new().unwrap();
        for (nid, v) in subject {
            name.append_entry_by_nid(*nid, v).unwrap();
        }
        let name = name.build();
        let mut b = X509::builder().unwrap();
        b.set_version(2).unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(&name).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::days_from_now(1).unwrap())
            .unwrap();
        if let Some(e) = san_email {
            let ext = SubjectAlternativeName::new()
                .email(e)
                .build(&b.x509v3_context(None, None))
                .unwrap();
            b.append_extension(ext).unwrap();
        }
        b.sign(&key, MessageDigest::sha256()).unwrap();
        b.build().to_der().unwrap()
    }

    #[test]
    fn username_comes_from_the_configured_field() {
        let der = cert(
            &[
                (Nid::COMMONNAME, "alice"),
                (Nid::USERID, "a1234"),
                (Nid::PKCS9_EMAILADDRESS, "subject@example.com"),
            ],
            Some("alice@example.com"),
        );
        assert_eq!(username(&der, CertUsername::Cn).unwrap(), "alice");
        assert_eq!(username(&der, CertUsername::Uid).unwrap(), "a1234");
        assert_eq!(
            username(&der, CertUsername::Email).unwrap(),
            "alice@example.com"
        );
        let no_san = cert(&[(Nid::PKCS9_EMAILADDRESS, "subject@example.com")], None);
        assert_eq!(
            username(&no_san, CertUsername::Email).unwrap(),
            "subject@example.com"
        );
    }

    #[test]
    fn absent_or_unstorable_username_is_refused_naming_the_field() {
        let der = cert(&[(Nid::COMMONNAME, "alice")], None);
        let e = username(&der, CertUsername::Uid).unwrap_err();
        assert_eq!(e.label(), "certificate_username");
        assert!(e.to_string().contains("uid"), "{e}");
        for bad in ["a:b", "x\u{7}y", " pad"] {
            let der = cert(&[(Nid::COMMONNAME, bad)], None);
            assert!(username(&der, CertUsername::Cn).is_err(), "{bad:?}");
        }
        assert!(username(b"\x30\x03\x02\x01\x00", CertUsername::Cn).is_err());
    }

    #[test]
    fn login_needs_a_certificate_and_an_unlocked_user() {
        let h = crate::users::hash_password("pw").unwrap();
        let users = UserDb::parse(&format!("dave:*:!{h}\nbob:eng:{h}\n")).unwrap();
        assert_eq!(
            login_identity(None, CertUsername::Cn, &users),
            Err(CertLoginRefusal::NoCertificate)
        );
        assert_eq!(
            login_identity(Some(&[]), CertUsername::Cn, &users),
            Err(CertLoginRefusal::NoCertificate)
        );
        let one = |cn: &str| vec![CertificateDer::from(cert(&[(Nid::COMMONNAME, cn)], None))];
        assert_eq!(
            login_identity(Some(&one("dave")), CertUsername::Cn, &users),
            Err(CertLoginRefusal::Locked("dave".into()))
        );
        assert_eq!(
            login_identity(Some(&one("bob")), CertUsername::Cn, &users),
            Ok(("bob".into(), Some("eng".into())))
        );
        assert_eq!(
            login_identity(Some(&one("carol")), CertUsername::Cn, &users),
            Ok(("carol".into(), None))
        );
    }

    #[test]
    fn verifier_errors_name_the_field_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut auth = AuthConfig {
            method: AuthMethod::Certificate,
            ca_file: Some(dir.path().join("absent.pem")),
            ..Default::default()
        };
        let e = verifier(&auth).err().unwrap().to_string();
        assert!(e.starts_with("auth.ca_file: cannot read"), "{e}");
        let empty = dir.path().join("empty.pem");
        fs::write(&empty, "nothing here\n").unwrap();
        auth.ca_file = Some(empty);
        assert!(matches!(verifier(&auth), Err(ClientCaError::NoCa { .. })));

        let ca = dir.path().join("ca.pem");
        let der = cert(&[(Nid::COMMONNAME, "CA")], None);
        fs::write(&ca, X509::from_der(&der).unwrap().to_pem().unwrap()).unwrap();
        auth.ca_file = Some(ca);
        assert!(verifier(&auth).unwrap().is_some());
        let bad_crl = dir.path().join("bad.crl");
        fs::write(&bad_crl, b"\x30\x03\x02\x01\x00").unwrap();
        auth.crl_files = vec![bad_crl];
        let e = verifier(&auth).err().unwrap().to_string();
        assert!(e.starts_with("auth.crl_files[0]: invalid CRL"), "{e}");
        let pem_without_crl = dir.path().join("none.pem");
        fs::write(&pem_without_crl, "-----BEGIN FOO-----\n-----END FOO-----\n").unwrap();
        auth.crl_files = vec![pem_without_crl];
        assert!(matches!(verifier(&auth), Err(ClientCaError::BadCrl { .. })));
        auth.method = AuthMethod::Password;
        assert!(verifier(&auth).unwrap().is_none());
    }
}
