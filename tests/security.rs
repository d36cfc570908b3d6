//! Who may talk to the aggregator: only an enrolled, active site presenting its
//! current certificate from the consortium CA. Everything else is refused (TLS
//! failure or 403) and the refusal is in the audit log.

mod common;

use std::sync::Arc;

use aggregator::pki::{self, Issued, Validity};
use common::Consortium;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

fn https(client_tls: rustls::ClientConfig) -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls(client_tls)
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .expect("client")
}

fn with_cert(ca_pem: &str, cert: &Issued) -> reqwest::Client {
    https(
        fedslice::tls::client_config(ca_pem, &cert.cert_pem, &cert.key_pem).expect("client config"),
    )
}

fn without_cert(ca_pem: &str) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("add root");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("TLS 1.3")
    .with_root_certificates(roots)
    .with_no_client_auth();
    https(config)
}

#[test]
fn only_enrolled_active_sites_with_their_current_certificate_get_in() {
    let mut consortium = Consortium::init();
    let data = consortium.dir.path().join("no-data");
    let site_a = consortium.add_site("site-a", &data);
    let site_b = consortium.add_site("site-b", &data);
    consortium.aggregator(&["site", "revoke", "site-b"]);
    consortium.serve();

    let read = |p: std::path::PathBuf| std::fs::read_to_string(&p).expect("read PEM");
    let ca_pem = read(consortium.state.join("pki/ca.pem"));
    let ca = Issued::from_pem(&ca_pem, &read(consortium.state.join("pki/ca.key"))).expect("CA");
    let bundle = |dir: &std::path::Path| {
        Issued::from_pem(&read(dir.join("site.pem")), &read(dir.join("site.key"))).expect("bundle")
    };
    let url = format!("{}/v1/health", consortium.url);

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let status = |client: reqwest::Client| {
        runtime.block_on(async { client.get(&url).send().await.map(|r| r.status().as_u16()) })
    };

    // The enrolled, active site gets in.
    assert_eq!(
        status(with_cert(&ca_pem, &bundle(&site_a))).expect("site-a connects"),
        200
    );

    // TLS-level refusals: no certificate, another CA, an expired certificate.
    assert!(
        status(without_cert(&ca_pem)).is_err(),
        "no client certificate must fail"
    );
    let rogue_ca = pki::create_ca("fedslice consortium CA", 30).expect("rogue CA");
    let rogue = pki::issue_site(&rogue_ca, "site-a", Validity::Days(30)).expect("rogue cert");
    assert!(
        status(with_cert(&ca_pem, &rogue)).is_err(),
        "certificate from another CA must fail"
    );
    let now = time::OffsetDateTime::now_utc();
    let expired = pki::issue_site(
        &ca,
        "site-a",
        Validity::Window {
            not_before: now - time::Duration::days(30),
            not_after: now - time::Duration::days(1),
        },
    )
    .expect("expired cert");
    assert!(
        status(with_cert(&ca_pem, &expired)).is_err(),
        "expired certificate must fail"
    );

    // HTTP-level refusals: revoked site, valid certificate for an unregistered
    // name, and a valid certificate for a registered name that is not the one on file.
    assert_eq!(
        status(with_cert(&ca_pem, &bundle(&site_b))).expect("TLS ok"),
        403
    );
    let ghost = pki::issue_site(&ca, "ghost", Validity::Days(30)).expect("ghost cert");
    assert_eq!(status(with_cert(&ca_pem, &ghost)).expect("TLS ok"), 403);
    let second = pki::issue_site(&ca, "site-a", Validity::Days(30)).expect("second cert");
    assert_eq!(status(with_cert(&ca_pem, &second)).expect("TLS ok"), 403);

    let audit = consortium.audit();
    let events = |event: &str| -> Vec<String> {
        audit
            .iter()
            .filter(|e| e["event"] == event)
            .map(|e| e["detail"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let tls = events("tls_refused");
    assert!(tls.len() >= 3, "three TLS refusals audited: {tls:?}");
    assert!(
        tls.iter()
            .any(|d| d.contains("no certificates") || d.contains("no client certificate")),
        "{tls:?}"
    );
    assert!(tls.iter().any(|d| d.contains("expired")), "{tls:?}");
    let refused = events("request_refused");
    assert!(refused.iter().any(|d| d.contains("revoked")), "{refused:?}");
    assert!(refused.iter().any(|d| d.contains("ghost")), "{refused:?}");
    assert!(
        refused.iter().any(|d| d.contains("not its current one")),
        "{refused:?}"
    );
}

#[test]
fn a_flooding_site_is_throttled_with_one_audit_entry() {
    let mut consortium = Consortium::init();
    let site = consortium.add_site("site-a", &consortium.dir.path().join("no-data"));
    consortium.serve();
    let read = |p: std::path::PathBuf| std::fs::read_to_string(&p).expect("read PEM");
    let ca_pem = read(consortium.state.join("pki/ca.pem"));
    let cert = Issued::from_pem(&read(site.join("site.pem")), &read(site.join("site.key")))
        .expect("bundle");
    let client = with_cert(&ca_pem, &cert);
    let url = format!("{}/v1/health", consortium.url);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let codes: Vec<u16> = runtime.block_on(async {
        let mut codes = Vec::new();
        for _ in 0..150 {
            codes.push(
                client
                    .get(&url)
                    .send()
                    .await
                    .expect("request")
                    .status()
                    .as_u16(),
            );
        }
        codes
    });
    let ok = codes.iter().filter(|&&c| c == 200).count();
    let limited = codes.iter().filter(|&&c| c == 429).count();
    assert_eq!(ok + limited, codes.len(), "only 200 or 429: {codes:?}");
    assert!(ok >= 60, "the burst allowance is served: {ok}");
    assert!(limited > 0, "a flood is throttled");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let after = runtime.block_on(async {
        client
            .get(&url)
            .send()
            .await
            .expect("request")
            .status()
            .as_u16()
    });
    assert_eq!(after, 200, "the site is served again after slowing down");
    let audit = consortium.audit();
    assert_eq!(
        audit
            .iter()
            .filter(|e| e["event"] == "rate_limited")
            .count(),
        1,
        "one audit entry per flood"
    );
}
