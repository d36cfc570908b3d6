//! `site-agent check`: the preflight a hospital's IT staff run before the
//! first start (and after any change). One line per check, PASS or FAIL with
//! the fix in plain words, in the order a fault would be found: a later check
//! that cannot run because an earlier one failed says so (SKIP) rather than
//! failing for the same reason twice.

use std::net::ToSocketAddrs;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fedslice::process::Permanent;

use crate::client::Client;
use crate::config::SiteConfig;
use crate::credentials::{self, CertificateInfo, Credentials};

/// Below this much free space the cache cannot hold even one vit-small
/// global model, its update and the prepared slices of a few hundred exams.
const MIN_CACHE_FREE: u64 = 1 << 30;
/// Certificates closer to expiry than this are worth a warning.
const EXPIRY_WARNING_DAYS: i64 = 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    /// Passes, with something to act on soon (a certificate about to expire).
    Warn,
    Fail,
    /// Not run: an earlier check it depends on failed.
    Skip,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Pass => "PASS",
            Outcome::Warn => "WARN",
            Outcome::Fail => "FAIL",
            Outcome::Skip => "SKIP",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Line {
    pub outcome: Outcome,
    pub check: &'static str,
    pub detail: String,
}

impl std::fmt::Display for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}  {:<22} {}",
            self.outcome.label(),
            self.check,
            self.detail
        )
    }
}

struct Report {
    lines: Vec<Line>,
}

impl Report {
    fn add(&mut self, outcome: Outcome, check: &'static str, detail: impl Into<String>) {
        let line = Line {
            outcome,
            check,
            detail: one_line(&detail.into()),
        };
        println!("{line}");
        self.lines.push(line);
    }
    fn pass(&mut self, check: &'static str, detail: impl Into<String>) {
        self.add(Outcome::Pass, check, detail);
    }
    fn fail(&mut self, check: &'static str, detail: impl Into<String>) {
        self.add(Outcome::Fail, check, detail);
    }
    fn skip(&mut self, check: &'static str, because: &str) {
        self.add(Outcome::Skip, check, format!("not checked: {because}"));
    }
}

/// A multi-line message (a TOML error quotes the line with a caret under
/// it) as one line: the quoted source is dropped, the words are kept.
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| {
            let quoted = l
                .trim_start_matches(|c: char| c.is_ascii_digit())
                .trim_start();
            !l.is_empty() && !quoted.starts_with('|')
        })
        .collect::<Vec<_>>()
        .join(": ")
        .replace(": ;", ";")
}

/// `{:#}` of an error, whose messages already name the file and the fix.
fn words(e: &anyhow::Error) -> String {
    format!("{e:#}")
}

fn validity(info: &CertificateInfo, now: i64) -> (Outcome, String) {
    let days = info.days_left(now);
    let text = format!(
        "valid until {} ({days} days left)",
        credentials::date(info.not_after)
    );
    if days < EXPIRY_WARNING_DAYS {
        (Outcome::Warn, format!("{text}: renew it soon"))
    } else {
        (Outcome::Pass, text)
    }
}

/// Runs every check, prints one line each, and fails if any failed.
pub fn run(config_path: &Path, cache_dir: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    let lines = checks(config_path, cache_dir);
    let failed = lines.iter().filter(|l| l.outcome == Outcome::Fail).count();
    if failed > 0 {
        anyhow::bail!(
            "{failed} of {} checks failed; fix the FAIL lines above and run `site-agent check` again",
            lines.len()
        );
    }
    println!(
        "all checks passed: `site-agent run --config {}` is ready to start",
        config_path.display()
    );
    Ok(())
}

pub fn checks(config_path: &Path, cache_dir: Option<std::path::PathBuf>) -> Vec<Line> {
    let mut report = Report { lines: Vec::new() };
    let config = match SiteConfig::load(config_path) {
        Ok(mut config) => {
            if let Some(dir) = cache_dir {
                config.cache_dir = dir;
            }
            report.pass("config", format!("{} parses", config_path.display()));
            config
        }
        Err(e) => {
            report.fail(
                "config",
                format!("{}; fix: correct that entry in site.toml", words(&e)),
            );
            for check in [
                "key and certificate",
                "consortium CA",
                "aggregator reachable",
                "TLS handshake",
                "enrolment",
                "data",
                "cache",
                "device",
            ] {
                report.skip(check, "the configuration does not load");
            }
            return report.lines;
        }
    };
    let credentials = check_credentials(&mut report, &config);
    check_aggregator(&mut report, &config, credentials);
    check_data(&mut report, &config, config_path);
    check_cache(&mut report, &config);
    check_device(&mut report, &config);
    report.lines
}

fn check_credentials(report: &mut Report, config: &SiteConfig) -> Option<Credentials> {
    let now = credentials::now();
    match credentials::load_unverified(config) {
        Ok(creds) => {
            let (outcome, validity) = validity(&creds.certificate, now);
            report.add(
                outcome,
                "key and certificate",
                format!(
                    "{} (site `{}`) and {} belong together; {validity}",
                    config.cert.display(),
                    creds.certificate.name,
                    config.key.display()
                ),
            );
            match credentials::verify_issuer(config) {
                Ok(()) => {
                    report.pass(
                        "consortium CA",
                        format!(
                            "{} issued this site's certificate",
                            config.ca_cert.display()
                        ),
                    );
                    Some(creds)
                }
                Err(e) => {
                    report.fail("consortium CA", words(&e));
                    None
                }
            }
        }
        Err(e) => {
            report.fail("key and certificate", words(&e));
            report.skip("consortium CA", "the site's certificate is unusable");
            None
        }
    }
}

fn proxied() -> bool {
    ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()))
}

fn check_aggregator(report: &mut Report, config: &SiteConfig, credentials: Option<Credentials>) {
    let Some(credentials) = credentials else {
        for check in ["aggregator reachable", "TLS handshake", "enrolment"] {
            report.skip(check, "the site's TLS bundle is unusable");
        }
        return;
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            report.fail(
                "aggregator reachable",
                format!("starting the async runtime: {e}"),
            );
            return;
        }
    };
    let _context = runtime.enter();
    let url = &config.aggregator_url;
    let (host, port) = match reqwest::Url::parse(url) {
        Ok(parsed) => match (parsed.host_str(), parsed.port_or_known_default()) {
            (Some(host), Some(port)) => (host.trim_matches(['[', ']']).to_string(), port),
            _ => {
                report.fail(
                    "aggregator reachable",
                    format!("`{url}` names no host; fix aggregator_url in site.toml"),
                );
                report.skip("TLS handshake", "no aggregator address");
                report.skip("enrolment", "no aggregator address");
                return;
            }
        },
        Err(e) => {
            report.fail(
                "aggregator reachable",
                format!("`{url}` is not a URL ({e}); fix aggregator_url in site.toml"),
            );
            report.skip("TLS handshake", "no aggregator address");
            report.skip("enrolment", "no aggregator address");
            return;
        }
    };
    let tls = Arc::new(credentials.tls.clone());
    if proxied() {
        // The direct probes would bypass the proxy the agent itself uses.
        report.skip(
            "aggregator reachable",
            "HTTPS_PROXY is set; the enrolment check goes through it",
        );
        report.skip(
            "TLS handshake",
            "HTTPS_PROXY is set; the enrolment check goes through it",
        );
    } else if !handshake(report, &runtime, &host, port, tls) {
        report.skip("enrolment", "no TLS connection to the aggregator");
        return;
    }
    match Client::with_tls(config, credentials.tls) {
        Ok(client) => match runtime.block_on(client.hello()) {
            Ok(()) => report.pass(
                "enrolment",
                format!(
                    "the aggregator accepts site `{}` (enrolled, not revoked)",
                    credentials.certificate.name
                ),
            ),
            Err(e) => {
                let fix = match fedslice::process::permanent_kind(&e) {
                    Some(Permanent::Revoked) => {
                        "; fix: ask the consortium operator to enrol this site again and install the new bundle"
                    }
                    Some(Permanent::TlsTrust) => {
                        "; fix: install the site bundle this consortium's operator issued"
                    }
                    _ => "",
                };
                report.fail("enrolment", format!("{}{fix}", words(&e)));
            }
        },
        Err(e) => report.fail("enrolment", words(&e)),
    }
}

/// DNS and TCP, then the TLS handshake with the server's certificate
/// checked against ca_cert and the URL's host; true when both passed.
fn handshake(
    report: &mut Report,
    runtime: &tokio::runtime::Runtime,
    host: &str,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
) -> bool {
    let addrs: Vec<std::net::SocketAddr> = match (host, port).to_socket_addrs() {
        Ok(addrs) => addrs.collect(),
        Err(e) => {
            report.fail(
                "aggregator reachable",
                format!("cannot resolve `{host}` ({e}); fix: check aggregator_url and this machine's DNS"),
            );
            report.skip("TLS handshake", "the aggregator is unreachable");
            return false;
        }
    };
    let connected = runtime.block_on(async {
        let mut last = None;
        for addr in &addrs {
            match tokio::time::timeout(
                Duration::from_secs(10),
                tokio::net::TcpStream::connect(addr),
            )
            .await
            {
                Ok(Ok(tcp)) => return Ok((tcp, *addr)),
                Ok(Err(e)) => last = Some(e.to_string()),
                Err(_) => last = Some("no answer within 10 s".into()),
            }
        }
        Err(last.unwrap_or_else(|| "no address".into()))
    });
    let (tcp, addr) = match connected {
        Ok(connected) => connected,
        Err(e) => {
            report.fail(
                "aggregator reachable",
                format!("{host}:{port}: {e}; fix: is the aggregator running, and does the hospital firewall let this machine out to that port?"),
            );
            report.skip("TLS handshake", "the aggregator is unreachable");
            return false;
        }
    };
    report.pass(
        "aggregator reachable",
        format!("{host}:{port} answers at {addr}"),
    );
    let name = match rustls::pki_types::ServerName::try_from(host.to_string()) {
        Ok(name) => name,
        Err(e) => {
            report.fail(
                "TLS handshake",
                format!("`{host}` is not a host name ({e})"),
            );
            return false;
        }
    };
    let connector = tokio_rustls::TlsConnector::from(tls);
    let result = runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(15), connector.connect(name, tcp)).await
    });
    match result {
        Ok(Ok(stream)) => {
            let server = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| CertificateInfo::from_der(c.as_ref()));
            match server {
                Some(Ok(info)) => {
                    let (outcome, validity) = validity(&info, credentials::now());
                    report.add(
                        outcome,
                        "TLS handshake",
                        format!(
                            "the server is `{}`, signed by your consortium CA, named {host}; {validity}; fingerprint {}",
                            info.name, info.fingerprint
                        ),
                    );
                }
                _ => report.pass(
                    "TLS handshake",
                    format!(
                        "the server's certificate is signed by your consortium CA and names {host}"
                    ),
                ),
            }
            true
        }
        Ok(Err(e)) => {
            let why = fedslice::tls::explain_trust_failure(&e, fedslice::tls::Side::Site)
                .map_or_else(|| e.to_string(), |words| format!("{words} ({e})"));
            report.fail("TLS handshake", why);
            false
        }
        Err(_) => {
            report.fail("TLS handshake", format!("{host}:{port} accepted the connection but did not complete a TLS handshake within 15 s: is that port the aggregator's?"));
            false
        }
    }
}

fn check_data(report: &mut Report, config: &SiteConfig, config_path: &Path) {
    if let Err(e) = config.ensure_data_set(config_path) {
        report.fail("data", words(&e));
        return;
    }
    match fedslice::data::inventory::inspect_in(&config.data, config.plane) {
        Ok(inventory) => {
            let usable = inventory.exams.iter().filter(|e| e.usable).count();
            let detail = format!(
                "{}: {usable} usable {} exams of {}, {} files skipped",
                config.data.display(),
                config.plane,
                inventory.exams.len(),
                inventory.skipped.len()
            );
            if usable == 0 {
                report.fail(
                    "data",
                    format!("{detail}; fix: point `data` at the site's exams (`site-agent inspect --data DIR` lists why each was left out)"),
                );
            } else {
                report.pass("data", detail);
            }
        }
        Err(e) => report.fail(
            "data",
            format!(
                "{} cannot be read ({e}); fix: check the path and that the agent's user may read it",
                config.data.display()
            ),
        ),
    }
}

fn check_cache(report: &mut Report, config: &SiteConfig) {
    let dir = &config.cache_dir;
    let probe = dir.join(".site-agent-check");
    let writable = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&probe, b"probe"))
        .and_then(|()| std::fs::remove_file(&probe));
    if let Err(e) = writable {
        report.fail(
            "cache",
            format!(
                "cannot write in {} ({e}); fix: create it, owned by the user the agent runs as",
                dir.display()
            ),
        );
        return;
    }
    match rustix::fs::statvfs(dir) {
        Ok(fs) => {
            let free = fs.f_bavail.saturating_mul(fs.f_frsize);
            let gib = free as f64 / f64::from(1u32 << 30);
            if free < MIN_CACHE_FREE {
                report.fail(
                    "cache",
                    format!(
                        "{}: only {gib:.2} GiB free; fix: free space there or move cache_dir (at least 1 GiB)",
                        dir.display()
                    ),
                );
            } else {
                report.pass(
                    "cache",
                    format!("{} is writable, {gib:.1} GiB free", dir.display()),
                );
            }
        }
        Err(e) => report.fail(
            "cache",
            format!("{}: free space unknown ({e})", dir.display()),
        ),
    }
}

fn check_device(report: &mut Report, config: &SiteConfig) {
    let kind: fedslice::device::BackendKind = match config.device.parse() {
        Ok(kind) => kind,
        Err(e) => {
            report.fail(
                "device",
                format!(
                    "`device = \"{}\"`: {e}; fix: use flex (CPU) or wgpu (GPU)",
                    config.device
                ),
            );
            return;
        }
    };
    match fedslice::device::open(kind) {
        Ok(_) => report.pass("device", format!("{kind} is available")),
        Err(e) => report.fail(
            "device",
            format!("{kind}: {e}; fix: install the GPU driver, or set device = \"flex\" to train on the CPU"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_toml_error_reads_as_one_line() {
        let text = "parsing site.toml: TOML parse error at line 2, column 1\n  |\n2 | agregator_url = \"x\"\n  | ^^^^\nunknown field `agregator_url`\n; fix: correct it";
        assert_eq!(
            one_line(text),
            "parsing site.toml: TOML parse error at line 2, column 1: unknown field `agregator_url`; fix: correct it"
        );
    }
}
