//! A site misconfigured in each way the operations review met (issue 16):
//! `site-agent run` stops at once with the permanent-error exit status that
//! systemd's `RestartPreventExitStatus=` lists and a message that names the
//! fix, and `site-agent check` prints the failing line and exits non-zero. A
//! good bundle passes every check.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::{Consortium, fedslice, phantom, wait_for};
use fedslice::process::Permanent;

struct Sites {
    consortium: Consortium,
    /// Another consortium, never served: its CA and bundles are the "wrong" ones.
    other: Consortium,
    good: PathBuf,
    /// A second site of the same consortium (its key is "another key").
    neighbour: PathBuf,
    /// A site of the other consortium.
    foreign: PathBuf,
}

fn sites() -> Sites {
    let mut consortium = Consortium::init();
    let data = consortium.dir.path().join("data");
    phantom(&data, 1, 4, 5, 48);
    let good = consortium.add_site("st-olav", &data.join("site-00"));
    let neighbour = consortium.add_site("haukeland", &data.join("site-00"));
    consortium.serve();
    let other = Consortium::init();
    let foreign = other.add_site("st-olav", &data.join("site-00"));
    Sites {
        consortium,
        other,
        good,
        neighbour,
        foreign,
    }
}

/// A copy of `base` (bundle files and site.toml) in `name`, changed by `edit`.
fn variant(base: &Path, name: &str, edit: impl FnOnce(&Path)) -> PathBuf {
    let dir = base.with_file_name(name);
    std::fs::create_dir_all(&dir).expect("variant folder");
    for file in ["ca.pem", "site.pem", "site.key", "site.toml"] {
        std::fs::copy(base.join(file), dir.join(file)).expect("copy bundle file");
    }
    edit(&dir);
    dir.join("site.toml")
}

fn edit_toml(dir: &Path, from: &str, to: &str) {
    let path = dir.join("site.toml");
    let text = std::fs::read_to_string(&path).expect("site.toml");
    assert!(text.contains(from), "{from} not in {text}");
    std::fs::write(&path, text.replace(from, to)).expect("write site.toml");
}

fn run_agent(config: &Path) -> Output {
    let child = fedslice()
        .args([
            "site-agent",
            "run",
            "--until-idle",
            "--poll-wait",
            "1",
            "--config",
        ])
        .arg(config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start site agent");
    wait_for(child, Duration::from_secs(120), "site-agent run")
}

fn check(config: &Path) -> (Option<i32>, String) {
    let out = fedslice()
        .args(["site-agent", "check", "--config"])
        .arg(config)
        .output()
        .expect("run site-agent check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// `run` exits with `kind`'s status and says `words`; nothing else.
fn assert_run_stops(config: &Path, kind: Permanent, words: &str) -> String {
    let out = run_agent(config);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(i32::from(kind.code())),
        "{kind} expected:\n{stderr}"
    );
    assert!(stderr.contains(words), "`{words}` not in:\n{stderr}");
    assert!(
        stderr.contains("will not go away by retrying"),
        "the permanent error is not said to be one:\n{stderr}"
    );
    stderr
}

/// `check` exits non-zero and its line for `name` fails, saying `words`.
fn assert_check_fails(config: &Path, name: &str, words: &str) -> String {
    let (code, text) = check(config);
    assert!(matches!(code, Some(c) if c != 0), "check passed:\n{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("FAIL") && l[4..].trim_start().starts_with(name))
        .unwrap_or_else(|| panic!("no failing `{name}` line:\n{text}"));
    assert!(line.contains(words), "`{words}` not in `{line}`:\n{text}");
    text
}

#[test]
fn each_misconfiguration_stops_the_agent_and_fails_its_check() {
    let s = sites();

    // A good bundle passes every check.
    let (code, text) = check(&s.good.join("site.toml"));
    assert_eq!(code, Some(0), "{text}");
    for name in [
        "config",
        "key and certificate",
        "consortium CA",
        "aggregator reachable",
        "TLS handshake",
        "enrolment",
        "data",
        "cache",
        "device",
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("PASS") && l[4..].trim_start().starts_with(name)),
            "no passing `{name}` line:\n{text}"
        );
    }
    assert!(text.contains("site `st-olav`"), "{text}");
    assert!(text.contains(": 4 usable sagittal exams of 4,"), "{text}");

    // A typo in a key: the parse error names it.
    let typo = variant(&s.good, "typo", |d| {
        edit_toml(d, "aggregator_url", "agregator_url")
    });
    assert_run_stops(&typo, Permanent::Config, "unknown field `agregator_url`");
    assert_check_fails(&typo, "config", "agregator_url");

    // `data` as `site add` wrote it.
    let placeholder = variant(&s.good, "placeholder", |d| {
        let path = d.join("site.toml");
        let text = std::fs::read_to_string(&path).expect("site.toml");
        let text: String = text
            .lines()
            .map(|l| {
                if l.starts_with("data = ") {
                    "data = \"/path/to/this/site/knee-mri\"".to_string()
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(&path, text).expect("write site.toml");
    });
    assert_run_stops(&placeholder, Permanent::Config, "placeholder value");
    assert_check_fails(&placeholder, "data", "placeholder value");

    // A missing key is found before the data folder is listed: with a data
    // folder that does not exist either, the key is what the agent names.
    let no_key = variant(&s.good, "no-key", |d| {
        edit_toml(d, "key = \"site.key\"", "key = \"nokey.key\"");
        let path = d.join("site.toml");
        let text = std::fs::read_to_string(&path).expect("site.toml");
        let text: String = text
            .lines()
            .map(|l| {
                if l.starts_with("data = ") {
                    "data = \"no-such-data\"".to_string()
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(&path, text).expect("write site.toml");
    });
    let stderr = assert_run_stops(&no_key, Permanent::Credentials, "nokey.key");
    assert!(
        !stderr.contains("no-such-data") && !stderr.contains("site agent ready"),
        "the data folder was looked at before the key:\n{stderr}"
    );
    assert_check_fails(&no_key, "key and certificate", "nokey.key");

    // Another site's key beside this site's certificate.
    let wrong_key = variant(&s.good, "wrong-key", |d| {
        std::fs::copy(s.neighbour.join("site.key"), d.join("site.key")).expect("copy key");
    });
    assert_run_stops(&wrong_key, Permanent::Credentials, "do not belong together");
    assert_check_fails(&wrong_key, "key and certificate", "do not belong together");

    // Another consortium's CA beside this consortium's certificate.
    let wrong_ca = variant(&s.good, "wrong-ca", |d| {
        std::fs::copy(s.foreign.join("ca.pem"), d.join("ca.pem")).expect("copy CA");
    });
    assert_run_stops(&wrong_ca, Permanent::TlsTrust, "is not signed by");
    assert_check_fails(&wrong_ca, "consortium CA", "is not signed by");

    // A whole bundle of the other consortium, pointed at this aggregator:
    // the server's certificate is the first thing that does not fit.
    let foreign = variant(&s.foreign, "foreign", |d| {
        edit_toml(d, &s.other.url, &s.consortium.url)
    });
    assert_run_stops(
        &foreign,
        Permanent::TlsTrust,
        "the server's certificate is not signed by your consortium CA",
    );
    assert_check_fails(
        &foreign,
        "TLS handshake",
        "the server's certificate is not signed by your consortium CA",
    );

    // Nothing listens at the URL: the check says so; it is not permanent.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let down = variant(&s.good, "down", |d| {
        edit_toml(d, &s.consortium.url, &format!("https://127.0.0.1:{closed}"))
    });
    assert_check_fails(&down, "aggregator reachable", "is the aggregator running");

    // A revoked site: 77, and systemd leaves it stopped.
    s.consortium.aggregator(&["site", "revoke", "st-olav"]);
    let revoked = s.good.join("site.toml");
    let stderr = assert_run_stops(&revoked, Permanent::Revoked, "has been revoked");
    assert!(
        !stderr.contains("site agent ready"),
        "the data folder was listed before the aggregator was asked:\n{stderr}"
    );
    assert_check_fails(&revoked, "enrolment", "has been revoked");
}

#[test]
fn the_aggregator_stops_on_a_missing_state_or_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = fedslice()
        .arg("aggregator")
        .arg("--dir")
        .arg(dir.path().join("never-initialised"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--operator-listen",
            "off",
        ])
        .output()
        .expect("run aggregator");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(i32::from(Permanent::Config.code())),
        "{stderr}"
    );
    assert!(stderr.contains("aggregator init"), "{stderr}");

    let consortium = Consortium::init();
    std::fs::remove_file(consortium.state.join("pki/server.key")).expect("remove server key");
    let out = consortium.aggregator_output(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--operator-listen",
        "off",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(i32::from(Permanent::Credentials.code())),
        "{stderr}"
    );
    assert!(stderr.contains("server.key"), "{stderr}");
}
