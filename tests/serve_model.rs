//! `site-agent serve-model` over loopback: the same answer as `site-agent
//! predict` for a series posted as multipart files, a tar or a zip; health and
//! model info; clear 4xx errors for what it cannot use. Access: a bearer
//! token, TLS with client certificates, no reachable address without them,
//! and bounds on body size, concurrent predictions and request time.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::{fedslice, phantom_as, run_ok, train_and_export};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A trained `test`-preset bundle and the DICOM cohort it was trained on.
fn trained_bundle(root: &Path) -> (PathBuf, PathBuf) {
    let data = root.join("dicom");
    phantom_as("dicom", &data, 2, 12, 3, 64);
    let (_, bundle) = train_and_export(&data, root);
    (bundle, data)
}

fn start(bundle: &Path, max_body_mb: usize) -> (Server, String) {
    let (server, addr) = start_with(
        bundle,
        &[
            "--listen",
            "127.0.0.1:0",
            "--max-body-mb",
            &max_body_mb.to_string(),
        ],
    );
    (server, format!("http://{addr}"))
}

/// Starts `serve-model` with `args`; returns the server and its `host:port`.
fn start_with(bundle: &Path, args: &[&str]) -> (Server, String) {
    let mut child = fedslice()
        .args(["site-agent", "serve-model", "--model"])
        .arg(bundle)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start serve-model");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read address");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    (Server(child), addr)
}

/// A copy of `bundle` whose config names another plane, re-signed so it loads.
fn copy_with_plane(bundle: &Path, out: &Path, plane: &str) {
    std::fs::create_dir_all(out).expect("mkdir");
    let mut sums = String::new();
    for name in [
        "config.json",
        "model.safetensors",
        "model.onnx",
        "MODEL_CARD.md",
        "provenance.json",
    ] {
        let mut bytes = std::fs::read(bundle.join(name)).expect("bundle file");
        if name == "config.json" {
            let mut config: serde_json::Value = serde_json::from_slice(&bytes).expect("config");
            config["plane"] = plane.into();
            bytes = serde_json::to_vec_pretty(&config).expect("json");
        }
        sums.push_str(&format!("{}  {name}\n", fedslice::wire::digest(&bytes)));
        std::fs::write(out.join(name), bytes).expect("write");
    }
    std::fs::write(out.join("SHA256SUMS"), sums).expect("sums");
}

fn multipart(files: &[Vec<u8>], boundary: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (i, bytes) in files.iter().enumerate() {
        write!(
            body,
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{i}.dcm\"\r\nContent-Type: application/dicom\r\n\r\n"
        )
        .expect("write");
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    write!(body, "--{boundary}--\r\n").expect("write");
    body
}

fn exam_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("exam folder")
        .map(|e| e.expect("entry").path())
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let name = p.file_name().expect("name").to_string_lossy().into_owned();
            (name, std::fs::read(&p).expect("read"))
        })
        .collect()
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, serde_json::Value) {
    let response = client
        .post(format!("{url}/v1/predict"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    let json = response.json().await.unwrap_or(serde_json::Value::Null);
    (status, json)
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_model_answers_like_predict_and_refuses_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let (bundle, data) = trained_bundle(root);
    let exam = data.join("site-00/valid/0009");
    let expected: serde_json::Value = serde_json::from_str(&run_ok(
        fedslice()
            .args(["site-agent", "predict", "--model"])
            .arg(&bundle)
            .arg("--input")
            .arg(&exam),
        "predict",
    ))
    .expect("predict JSON");
    let expected_p = expected["probability"].as_f64().expect("probability");

    let (_server, url) = start(&bundle, 2);
    let client = reqwest::Client::new();
    let health: serde_json::Value = client
        .get(format!("{url}/health"))
        .send()
        .await
        .expect("health")
        .json()
        .await
        .expect("json");
    assert_eq!(health["status"], "ok");
    let info: serde_json::Value = client
        .get(format!("{url}/v1/model"))
        .send()
        .await
        .expect("model")
        .json()
        .await
        .expect("json");
    assert_eq!(info["weights_sha256"], expected["model"]["weights_sha256"]);

    let files = exam_files(&exam);
    let boundary = "fedslice-test-boundary";
    let bodies = {
        let multipart_body = multipart(
            &files.iter().map(|(_, b)| b.clone()).collect::<Vec<_>>(),
            boundary,
        );
        let mut tar = tar::Builder::new(Vec::new());
        for (name, bytes) in &files {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append_data(&mut header, format!("series/{name}"), bytes.as_slice())
                .expect("tar entry");
        }
        let tar = tar.into_inner().expect("tar");
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        for (name, bytes) in &files {
            zip.start_file(
                format!("series/{name}"),
                zip::write::SimpleFileOptions::default(),
            )
            .expect("zip entry");
            zip.write_all(bytes).expect("zip write");
        }
        let zip = zip.finish().expect("zip").into_inner();
        vec![
            (
                format!("multipart/form-data; boundary={boundary}"),
                multipart_body,
            ),
            ("application/x-tar".to_owned(), tar),
            ("application/zip".to_owned(), zip),
        ]
    };
    for (content_type, body) in bodies {
        let (status, json) = post(&client, &url, &content_type, body).await;
        assert_eq!(status, 200, "{content_type}: {json}");
        let p = json["probability"].as_f64().expect("probability");
        assert_eq!(p, expected_p, "{content_type}");
        assert_eq!(json["label"], expected["label"]);
        assert_eq!(json["slice_scores"], expected["slice_scores"]);
        assert_eq!(
            json["input"]["series"]["series_instance_uid"],
            expected["input"]["series"]["series_instance_uid"]
        );
    }

    // Not an accepted content type.
    let (status, json) = post(&client, &url, "text/plain", b"hello".to_vec()).await;
    assert_eq!(
        (status, json["error"].as_str()),
        (415, Some("unsupported_media_type"))
    );
    // Files that are not DICOM.
    let body = multipart(&[b"not a dicom file at all".to_vec()], boundary);
    let (status, json) = post(
        &client,
        &url,
        &format!("multipart/form-data; boundary={boundary}"),
        body,
    )
    .await;
    assert_eq!(
        (status, json["error"].as_str()),
        (422, Some("no_dicom")),
        "{json}"
    );
    // A broken archive.
    let (status, json) = post(
        &client,
        &url,
        "application/zip",
        b"PK\x03\x04broken".to_vec(),
    )
    .await;
    assert_eq!(
        (status, json["error"].as_str()),
        (400, Some("bad_archive")),
        "{json}"
    );
    // Over the 2 MiB body limit: refused from the declared length, before
    // any body is sent. (Sending the body raced the server's close: under
    // load the client saw a broken pipe on every try instead of the answer.)
    let addr = url.trim_start_matches("http://");
    let mut oversized = send_head(addr, &predict_head(3 << 20));
    assert_eq!(read_status(&mut oversized), Some(413));
    // A model for another plane finds no series it can read in a sagittal upload.
    let coronal = root.join("coronal-bundle");
    copy_with_plane(&bundle, &coronal, "coronal");
    let (_coronal_server, coronal_url) = start(&coronal, 2);
    let (status, json) = post(
        &client,
        &coronal_url,
        &format!("multipart/form-data; boundary={boundary}"),
        multipart(
            &files.iter().map(|(_, b)| b.clone()).collect::<Vec<_>>(),
            boundary,
        ),
    )
    .await;
    assert_eq!(
        (status, json["error"].as_str()),
        (422, Some("no_series_in_plane")),
        "{json}"
    );
    // Still serving after all that.
    let (status, _) = post(&client, &url, "application/x-tar", {
        let mut tar = tar::Builder::new(Vec::new());
        tar.append_dir_all("s", &exam).expect("tar");
        tar.into_inner().expect("tar")
    })
    .await;
    assert_eq!(status, 200);
}

/// One trained bundle and its cohort for the access tests, trained once per
/// test binary (training is the slow part).
fn shared_bundle() -> &'static (PathBuf, PathBuf) {
    static BUNDLE: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    BUNDLE.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve-model-access");
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("mkdir");
        trained_bundle(&root)
    })
}

fn exam_tar(data: &Path) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    tar.append_dir_all("s", data.join("site-00/valid/0009"))
        .expect("tar");
    tar.into_inner().expect("tar")
}

fn write_token(dir: &Path, token: &str) -> PathBuf {
    let path = dir.join("token");
    std::fs::write(&path, format!("{token}\n")).expect("token file");
    path
}

/// Sends a request head by hand (the body it announces is never sent) and
/// keeps the connection open.
fn send_head(addr: &str, head: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    stream.write_all(head.as_bytes()).expect("send head");
    stream
}

/// The status code of the answer on `stream`, or None if none came in time.
fn read_status(stream: &mut TcpStream) -> Option<u16> {
    let mut answer = Vec::new();
    let mut buffer = [0u8; 1024];
    while !answer.windows(2).any(|w| w == b"\r\n") {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return None,
            Ok(n) => answer.extend_from_slice(&buffer[..n]),
        }
    }
    let line = String::from_utf8_lossy(&answer);
    line.split_whitespace().nth(1)?.parse().ok()
}

fn predict_head(content_length: u64) -> String {
    format!(
        "POST /v1/predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/dicom\r\nContent-Length: {content_length}\r\n\r\n"
    )
}

/// An address other machines can reach is refused without TLS and
/// authentication, before the model is even opened; `--insecure-no-auth`
/// lets it through (here to the missing model).
#[test]
fn serve_model_refuses_a_reachable_address_without_tls_and_auth() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = write_token(dir.path(), "0123456789abcdef0123456789abcdef");
    let missing = dir.path().join("no-such-bundle");
    let serve = |extra: &[&str]| {
        let output = fedslice()
            .args(["site-agent", "serve-model", "--model"])
            .arg(&missing)
            .args(["--listen", "0.0.0.0:0"])
            .args(extra)
            .output()
            .expect("run serve-model");
        assert!(!output.status.success(), "serve-model started");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let stderr = serve(&[]);
    assert!(
        stderr.contains("refusing to serve on 0.0.0.0:0")
            && stderr.contains("TLS and authentication")
            && stderr.contains("--insecure-no-auth"),
        "{stderr}"
    );
    // A token alone would cross the network in clear.
    let stderr = serve(&["--token-file", token.to_str().expect("utf-8 path")]);
    assert!(
        stderr.contains("refusing to serve") && stderr.contains("without TLS"),
        "{stderr}"
    );
    let stderr = serve(&["--insecure-no-auth"]);
    assert!(
        !stderr.contains("refusing to serve") && stderr.contains("opening the model bundle"),
        "{stderr}"
    );
}

/// With `--token-file`, /v1/* needs `Authorization: Bearer <token>` (401
/// otherwise, before the body is read); /health stays open for probes.
#[tokio::test(flavor = "multi_thread")]
async fn serve_model_requires_the_bearer_token_when_set() {
    let (bundle, data) = shared_bundle();
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = "0123456789abcdef0123456789abcdef";
    let token = write_token(dir.path(), secret);
    let (_server, addr) = start_with(
        bundle,
        &[
            "--listen",
            "127.0.0.1:0",
            "--token-file",
            token.to_str().expect("utf-8 path"),
        ],
    );
    let url = format!("http://{addr}");
    let client = reqwest::Client::new();

    let health = client
        .get(format!("{url}/health"))
        .send()
        .await
        .expect("health");
    assert_eq!(health.status().as_u16(), 200);

    for auth in [None, Some("Bearer wrong-token-wrong-token"), Some(secret)] {
        let mut request = client.get(format!("{url}/v1/model"));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let response = request.send().await.expect("model");
        assert_eq!(response.status().as_u16(), 401, "{auth:?}");
        assert!(response.headers().contains_key("www-authenticate"));
        let json: serde_json::Value = response.json().await.expect("json");
        assert_eq!(json["error"], "unauthorized");
    }
    let (status, json) = post(&client, &url, "application/x-tar", exam_tar(data)).await;
    assert_eq!(
        (status, json["error"].as_str()),
        (401, Some("unauthorized"))
    );

    let bearer = format!("Bearer {secret}");
    let info = client
        .get(format!("{url}/v1/model"))
        .header("authorization", &bearer)
        .send()
        .await
        .expect("model");
    assert_eq!(info.status().as_u16(), 200);
    let response = client
        .post(format!("{url}/v1/predict"))
        .header("authorization", &bearer)
        .header("content-type", "application/x-tar")
        .body(exam_tar(data))
        .send()
        .await
        .expect("predict");
    assert_eq!(response.status().as_u16(), 200);
    let json: serde_json::Value = response.json().await.expect("json");
    assert!(json["probability"].is_number(), "{json}");
}

/// The default body limit is 64 MiB, and a body announced larger is refused
/// with 413 at once, without waiting for (or reading) any of it.
#[test]
fn serve_model_refuses_an_oversized_body_by_default() {
    let (bundle, _) = shared_bundle();
    let (_server, addr) = start_with(bundle, &["--listen", "127.0.0.1:0"]);
    let mut stream = send_head(&addr, &predict_head((64 << 20) + 1));
    assert_eq!(read_status(&mut stream), Some(413));
}

/// `--max-concurrent 1`: a second prediction while one is in progress gets
/// 503 at once; `--request-timeout 2`: an upload that never finishes gets 408,
/// and its slot is free again afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn serve_model_limits_concurrent_and_slow_requests() {
    let (bundle, data) = shared_bundle();
    let (_server, addr) = start_with(
        bundle,
        &[
            "--listen",
            "127.0.0.1:0",
            "--max-concurrent",
            "1",
            "--request-timeout",
            "2",
        ],
    );
    let started = Instant::now();
    let mut stalled = send_head(&addr, &predict_head(1000));
    // Let the first request take the slot before the second arrives.
    std::thread::sleep(Duration::from_millis(300));
    let mut second = send_head(&addr, &predict_head(1000));
    assert_eq!(read_status(&mut second), Some(503));
    assert_eq!(read_status(&mut stalled), Some(408));
    assert!(started.elapsed() < Duration::from_secs(10));

    let client = reqwest::Client::new();
    let (status, json) = post(
        &client,
        &format!("http://{addr}"),
        "application/x-tar",
        exam_tar(data),
    )
    .await;
    assert_eq!(status, 200, "{json}");
}

/// HTTPS with client certificates and a token, on an address other machines
/// could reach: a client with both is answered; one without a certificate
/// fails the handshake, one without the token gets 401, plain HTTP gets nothing.
#[tokio::test(flavor = "multi_thread")]
async fn serve_model_over_tls_with_client_certificates_and_token() {
    use aggregator::pki;
    use rustls::pki_types::pem::PemObject;

    let (bundle, data) = shared_bundle();
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = pki::create_ca("serve-model test CA", 30).expect("CA");
    let server_cert = pki::issue_server(&ca, &["127.0.0.1".to_owned()], 30).expect("server");
    let client_cert =
        pki::issue_site(&ca, "workflow-engine", pki::Validity::Days(30)).expect("client");
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write PEM");
        path.to_str().expect("utf-8 path").to_owned()
    };
    let ca_path = file("ca.pem", &ca.cert_pem);
    let cert_path = file("server.pem", &server_cert.cert_pem);
    let key_path = file("server.key", &server_cert.key_pem);
    let secret = "0123456789abcdef0123456789abcdef";
    let token = write_token(dir.path(), secret);
    let (_server, addr) = start_with(
        bundle,
        &[
            "--listen",
            "0.0.0.0:0",
            "--tls-cert",
            &cert_path,
            "--tls-key",
            &key_path,
            "--client-ca",
            &ca_path,
            "--token-file",
            token.to_str().expect("utf-8 path"),
        ],
    );
    let port = addr.rsplit(':').next().expect("port");
    let url = format!("https://127.0.0.1:{port}");
    let https = |config: rustls::ClientConfig| {
        reqwest::Client::builder()
            .use_preconfigured_tls(config)
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client")
    };
    let with_cert = https(
        fedslice::tls::client_config(&ca.cert_pem, &client_cert.cert_pem, &client_cert.key_pem)
            .expect("client TLS"),
    );
    let bearer = format!("Bearer {secret}");

    let response = with_cert
        .post(format!("{url}/v1/predict"))
        .header("authorization", &bearer)
        .header("content-type", "application/x-tar")
        .body(exam_tar(data))
        .send()
        .await
        .expect("predict over TLS");
    assert_eq!(response.status().as_u16(), 200);
    let json: serde_json::Value = response.json().await.expect("json");
    assert!(json["probability"].is_number(), "{json}");

    let response = with_cert
        .get(format!("{url}/v1/model"))
        .send()
        .await
        .expect("model over TLS");
    assert_eq!(response.status().as_u16(), 401);

    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca.cert_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("root");
    }
    let without_cert = https(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    let refused = without_cert
        .get(format!("{url}/v1/model"))
        .header("authorization", &bearer)
        .send()
        .await;
    assert!(refused.is_err(), "{refused:?}");

    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/health"))
        .send()
        .await;
    assert!(plain.is_err(), "{plain:?}");
}
