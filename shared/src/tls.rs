//! TLS 1.3 mutual-authentication configuration shared by the aggregator and site agents.
//!
//! Both sides trust exactly one CA (the federation's own), so every config here is built
//! from PEM strings and the ring provider explicitly: nothing depends on the system trust
//! store or on whichever crypto provider some other crate installed process-wide.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{VerifierBuilderError, WebPkiClientVerifier};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use sha2::{Digest, Sha256};

/// The aggregator API is plain HTTP/1.1 inside TLS; advertising it lets a misconfigured
/// peer (e.g. one speaking h2 only) fail at the handshake instead of mid-request.
const ALPN_HTTP11: &[u8] = b"http/1.1";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("no certificate in {0} PEM")]
    NoCertificate(&'static str),
    #[error("no private key in PEM (expected PKCS#8, SEC1 or PKCS#1)")]
    NoPrivateKey,
    #[error("malformed {what} PEM: {source}")]
    Pem {
        what: &'static str,
        #[source]
        source: pem::Error,
    },
    #[error("CA certificate unusable as a trust anchor: {0}")]
    TrustAnchor(#[source] rustls::Error),
    #[error("cannot build client-certificate verifier: {0}")]
    ClientVerifier(#[from] VerifierBuilderError),
    #[error("certificate and private key rejected (do they belong together?): {0}")]
    CertKey(#[source] rustls::Error),
    #[error("TLS configuration: {0}")]
    Config(#[source] rustls::Error),
    #[error("certificate refused: {0}")]
    Refused(#[source] rustls::Error),
}

/// Server side: only clients holding a certificate from `ca_pem` get past the handshake,
/// so unauthenticated peers never reach request handling.
pub fn server_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let roots = Arc::new(root_store(ca_pem)?);
    let chain = load_certs(cert_pem, "server certificate")?;
    let key = load_key(key_pem)?;

    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone()).build()?;

    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(TlsError::CertKey)?;
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(Arc::new(config))
}

/// An HTTPS server for clients outside the federation (`site-agent serve-model`, called by
/// hospital workflow engines): TLS 1.2 and 1.3 with rustls' safe defaults, because those
/// clients are not ours to upgrade. With `client_ca_pem`, only clients holding a certificate
/// from that CA complete the handshake; without it, any client may connect and the caller
/// must authenticate requests some other way (a bearer token).
pub fn https_server_config(
    cert_pem: &str,
    key_pem: &str,
    client_ca_pem: Option<&str>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let chain = load_certs(cert_pem, "server certificate")?;
    let key = load_key(key_pem)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?;
    let builder = match client_ca_pem {
        Some(ca_pem) => {
            let roots = Arc::new(root_store(ca_pem)?);
            builder.with_client_cert_verifier(
                WebPkiClientVerifier::builder_with_provider(roots, provider).build()?,
            )
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(TlsError::CertKey)?;
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(Arc::new(config))
}

/// Site side: trusts only the federation CA (never the system roots), and always presents
/// the site certificate because the aggregator refuses anonymous clients.
///
/// Returned unwrapped so callers (e.g. an HTTP client builder) can take ownership.
pub fn client_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<ClientConfig, TlsError> {
    let roots = root_store(ca_pem)?;
    let chain = load_certs(cert_pem, "client certificate")?;
    let key = load_key(key_pem)?;

    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(TlsError::CertKey)?;
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(config)
}

/// Which end of the handshake is explaining a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// A site agent, talking to the aggregator.
    Site,
    /// The aggregator, talking to a site.
    Aggregator,
}

/// A TLS trust failure anywhere in `error`'s chain, in words a hospital's IT
/// staff can act on; `None` when the failure is not one of trust (a refused
/// connection, a timeout). rustls names the low-level cause (`BadSignature`,
/// a `DecryptError` alert), which says nothing to someone holding a bundle.
pub fn explain_trust_failure(
    error: &(dyn std::error::Error + 'static),
    side: Side,
) -> Option<String> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(tls) = rustls_error(e) {
            return explain_rustls(tls, side);
        }
        next = e.source();
    }
    None
}

/// `error` itself, or what an `io::Error` wraps (an HTTPS connector may
/// wrap the TLS stream's `io::Error` in another): `io::Error::source` skips
/// the error it wraps, so a plain walk down `source()` never meets it.
fn rustls_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(tls) = error.downcast_ref::<rustls::Error>() {
        return Some(tls);
    }
    let inner = error.downcast_ref::<std::io::Error>()?.get_ref()?;
    rustls_error(inner)
}

fn explain_rustls(error: &rustls::Error, side: Side) -> Option<String> {
    use rustls::{AlertDescription as Alert, CertificateError as Cert, Error as E};
    let (theirs, mine) = match side {
        Side::Site => ("the server's", "your consortium CA (ca_cert in site.toml)"),
        Side::Aggregator => ("the site's", "this consortium's CA"),
    };
    let text = match (error, side) {
        (E::InvalidCertificate(Cert::BadSignature | Cert::UnknownIssuer), Side::Site) => format!(
            "{theirs} certificate is not signed by {mine}: ca_cert is another consortium's, or aggregator_url reaches a different server"
        ),
        (E::InvalidCertificate(Cert::BadSignature | Cert::UnknownIssuer), Side::Aggregator) => {
            format!(
                "{theirs} certificate is not signed by {mine}: its bundle is from another consortium, or this CA was re-created after it was issued"
            )
        }
        (E::InvalidCertificate(Cert::NotValidForName | Cert::NotValidForNameContext { .. }), _) => {
            format!(
                "{theirs} certificate does not name the host in aggregator_url: use the host name the consortium operator gave you, or ask them to add this one to the server certificate"
            )
        }
        (E::InvalidCertificate(Cert::Expired | Cert::ExpiredContext { .. }), Side::Site) => format!(
            "{theirs} certificate has expired: the consortium operator must renew it"
        ),
        (E::InvalidCertificate(Cert::Expired | Cert::ExpiredContext { .. }), Side::Aggregator) => {
            format!("{theirs} certificate has expired: issue the site a new bundle")
        }
        (E::InvalidCertificate(Cert::NotValidYet | Cert::NotValidYetContext { .. }), _) => format!(
            "{theirs} certificate is not valid yet: check this machine's clock"
        ),
        (E::InvalidCertificate(Cert::Revoked), _) => format!("{theirs} certificate has been revoked"),
        (E::NoCertificatesPresented, Side::Aggregator) => {
            "the client presented no certificate: only enrolled sites may connect".to_string()
        }
        (E::AlertReceived(Alert::CertificateExpired), Side::Site) => {
            "the aggregator says this site's certificate has expired: ask the consortium operator for a new bundle".to_string()
        }
        (
            E::AlertReceived(
                Alert::DecryptError
                | Alert::BadCertificate
                | Alert::UnknownCA
                | Alert::CertificateUnknown
                | Alert::CertificateRequired
                | Alert::AccessDenied,
            ),
            Side::Site,
        ) => "the aggregator refused this site's certificate: it is not signed by the consortium's CA (cert and key are from another consortium's bundle, or the aggregator's CA was re-created)".to_string(),
        (
            E::AlertReceived(
                Alert::DecryptError | Alert::BadCertificate | Alert::UnknownCA | Alert::CertificateUnknown,
            ),
            Side::Aggregator,
        ) => "the site refused this server's certificate: its ca_cert is not this consortium's CA".to_string(),
        _ => return None,
    };
    Some(text)
}

/// Checks `cert_pem` as the aggregator will: issued by `ca_pem`, in its
/// validity period, usable for client authentication. A site runs it before
/// its first connection, so a bundle mixed from two consortia is named
/// locally rather than by a handshake alert.
pub fn verify_client_certificate(ca_pem: &str, cert_pem: &str) -> Result<(), TlsError> {
    let roots = Arc::new(root_store(ca_pem)?);
    let chain = load_certs(cert_pem, "client certificate")?;
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider()).build()?;
    verifier
        .verify_client_cert(&chain[0], &chain[1..], rustls::pki_types::UnixTime::now())
        .map(|_| ())
        .map_err(TlsError::Refused)
}

/// Stable identifier for a certificate that operators can compare by eye and the
/// aggregator can store; hashing the exact DER means a re-issued certificate for the
/// same site name gets a different fingerprint.
pub fn fingerprint(cert_der: &[u8]) -> String {
    hex::encode(Sha256::digest(cert_der))
}

/// Key material must never be readable by other users, not even for the instant between
/// create and chmod, so the mode is set at creation; it is set again afterwards because
/// `mode()` is ignored when the file already exists (e.g. a world-readable leftover).
pub fn write_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(bytes)?;
    file.sync_all()
}

/// Certificates are public, but they are still fsynced so that a crash right after
/// issuing cannot leave a key on disk whose certificate was lost.
pub fn write_public_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o644);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Explicit ring provider: the dependency tree must not pull in aws-lc-rs, and relying
/// on a process-default provider would make behaviour depend on initialisation order.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn root_store(ca_pem: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(ca_pem, "CA")? {
        roots.add(cert).map_err(TlsError::TrustAnchor)?;
    }
    Ok(roots)
}

/// An empty result is an error rather than an empty chain: rustls would otherwise fail
/// later with a message that does not point at the file that was wrong.
fn load_certs(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem { what, source })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(what));
    }
    Ok(certs)
}

fn load_key(pem: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|source| match source {
        pem::Error::NoItemsFound => TlsError::NoPrivateKey,
        source => TlsError::Pem {
            what: "private key",
            source,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_signature_reads_as_another_consortium() {
        let wrapped = std::io::Error::other(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature),
        ));
        let text = explain_trust_failure(&wrapped, Side::Site).unwrap_or_default();
        assert!(
            text.starts_with("the server's certificate is not signed by your consortium CA"),
            "{text}"
        );
        let alert = rustls::Error::AlertReceived(rustls::AlertDescription::DecryptError);
        let text = explain_trust_failure(&alert, Side::Site).unwrap_or_default();
        assert!(text.contains("refused this site's certificate"), "{text}");
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(explain_trust_failure(&refused, Side::Site), None);
    }

    #[test]
    fn fingerprint_is_lowercase_sha256_hex() {
        assert_eq!(
            fingerprint(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn empty_ca_pem_names_the_ca() {
        let err = server_config("", "", "").unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate("CA")), "{err}");
        assert_eq!(err.to_string(), "no certificate in CA PEM");
    }

    #[test]
    fn key_pem_without_key_says_so() {
        let not_a_key = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let err = load_key(not_a_key).unwrap_err();
        assert!(matches!(err, TlsError::NoPrivateKey), "{err}");
        assert!(err.to_string().starts_with("no private key in PEM"));
    }

    #[test]
    fn truncated_pem_is_malformed_not_missing() {
        let truncated = "-----BEGIN CERTIFICATE-----\nAAAA\n";
        let err = load_certs(truncated, "CA").unwrap_err();
        assert!(matches!(err, TlsError::Pem { what: "CA", .. }), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn private_file_is_0600_even_over_a_world_readable_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!(
            "fedslice-tls-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();

        let fresh = dir.join("fresh.key");
        write_private_file(&fresh, b"secret").unwrap();
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read(&fresh).unwrap(), b"secret");

        let stale = dir.join("stale.key");
        std::fs::write(&stale, b"old contents that are longer").unwrap();
        std::fs::set_permissions(&stale, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private_file(&stale, b"new").unwrap();
        let mode = std::fs::metadata(&stale).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read(&stale).unwrap(), b"new");

        let public = dir.join("cert.pem");
        write_public_file(&public, b"cert").unwrap();
        assert_eq!(std::fs::read(&public).unwrap(), b"cert");

        std::fs::remove_dir_all(&dir).unwrap();
    }
}
