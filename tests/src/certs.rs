//! Server certificates made with the `openssl` CLI, the way an operator would make them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Result;

use crate::process;

/// The key type of a generated certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA 2048.
    Rsa,
    /// ECDSA on P-256.
    EcdsaP256,
}

/// Files of one generated certificate.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// The private key (PEM, PKCS#8).
    pub key: PathBuf,
}

fn openssl(args: &[&str]) -> Result<()> {
    process::run(
        Command::new("openssl").args(args),
        None,
        Duration::from_secs(60),
    )?
    .check()?;
    Ok(())
}

/// A self-signed server certificate for `198.18.1.1` in `dir`, named `<name>.crt.pem`/`<name>.key.pem`.
pub fn self_signed(dir: &Path, name: &str, kind: KeyKind) -> Result<CertFiles> {
    let cert = dir.join(format!("{name}.crt.pem"));
    let key = dir.join(format!("{name}.key.pem"));
    let (key_cert, key_cert_opts): (&str, Vec<&str>) = match kind {
        KeyKind::Rsa => ("rsa:2048", vec![]),
        KeyKind::EcdsaP256 => ("ec", vec!["-pkeyopt", "ec_paramgen_curve:prime256v1"]),
    };
    let (cert_s, key_s) = (cert.display().to_string(), key.display().to_string());
    let mut args = vec!["req", "-x509", "-newkey", key_cert];
    args.extend(key_cert_opts);
    args.extend([
        "-nodes",
        "-keyout",
        &key_s,
        "-out",
        &cert_s,
        "-days",
        "30",
        "-subj",
        "/CN=198.18.1.1",
        "-addext",
        "subjectAltName=IP:198.18.1.1",
    ]);
    openssl(&args)?;
    Ok(CertFiles { cert, key })
}

/// Packs a certificate and key into a password-protected PKCS#12 (`openssl pkcs12 -export`, the
/// OpenSSL 3 defaults: AES-256-CBC, PBKDF2).
pub fn pfx(dir: &Path, name: &str, files: &CertFiles, password: &str) -> Result<PathBuf> {
    let out = dir.join(format!("{name}.pfx"));
    openssl(&[
        "pkcs12",
        "-export",
        "-in",
        &files.cert.display().to_string(),
        "-inkey",
        &files.key.display().to_string(),
        "-out",
        &out.display().to_string(),
        "-passout",
        &format!("pass:{password}"),
    ])?;
    Ok(out)
}
