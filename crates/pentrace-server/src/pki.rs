//! pentrace's certificate authority (`pentrace ca init`): one CA that signs
//! the server's TLS certificate and the pens' client certificates (subject
//! CN = device id). Generated with rcgen; keys are PKCS#8 PEM files
//! readable by their owner only.
//!
//! The CA certificate is rebuilt from the CA key and fixed parameters when
//! signing (rcgen needs the issuer's parameters, not its certificate), so
//! its distinguished name below must never change.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use sha2::{Digest, Sha256};

/// Subject CN of the CA.
const CA_NAME: &str = "pentrace device CA";
/// Lifetimes, days.
const CA_DAYS: i64 = 3650;
const SERVER_DAYS: i64 = 825;
const DEVICE_DAYS: i64 = 365;

/// Why a PKI operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error(
        "{0} exists already; pentrace ca init does not overwrite a CA (move it away to start over)"
    )]
    Exists(PathBuf),
    #[error("{0}")]
    Invalid(String),
}

/// The files of a PKI directory.
#[derive(Debug, Clone)]
pub struct PkiPaths {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl PkiPaths {
    pub fn in_dir(dir: &Path) -> PkiPaths {
        PkiPaths {
            ca_cert: dir.join("ca.pem"),
            ca_key: dir.join("ca.key"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
        }
    }

    pub fn exists(&self) -> bool {
        self.ca_cert.exists() && self.ca_key.exists()
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_owned(),
        source,
    }
}

pub fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(io(path))
}

/// Writes a file; private keys (`secret`) are made readable by their owner only.
fn write(path: &Path, contents: &str, secret: bool) -> Result<(), PkiError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let _ = secret;
    use std::io::Write;
    let mut file = options.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => PkiError::Exists(path.to_owned()),
        _ => PkiError::Io {
            path: path.to_owned(),
            source: e,
        },
    })?;
    file.write_all(contents.as_bytes()).map_err(io(path))
}

fn days_from_now(days: i64) -> time::OffsetDateTime {
    let now = time::OffsetDateTime::now_utc();
    now + time::Duration::days(days)
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_NAME);
    dn.push(DnType::OrganizationName, "pentrace");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

/// Creates the CA and a server certificate for `server_names` (DNS names or
/// IP addresses) in `paths`. Refuses to overwrite anything.
pub fn init(paths: &PkiPaths, server_names: &[String]) -> Result<(), PkiError> {
    for p in [
        &paths.ca_cert,
        &paths.ca_key,
        &paths.server_cert,
        &paths.server_key,
    ] {
        if p.exists() {
            return Err(PkiError::Exists(p.clone()));
        }
    }
    let ca_key = KeyPair::generate()?;
    let mut params = ca_params();
    params.not_before = days_from_now(-1);
    params.not_after = days_from_now(CA_DAYS);
    let ca_cert = params.self_signed(&ca_key)?;
    write(&paths.ca_key, &ca_key.serialize_pem(), true)?;
    write(&paths.ca_cert, &ca_cert.pem(), false)?;
    let ca = CertificateAuthority::load(paths)?;
    let (cert, key) = ca.server_certificate(server_names)?;
    write(&paths.server_key, &key, true)?;
    write(&paths.server_cert, &cert, false)
}

/// A pen's certificate as issued.
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    pub certificate_pem: String,
    pub private_key_pem: String,
    /// SHA-256 of the certificate's DER: what the store keeps.
    pub fingerprint: [u8; 32],
    pub not_after: DateTime<Utc>,
}

/// The CA, loaded to sign.
#[derive(Debug)]
pub struct CertificateAuthority {
    key: KeyPair,
    cert_pem: String,
}

impl CertificateAuthority {
    pub fn load(paths: &PkiPaths) -> Result<CertificateAuthority, PkiError> {
        let key = KeyPair::from_pem(&read(&paths.ca_key)?)?;
        Ok(CertificateAuthority {
            key,
            cert_pem: read(&paths.ca_cert)?,
        })
    }

    /// The CA certificate, PEM (what clients trust).
    pub fn certificate_pem(&self) -> &str {
        &self.cert_pem
    }

    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::new(ca_params(), &self.key)
    }

    fn server_certificate(&self, names: &[String]) -> Result<(String, String), PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName(n.clone().try_into()?)),
            })
            .collect::<Result<_, rcgen::Error>>()?;
        params
            .distinguished_name
            .push(DnType::CommonName, "pentrace server");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = days_from_now(-1);
        params.not_after = days_from_now(SERVER_DAYS);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer())?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// A client certificate for a pen: subject CN = the device id.
    pub fn device_certificate(&self, device_id: &str) -> Result<IssuedCertificate, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, device_id);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "pentrace device");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = days_from_now(-1);
        let days = DEVICE_DAYS;
        params.not_after = days_from_now(days);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer())?;
        let not_after = DateTime::<Utc>::from_timestamp(params.not_after.unix_timestamp(), 0)
            .ok_or_else(|| PkiError::Invalid("certificate expiry out of range".into()))?;
        Ok(IssuedCertificate {
            certificate_pem: cert.pem(),
            private_key_pem: key.serialize_pem(),
            fingerprint: Sha256::digest(cert.der()).into(),
            not_after,
        })
    }
}
