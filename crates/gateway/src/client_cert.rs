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

use std::collections::{HashMap, HashSet};
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
use x509_parser::revocation_list::CertificateRevocationList;
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

/// The certificates of `auth.ca_file` (PEM), at least one.
fn read_cas(auth: &AuthConfig) -> Result<(PathBuf, Vec<CertificateDer<'static>>), ClientCaError> {
    // Validation guarantees ca_file in certificate mode; an empty path fails to read below.
    let path = auth.ca_file.clone().unwrap_or_default();
    let pem = read("auth.ca_file", &path)?;
    let cas: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| ClientCaError::BadCa {
            path: path.clone(),
            index: 1,
            reason: e.to_string(),
        })?;
    if cas.is_empty() {
        return Err(ClientCaError::NoCa { path });
    }
    Ok((path, cas))
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
    let (ca_path, cas) = read_cas(auth)?;
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

/// A certificate login's outcome: who logged in, and with which device certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertLogin {
    /// The username read from the certificate.
    pub user: String,
    /// The users file's group for that user, if it names one.
    pub group: Option<String>,
    /// The certificate itself, as the session keeps it.
    pub device: DeviceCert,
}

/// Decides a certificate login: the username from the verified leaf (`peer_certs[0]`, as rustls
/// hands it over after verification), refused when absent or locked in `users`; the group is the
/// users file's for a listed user, else none.
pub fn login_identity(
    peer_certs: Option<&[CertificateDer<'_>]>,
    field: CertUsername,
    users: &UserDb,
) -> Result<CertLogin, CertLoginRefusal> {
    let leaf = peer_certs
        .and_then(<[CertificateDer<'_>]>::first)
        .ok_or(CertLoginRefusal::NoCertificate)?;
    let cert = parse(leaf.as_ref(), field)?;
    let user = username_of(&cert, field)?;
    if users.is_locked(&user) {
        return Err(CertLoginRefusal::Locked(user));
    }
    let group = users.group(&user).map(str::to_owned);
    let presented = peer_certs.unwrap_or_default().get(1..).unwrap_or_default();
    let device = DeviceCert::new(leaf.as_ref(), &cert, presented);
    Ok(CertLogin {
        user,
        group,
        device,
    })
}

/// Issuers a session remembers above its device certificate: webpki accepts chains of at most six
/// intermediates, and a chain that names more than this is cut (its session is then judged by the
/// CAs it names first).
const MAX_ISSUERS: usize = 8;

/// What a certificate session keeps of the device certificate it logged in with (not the
/// certificate: that would cost a kilobyte or more per session): enough to tell a later TLS
/// connection's certificate apart from it, to find it in a CRL, and to tell whether the CAs of a
/// reloaded `auth.ca_file` still cover it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct DeviceCert {
    /// SHA-256 of the certificate (DER).
    fingerprint: [u8; 32],
    /// SHA-256 of the issuer names (DER) up its chain: first the certificate's own issuer (a CRL
    /// names its issuer with the same bytes), then the issuer of each intermediate the client
    /// presented for it, in order, up to a self-issued one. The verifier reached a CA of
    /// `auth.ca_file` by one of these names.
    issuers: Box<[[u8; 32]]>,
    /// Its serial number: the content octets of the DER INTEGER, as a CRL lists them.
    serial: Box<[u8]>,
}

impl DeviceCert {
    /// The record of the verified leaf `cert` (DER `der`); `presented` are the other certificates
    /// the client sent with it, in any order. Each step up follows the certificate whose subject
    /// is the current issuer, as path building does; presented certificates that are not on the
    /// path (or do not parse) are ignored.
    fn new(der: &[u8], cert: &X509Certificate<'_>, presented: &[CertificateDer<'_>]) -> Self {
        let others: Vec<X509Certificate<'_>> = presented
            .iter()
            .filter_map(|c| X509Certificate::from_der(c.as_ref()).ok().map(|(_, c)| c))
            .collect();
        let mut issuers = vec![sha256(cert.issuer().as_raw())];
        let mut name = cert.issuer().as_raw();
        while issuers.len() < MAX_ISSUERS {
            let Some(up) = others
                .iter()
                .find(|c| c.subject().as_raw() == name && c.issuer().as_raw() != name)
            else {
                break;
            };
            name = up.issuer().as_raw();
            issuers.push(sha256(name));
        }
        Self {
            fingerprint: sha256(der),
            issuers: issuers.into(),
            serial: cert.raw_serial().into(),
        }
    }

    /// The certificate's own issuer name (SHA-256).
    fn issuer(&self) -> &[u8; 32] {
        // `new` always records the leaf's issuer first.
        self.issuers.first().unwrap_or(&[0; 32])
    }

    /// True when `der` is this very certificate.
    pub fn is(&self, der: &[u8]) -> bool {
        openssl::memcmp::eq(&self.fingerprint, &sha256(der))
    }

    /// The serial number in hex, as `openssl x509 -serial` prints it (without the zero byte DER
    /// puts before a serial whose top bit is set).
    pub fn serial_hex(&self) -> String {
        match &self.serial[..] {
            [0, rest @ ..] if !rest.is_empty() => hex::encode_upper(rest),
            all => hex::encode_upper(all),
        }
    }
}

impl std::fmt::Debug for DeviceCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceCert")
            .field("serial", &self.serial_hex())
            .finish_non_exhaustive()
    }
}

/// SHA-256 of `data` (also what a session stores of its cookie).
pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The certificates the configured CRLs revoke, by issuer and serial number: a reload ends the
/// sessions of the device certificates listed here.
#[derive(Debug, Default)]
pub struct Revoked(HashMap<[u8; 32], HashSet<Box<[u8]>>>);

impl Revoked {
    /// Reads every CRL of `auth.crl_files` (none in password mode). A CRL's signature is not
    /// checked here: the files are the operator's, and the TLS verifier built from the same files
    /// checks each one against its CA before it refuses a certificate.
    pub fn load(auth: &AuthConfig) -> Result<Self, ClientCaError> {
        let mut set: HashMap<[u8; 32], HashSet<Box<[u8]>>> = HashMap::new();
        if auth.method != AuthMethod::Certificate {
            return Ok(Self(set));
        }
        for (i, path) in auth.crl_files.iter().enumerate() {
            let field = format!("auth.crl_files[{i}]");
            for der in read_crls(&field, path)? {
                let (_, crl) = CertificateRevocationList::from_der(der.as_ref()).map_err(|e| {
                    ClientCaError::BadCrl {
                        field: field.clone(),
                        path: path.clone(),
                        reason: e.to_string(),
                    }
                })?;
                let serials = set.entry(sha256(crl.issuer().as_raw())).or_default();
                for r in crl.iter_revoked_certificates() {
                    serials.insert(r.raw_serial().into());
                }
            }
        }
        Ok(Self(set))
    }

    /// True when a CRL lists `device`.
    pub fn contains(&self, device: &DeviceCert) -> bool {
        self.0
            .get(device.issuer())
            .is_some_and(|serials| serials.contains(&*device.serial))
    }

    /// How many certificates the CRLs list.
    pub fn len(&self) -> usize {
        self.0.values().map(HashSet::len).sum()
    }

    /// True when the CRLs list none.
    pub fn is_empty(&self) -> bool {
        self.0.values().all(HashSet::is_empty)
    }
}

/// The CAs of `auth.ca_file`, by subject name: a reload ends the certificate sessions whose chain
/// names none of them any more (the operator removed the CA that issued them).
#[derive(Debug, Default)]
pub struct Anchors(HashSet<[u8; 32]>);

impl Anchors {
    /// Reads `auth.ca_file`: `None` in password mode (no CA applies, and certificate sessions that
    /// logged in before a switch to passwords are left alone).
    pub fn load(auth: &AuthConfig) -> Result<Option<Self>, ClientCaError> {
        if auth.method != AuthMethod::Certificate {
            return Ok(None);
        }
        let (path, cas) = read_cas(auth)?;
        let mut names = HashSet::new();
        for (i, der) in cas.iter().enumerate() {
            let (_, ca) =
                X509Certificate::from_der(der.as_ref()).map_err(|e| ClientCaError::BadCa {
                    path: path.clone(),
                    index: i + 1,
                    reason: e.to_string(),
                })?;
            names.insert(sha256(ca.subject().as_raw()));
        }
        Ok(Some(Self(names)))
    }

    /// True when `device`'s chain, as presented at its login, names one of these CAs.
    pub fn cover(&self, device: &DeviceCert) -> bool {
        device.issuers.iter().any(|name| self.0.contains(name))
    }
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
    username_of(&parse(der, field)?, field)
}

/// The certificate `der`, parsed; a certificate that does not parse has no username in `field`.
fn parse(der: &[u8], field: CertUsername) -> Result<X509Certificate<'_>, CertLoginRefusal> {
    X509Certificate::from_der(der)
        .map(|(_, cert)| cert)
        .map_err(|e| CertLoginRefusal::NoUsername {
            field: field_name(field),
            reason: format!("unparsable certificate: {e}"),
        })
}

fn username_of(
    cert: &X509Certificate<'_>,
    field: CertUsername,
) -> Result<String, CertLoginRefusal> {
    let refuse = |reason: String| CertLoginRefusal::NoUsername {
        field: field_name(field),
        reason,
    };
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
    use openssl::x509::X509;
    use openssl::x509::{X509NameBuilder, X509NameRef};

    fn cert(subject: &[(Nid, &str)], san_email: Option<&str>) -> Vec<u8> {
        let mut name = X509NameBuilder::new().unwrap();
        for (nid, v) in subject {
            name.append_entry_by_nid(*nid, v).unwrap();
        }
        let name = name.build();
        build(&name, &name, san_email)
    }

    /// A certificate of a fresh key, signed by that key, whatever names it carries.
    fn build(subject: &X509NameRef, issuer: &X509NameRef, san_email: Option<&str>) -> Vec<u8> {
        let key = PKey::from_ec_key(
            EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap()).unwrap(),
        )
        .unwrap();
        let mut b = X509::builder().unwrap();
        b.set_version(2).unwrap();
        b.set_subject_name(subject).unwrap();
        b.set_issuer_name(issuer).unwrap();
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
        let bob = one("bob");
        let login = login_identity(Some(&bob), CertUsername::Cn, &users).unwrap();
        assert_eq!(
            (login.user.as_str(), login.group.as_deref()),
            ("bob", Some("eng"))
        );
        let carol = one("carol");
        let login = login_identity(Some(&carol), CertUsername::Cn, &users).unwrap();
        assert_eq!((login.user.as_str(), login.group), ("carol", None));
        // The session keeps the certificate's fingerprint: only that certificate matches it.
        assert!(login.device.is(carol[0].as_ref()));
        assert!(!login.device.is(one("carol")[0].as_ref()));
        assert!(!login.device.is(bob[0].as_ref()));
    }

    /// Runs the `openssl` command-line tool in `dir`.
    fn openssl_cli(dir: &Path, args: &[&str]) {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("the openssl command-line tool runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A CA in `dir/<name>/` (openssl req/ca, as an operator's would be), with a device
    /// certificate for each `(cn, serial)`; returns the CA's directory and the certificates (DER).
    fn ca_with_devices(
        dir: &Path,
        name: &str,
        devices: &[(&str, &str)],
    ) -> (PathBuf, Vec<Vec<u8>>) {
        let d = dir.join(name);
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("index.txt"), "").unwrap();
        fs::write(d.join("crlnumber"), "01\n").unwrap();
        fs::write(
            d.join("ca.cnf"),
            "[ca]\ndefault_ca = tca\n[tca]\ndatabase = index.txt\ncrlnumber = crlnumber\n\
             default_md = sha256\ndefault_crl_days = 30\ncertificate = ca.crt\nprivate_key = ca.key\n",
        )
        .unwrap();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        let subj = format!("/CN={name}");
        openssl_cli(
            &d,
            &[
                &["req", "-x509"],
                &ec[..],
                &[
                    "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", &subj,
                ],
            ]
            .concat(),
        );
        let mut ders = Vec::new();
        for (cn, serial) in devices {
            let subj = format!("/CN={cn}");
            let (csr, crt) = (format!("{cn}.csr"), format!("{cn}.crt"));
            openssl_cli(
                &d,
                &[
                    &["req"],
                    &ec[..],
                    &["-keyout", "dev.key", "-out", &csr, "-subj", &subj],
                ]
                .concat(),
            );
            openssl_cli(
                &d,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.crt",
                    "-CAkey",
                    "ca.key",
                    "-set_serial",
                    serial,
                    "-days",
                    "1",
                    "-out",
                    &crt,
                ],
            );
            let pem = fs::read(d.join(&crt)).unwrap();
            ders.push(X509::from_pem(&pem).unwrap().to_der().unwrap());
        }
        (d, ders)
    }

    #[test]
    fn a_crl_revokes_by_issuer_and_serial() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, devices) = ca_with_devices(
            dir.path(),
            "Devices",
            &[("alice", "0x1234"), ("bob", "0x9F01")],
        );
        // Another CA's certificate with alice's serial number.
        let (_, other) = ca_with_devices(dir.path(), "Other", &[("alice", "0x1234")]);
        openssl_cli(&ca, &["ca", "-config", "ca.cnf", "-revoke", "alice.crt"]);
        openssl_cli(
            &ca,
            &["ca", "-config", "ca.cnf", "-gencrl", "-out", "crl.pem"],
        );

        let users = UserDb::parse("").unwrap();
        let device = |der: &[u8]| {
            login_identity(
                Some(&[CertificateDer::from(der.to_vec())]),
                CertUsername::Cn,
                &users,
            )
            .unwrap()
            .device
        };
        let (alice, bob, other_alice) =
            (device(&devices[0]), device(&devices[1]), device(&other[0]));
        assert_eq!(alice.serial_hex(), "1234");
        assert_eq!(bob.serial_hex(), "9F01", "DER writes it 00 9F 01");

        let mut auth = AuthConfig {
            method: AuthMethod::Certificate,
            crl_files: vec![ca.join("crl.pem")],
            ..Default::default()
        };
        let revoked = Revoked::load(&auth).unwrap();
        assert_eq!(revoked.len(), 1);
        assert!(revoked.contains(&alice));
        assert!(!revoked.contains(&bob));
        assert!(
            !revoked.contains(&other_alice),
            "the issuer is part of the match"
        );

        // The same CRL as DER; in password mode no CRL applies.
        openssl_cli(
            &ca,
            &[
                "crl", "-in", "crl.pem", "-outform", "DER", "-out", "crl.der",
            ],
        );
        auth.crl_files = vec![ca.join("crl.der")];
        assert!(Revoked::load(&auth).unwrap().contains(&alice));
        auth.method = AuthMethod::Password;
        assert!(Revoked::load(&auth).unwrap().is_empty());
    }

    /// A certificate named `subject` as issued by `issuer` (names only: nothing here checks the
    /// signatures, the TLS verifier did).
    fn issued(subject: &str, issuer: &str) -> CertificateDer<'static> {
        let name = |cn: &str| {
            let mut n = X509NameBuilder::new().unwrap();
            n.append_entry_by_nid(Nid::COMMONNAME, cn).unwrap();
            n.build()
        };
        CertificateDer::from(build(&name(subject), &name(issuer), None))
    }

    #[test]
    fn a_ca_file_covers_the_sessions_whose_chain_names_one_of_its_cas() {
        let dir = tempfile::tempdir().unwrap();
        let users = UserDb::parse("").unwrap();
        let device = |chain: &[CertificateDer<'static>]| {
            login_identity(Some(chain), CertUsername::Cn, &users)
                .unwrap()
                .device
        };
        let anchors = |cas: &[&str]| {
            let path = dir.path().join("cas.pem");
            let pem: Vec<u8> = cas
                .iter()
                .flat_map(|cn| {
                    X509::from_der(issued(cn, cn).as_ref())
                        .unwrap()
                        .to_pem()
                        .unwrap()
                })
                .collect();
            fs::write(&path, pem).unwrap();
            let auth = AuthConfig {
                method: AuthMethod::Certificate,
                ca_file: Some(path),
                ..Default::default()
            };
            Anchors::load(&auth).unwrap().unwrap()
        };
        // leaf <- Issuing <- Root, the device presenting its intermediate (and, some do, the root).
        let (leaf, issuing, root) = (
            issued("alice", "Issuing"),
            issued("Issuing", "Root"),
            issued("Root", "Root"),
        );
        let unrelated = issued("Elsewhere", "Other Root");
        for chain in [
            vec![leaf.clone(), issuing.clone()],
            vec![
                leaf.clone(),
                unrelated.clone(),
                issuing.clone(),
                root.clone(),
            ],
            vec![leaf.clone(), root.clone(), issuing.clone()],
        ] {
            let d = device(&chain);
            assert!(anchors(&["Root"]).cover(&d), "the root covers {d:?}");
            assert!(anchors(&["Issuing"]).cover(&d), "so does the intermediate");
            assert!(anchors(&["Someone", "Root"]).cover(&d));
            assert!(!anchors(&["Someone"]).cover(&d));
            assert!(
                !anchors(&["Other Root"]).cover(&d),
                "a presented certificate off the path counts for nothing"
            );
        }
        // The leaf alone was verified by its issuer itself; the root above it is not known.
        let alone = device(std::slice::from_ref(&leaf));
        assert!(anchors(&["Issuing"]).cover(&alone));
        assert!(!anchors(&["Root"]).cover(&alone));
        // A loop of cross-signed names ends.
        let looped = device(&[
            leaf,
            issuing,
            issued("Root", "Issuing"),
            issued("Issuing", "Root"),
        ]);
        assert!(anchors(&["Root"]).cover(&looped));
        assert!(looped.issuers.len() <= MAX_ISSUERS);
        // In password mode no CA applies.
        assert!(Anchors::load(&AuthConfig::default()).unwrap().is_none());
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
