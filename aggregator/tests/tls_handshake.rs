//! Real TLS 1.3 handshakes on 127.0.0.1 between configs built by `tls` from material
//! issued by `pki`, one connection per test.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use aggregator::pki::{self, Issued, Validity};
use fedslice::tls;
use rustls::pki_types::ServerName;
use time::{Duration, OffsetDateTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

struct Pki {
    ca: Issued,
    server: Issued,
}

fn pki() -> Pki {
    let ca = pki::create_ca("fedslice test CA", 30).unwrap();
    let server = pki::issue_server(&ca, &["127.0.0.1".into(), "localhost".into()], 30).unwrap();
    Pki { ca, server }
}

fn localhost_ip() -> ServerName<'static> {
    ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into())
}

struct Outcome {
    /// The verified client certificate chain's leaf, if the server accepted.
    server: Result<Vec<u8>, String>,
    /// Ok once the client completed the handshake and got its byte echoed back.
    client: Result<(), String>,
}

/// Runs one connection: the server accepts, reads one byte and echoes it; the client sends
/// one byte and reads it back. With TLS 1.3 the client finishes its handshake before the
/// server has judged its certificate, so a rejection only shows on the client at that read.
async fn exchange(
    server_config: Arc<rustls::ServerConfig>,
    client_config: rustls::ClientConfig,
    server_name: ServerName<'static>,
) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(server_config);

    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        let peer = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .ok_or("no peer certificate")?;
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
        tls.write_all(&byte).await.map_err(|e| e.to_string())?;
        tls.shutdown().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(peer)
    });

    let client = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let connector = TlsConnector::from(Arc::new(client_config));
        let mut tls = connector
            .connect(server_name, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        assert_eq!(
            tls.get_ref().1.alpn_protocol(),
            Some(&b"http/1.1"[..]),
            "ALPN"
        );
        tls.write_all(&[42]).await.map_err(|e| e.to_string())?;
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
        assert_eq!(byte, [42]);
        Ok::<_, String>(())
    }
    .await;

    Outcome {
        server: server.await.unwrap(),
        client,
    }
}

fn site_client(p: &Pki, site: &Issued) -> rustls::ClientConfig {
    tls::client_config(&p.ca.cert_pem, &site.cert_pem, &site.key_pem).unwrap()
}

fn server_config(p: &Pki) -> Arc<rustls::ServerConfig> {
    tls::server_config(&p.ca.cert_pem, &p.server.cert_pem, &p.server.key_pem).unwrap()
}

#[tokio::test]
async fn valid_site_cert_is_accepted_and_identified() {
    let p = pki();
    let site = pki::issue_site(&p.ca, "st-marys", Validity::Days(7)).unwrap();
    let out = exchange(server_config(&p), site_client(&p, &site), localhost_ip()).await;
    out.client.unwrap();
    let peer = out.server.unwrap();
    let id = pki::peer_identity(&peer).unwrap();
    assert_eq!(id.common_name, "st-marys");
    assert_eq!(id.fingerprint, site.fingerprint);
    assert_eq!(id.serial, site.serial);
    assert_eq!(tls::fingerprint(&peer), site.fingerprint);
}

#[tokio::test]
async fn client_without_certificate_is_rejected() {
    let p = pki();
    // Same trust as a real site, but no client certificate.
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        <rustls::pki_types::CertificateDer as rustls::pki_types::pem::PemObject>::pem_slice_iter(
            p.ca.cert_pem.as_bytes(),
        )
    {
        roots.add(cert.unwrap()).unwrap();
    }
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut client = client;
    client.alpn_protocols = vec![b"http/1.1".to_vec()];

    let out = exchange(server_config(&p), client, localhost_ip()).await;
    let err = out.server.unwrap_err();
    assert!(err.contains("no certificates"), "{err}");
    assert!(out.client.is_err());
}

#[tokio::test]
async fn client_cert_from_another_ca_is_rejected() {
    let p = pki();
    let rogue_ca = pki::create_ca("fedslice test CA", 30).unwrap(); // same name, other key
    let rogue = pki::issue_site(&rogue_ca, "st-marys", Validity::Days(7)).unwrap();
    let client = tls::client_config(&p.ca.cert_pem, &rogue.cert_pem, &rogue.key_pem).unwrap();
    let out = exchange(server_config(&p), client, localhost_ip()).await;
    let err = out.server.unwrap_err();
    assert!(
        err.contains("UnknownIssuer") || err.contains("BadSignature"),
        "{err}"
    );
    assert!(out.client.is_err());
}

#[tokio::test]
async fn expired_site_cert_is_rejected() {
    let p = pki();
    let now = OffsetDateTime::now_utc();
    let expired = pki::issue_site(
        &p.ca,
        "st-marys",
        Validity::Window {
            not_before: now - Duration::days(10),
            not_after: now - Duration::days(1),
        },
    )
    .unwrap();
    let out = exchange(server_config(&p), site_client(&p, &expired), localhost_ip()).await;
    let err = out.server.unwrap_err();
    assert!(err.contains("certificate expired"), "{err}");
    assert!(out.client.is_err());
}

#[tokio::test]
async fn client_rejects_server_from_another_ca() {
    let p = pki();
    let site = pki::issue_site(&p.ca, "st-marys", Validity::Days(7)).unwrap();
    let other = pki();
    // The site trusts `other`'s CA only, so the real server's certificate is unknown to it.
    let client = tls::client_config(&other.ca.cert_pem, &site.cert_pem, &site.key_pem).unwrap();
    let out = exchange(server_config(&p), client, localhost_ip()).await;
    let err = out.client.unwrap_err();
    assert!(err.starts_with("handshake:"), "{err}");
    // Both test CAs share a name, so webpki finds a candidate issuer and the signature fails.
    assert!(
        err.contains("UnknownIssuer") || err.contains("BadSignature"),
        "{err}"
    );
    assert!(out.server.is_err());
}

#[tokio::test]
async fn server_cert_matches_ip_and_dns_but_nothing_else() {
    let p = pki();
    let site = pki::issue_site(&p.ca, "st-marys", Validity::Days(7)).unwrap();

    let out = exchange(server_config(&p), site_client(&p, &site), localhost_ip()).await;
    out.client.unwrap();
    out.server.unwrap();

    let dns = ServerName::try_from("localhost").unwrap();
    let out = exchange(server_config(&p), site_client(&p, &site), dns).await;
    out.client.unwrap();
    out.server.unwrap();

    let wrong = ServerName::try_from("aggregator.example").unwrap();
    let out = exchange(server_config(&p), site_client(&p, &site), wrong).await;
    let err = out.client.unwrap_err();
    assert!(err.contains("not valid for name"), "{err}");
}

#[test]
fn bad_pem_errors_are_specific() {
    let p = pki();
    let err = tls::client_config("", &p.server.cert_pem, &p.server.key_pem).unwrap_err();
    assert_eq!(err.to_string(), "no certificate in CA PEM");
    let err = tls::client_config(&p.ca.cert_pem, &p.server.key_pem, &p.server.key_pem).unwrap_err();
    assert_eq!(err.to_string(), "no certificate in client certificate PEM");
    let err =
        tls::server_config(&p.ca.cert_pem, &p.server.cert_pem, &p.server.cert_pem).unwrap_err();
    assert!(
        err.to_string().starts_with("no private key in PEM"),
        "{err}"
    );
    let other = pki();
    let err =
        tls::server_config(&p.ca.cert_pem, &p.server.cert_pem, &other.server.key_pem).unwrap_err();
    assert!(matches!(err, tls::TlsError::CertKey(_)), "{err}");
}
