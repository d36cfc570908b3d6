//! The aggregator's private certificate authority: creates the federation CA and issues the
//! server and per-site client certificates that mutual TLS relies on.
//!
//! Site identity is the subject common name of a certificate signed by this CA, so issuing
//! is the only place a site name enters the trust system and it is validated here.

use std::fmt;
use std::net::IpAddr;

use fedslice::tls::fingerprint;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType, SerialNumber,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::{self, PemObject};
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::der_parser::asn1_rs::Tag;
use x509_parser::extensions::ParsedExtension;
use x509_parser::x509::X509Name;

/// Leaves are valid from slightly in the past so a site whose clock runs a little behind
/// the aggregator's can still use a certificate issued a moment ago.
const CLOCK_SKEW_ALLOWANCE: Duration = Duration::hours(1);

/// 16 random bytes is well above the CA/B Forum's 64-bit minimum, so serials never collide
/// and cannot be predicted.
const SERIAL_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("invalid site name {name:?}: {reason}")]
    InvalidSiteName { name: String, reason: &'static str },
    #[error("invalid CA common name: must not be empty")]
    EmptyCommonName,
    #[error("a server certificate needs at least one host name or IP address")]
    NoHosts,
    #[error("invalid host name {0:?} for a server certificate")]
    InvalidHost(String),
    #[error("invalid validity: {0}")]
    InvalidValidity(&'static str),
    #[error("unreadable private key PEM: {0}")]
    KeyPem(#[source] rcgen::Error),
    #[error("private key does not belong to the certificate")]
    KeyMismatch,
    #[error("CA certificate is not usable for issuing: {0}")]
    UnusableCa(&'static str),
    #[error("no certificate in PEM")]
    NoCertificate,
    #[error("malformed certificate: {0}")]
    MalformedCertificate(String),
    #[error("certificate subject has no common name")]
    NoCommonName,
    #[error("certificate subject has more than one common name")]
    MultipleCommonNames,
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("system random number generator failed")]
    Random,
}

/// A certificate with its private key, plus the facts the aggregator records about it.
///
/// Debug is hand-written so the private key can never end up in a log line.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    /// Lowercase hex SHA-256 of the certificate DER, as `tls::fingerprint` computes it.
    pub fingerprint: String,
    /// Lowercase hex of the serial number's big-endian bytes.
    pub serial: String,
    pub not_after: OffsetDateTime,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued")
            .field("fingerprint", &self.fingerprint)
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .field("key_pem", &"[redacted]")
            .finish_non_exhaustive()
    }
}

impl Issued {
    /// Rebuilds an `Issued` from PEM files on disk (e.g. the CA after a restart), refusing
    /// a key that does not match the certificate so the mistake surfaces at start-up rather
    /// than as certificates that no peer accepts.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let der = pem_to_der(cert_pem)?;
        let cert = parse_der(&der)?;
        let key = KeyPair::from_pem(key_pem).map_err(PkiError::KeyPem)?;
        if key.subject_public_key_info() != cert.public_key().raw {
            return Err(PkiError::KeyMismatch);
        }
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            fingerprint: fingerprint(&der),
            serial: hex::encode(cert.raw_serial()),
            not_after: cert.validity().not_after.to_datetime(),
        })
    }
}

/// How long a certificate is valid. `Window` exists so tests (and operators re-issuing
/// to a fixed date) can choose both ends explicitly, including windows in the past.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    Days(u32),
    Window {
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    },
}

/// What the aggregator learns about a connected site from its verified client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    pub common_name: String,
    pub fingerprint: String,
    pub serial: String,
    pub not_after: OffsetDateTime,
}

/// Creates the federation's root of trust. ECDSA P-256 keeps handshakes cheap and is
/// supported by every rustls provider.
/// Longest server certificate the aggregator issues: the CA/Browser Forum's
/// 397 days, which TLS scanners (testssl's `cert_validityPeriod`) hold
/// servers to; renewal is `aggregator init`'s job, not a long validity's.
pub const SERVER_CERT_MAX_DAYS: u32 = 397;

pub fn create_ca(common_name: &str, validity_days: u32) -> Result<Issued, PkiError> {
    if common_name.trim().is_empty() {
        return Err(PkiError::EmptyCommonName);
    }
    let key = new_key()?;
    let mut params = base_params(common_name, Validity::Days(validity_days))?;
    // pathlen:0: the consortium CA signs only leaf certificates (server and
    // sites), so a stolen leaf key can never act as an intermediate CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key)?;
    finish(&cert, &key)
}

/// Issues the aggregator's TLS server certificate. Sites connect by IP as often as by
/// name, so each host becomes an IP SAN when it parses as one (a DNS SAN holding
/// "10.0.0.5" would not match an IP server name).
pub fn issue_server(ca: &Issued, hosts: &[String], validity_days: u32) -> Result<Issued, PkiError> {
    let first = hosts.first().ok_or(PkiError::NoHosts)?;
    let mut sans = Vec::with_capacity(hosts.len());
    for host in hosts {
        let host = host.trim();
        if host.is_empty() {
            return Err(PkiError::InvalidHost(host.to_owned()));
        }
        sans.push(match host.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                host.try_into()
                    .map_err(|_| PkiError::InvalidHost(host.to_owned()))?,
            ),
        });
    }

    let mut params = base_params(first.trim(), Validity::Days(validity_days))?;
    params.subject_alt_names = sans;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    sign_leaf(ca, params)
}

/// Issues a site's client certificate. The CN is the site's identity on the aggregator,
/// so it is validated first; clientAuth-only EKU stops a site certificate from being
/// reused to impersonate the aggregator.
pub fn issue_site(ca: &Issued, site_name: &str, validity: Validity) -> Result<Issued, PkiError> {
    validate_site_name(site_name)?;
    let mut params = base_params(site_name, validity)?;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    sign_leaf(ca, params)
}

/// Site names end up in certificate CNs, file names and log lines, so they are restricted
/// to a DNS-label-like alphabet that is safe in all three.
pub fn validate_site_name(name: &str) -> Result<(), PkiError> {
    let reject = |reason| {
        Err(PkiError::InvalidSiteName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return reject("must not be empty");
    }
    if name.len() > 63 {
        return reject("must be at most 63 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return reject("only lowercase letters a-z, digits and '-' are allowed");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return reject("must not start or end with '-'");
    }
    Ok(())
}

/// Reads the identity out of a certificate that rustls has already verified against the
/// CA; this does no verification of its own.
pub fn peer_identity(cert_der: &[u8]) -> Result<PeerIdentity, PkiError> {
    let cert = parse_der(cert_der)?;
    Ok(PeerIdentity {
        common_name: single_common_name(cert.subject())?,
        fingerprint: fingerprint(cert_der),
        serial: hex::encode(cert.raw_serial()),
        not_after: cert.validity().not_after.to_datetime(),
    })
}

fn new_key() -> Result<KeyPair, PkiError> {
    Ok(KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?)
}

/// rcgen's defaults include a placeholder CN and a serial derived from the public key;
/// both are replaced so every certificate has exactly our subject and a random serial.
fn base_params(common_name: &str, validity: Validity) -> Result<CertificateParams, PkiError> {
    let (not_before, not_after) = match validity {
        Validity::Days(0) => return Err(PkiError::InvalidValidity("zero days")),
        Validity::Days(days) => {
            let now = OffsetDateTime::now_utc();
            (
                now - CLOCK_SKEW_ALLOWANCE,
                now + Duration::days(i64::from(days)),
            )
        }
        Validity::Window {
            not_before,
            not_after,
        } => {
            if not_before >= not_after {
                return Err(PkiError::InvalidValidity(
                    "not_before must be earlier than not_after",
                ));
            }
            (not_before, not_after)
        }
    };

    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(random_serial()?);
    Ok(params)
}

fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; SERIAL_LEN];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| PkiError::Random)?;
    // Clear the sign bit (serials must be positive) and set the next one so DER encoding
    // keeps exactly 16 bytes and the hex serial we report equals the one in the cert.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

fn sign_leaf(ca: &Issued, mut params: CertificateParams) -> Result<Issued, PkiError> {
    let ca_der = pem_to_der(&ca.cert_pem)?;
    let ca_cert = parse_der(&ca_der)?;
    let issuer = ca_issuer(&ca_cert, &ca.key_pem)?;

    // A leaf cannot usefully outlive the CA that vouches for it.
    let ca_not_after = ca_cert.validity().not_after.to_datetime();
    if params.not_after > ca_not_after {
        params.not_after = ca_not_after;
    }
    if params.not_before >= params.not_after {
        return Err(PkiError::InvalidValidity(
            "certificate would start after the CA expires",
        ));
    }
    params.use_authority_key_identifier_extension = true;

    let key = new_key()?;
    let cert = params.signed_by(&key, &issuer)?;

    // Chain building matches the leaf's issuer to the CA's subject byte for byte; check it
    // here so a reconstruction mismatch fails at issue time, not at a site's handshake.
    let leaf = parse_der(cert.der())?;
    if leaf.issuer().as_raw() != ca_cert.subject().as_raw() {
        return Err(PkiError::UnusableCa(
            "issued certificate's issuer name does not match the CA subject",
        ));
    }
    finish(&cert, &key)
}

/// Rebuilds the rcgen signer from the stored CA. rcgen's own `Issuer::from_ca_cert_pem`
/// needs its `x509-parser` feature, which is not enabled, so the subject, key usages and
/// key identifier are carried over from the parsed certificate here instead.
fn ca_issuer(
    ca_cert: &X509Certificate<'_>,
    ca_key_pem: &str,
) -> Result<Issuer<'static, KeyPair>, PkiError> {
    if !ca_cert.is_ca() {
        return Err(PkiError::UnusableCa("not a CA certificate"));
    }
    let key = KeyPair::from_pem(ca_key_pem).map_err(PkiError::KeyPem)?;
    if key.subject_public_key_info() != ca_cert.public_key().raw {
        return Err(PkiError::KeyMismatch);
    }

    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(ca_cert.subject())?;
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    // Reusing the CA's own subject key identifier makes each leaf's authority key
    // identifier point at it exactly, whatever method produced it.
    if let Some(ski) = ca_cert
        .iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
            _ => None,
        })
    {
        params.key_identifier_method = KeyIdMethod::PreSpecified(ski);
    }
    Ok(Issuer::new(params, key))
}

/// Converts an X.509 name back into rcgen's form, keeping each attribute's string type so
/// the re-encoded issuer name is byte-identical to the CA's subject.
fn distinguished_name(name: &X509Name<'_>) -> Result<DistinguishedName, PkiError> {
    let unsupported = || PkiError::UnusableCa("unsupported attribute in CA subject");
    let mut dn = DistinguishedName::new();
    for rdn in name.iter() {
        let mut attrs = rdn.iter();
        let (Some(attr), None) = (attrs.next(), attrs.next()) else {
            return Err(PkiError::UnusableCa("multi-valued RDN in CA subject"));
        };
        let oid: Vec<u64> = attr.attr_type().iter().ok_or_else(unsupported)?.collect();
        let ty = match oid.as_slice() {
            [2, 5, 4, 3] => DnType::CommonName,
            [2, 5, 4, 6] => DnType::CountryName,
            [2, 5, 4, 7] => DnType::LocalityName,
            [2, 5, 4, 8] => DnType::StateOrProvinceName,
            [2, 5, 4, 10] => DnType::OrganizationName,
            [2, 5, 4, 11] => DnType::OrganizationalUnitName,
            _ => DnType::CustomDnType(oid),
        };
        let value = attr.attr_value();
        let text = std::str::from_utf8(value.data).map_err(|_| unsupported())?;
        let value = match value.header.tag() {
            Tag::Utf8String => DnValue::Utf8String(text.to_owned()),
            Tag::PrintableString => {
                DnValue::PrintableString(text.try_into().map_err(|_| unsupported())?)
            }
            Tag::Ia5String => DnValue::Ia5String(text.try_into().map_err(|_| unsupported())?),
            _ => return Err(unsupported()),
        };
        dn.push(ty, value);
    }
    Ok(dn)
}

fn finish(issued: &Certificate, key: &KeyPair) -> Result<Issued, PkiError> {
    let der = issued.der();
    let cert = parse_der(der)?;
    Ok(Issued {
        cert_pem: issued.pem(),
        key_pem: key.serialize_pem(),
        fingerprint: fingerprint(der),
        serial: hex::encode(cert.raw_serial()),
        not_after: cert.validity().not_after.to_datetime(),
    })
}

fn single_common_name(name: &X509Name<'_>) -> Result<String, PkiError> {
    let mut names = name.iter_common_name();
    let cn = names.next().ok_or(PkiError::NoCommonName)?;
    if names.next().is_some() {
        return Err(PkiError::MultipleCommonNames);
    }
    cn.as_str()
        .map(str::to_owned)
        .map_err(|e| PkiError::MalformedCertificate(format!("common name: {e}")))
}

fn parse_der(der: &[u8]) -> Result<X509Certificate<'_>, PkiError> {
    match x509_parser::parse_x509_certificate(der) {
        Ok((rest, _)) if !rest.is_empty() => Err(PkiError::MalformedCertificate(
            "trailing data after certificate".to_owned(),
        )),
        Ok((_, cert)) => Ok(cert),
        Err(e) => Err(PkiError::MalformedCertificate(e.to_string())),
    }
}

fn pem_to_der(pem: &str) -> Result<Vec<u8>, PkiError> {
    match CertificateDer::from_pem_slice(pem.as_bytes()) {
        Ok(der) => Ok(der.to_vec()),
        Err(pem::Error::NoItemsFound) => Err(PkiError::NoCertificate),
        Err(e) => Err(PkiError::MalformedCertificate(format!("PEM: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_signs_only_leaves_and_the_server_certificate_is_short() {
        use x509_parser::prelude::*;
        let ca = create_ca("test CA", 3650).expect("CA");
        let (_, pem) = parse_x509_pem(ca.cert_pem.as_bytes()).expect("CA PEM");
        let cert = pem.parse_x509().expect("CA certificate");
        let constraints = cert
            .basic_constraints()
            .expect("one extension")
            .expect("basic constraints")
            .value;
        assert!(constraints.ca);
        assert_eq!(constraints.path_len_constraint, Some(0));
        let server = issue_server(&ca, &["localhost".to_string()], SERVER_CERT_MAX_DAYS)
            .expect("server certificate");
        let (_, pem) = parse_x509_pem(server.cert_pem.as_bytes()).expect("server PEM");
        let cert = pem.parse_x509().expect("server certificate");
        let days = (cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp())
            / 86_400;
        assert!(days <= 397, "server certificate valid for {days} days");
    }

    #[test]
    fn site_names() {
        for ok in ["a", "st-marys", "site1", "0", &"a".repeat(63)] {
            assert!(validate_site_name(ok).is_ok(), "{ok:?} should be accepted");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "-",
            "Site",
            "a_b",
            "a.b",
            "a b",
            "é",
            "a/../b",
            &"a".repeat(64),
        ] {
            assert!(
                matches!(
                    validate_site_name(bad),
                    Err(PkiError::InvalidSiteName { .. })
                ),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn site_cert_carries_name_serial_and_fingerprint() {
        let ca = create_ca("fedslice test CA", 30).unwrap();
        let site = issue_site(&ca, "st-marys", Validity::Days(7)).unwrap();
        let der = pem_to_der(&site.cert_pem).unwrap();
        let id = peer_identity(&der).unwrap();
        assert_eq!(id.common_name, "st-marys");
        assert_eq!(id.fingerprint, site.fingerprint);
        assert_eq!(id.serial, site.serial);
        assert_eq!(id.not_after, site.not_after);
        assert_eq!(site.serial.len(), 2 * SERIAL_LEN);
        assert_ne!(site.serial, ca.serial);

        let cert = parse_der(&der).unwrap();
        assert!(!cert.is_ca());
        let ca_der = pem_to_der(&ca.cert_pem).unwrap();
        assert_eq!(
            cert.issuer().as_raw(),
            parse_der(&ca_der).unwrap().subject().as_raw()
        );
    }

    #[test]
    fn leaf_never_outlives_ca() {
        let ca = create_ca("short CA", 2).unwrap();
        let site = issue_site(&ca, "a", Validity::Days(365)).unwrap();
        assert_eq!(site.not_after, ca.not_after);
    }

    #[test]
    fn rejects_bad_inputs() {
        let ca = create_ca("ca", 30).unwrap();
        assert!(matches!(
            issue_site(&ca, "Bad_Name", Validity::Days(1)),
            Err(PkiError::InvalidSiteName { .. })
        ));
        assert!(matches!(
            issue_site(&ca, "ok", Validity::Days(0)),
            Err(PkiError::InvalidValidity(_))
        ));
        assert!(matches!(issue_server(&ca, &[], 1), Err(PkiError::NoHosts)));
        assert!(matches!(create_ca(" ", 1), Err(PkiError::EmptyCommonName)));

        let other = create_ca("other", 30).unwrap();
        let mixed = Issued {
            key_pem: other.key_pem.clone(),
            ..ca.clone()
        };
        assert!(matches!(
            issue_site(&mixed, "a", Validity::Days(1)),
            Err(PkiError::KeyMismatch)
        ));
        let site = issue_site(&ca, "a", Validity::Days(1)).unwrap();
        assert!(matches!(
            issue_site(&site, "b", Validity::Days(1)),
            Err(PkiError::UnusableCa(_))
        ));
        assert!(matches!(
            peer_identity(b"not der"),
            Err(PkiError::MalformedCertificate(_))
        ));
    }

    #[test]
    fn issued_round_trips_through_pem() {
        let ca = create_ca("ca", 30).unwrap();
        let loaded = Issued::from_pem(&ca.cert_pem, &ca.key_pem).unwrap();
        assert_eq!(loaded.fingerprint, ca.fingerprint);
        assert_eq!(loaded.serial, ca.serial);
        assert_eq!(loaded.not_after, ca.not_after);
        assert!(matches!(
            Issued::from_pem(&ca.key_pem, &ca.key_pem),
            Err(PkiError::NoCertificate)
        ));
        let other = create_ca("other", 30).unwrap();
        assert!(matches!(
            Issued::from_pem(&ca.cert_pem, &other.key_pem),
            Err(PkiError::KeyMismatch)
        ));
        assert!(matches!(
            Issued::from_pem(&ca.cert_pem, &ca.cert_pem),
            Err(PkiError::KeyPem(_))
        ));
        assert!(!format!("{ca:?}").contains("PRIVATE KEY"));
    }
}
