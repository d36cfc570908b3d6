//! The site's TLS bundle (CA, certificate, key), read and checked before
//! anything else: a missing key or a bundle mixed from two consortia is a
//! configuration fault no retry fixes, and must be found before the data
//! folder is listed and hashed, not after.

use std::path::Path;

use anyhow::Context;
use fedslice::process::Permanent;
use fedslice::tls::TlsError;

use crate::config::SiteConfig;

/// What an operator checks on a certificate.
#[derive(Debug, Clone)]
pub struct CertificateInfo {
    /// The subject's common name: the enrolled site name.
    pub name: String,
    pub not_before: i64,
    pub not_after: i64,
    pub fingerprint: String,
}

impl CertificateInfo {
    pub fn parse(pem: &str, path: &Path) -> anyhow::Result<Self> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .map_err(|e| anyhow::anyhow!("{}: not a PEM certificate: {e}", path.display()))?;
        Self::from_der(&pem.contents)
            .map_err(|e| anyhow::anyhow!("{}: unreadable certificate: {e}", path.display()))
    }

    pub fn from_der(der: &[u8]) -> anyhow::Result<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| anyhow::anyhow!("not an X.509 certificate: {e}"))?;
        let name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or("")
            .to_string();
        let validity = cert.validity();
        Ok(Self {
            name,
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
            fingerprint: fedslice::tls::fingerprint(der),
        })
    }

    /// Whole days left until expiry (negative once expired).
    pub fn days_left(&self, now: i64) -> i64 {
        (self.not_after - now).div_euclid(86_400)
    }
}

/// A date for people to read: 2027-12-07.
pub fn date(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .map(|at| at.date().to_string())
        .unwrap_or_else(|_| t.to_string())
}

pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

pub struct Credentials {
    pub tls: rustls::ClientConfig,
    pub certificate: CertificateInfo,
}

fn read(path: &Path, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot read `{what}` {}: {e}; fix: copy it from the site bundle, readable by the user the agent runs as",
                path.display()
            )
        })
        .context(Permanent::Credentials)
}

/// Reads and checks the bundle: every file readable, the key the
/// certificate's, the certificate current and issued by `ca_cert`.
pub fn load(config: &SiteConfig) -> anyhow::Result<Credentials> {
    let credentials = load_unverified(config)?;
    verify_issuer(config)?;
    Ok(credentials)
}

/// [`load`] without the check that `ca_cert` issued the certificate.
pub fn load_unverified(config: &SiteConfig) -> anyhow::Result<Credentials> {
    let ca = read(&config.ca_cert, "ca_cert")?;
    let cert = read(&config.cert, "cert")?;
    let key = read(&config.key, "key")?;
    let tls = fedslice::tls::client_config(&ca, &cert, &key)
        .map_err(|e| match e {
            TlsError::CertKey(_) => anyhow::anyhow!(
                "{} and {} do not belong together ({e}): copy both from the same site bundle",
                config.cert.display(),
                config.key.display()
            ),
            e => anyhow::anyhow!(
                "loading the TLS bundle ({}, {}, {}): {e}",
                config.ca_cert.display(),
                config.cert.display(),
                config.key.display()
            ),
        })
        .context(Permanent::Credentials)?;
    let certificate =
        CertificateInfo::parse(&cert, &config.cert).context(Permanent::Credentials)?;
    let now = now();
    if now >= certificate.not_after {
        return Err(anyhow::anyhow!(
            "{} expired on {}: ask the consortium operator for a new site bundle",
            config.cert.display(),
            date(certificate.not_after)
        ))
        .context(Permanent::Credentials);
    }
    if now < certificate.not_before {
        return Err(anyhow::anyhow!(
            "{} is valid only from {}: check this machine's clock",
            config.cert.display(),
            date(certificate.not_before)
        ))
        .context(Permanent::Credentials);
    }
    Ok(Credentials { tls, certificate })
}

/// `ca_cert` issued `cert`, as the aggregator will check: a bundle mixed
/// from two consortia is found here, not by a handshake alert.
pub fn verify_issuer(config: &SiteConfig) -> anyhow::Result<()> {
    let ca = read(&config.ca_cert, "ca_cert")?;
    let cert = read(&config.cert, "cert")?;
    fedslice::tls::verify_client_certificate(&ca, &cert)
        .map_err(|e| {
            anyhow::anyhow!(
                "{} is not signed by {} ({e}): the two come from different consortia's bundles",
                config.cert.display(),
                config.ca_cert.display()
            )
        })
        .context(Permanent::TlsTrust)
}
