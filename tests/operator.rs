//! Issue 15 item 3, the operator listener: `/healthz`, `/readyz` and
//! `/metrics` on plain HTTP apart from the sites' mutual-TLS port, loopback
//! unless a token guards it; and `aggregator status` telling a stopped
//! service from a running one.
//!
//! The scrape is checked by `promtool check metrics` where Prometheus is
//! installed, and always by [`check_exposition`], a small checker of the
//! text format written here (no parser crate is a dependency).

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{Consortium, fedslice, tool_available};

/// A bare HTTP/1.1 GET; returns the status code and body.
fn http_get(base: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    http_get_with(base, path, &auth)
}

/// A bare HTTP/1.1 GET with extra header lines (each ending in CRLF).
fn http_get_with(base: &str, path: &str, headers: &str) -> (u16, String) {
    let authority = base
        .strip_prefix("http://")
        .expect("http URL")
        .replace("0.0.0.0", "127.0.0.1");
    let mut stream = TcpStream::connect(&authority).expect("connect to the operator listener");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\n{headers}Connection: close\r\n\r\n"
    )
    .expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    (status, body.to_string())
}

/// Checks the Prometheus/OpenMetrics text format line by line: comments are
/// HELP, TYPE, UNIT or the final EOF; every sample belongs to a declared
/// family, has well-formed labels and a numeric value. Returns the samples
/// as "name{labels}" → value.
fn check_exposition(text: &str) -> HashMap<String, f64> {
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let mut families: HashMap<String, String> = HashMap::new();
    let mut samples = HashMap::new();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "no final # EOF:\n{text}");
    for (i, line) in lines.iter().enumerate() {
        if let Some(comment) = line.strip_prefix("# ") {
            let mut parts = comment.splitn(3, ' ');
            match parts.next() {
                Some("HELP") | Some("UNIT") => {
                    let name = parts.next().unwrap_or("");
                    assert!(name_ok(name), "line {i}: bad family name: {line}");
                }
                Some("TYPE") => {
                    let name = parts.next().unwrap_or("");
                    let kind = parts.next().unwrap_or("");
                    assert!(name_ok(name), "line {i}: bad family name: {line}");
                    assert!(
                        [
                            "counter",
                            "gauge",
                            "histogram",
                            "summary",
                            "unknown",
                            "info"
                        ]
                        .contains(&kind),
                        "line {i}: unknown type: {line}"
                    );
                    assert!(
                        families
                            .insert(name.to_string(), kind.to_string())
                            .is_none(),
                        "line {i}: family declared twice: {line}"
                    );
                }
                Some("EOF") => assert_eq!(i + 1, lines.len(), "EOF before the end"),
                _ => panic!("line {i}: unexpected comment: {line}"),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("line {i}: value not a number: {line}")),
        };
        let name = match series.split_once('{') {
            Some((name, labels)) => {
                let labels = labels.strip_suffix('}').expect("labels end with }");
                for pair in labels.split("\",").filter(|p| !p.is_empty()) {
                    let (key, quoted) = pair.split_once('=').expect("label is key=value");
                    assert!(name_ok(key), "line {i}: bad label name: {line}");
                    assert!(quoted.starts_with('"'), "line {i}: unquoted label: {line}");
                }
                name
            }
            None => series,
        };
        assert!(name_ok(name), "line {i}: bad metric name: {line}");
        let family = ["_total", "_bucket", "_count", "_sum", "_created", ""]
            .iter()
            .find_map(|suffix| {
                let base = name.strip_suffix(suffix)?;
                families.contains_key(base).then_some(base)
            });
        assert!(
            family.is_some(),
            "line {i}: sample of no declared family: {line}"
        );
        samples.insert(series.to_string(), value);
    }
    samples
}

/// Scrapes as Prometheus does (asking for OpenMetrics, checked by
/// [`check_exposition`]) and as curl does (the older text format, checked by
/// `promtool check metrics` where it is installed); returns the former.
fn scrape(consortium: &Consortium) -> (String, HashMap<String, f64>) {
    let (status, text) = http_get_with(
        &consortium.operator_url(),
        "/metrics",
        "Accept: application/openmetrics-text; version=1.0.0\r\n",
    );
    assert_eq!(status, 200, "{text}");
    let samples = check_exposition(&text);
    let (status, plain) = http_get(&consortium.operator_url(), "/metrics", None);
    assert_eq!(status, 200, "{plain}");
    assert!(!plain.contains("# EOF"), "not the text format: {plain}");
    if tool_available("promtool") {
        let path = consortium.dir.path().join("scrape.prom");
        std::fs::write(&path, &plain).expect("write scrape");
        let output = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("promtool check metrics < {}", path.display()))
            .output()
            .expect("run promtool");
        assert!(
            output.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    } else {
        assert!(
            !common::operator_tools_required(),
            "FEDSLICE_REQUIRE_OPERATOR_TOOLS is set but promtool is not installed"
        );
        eprintln!("promtool not installed: the scrape was checked by check_exposition only");
    }
    (text, samples)
}

#[test]
fn health_ready_and_metrics_answer_and_a_refused_update_is_counted() {
    let mut consortium = Consortium::init();
    let data = consortium.dir.path().join("data");
    let bundle = consortium.add_site("site-00", &data);
    consortium.serve();
    let operator = consortium.operator_url();
    assert!(operator.starts_with("http://127.0.0.1:"), "{operator}");

    assert_eq!(http_get(&operator, "/healthz", None).0, 200);
    let (status, body) = http_get(&operator, "/readyz", None);
    assert_eq!(status, 200, "{body}");

    let refused = "fedslice_updates_refused_total{reason=\"bad_request\"}";
    let (text, before) = scrape(&consortium);
    // Labelled families with no member yet (refusals, sites not yet seen)
    // are left out of a scrape until they have one; checked after the refusal.
    for family in [
        "fedslice_rounds_opened",
        "fedslice_rounds_closed",
        "fedslice_updates_accepted",
        "fedslice_update_bytes_received",
        "fedslice_model_bytes_sent",
        "fedslice_round_duration_seconds",
        "fedslice_aggregation_seconds",
        "fedslice_database_bytes",
        "fedslice_blob_store_bytes",
        "fedslice_certificate_expiry_timestamp_seconds",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family} missing:\n{text}"
        );
    }
    assert_eq!(before.get(refused), None, "{text}");
    assert!(before["fedslice_database_bytes"] > 0.0, "{text}");
    let server_expiry =
        before["fedslice_certificate_expiry_timestamp_seconds{certificate=\"server\"}"];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    assert!(server_expiry > now + 300.0 * 86_400.0, "{text}");

    // A site sends something that is not an update: refused as a bad request.
    let read = |name: &str| std::fs::read_to_string(bundle.join(name)).expect("bundle file");
    let tls = fedslice::tls::client_config(&read("ca.pem"), &read("site.pem"), &read("site.key"))
        .expect("client TLS");
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let garbage = vec![7u8; 1000];
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let status = runtime.block_on(async {
        client
            .post(format!("{}/v1/updates", consortium.url))
            .body(garbage.clone())
            .send()
            .await
            .expect("send update")
            .status()
    });
    assert_eq!(status.as_u16(), 400);

    let (text, after) = scrape(&consortium);
    assert_eq!(after.get(refused), Some(&1.0), "{text}");
    assert!(
        after["fedslice_update_bytes_received_total"] >= garbage.len() as f64,
        "{text}"
    );
    assert_eq!(after["fedslice_updates_accepted_total"], 0.0, "{text}");
    let seen = after["fedslice_site_last_seen_unix_seconds{site=\"site-00\"}"];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as f64;
    assert!((now - seen).abs() < 120.0, "{seen} vs {now}");
}

#[test]
fn status_says_stopped_when_no_service_runs() {
    let mut consortium = Consortium::init();
    let said = consortium.aggregator(&["status"]);
    assert!(said.contains("service: stopped"), "{said}");

    consortium.serve();
    let operator = consortium.operator_url();
    let said = consortium.aggregator(&["status"]);
    assert!(said.contains("service: running"), "{said}");
    assert!(said.contains(&operator), "{said}");
    assert_eq!(consortium.status()["service"]["running"], true);

    consortium.terminate_server(Duration::from_secs(10));
    let said = consortium.aggregator(&["status"]);
    assert!(said.contains("service: stopped"), "{said}");
    assert_eq!(consortium.status()["service"]["running"], false);

    // SIGKILL leaves no chance to clean up; the lock dies with the process.
    consortium.serve();
    assert_eq!(consortium.status()["service"]["running"], true);
    consortium.kill_server();
    assert_eq!(consortium.status()["service"]["running"], false);
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn beyond_loopback_the_operator_listener_needs_a_token() {
    let consortium = Consortium::init();
    let serve = |extra: &[&str]| {
        let mut command = fedslice();
        command
            .arg("aggregator")
            .arg("--dir")
            .arg(&consortium.state)
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{}", consortium.port),
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        command
    };
    let refused = serve(&["--operator-listen", "0.0.0.0:0"])
        .output()
        .expect("run serve");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("not a loopback address"), "{stderr}");

    let token = "a-long-enough-operator-token";
    let token_file = consortium.dir.path().join("operator.token");
    std::fs::write(&token_file, format!("{token}\n")).expect("token file");
    let _server = Server(
        serve(&[
            "--operator-listen",
            "0.0.0.0:0",
            "--operator-token-file",
            &token_file.display().to_string(),
        ])
        .stderr(Stdio::null())
        .spawn()
        .expect("start serve"),
    );
    let operator = consortium.operator_url();
    let started = Instant::now();
    while TcpStream::connect(
        operator
            .trim_start_matches("http://")
            .replace("0.0.0.0", "127.0.0.1"),
    )
    .is_err()
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never listened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(http_get(&operator, "/metrics", None).0, 401);
    assert_eq!(
        http_get(&operator, "/healthz", Some("wrong-token-of-some-length")).0,
        401
    );
    assert_eq!(http_get(&operator, "/healthz", Some(token)).0, 200);
    let (status, text) = http_get_with(
        &operator,
        "/metrics",
        &format!("Authorization: Bearer {token}\r\nAccept: application/openmetrics-text\r\n"),
    );
    assert_eq!(status, 200);
    check_exposition(&text);
}

#[test]
fn round_counters_move_as_rounds_close() {
    let mut consortium = Consortium::init();
    let data = consortium.dir.path().join("data");
    common::phantom(&data, 1, 6, 17, 48);
    let bundle = consortium.add_site("site-00", &data.join("site-00"));
    consortium.pretrain_job(2, 1, "10m");
    consortium.serve();
    let agent = consortium.spawn_agent(&bundle);
    consortium.expect_agents_succeed(vec![agent], &[bundle], Duration::from_secs(600));

    let (text, samples) = scrape(&consortium);
    let value = |series: &str| samples.get(series).copied().unwrap_or(f64::NAN);
    assert_eq!(value("fedslice_rounds_opened_total"), 2.0, "{text}");
    assert_eq!(value("fedslice_rounds_closed_total"), 2.0, "{text}");
    assert_eq!(value("fedslice_updates_accepted_total"), 2.0, "{text}");
    assert_eq!(
        value("fedslice_round_duration_seconds_count"),
        2.0,
        "{text}"
    );
    assert_eq!(value("fedslice_aggregation_seconds_count"), 2.0, "{text}");
    assert!(value("fedslice_model_bytes_sent_total") > 0.0, "{text}");
    assert!(
        value("fedslice_update_bytes_received_total") > 0.0,
        "{text}"
    );
    assert!(value("fedslice_blob_store_bytes") > 0.0, "{text}");
}

/// Issue 15 item 2: a site mid-training reads as training, with its epoch
/// and step, agent version and device, in `aggregator status`; once the job
/// is done its last heartbeat says idle, in status and in `/metrics`.
#[test]
fn a_training_site_shows_as_training_in_status() {
    let mut consortium = Consortium::init();
    let data = consortium.dir.path().join("data");
    common::phantom(&data, 1, 6, 17, 48);
    let bundle = consortium.add_site("site-00", &data.join("site-00"));
    // Enough local epochs that training outlasts many status polls.
    let epochs = "20";
    let job = consortium
        .aggregator(&[
            "job",
            "create",
            "--phase",
            "pretrain",
            "--rounds",
            "1",
            "--local-epochs",
            epochs,
        ])
        .trim()
        .to_string();
    consortium.serve();
    let agent = consortium.spawn_agent(&bundle);

    let started = Instant::now();
    let beat = loop {
        let status = consortium.status();
        let beat = &status["heartbeats"]["site-00"];
        if beat["state"] == "training" {
            break beat.clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "never seen training: {status}\nagent log:\n{}",
            std::fs::read_to_string(bundle.join("agent.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(beat["job"], job.as_str(), "{beat}");
    assert_eq!(beat["round"], 1, "{beat}");
    assert_eq!(beat["epochs"], 20, "{beat}");
    assert_eq!(beat["agent_version"], env!("CARGO_PKG_VERSION"), "{beat}");
    assert!(!beat["device"].as_str().unwrap_or("").is_empty(), "{beat}");
    assert!(beat["step"].as_u64() <= beat["steps"].as_u64(), "{beat}");
    let text = consortium.aggregator(&["status"]);
    let line = text
        .lines()
        .find(|l| l.starts_with("site-00"))
        .unwrap_or_else(|| panic!("no site line: {text}"));
    // Training may have moved on by now; what it says must be a state.
    assert!(
        ["training", "uploading", "idle"]
            .iter()
            .any(|s| line.contains(s)),
        "{text}"
    );
    assert!(
        text.contains(&format!("agent {} on ", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    assert!(text.contains("certificate expires 20"), "{text}");
    assert!(text.contains(" ago)"), "{text}");

    consortium.expect_agents_succeed(vec![agent], &[bundle], Duration::from_secs(600));
    let status = consortium.status();
    assert_eq!(status["heartbeats"]["site-00"]["state"], "idle", "{status}");
    let (text, samples) = scrape(&consortium);
    let state = |s: &str| {
        samples
            .get(&format!(
                "fedslice_site_state{{site=\"site-00\",state=\"{s}\"}}"
            ))
            .copied()
    };
    assert_eq!(state("idle"), Some(1.0), "{text}");
    assert_eq!(state("training"), Some(0.0), "{text}");
}
