//! The operator listener (issue 15 item 3): plain HTTP for the people who run
//! the aggregator and their monitoring, apart from the sites' mutual-TLS port.
//!
//! - `/healthz`: the process answers.
//! - `/readyz`: the database answers and the blob store takes a write.
//! - `/metrics`: Prometheus/OpenMetrics text.
//! - `/`: the status page for people ([`crate::status_page`]).
//!
//! It binds loopback by default. Anywhere else it needs a bearer token (from
//! a file, so it is not in `ps` output), compared in constant time; with a
//! token every path needs it, loopback included.
//!
//! Also here: the serve lock, a file in the state folder that a running
//! `aggregator serve` holds locked. `aggregator status` tries the lock to tell
//! a running service from a stopped one; the OS drops the lock when the
//! process dies, however it dies, so a killed service reads as stopped.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use anyhow::Context;
use axum::Router;
use axum::extract::{Query, Request, State as AxumState};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use fedslice::protocol::Activity;

use crate::engine::{Engine, Rejection, StatePaths};

/// Where the operator listener binds unless told otherwise: loopback only,
/// on the port commonly used by exporters of this kind.
pub const DEFAULT_OPERATOR_LISTEN: &str = "127.0.0.1:9464";

type Labels = Vec<(String, String)>;

/// The aggregator's counters, histograms and gauges. Counters and histograms
/// move where the engine records the event; gauges read from disk and the
/// database at scrape time (see [`Metrics::refresh`]).
pub struct Metrics {
    registry: Registry,
    pub rounds_opened: Counter,
    pub rounds_closed: Counter,
    pub updates_accepted: Counter,
    pub updates_refused: Family<Labels, Counter>,
    pub requests_refused: Family<Labels, Counter>,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    pub round_duration: Histogram,
    pub aggregation_time: Histogram,
    site_last_seen: Family<Labels, Gauge>,
    site_state: Family<Labels, Gauge>,
    site_heartbeat: Family<Labels, Gauge>,
    site_training_progress: Family<Labels, Gauge<f64, AtomicU64>>,
    database_bytes: Gauge,
    blob_store_bytes: Gauge,
    certificate_expiry: Family<Labels, Gauge>,
    /// Per DP job: epsilon, delta, z, C, noised rounds, sampling rate (label `job`).
    dp: [Family<Labels, Gauge<f64, AtomicU64>>; 6],
}

/// Names and help of the privacy gauges, in the order of [`Metrics::dp`].
const DP_GAUGES: [(&str, &str); 6] = [
    (
        "dp_epsilon",
        "Epsilon of everything the consortium released (the privacy ledger), at the job's delta",
    ),
    ("dp_delta", "Delta of the job's reported (epsilon, delta)"),
    ("dp_noise_multiplier", "Noise multiplier z of the DP job"),
    (
        "dp_clip_norm",
        "L2 clip norm C of the site updates of the DP job",
    ),
    (
        "dp_noised_rounds",
        "Rounds of the DP job released with noise",
    ),
    (
        "dp_sampling_rate",
        "Poisson site-sampling rate q of the DP job (1 = every site)",
    ),
];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("fedslice");
        let rounds_opened = Counter::default();
        let rounds_closed = Counter::default();
        let updates_accepted = Counter::default();
        let updates_refused = Family::<Labels, Counter>::default();
        let requests_refused = Family::<Labels, Counter>::default();
        let bytes_in = Counter::default();
        let bytes_out = Counter::default();
        // Rounds take from seconds (test presets) to hours (deadline-bound).
        let round_duration = Histogram::new(exponential_buckets(1.0, 4.0, 9));
        // Aggregation runs from milliseconds (small models) to minutes.
        let aggregation_time = Histogram::new(exponential_buckets(0.001, 4.0, 10));
        let site_last_seen = Family::<Labels, Gauge>::default();
        let site_state = Family::<Labels, Gauge>::default();
        let site_heartbeat = Family::<Labels, Gauge>::default();
        let site_training_progress = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        let database_bytes = Gauge::default();
        let blob_store_bytes = Gauge::default();
        let certificate_expiry = Family::<Labels, Gauge>::default();
        registry.register("rounds_opened", "Rounds opened", rounds_opened.clone());
        registry.register(
            "rounds_closed",
            "Rounds closed with a new global model",
            rounds_closed.clone(),
        );
        registry.register(
            "updates_accepted",
            "Site updates accepted (duplicates of a counted update included)",
            updates_accepted.clone(),
        );
        registry.register(
            "updates_refused",
            "Site updates refused, by reason",
            updates_refused.clone(),
        );
        registry.register(
            "requests_refused",
            "Site requests refused before reaching an endpoint (unknown, revoked or rate limited), by reason",
            requests_refused.clone(),
        );
        registry.register(
            "update_bytes_received",
            "Bytes of site updates received, counted as they arrive (refused ones included)",
            bytes_in.clone(),
        );
        registry.register(
            "model_bytes_sent",
            "Bytes of global models sent to sites",
            bytes_out.clone(),
        );
        registry.register(
            "round_duration_seconds",
            "Time from a round opening to its closing",
            round_duration.clone(),
        );
        registry.register(
            "aggregation_seconds",
            "Time to aggregate a round's updates into the new global model",
            aggregation_time.clone(),
        );
        registry.register(
            "site_last_seen_unix_seconds",
            "When each site last made an authorised request",
            site_last_seen.clone(),
        );
        registry.register(
            "site_state",
            "Each site's state from its last heartbeat: 1 for the current one, 0 for the others",
            site_state.clone(),
        );
        registry.register(
            "site_heartbeat_unix_seconds",
            "When each site's last heartbeat arrived",
            site_heartbeat.clone(),
        );
        registry.register(
            "site_training_progress_ratio",
            "Steps done over steps planned of a training site's local round",
            site_training_progress.clone(),
        );
        registry.register(
            "database_bytes",
            "Size of the SQLite database (with its WAL)",
            database_bytes.clone(),
        );
        registry.register(
            "blob_store_bytes",
            "Size of the blob store (models and updates)",
            blob_store_bytes.clone(),
        );
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "When a certificate expires, Unix time (ca, server, and each site's)",
            certificate_expiry.clone(),
        );
        let dp: [Family<Labels, Gauge<f64, AtomicU64>>; 6] = Default::default();
        for ((name, help), family) in DP_GAUGES.iter().zip(&dp) {
            registry.register(*name, *help, family.clone());
        }
        Self {
            registry,
            rounds_opened,
            rounds_closed,
            updates_accepted,
            updates_refused,
            requests_refused,
            bytes_in,
            bytes_out,
            round_duration,
            aggregation_time,
            site_last_seen,
            site_state,
            site_heartbeat,
            site_training_progress,
            database_bytes,
            blob_store_bytes,
            certificate_expiry,
            dp,
        }
    }

    pub fn refused_update(&self, rejection: &Rejection) {
        self.updates_refused
            .get_or_create(&vec![("reason".into(), reason(rejection).into())])
            .inc();
    }

    pub fn refused_request(&self, why: &str) {
        self.requests_refused
            .get_or_create(&vec![("reason".into(), why.into())])
            .inc();
    }

    /// Reads the gauges that live outside the process (sizes, database rows,
    /// certificates). A failure leaves a gauge at its last value: a scrape
    /// should still answer with what it has.
    fn refresh(&self, engine: &Engine) {
        let paths = &engine.paths;
        let db = paths.db();
        let mut db_size = file_size(&db);
        db_size += file_size(&PathBuf::from(format!("{}-wal", db.display())));
        self.database_bytes.set(db_size as i64);
        self.blob_store_bytes.set(dir_size(&paths.blobs()) as i64);
        for (which, path) in [("ca", paths.ca_cert()), ("server", paths.server_cert())] {
            match cert_not_after(&path) {
                Ok(not_after) => {
                    self.certificate_expiry
                        .get_or_create(&vec![("certificate".into(), which.into())])
                        .set(not_after);
                }
                Err(e) => tracing::debug!("metrics: reading {}: {e:#}", path.display()),
            }
        }
        match engine.state().sites() {
            Ok(sites) => {
                for site in sites {
                    let label = vec![("site".into(), site.name.clone())];
                    if let Some(seen) = site.last_contact {
                        self.site_last_seen.get_or_create(&label).set(seen);
                    }
                    if site.status == "active" {
                        self.certificate_expiry
                            .get_or_create(&vec![(
                                "certificate".into(),
                                format!("site:{}", site.name),
                            )])
                            .set(site.not_after);
                    }
                }
            }
            Err(e) => tracing::debug!("metrics: reading sites: {e:#}"),
        }
        match engine.state().heartbeats() {
            Ok(beats) => {
                for (site, beat) in beats {
                    self.site_heartbeat
                        .get_or_create(&vec![("site".into(), site.clone())])
                        .set(beat.at);
                    let current = beat.beat.activity.name();
                    for state in Activity::NAMES {
                        self.site_state
                            .get_or_create(&vec![
                                ("site".into(), site.clone()),
                                ("state".into(), state.into()),
                            ])
                            .set(i64::from(state == current));
                    }
                    let progress = match beat.beat.activity {
                        Activity::Training { step, steps, .. } if steps > 0 => {
                            step as f64 / steps as f64
                        }
                        _ => 0.0,
                    };
                    self.site_training_progress
                        .get_or_create(&vec![("site".into(), site)])
                        .set(progress);
                }
            }
            Err(e) => tracing::debug!("metrics: reading heartbeats: {e:#}"),
        }
        if let Err(e) = self.refresh_privacy(engine) {
            tracing::debug!("metrics: reading the privacy ledger: {e:#}");
        }
    }

    fn refresh_privacy(&self, engine: &Engine) -> anyhow::Result<()> {
        let state = engine.state();
        for job in state.jobs()? {
            let Some(p) = crate::ledger::report(&state, &job)? else {
                continue;
            };
            let label = vec![("job".into(), job.id.clone())];
            let values = [
                p.epsilon,
                p.delta,
                p.noise_multiplier,
                p.clip_norm,
                p.rounds as f64,
                job.spec.dp.as_ref().map_or(1.0, |dp| dp.sampling_rate),
            ];
            for (family, value) in self.dp.iter().zip(values) {
                family.get_or_create(&label).set(value);
            }
        }
        Ok(())
    }

    fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// A short, stable label value for a refusal (its HTTP meaning).
fn reason(rejection: &Rejection) -> &'static str {
    match rejection {
        Rejection::Forbidden(_) => "forbidden",
        Rejection::NotFound(_) => "not_found",
        Rejection::BadRequest(_) => "bad_request",
        Rejection::Conflict(_) => "conflict",
        Rejection::Unprocessable(_) => "unprocessable",
        Rejection::TooLarge(_) => "too_large",
        Rejection::TooManyRequests(_) => "rate_limited",
        Rejection::ResumeElsewhere(_) => "resume_elsewhere",
        Rejection::Busy(_) => "busy",
        Rejection::Internal(_) => "internal",
    }
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(t) if t.is_dir() => dir_size(&entry.path()),
            Ok(_) => entry.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

fn cert_not_after(path: &Path) -> anyhow::Result<i64> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem)
        .map_err(|e| anyhow::anyhow!("not a PEM certificate: {e}"))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| anyhow::anyhow!("unreadable certificate: {e}"))?;
    Ok(cert.validity().not_after.timestamp())
}

/// How the operator listener is set up.
pub struct OperatorOptions {
    pub listen: SocketAddr,
    /// Whether `listen` is the default (a clash there is not fatal).
    pub default_address: bool,
    /// SHA-256 of the bearer token, when one is required.
    pub token_sha256: Option<[u8; 32]>,
}

impl OperatorOptions {
    /// Checks the loopback rule and reads the token file.
    /// `listen`: an address, `off`, or `None` for the default.
    pub fn new(listen: Option<&str>, token_file: Option<&Path>) -> anyhow::Result<Option<Self>> {
        let default_address = listen.is_none();
        let listen: SocketAddr = match listen {
            Some("off") => return Ok(None),
            Some(addr) => addr.parse().with_context(|| {
                format!("--operator-listen `{addr}`: expected HOST:PORT (an IP address) or `off`")
            })?,
            None => DEFAULT_OPERATOR_LISTEN
                .parse()
                .context("the default operator address")?,
        };
        let token_sha256 = match token_file {
            Some(path) => {
                let token = std::fs::read_to_string(path)
                    .with_context(|| format!("reading the operator token {}", path.display()))?;
                let token = token.trim();
                anyhow::ensure!(
                    token.len() >= 16,
                    "the operator token in {} is shorter than 16 characters",
                    path.display()
                );
                Some(Sha256::digest(token.as_bytes()).into())
            }
            None => None,
        };
        anyhow::ensure!(
            listen.ip().is_loopback() || token_sha256.is_some(),
            "--operator-listen {listen} is not a loopback address: give --operator-token-file \
             so that only operators can read it"
        );
        Ok(Some(Self {
            listen,
            default_address,
            token_sha256,
        }))
    }
}

#[derive(Clone)]
struct OperatorState {
    engine: Arc<Engine>,
    token_sha256: Option<[u8; 32]>,
}

async fn require_token(
    AxumState(op): AxumState<OperatorState>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(expected) = op.token_sha256 {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        // Hashing first makes both sides the same length, so the comparison
        // time says nothing about the token, not even its length.
        let given: [u8; 32] = Sha256::digest(given.trim().as_bytes()).into();
        if !bool::from(given.ct_eq(&expected)) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "operator token required\n",
            )
                .into_response();
        }
    }
    next.run(request).await
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(AxumState(op): AxumState<OperatorState>) -> Response {
    let engine = op.engine.clone();
    let checked = tokio::task::spawn_blocking(move || ready(&engine)).await;
    match checked {
        Ok(Ok(())) => (StatusCode::OK, "ready\n").into_response(),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {e:#}\n"),
        )
            .into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: check failed: {e}\n"),
        )
            .into_response(),
    }
}

/// The database answers a query and the blob store takes (and gives back) a
/// small write: the two things every round needs.
fn ready(engine: &Engine) -> anyhow::Result<()> {
    engine
        .state()
        .meta("port")
        .context("database not reachable")?;
    let probe = engine
        .paths
        .blobs()
        .join(format!(".ready-{}", std::process::id()));
    let written =
        File::create(&probe).and_then(|mut f| f.write_all(b"ready").and_then(|()| f.sync_all()));
    let _ = std::fs::remove_file(&probe);
    written.context("blob store not writable")?;
    Ok(())
}

async fn metrics(
    AxumState(op): AxumState<OperatorState>,
    headers: axum::http::HeaderMap,
) -> Response {
    // Prometheus asks for OpenMetrics; curl and `promtool check metrics`
    // read the older text format, which Prometheus also accepts.
    let open_metrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let engine = op.engine.clone();
    let text = tokio::task::spawn_blocking(move || {
        engine.metrics.refresh(&engine);
        engine.metrics.encode()
    })
    .await;
    match text {
        Ok(Ok(text)) if open_metrics => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Ok(Ok(text)) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text_format(&text),
        )
            .into_response(),
        Ok(Err(e)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding: {e}\n"),
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

/// OpenMetrics text as the Prometheus text format 0.0.4: the same samples,
/// but a counter's HELP and TYPE name its `_total` series, and no `# EOF`
/// or `# UNIT` lines.
fn text_format(open_metrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = open_metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open_metrics.len());
    for line in open_metrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(line) => out.push_str(&line),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[derive(serde::Deserialize)]
struct PageQuery {
    /// Shows only audit entries whose event, site or detail contain it.
    audit: Option<String>,
}

/// The status page (`/`), rendered from the database on each request.
async fn status_page(
    AxumState(op): AxumState<OperatorState>,
    Query(query): Query<PageQuery>,
) -> Response {
    let engine = op.engine.clone();
    let page = tokio::task::spawn_blocking(move || {
        crate::status_page::render(&engine.state(), query.audit.as_deref())
    })
    .await;
    match page {
        Ok(Ok(html)) => Html(html).into_response(),
        Ok(Err(e)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("status page: {e:#}\n"),
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

fn router(engine: Arc<Engine>, token_sha256: Option<[u8; 32]>) -> Router {
    let state = OperatorState {
        engine,
        token_sha256,
    };
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/", get(status_page))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state)
}

/// Binds the operator listener and serves it in the background; returns the
/// bound address, or `None` when the default address was taken (the sites'
/// service matters more than the operator view, so that only warns).
pub async fn start(
    engine: Arc<Engine>,
    options: OperatorOptions,
) -> anyhow::Result<Option<SocketAddr>> {
    let listener = match tokio::net::TcpListener::bind(options.listen).await {
        Ok(listener) => listener,
        Err(e) if options.default_address => {
            tracing::warn!(
                "operator listener not started: binding {}: {e} (choose another with --operator-listen)",
                options.listen
            );
            return Ok(None);
        }
        Err(e) => {
            return Err(e).with_context(|| format!("binding --operator-listen {}", options.listen));
        }
    };
    let local = listener.local_addr()?;
    tracing::info!(listen = %local, token = options.token_sha256.is_some(), "operator listener (status page at /, /healthz, /readyz, /metrics)");
    let app = router(engine, options.token_sha256);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("operator listener stopped: {e}");
        }
    });
    Ok(Some(local))
}

/// The lock a running `aggregator serve` holds on `STATE/serve.lock`, and
/// what it wrote there (pid, operator address) for `aggregator status`.
pub struct ServeLock {
    file: File,
}

fn lock_path(paths: &StatePaths) -> PathBuf {
    paths.root.join("serve.lock")
}

impl ServeLock {
    /// Takes the lock, refusing when another serve holds it: two services on
    /// one state folder would both close the same rounds.
    pub fn acquire(paths: &StatePaths) -> anyhow::Result<Self> {
        let path = lock_path(paths);
        // Not truncated before the lock is ours: that would erase a running
        // service's details.
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(Self { file }),
            Err(std::fs::TryLockError::WouldBlock) => {
                let held = std::fs::read_to_string(&path).unwrap_or_default();
                anyhow::bail!(
                    "another `aggregator serve` is running on {} ({})",
                    paths.root.display(),
                    held.split_whitespace().collect::<Vec<_>>().join(", ")
                )
            }
            Err(std::fs::TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("locking {}", path.display()))
            }
        }
    }

    /// Records this process and its operator address.
    pub fn record(&mut self, operator: Option<SocketAddr>) -> anyhow::Result<()> {
        let mut text = format!("pid={}\n", std::process::id());
        if let Some(addr) = operator {
            text.push_str(&format!("operator=http://{addr}\n"));
        }
        self.file.set_len(0)?;
        (&self.file).write_all(text.as_bytes())?;
        self.file.sync_all()?;
        Ok(())
    }
}

/// Whether a service runs on a state folder, as `aggregator status` reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServiceState {
    pub running: bool,
    pub pid: Option<u32>,
    pub operator_url: Option<String>,
}

/// Tries the serve lock: if it can be taken, nobody serves.
pub fn probe(paths: &StatePaths) -> anyhow::Result<ServiceState> {
    let path = lock_path(paths);
    let mut file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(ServiceState {
                running: false,
                pid: None,
                operator_url: None,
            });
        }
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let running = match file.try_lock_shared() {
        Ok(()) => {
            let _ = file.unlock();
            false
        }
        Err(std::fs::TryLockError::WouldBlock) => true,
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("locking {}", path.display()));
        }
    };
    if !running {
        return Ok(ServiceState {
            running,
            pid: None,
            operator_url: None,
        });
    }
    let mut text = String::new();
    file.read_to_string(&mut text)
        .with_context(|| format!("reading {}", path.display()))?;
    let field = |key: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_string)
    };
    Ok(ServiceState {
        running,
        pid: field("pid").and_then(|p| p.parse().ok()),
        operator_url: field("operator"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_format_names_counters_by_their_series() {
        let metrics = Metrics::new();
        metrics.rounds_opened.inc();
        let open = metrics.encode().expect("encode");
        assert!(
            open.contains("# TYPE fedslice_rounds_opened counter"),
            "{open}"
        );
        let text = text_format(&open);
        assert!(
            text.contains("# HELP fedslice_rounds_opened_total Rounds opened.\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE fedslice_rounds_opened_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("\nfedslice_rounds_opened_total 1\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE fedslice_round_duration_seconds histogram\n"),
            "{text}"
        );
        assert!(!text.contains("# EOF"), "{text}");
    }
}
