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

/// One HTTP/1.1 request read off `stream` (headers and a Content-Length
/// body); its request line, or `None` when the peer sent none.
fn read_request(stream: &mut impl std::io::Read) -> Option<String> {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => got.push(byte[0]),
            _ => return None,
        }
    }
    let head = String::from_utf8_lossy(&got).into_owned();
    let length = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).ok()?;
    head.lines().next().map(str::to_owned)
}

/// A stand-in aggregator with a genuine server certificate of the site's CA
/// (as a compromised aggregator, or one whose key leaked, would have) that
/// answers every request with a 307 to a plain-HTTP service inside the
/// hospital. The agent follows none: the update never leaves in the clear
/// and the internal service hears nothing (security review L2).
#[test]
fn the_site_agent_follows_no_redirect_from_its_aggregator() {
    use std::io::Write;
    use std::sync::Mutex;

    let dir = tempfile::tempdir().expect("tempdir");
    let ca = pki::create_ca("fedslice consortium CA", 30).expect("CA");
    let server = pki::issue_server(&ca, &["127.0.0.1".to_owned()], 30).expect("server cert");
    let site = pki::issue_site(&ca, "site-a", Validity::Days(30)).expect("site cert");
    let tls = fedslice::tls::server_config(&ca.cert_pem, &server.cert_pem, &server.key_pem)
        .expect("server TLS");

    // The internal service: records what reaches it and answers 200.
    let internal = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let internal_port = internal.local_addr().expect("addr").port();
    let reached: Arc<Mutex<Vec<String>>> = Arc::default();
    let heard = reached.clone();
    std::thread::spawn(move || {
        for mut stream in internal.incoming().flatten() {
            let line = read_request(&mut stream).unwrap_or_else(|| "(connection)".into());
            heard.lock().expect("lock").push(line);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}");
        }
    });

    let fake = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let fake_port = fake.local_addr().expect("addr").port();
    let asked: Arc<Mutex<Vec<String>>> = Arc::default();
    let asked_by_agent = asked.clone();
    std::thread::spawn(move || {
        for tcp in fake.incoming().flatten() {
            let Ok(conn) = rustls::ServerConnection::new(tls.clone()) else {
                continue;
            };
            let mut stream = rustls::StreamOwned::new(conn, tcp);
            while let Some(line) = read_request(&mut stream) {
                asked_by_agent.lock().expect("lock").push(line);
                let answer = format!(
                    "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1:{internal_port}/internal-collector\r\nContent-Length: 0\r\n\r\n"
                );
                if stream.write_all(answer.as_bytes()).is_err() {
                    break;
                }
                let _ = stream.flush();
            }
        }
    });

    for (name, text) in [
        ("ca.pem", &ca.cert_pem),
        ("site.pem", &site.cert_pem),
        ("site.key", &site.key_pem),
    ] {
        std::fs::write(dir.path().join(name), text).expect("write PEM");
    }
    let toml = dir.path().join("site.toml");
    std::fs::write(
        &toml,
        format!(
            "site = \"site-a\"\naggregator_url = \"https://127.0.0.1:{fake_port}\"\nca_cert = \"ca.pem\"\ncert = \"site.pem\"\nkey = \"site.key\"\ndata = \"data\"\n"
        ),
    )
    .expect("write site.toml");
    let config = site_agent::config::SiteConfig::load(&toml).expect("site.toml");
    let client = site_agent::client::Client::new(&config).expect("client");

    let update = vec![7u8; 4096];
    let digest = fedslice::wire::digest(&update);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (upload, hello) = runtime.block_on(async {
        (
            client
                .upload_part(&digest, 0, update.len() as u64, update.clone().into())
                .await,
            client.hello().await,
        )
    });
    for (what, outcome) in [("upload", upload.map(|_| ())), ("hello", hello)] {
        let error = outcome.expect_err(what);
        let refused = error
            .downcast_ref::<site_agent::client::Refused>()
            .unwrap_or_else(|| panic!("{what}: not a refusal: {error:#}"));
        assert_eq!(refused.status, 307, "{what}");
        assert!(
            refused.message.contains("follows none")
                && refused.message.contains("/internal-collector"),
            "{what}: {refused}"
        );
    }
    let asked = asked.lock().expect("lock").clone();
    assert_eq!(asked.len(), 2, "{asked:?}");
    assert!(asked[0].starts_with("PATCH /v1/uploads/"), "{asked:?}");
    assert!(
        reached.lock().expect("lock").is_empty(),
        "the internal service was reached: {:?}",
        reached.lock().expect("lock")
    );
}
