//! Certificates made with the `openssl` CLI, the way an operator would make them: server
//! certificates, and a device CA ([`DeviceCa`]) that issues client certificates and CRLs.

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

/// A device (client-certificate) CA in its own directory, run with `openssl req`/`openssl ca`:
/// EC P-256, issues certificates with extendedKeyUsage clientAuth, revokes them and writes CRLs.
#[derive(Debug)]
pub struct DeviceCa {
    dir: PathBuf,
    cnf: PathBuf,
    /// The CA certificate (PEM): what `auth.ca_file` names.
    pub cert: PathBuf,
    key: PathBuf,
}

impl DeviceCa {
    /// A new CA whose subject is `CN=<name>`, in `<dir>/<name>/`.
    pub fn new(dir: &Path, name: &str) -> Result<Self> {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir)?;
        let cnf = dir.join("ca.cnf");
        let cert = dir.join("ca.crt");
        let key = dir.join("ca.key");
        std::fs::write(dir.join("index.txt"), "")?;
        std::fs::write(dir.join("crlnumber"), "01\n")?;
        std::fs::write(
            &cnf,
            format!(
                "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = unused\n\
                 [ca_ext]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n\
                 subjectKeyIdentifier = hash\n\
                 [client_ext]\nbasicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature\n\
                 extendedKeyUsage = clientAuth\nsubjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n\
                 [ca]\ndefault_ca = tca\n[tca]\ndatabase = {d}/index.txt\ncrlnumber = {d}/crlnumber\n\
                 default_md = sha256\ndefault_crl_days = 30\ncertificate = {d}/ca.crt\nprivate_key = {d}/ca.key\n",
                d = dir.display()
            ),
        )?;
        new_p256_cert(&cnf, "ca_ext", &key, &cert, name, None)?;
        Ok(Self {
            dir,
            cnf,
            cert,
            key,
        })
    }

    /// Issues a client certificate with subject `CN=<cn>` into `out_dir` as `<cn>.pem` and
    /// `<cn>.key` (PKCS#8), the layout `tunnel-bench --cert-dir` reads.
    pub fn issue(&self, out_dir: &Path, cn: &str) -> Result<CertFiles> {
        let cert = out_dir.join(format!("{cn}.pem"));
        let key = out_dir.join(format!("{cn}.key"));
        new_p256_cert(
            &self.cnf,
            "client_ext",
            &key,
            &cert,
            cn,
            Some((&self.cert, &self.key)),
        )?;
        Ok(CertFiles { cert, key })
    }

    /// Marks `cert` revoked in the CA's database (the next [`Self::crl`] lists it).
    pub fn revoke(&self, cert: &CertFiles) -> Result<()> {
        openssl(&[
            "ca",
            "-config",
            &self.cnf.display().to_string(),
            "-revoke",
            &cert.cert.display().to_string(),
        ])
    }

    /// Writes the CA's current CRL (PEM) to `<ca dir>/crl.pem` and returns its path.
    pub fn crl(&self) -> Result<PathBuf> {
        let out = self.dir.join("crl.pem");
        openssl(&[
            "ca",
            "-config",
            &self.cnf.display().to_string(),
            "-gencrl",
            "-out",
            &out.display().to_string(),
        ])?;
        Ok(out)
    }
}

/// `openssl req -x509`: a new P-256 key into `key` and a certificate for `CN=<cn>` with the
/// extensions of section `ext` of `cnf` into `cert`, self-signed or signed by `ca` (cert, key).
fn new_p256_cert(
    cnf: &Path,
    ext: &str,
    key: &Path,
    cert: &Path,
    cn: &str,
    ca: Option<(&Path, &Path)>,
) -> Result<()> {
    let s = |p: &Path| p.display().to_string();
    let subj = format!("/CN={cn}");
    let (cnf, key, cert) = (s(cnf), s(key), s(cert));
    let mut args = vec![
        "req",
        "-x509",
        "-config",
        &cnf,
        "-extensions",
        ext,
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        &key,
        "-out",
        &cert,
        "-days",
        "30",
        "-subj",
        &subj,
    ];
    let ca = ca.map(|(c, k)| (s(c), s(k)));
    if let Some((c, k)) = &ca {
        args.extend(["-CA", c.as_str(), "-CAkey", k.as_str()]);
    }
    openssl(&args)
}
