//! The aggregator's logic, independent of HTTP: who may call, what work a site
//! gets, whether an update is acceptable, and advancing jobs and rounds.
//!
//! Order of durability: an update's blob is fsynced, then its row committed,
//! and only then is the upload acknowledged; a round's new model blob is
//! fsynced before the transaction that publishes it. A crash at any point
//! therefore either loses an unacknowledged upload or nothing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Context;
use axum::http::StatusCode;
use fedslice::aggregate;
use fedslice::federated::SiteReport;
use fedslice::protocol::{JobSpec, PollResponse, UploadReceipt, Work};
use fedslice::wire::{self, DecodeLimits, Dtype, PayloadKind, PayloadMeta, Schema, TensorMap};
use tokio::sync::Notify;

use crate::blobs::BlobStore;
use crate::pki::PeerIdentity;
use crate::state::{AfterClose, JobRow, Recorded, RoundRow, State, now};

/// Why a request was refused; the message goes to the caller and the audit log.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("upload is larger than the {0}-byte limit")]
    TooLarge(usize),
    #[error("{0}")]
    TooManyRequests(String),
    /// A resumable upload chunk that does not start where the held part ends
    /// (416): the site asks for the offset again, nothing is wrong.
    #[error("{0}")]
    ResumeElsewhere(String),
    /// Another request is writing the same upload (423): retry shortly.
    #[error("{0}")]
    Busy(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl Rejection {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::ResumeElsewhere(_) => StatusCode::RANGE_NOT_SATISFIABLE,
            Self::Busy(_) => StatusCode::LOCKED,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

fn internal(e: impl std::fmt::Display) -> Rejection {
    Rejection::Internal(e.to_string())
}

/// Files of a state folder.
pub struct StatePaths {
    pub root: PathBuf,
}

impl StatePaths {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }
    pub fn db(&self) -> PathBuf {
        self.root.join("fedslice.db")
    }
    pub fn blobs(&self) -> PathBuf {
        self.root.join("blobs")
    }
    pub fn incoming(&self) -> PathBuf {
        self.root.join("incoming")
    }
    pub fn pki(&self) -> PathBuf {
        self.root.join("pki")
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.pki().join("ca.pem")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.pki().join("ca.key")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.pki().join("server.pem")
    }
    pub fn server_key(&self) -> PathBuf {
        self.pki().join("server.key")
    }
}

pub struct Engine {
    pub paths: StatePaths,
    state: Mutex<State>,
    pub blobs: BlobStore,
    /// Woken whenever a round opens or closes, to answer long-polls at once.
    pub changed: Notify,
    pub max_body_bytes: usize,
    schemas: Mutex<HashMap<String, Arc<Schema>>>,
    spool_counter: AtomicU64,
    rate: Mutex<HashMap<String, Bucket>>,
    /// The fault the round engine is failing with (a full disk, say): retried
    /// on every tick, but logged and audited once, and its end logged too.
    failing: Mutex<Option<String>>,
    /// One tick at a time: an upload's wake-up and the periodic tick would
    /// otherwise aggregate the same round twice at once.
    ticking: Mutex<()>,
    /// Resumable uploads being written.
    pub(crate) uploads: crate::uploads::InProgress,
    /// What the operator listener's `/metrics` reports.
    pub metrics: crate::operator::Metrics,
    /// Refusals counted into coalesced audit rows.
    pub refusals: crate::refusals::Refusals,
    /// Longest gap between chunks of an upload body.
    pub body_idle_timeout: std::time::Duration,
}

/// Requests a site may make in a burst, and per second after it. An agent
/// long-polls (one request per 25 s when idle) and makes two more per round,
/// so only a broken or hostile client reaches these.
const BURST: f64 = 60.0;
const PER_SECOND: f64 = 10.0;
/// The `Retry-After` of a 429: long enough to refill half the burst, which is
/// also when [`Engine::take_token`] counts the flood as over.
pub const RETRY_AFTER_S: u64 = 3;

/// A per-site token bucket; `limited` remembers that the refusal was audited,
/// so a flood yields one audit entry, not one per request.
struct Bucket {
    tokens: f64,
    at: std::time::Instant,
    limited: bool,
}

impl Engine {
    pub fn open(root: &Path, max_body_bytes: usize) -> anyhow::Result<Self> {
        let paths = StatePaths::new(root);
        anyhow::ensure!(
            paths.db().is_file(),
            "{} is not an aggregator state folder (run `aggregator init --dir {}` first)",
            root.display(),
            root.display()
        );
        let state = State::open(&paths.db())
            .with_context(|| format!("opening {}", paths.db().display()))?;
        let blobs = BlobStore::open(&paths.blobs())?;
        std::fs::create_dir_all(paths.incoming())
            .with_context(|| format!("creating {}", paths.incoming().display()))?;
        Ok(Self {
            paths,
            state: Mutex::new(state),
            blobs,
            changed: Notify::new(),
            max_body_bytes,
            schemas: Mutex::new(HashMap::new()),
            spool_counter: AtomicU64::new(0),
            rate: Mutex::new(HashMap::new()),
            failing: Mutex::new(None),
            ticking: Mutex::new(()),
            uploads: Default::default(),
            metrics: crate::operator::Metrics::new(),
            refusals: crate::refusals::Refusals::new(crate::refusals::DEFAULT_WINDOW),
            body_idle_timeout: crate::limits::ConnectionLimits::default().idle_timeout,
        })
    }

    /// How long refusals from one peer are counted into one audit row.
    pub fn with_refusal_window(mut self, window: std::time::Duration) -> Self {
        self.refusals = crate::refusals::Refusals::new(window);
        self
    }

    /// Counts a refusal; writes its audit row (and log line) only when it is
    /// the first of its window from that peer. Returns whether it wrote, so
    /// async callers can keep the write off their thread when it does.
    pub fn note_refusal(
        &self,
        event: &'static str,
        site: Option<&str>,
        peer: &str,
        reason: &str,
    ) -> Option<crate::refusals::Entry> {
        let entry = self
            .refusals
            .note(event, site, peer, reason, std::time::Instant::now())?;
        tracing::warn!(site = site.unwrap_or("-"), "{event}: {}", entry.detail);
        Some(entry)
    }

    pub fn write_refusals(&self, entries: Vec<crate::refusals::Entry>) {
        if entries.is_empty() {
            return;
        }
        let state = self.state();
        for entry in entries {
            if let Err(e) = state.audit_counted(
                entry.event,
                entry.site.as_deref(),
                &entry.detail,
                entry.count,
            ) {
                tracing::error!("writing audit log: {e}");
            }
        }
    }

    /// Writes the rows of refusal windows that have ended (from the round
    /// task's tick, off the async workers).
    pub fn flush_refusals(&self) {
        self.write_refusals(self.refusals.due(std::time::Instant::now()));
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave SQLite half-written
        // (transactions roll back), so the state is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn tls_server_config(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let read = |p: PathBuf| {
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
        };
        let config = fedslice::tls::server_config(
            &read(self.paths.ca_cert())?,
            &read(self.paths.server_cert())?,
            &read(self.paths.server_key())?,
        )?;
        Ok(config)
    }

    pub fn audit_event(&self, event: &str, site: Option<&str>, detail: &str) {
        if let Err(e) = self.state().audit(event, site, detail) {
            tracing::error!("writing audit log: {e}");
        }
    }

    /// A site declined a job under its local privacy policy: logged and
    /// audited, so the operator sees why the site is silent. The reason is
    /// the site's text, so it is escaped and cut short.
    pub fn record_refusal(&self, site: &str, refusal: &fedslice::protocol::WorkRefusal) {
        let shown = fedslice::text::bounded;
        let detail = format!(
            "{} round {}: {}",
            shown(&refusal.job, 80),
            refusal.round,
            shown(&refusal.reason, 400)
        );
        tracing::warn!(site, "site refused a job: {detail}");
        self.audit_event("site_refused_job", Some(site), &detail);
    }

    pub fn record_rejection(&self, site: &str, rejection: &Rejection) {
        let shown =
            fedslice::text::bounded(&rejection.to_string(), fedslice::text::MAX_DETAIL_CHARS);
        tracing::warn!(site, "refused: {shown}");
        self.metrics.refused_update(rejection);
        self.audit_event(
            "request_refused",
            Some(site),
            &format!("{}: {rejection}", rejection.status()),
        );
    }

    /// Advances the rounds in the background now (after an upload).
    pub fn wake(self: &Arc<Self>) {
        let engine = self.clone();
        tokio::task::spawn_blocking(move || engine.advance());
    }

    /// [`Self::tick`], waking long-polls on a change and reporting a
    /// lasting fault once (log and audit) rather than on every retry.
    pub fn advance(&self) {
        let _one_at_a_time = self.ticking.lock().unwrap_or_else(|p| p.into_inner());
        let outcome = self.tick();
        let mut failing = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        match outcome {
            Ok(changed) => {
                if let Some(was) = failing.take() {
                    tracing::info!("round engine recovered after: {was}");
                    self.audit_event("engine_recovered", None, &was);
                }
                if changed {
                    self.changed.notify_waiters();
                }
            }
            Err(e) => {
                let why = format!("advancing rounds: {e:#}");
                if failing.as_deref() != Some(why.as_str()) {
                    tracing::error!("{why}; retrying every 0.5 s");
                    self.audit_event("engine_error", None, &why);
                    *failing = Some(why);
                }
            }
        }
    }

    pub fn incoming_path(&self) -> PathBuf {
        let n = self.spool_counter.fetch_add(1, Ordering::Relaxed);
        self.paths
            .incoming()
            .join(format!("upload-{}-{n}.part", std::process::id()))
    }

    pub fn authorise(&self, peer: &PeerIdentity) -> Result<(), Rejection> {
        let site = self.state().site(&peer.common_name).map_err(internal)?;
        let refusal = match site {
            None => Some(format!(
                "certificate names `{}`, which is not an enrolled site",
                peer.common_name
            )),
            Some(site) if site.status != "active" => {
                Some(format!("site `{}` has been revoked", site.name))
            }
            Some(site) if site.fingerprint != peer.fingerprint => Some(format!(
                "site `{}` presented a certificate that is not its current one",
                site.name
            )),
            Some(_) => None,
        };
        if let Some(reason) = refusal {
            self.metrics.refused_request("forbidden");
            // Throttled before anything is written (security review M3), in
            // a bucket of its own so a superseded certificate cannot spend
            // the site's current one's allowance; then audited coalesced.
            self.take_token(&format!("refused:{}", peer.fingerprint), &peer.common_name)?;
            let who = format!(
                "certificate {}",
                peer.fingerprint.get(..16).unwrap_or(&peer.fingerprint)
            );
            if let Some(entry) =
                self.note_refusal("request_refused", Some(&peer.common_name), &who, &reason)
            {
                self.write_refusals(vec![entry]);
            }
            return Err(Rejection::Forbidden(reason));
        }
        self.take_token(&peer.common_name, &peer.common_name)?;
        self.state()
            .touch_site(&peer.common_name)
            .map_err(internal)?;
        Ok(())
    }

    /// One request from `bucket`'s allowance; `site` names it in the audit.
    fn take_token(&self, bucket: &str, site: &str) -> Result<(), Rejection> {
        let mut rate = self.rate.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        let bucket = rate.entry(bucket.to_string()).or_insert(Bucket {
            tokens: BURST,
            at: now,
            limited: false,
        });
        bucket.tokens =
            (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * PER_SECOND).min(BURST);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            // A flood ends once the site has been quiet long enough to refill
            // half the burst; trickling through at the sustained rate does not
            // end it (one audit entry per flood, not per refill).
            if bucket.tokens >= BURST / 2.0 {
                bucket.limited = false;
            }
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let reason = format!(
            "site `{site}` exceeds {PER_SECOND} requests per second (burst {BURST}); slow down"
        );
        self.metrics.refused_request("rate_limited");
        if !bucket.limited {
            bucket.limited = true;
            drop(rate);
            tracing::warn!(site, "rate limited");
            self.audit_event("rate_limited", Some(site), &reason);
        }
        Err(Rejection::TooManyRequests(reason))
    }

    pub fn poll(&self, site: &str) -> Result<PollResponse, Rejection> {
        let state = self.state();
        let open_jobs = state.open_jobs().map_err(internal)?;
        let Some(job) = state.running_job().map_err(internal)? else {
            return Ok(PollResponse {
                work: None,
                open_jobs,
                waiting_for: (open_jobs > 0).then(|| "the next job to start".to_string()),
            });
        };
        if state.paused_at(&job.id).map_err(internal)?.is_some() {
            return Ok(PollResponse {
                work: None,
                open_jobs,
                waiting_for: Some(format!("{}, paused by the operator, to resume", job.id)),
            });
        }
        let Some(round) = state.open_round(&job.id).map_err(internal)? else {
            return Ok(PollResponse {
                work: None,
                open_jobs,
                waiting_for: Some(format!("{} to open its next round", job.id)),
            });
        };
        if state
            .has_update(&job.id, round.round, site)
            .map_err(internal)?
        {
            return Ok(PollResponse {
                work: None,
                open_jobs,
                waiting_for: Some(format!(
                    "the other sites to finish {} round {}",
                    job.id, round.round
                )),
            });
        }
        Ok(PollResponse {
            work: Some(Work {
                job: job.id.clone(),
                spec: job.spec.clone(),
                round: round.round,
                model_digest: round.base_digest.clone(),
                deadline_unix_s: round.deadline.max(0) as u64,
            }),
            open_jobs,
            waiting_for: None,
        })
    }

    /// A published global model; sites can never fetch another site's update.
    pub fn model_bytes(&self, site: &str, digest: &str) -> Result<Vec<u8>, Rejection> {
        if !self.state().is_model(digest).map_err(internal)? {
            return Err(Rejection::NotFound(format!(
                "no global model with digest {digest}"
            )));
        }
        let bytes = self.blobs.get(digest).map_err(internal)?;
        self.metrics.bytes_out.inc_by(bytes.len() as u64);
        tracing::debug!(site, digest, bytes = bytes.len(), "model sent");
        Ok(bytes)
    }

    pub(crate) fn schema_of(&self, digest: &str) -> Result<Arc<Schema>, Rejection> {
        if let Some(schema) = self
            .schemas
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(digest)
        {
            return Ok(schema.clone());
        }
        let (_, model) = self.load_model(digest).map_err(internal)?;
        let schema = Arc::new(model.schema());
        self.schemas
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(digest.to_string(), schema.clone());
        Ok(schema)
    }

    pub fn load_model(&self, digest: &str) -> anyhow::Result<(wire::PayloadHeader, TensorMap)> {
        let bytes = self.blobs.get(digest)?;
        wire::decode(&bytes, &DecodeLimits::DEFAULT)
            .with_context(|| format!("decoding model {digest}"))
    }

    /// Validates an uploaded update against the open round and records it.
    pub fn accept_update(&self, site: &str, bytes: &[u8]) -> Result<UploadReceipt, Rejection> {
        let receipt = self.check_and_record_update(site, bytes)?;
        self.metrics.updates_accepted.inc();
        Ok(receipt)
    }

    fn check_and_record_update(
        &self,
        site: &str,
        bytes: &[u8],
    ) -> Result<UploadReceipt, Rejection> {
        let header =
            wire::decode_header(bytes).map_err(|e| Rejection::BadRequest(e.to_string()))?;
        if header.kind != PayloadKind::Update {
            return Err(Rejection::BadRequest(
                "payload is not a model update".into(),
            ));
        }
        // A retry of an update that was counted before its acknowledgement got
        // lost is answered as a duplicate, even if its round has closed since.
        let digest = wire::digest(bytes);
        {
            let state = self.state();
            let recorded = state
                .update_digest(&header.job, header.round, site)
                .map_err(internal)?;
            if recorded.as_deref() == Some(digest.as_str()) {
                let reported = state
                    .updates(&header.job, header.round)
                    .map_err(internal)?
                    .len() as u32;
                return Ok(UploadReceipt {
                    job: header.job.clone(),
                    round: header.round,
                    digest,
                    duplicate: true,
                    reported,
                    expected: state.active_sites().map_err(internal)?,
                });
            }
        }
        let (job, round) = {
            let state = self.state();
            let job = state.job(&header.job).map_err(internal)?.ok_or_else(|| {
                Rejection::Conflict(format!(
                    "update is for job `{}`, which does not exist",
                    header.job
                ))
            })?;
            if job.status != "running" {
                return Err(Rejection::Conflict(match &job.error {
                    // The agent logs this: say why its work is not wanted.
                    Some(error) => format!(
                        "update is for job `{}`, which was stopped ({error}); this round's work is dropped",
                        job.id
                    ),
                    None => format!("update is for job `{}`, which is {}", job.id, job.status),
                }));
            }
            let round = state
                .open_round(&job.id)
                .map_err(internal)?
                .ok_or_else(|| {
                    Rejection::Conflict(format!("job `{}` has no open round", job.id))
                })?;
            (job, round)
        };
        if header.round != round.round {
            return Err(Rejection::Conflict(format!(
                "update is for round {} of {}, but round {} is open (a stale update is never counted)",
                header.round, job.id, round.round
            )));
        }
        if header.base_digest.as_deref() != Some(round.base_digest.as_str()) {
            return Err(Rejection::Conflict(format!(
                "update was computed from model {}, but round {} starts from {}",
                header.base_digest.as_deref().unwrap_or("(none)"),
                round.round,
                round.base_digest
            )));
        }
        if header.samples == 0 || header.samples > aggregate::MAX_SAMPLES {
            // Checked before anything is stored: a count the database cannot
            // hold once left an orphan blob behind (security review M4).
            return Err(Rejection::Unprocessable(format!(
                "update reports {} training samples; accepted: 1 to {}",
                header.samples,
                aggregate::MAX_SAMPLES
            )));
        }
        // The metrics reach the exported threshold and model card, and only
        // the site vouches for them (security review M6): range-check them
        // before anything is stored.
        let report = SiteReport::from_metrics(&header.metrics)
            .map_err(|e| Rejection::Unprocessable(format!("site report refused: {e}")))?;
        let schema = self.schema_of(&round.base_digest)?;
        let (_, delta) = wire::decode(bytes, &DecodeLimits::for_schema(&schema))
            .map_err(|e| Rejection::Unprocessable(e.to_string()))?;
        schema
            .check(&delta)
            .map_err(|e| Rejection::Unprocessable(e.to_string()))?;
        let norm = delta.l2_norm();
        if job.spec.is_evaluation_round(round.round) {
            // Only the scores of the final model may leave a site here.
            if norm != 0.0 {
                return Err(Rejection::Unprocessable(format!(
                    "round {} of {} is its evaluation round, which carries no weights, \
                     but this update has norm {norm:.3e} (an agent older than the \
                     evaluation round trains instead; upgrade it)",
                    round.round, job.id
                )));
            }
            if report.validation.is_none() {
                return Err(Rejection::Unprocessable(format!(
                    "round {} of {} is its evaluation round, but the site report has no validation",
                    round.round, job.id
                )));
            }
        }
        // A NaN norm is refused too (the payload was checked finite, but be explicit).
        if norm.is_nan() || norm > job.spec.max_update_norm {
            return Err(Rejection::Unprocessable(format!(
                "update norm {norm:.3e} exceeds the job's bound {:.3e}",
                job.spec.max_update_norm
            )));
        }
        let digest = self.blobs.put(bytes).map_err(internal)?;
        crate::crash_points::reached("upload:after_blob");
        let metrics = serde_json::to_value(&report).map_err(internal)?;
        let mut state = self.state();
        let recorded = state
            .record_update(
                &job.id,
                round.round,
                site,
                &digest,
                header.samples,
                bytes.len() as u64,
                &metrics,
            )
            .map_err(internal)?;
        let duplicate = match recorded {
            Recorded::Inserted => false,
            Recorded::Duplicate => true,
            Recorded::Conflict { existing } => {
                return Err(Rejection::Conflict(format!(
                    "site `{site}` already sent a different update ({existing}) for {} round {}",
                    job.id, round.round
                )));
            }
            Recorded::RoundClosed => {
                return Err(Rejection::Conflict(format!(
                    "round {} of {} closed while this update was being checked; it was not counted",
                    round.round, job.id
                )));
            }
        };
        crate::crash_points::reached("upload:after_record");
        let reported = state.updates(&job.id, round.round).map_err(internal)?.len() as u32;
        let expected = state.active_sites().map_err(internal)?;
        tracing::info!(site, job = %job.id, round = round.round, reported, expected, duplicate, "update accepted");
        Ok(UploadReceipt {
            job: job.id,
            round: round.round,
            digest,
            duplicate,
            reported,
            expected,
        })
    }

    /// Advances the consortium by one step if it can: starts the next job or
    /// closes the open round. Returns whether anything changed.
    pub fn tick(&self) -> anyhow::Result<bool> {
        let running = self.state().running_job()?;
        match running {
            None => self.start_next_job(),
            // A paused job's round waits, whatever its deadline says.
            Some(job) if self.state().paused_at(&job.id)?.is_some() => Ok(false),
            Some(job) => self.maybe_close_round(&job),
        }
    }

    fn start_next_job(&self) -> anyhow::Result<bool> {
        let Some(job) = self.state().next_pending_job()? else {
            return Ok(false);
        };
        let init = match &job.spec.init_from {
            None => None,
            Some(from) => {
                let source = self.state().job(from)?;
                match source {
                    Some(source) if source.status == "finished" => {
                        let digest = source
                            .model_digest
                            .context("finished pretrain job has no model")?;
                        Some(self.load_model(&digest)?.1)
                    }
                    Some(source) if source.status == "failed" => {
                        self.state()
                            .fail_job(&job.id, &format!("--init-from job {from} failed"))?;
                        return Ok(true);
                    }
                    // Still running: this job waits its turn.
                    _ => return Ok(false),
                }
            }
        };
        if let Some(why) = crate::ledger::refuse_next(&self.state(), &job, 1)? {
            tracing::warn!(job = %job.id, "{why}");
            let state = self.state();
            state.audit("dp_budget_refused", None, &why)?;
            state.fail_job(&job.id, &why)?;
            return Ok(true);
        }
        let device = fedslice::device::open(fedslice::device::BackendKind::Flex)?;
        let model = match fedslice::federated::initial_model(&job.spec, init.as_ref(), &device) {
            Ok(model) => model,
            Err(e) => {
                self.state().fail_job(&job.id, &e.to_string())?;
                return Ok(true);
            }
        };
        let digest = self.put_model(&job, 0, &model)?;
        let deadline = now() + job.spec.round_timeout_s as i64;
        self.state().start_job(&job.id, &digest, deadline)?;
        self.metrics.rounds_opened.inc();
        tracing::info!(job = %job.id, phase = %job.spec.phase, digest, "job started; round 1 open");
        Ok(true)
    }

    fn put_model(&self, job: &JobRow, version: u32, model: &TensorMap) -> anyhow::Result<String> {
        let payload = wire::encode(
            PayloadMeta {
                kind: PayloadKind::Model,
                job: job.id.clone(),
                round: version,
                base_digest: None,
                samples: 0,
                metrics: Default::default(),
            },
            model,
            Dtype::F32,
            3,
        )?;
        Ok(self.blobs.put(&payload)?)
    }

    fn maybe_close_round(&self, job: &JobRow) -> anyhow::Result<bool> {
        let (round, updates, active) = {
            let state = self.state();
            let Some(round) = state.open_round(&job.id)? else {
                return Ok(false);
            };
            let updates = state.updates(&job.id, round.round)?;
            (round, updates, state.active_sites()?)
        };
        let reported = updates.len() as u32;
        let expired = now() >= round.deadline;
        let all_in = reported > 0 && reported >= active;
        if !(all_in || (expired && reported >= job.spec.min_sites)) {
            if expired {
                let note = format!(
                    "deadline passed with {reported} of {} required updates; waiting for min-sites",
                    job.spec.min_sites
                );
                if round.note.as_deref() != Some(note.as_str()) {
                    tracing::warn!(job = %job.id, round = round.round, "{note}");
                    let state = self.state();
                    state.set_round_note(&job.id, round.round, &note)?;
                    state.audit(
                        "round_waiting",
                        None,
                        &format!("{} round {}: {note}", job.id, round.round),
                    )?;
                }
            }
            return Ok(false);
        }
        let sites: Vec<&str> = updates.iter().map(|u| u.site.as_str()).collect();
        let note = format!(
            "{reported} of {active} active sites ({}); closed {}",
            sites.join(", "),
            if all_in {
                "when all reported"
            } else {
                "at the deadline"
            }
        );
        self.close_round(job, &round, &updates, &note)
    }

    fn close_round(
        &self,
        job: &JobRow,
        round: &RoundRow,
        updates: &[crate::state::UpdateRow],
        note: &str,
    ) -> anyhow::Result<bool> {
        if job.spec.is_evaluation_round(round.round) {
            return self.close_evaluation_round(job, round, updates, note);
        }
        let aggregating = std::time::Instant::now();
        let (_, mut global) = self.load_model(&round.base_digest)?;
        let schema = global.schema();
        let limits = DecodeLimits::for_schema(&schema);
        let spec: &JobSpec = &job.spec;
        let load_delta = |digest: &str| -> anyhow::Result<TensorMap> {
            let bytes = self.blobs.get(digest)?;
            Ok(wire::decode(&bytes, &limits)?.1)
        };
        let mut note = note.to_owned();
        let mean = if let Some(dp) = &spec.dp {
            // DP-FedAvg: uniform weights, fixed denominator, noise once.
            // Job creation refuses robust rules and sample weighting here.
            let mut dp_mean = fedslice::privacy::mean::DpMean::new(schema.clone(), dp.clip_norm);
            for update in updates {
                dp_mean.add(&load_delta(&update.digest)?)?;
            }
            crate::ledger::record(&self.state(), &job.id, round.round, dp)?;
            let (mean, dp_round) = dp_mean.finish(
                dp.expected_sites,
                dp.noise_multiplier,
                &mut fedslice::privacy::noise::os_rng()?,
            )?;
            note.push_str(&format!(
                "; DP mean over m = {} ({} clipped here), noise sd {:.3e}",
                dp.expected_sites, dp_round.clipped_here, dp_round.noise_sd
            ));
            mean
        } else {
            // FedAvg reads one update at a time: O(model) whatever the number of sites.
            // Its weights are the sites' self-reported counts, bounded
            // (security review M6); the robust modes ignore them.
            let samples: Vec<u64> = updates.iter().map(|u| u.samples).collect();
            let weights = aggregate::bounded_weights(&samples);
            aggregate::combine(
                spec.aggregation,
                schema.clone(),
                spec.clip_update_norm,
                updates
                    .iter()
                    .zip(weights)
                    .map(|(u, weight)| anyhow::Ok((load_delta(&u.digest)?, weight))),
            )?
        };
        let note = note.as_str();
        let previous = match &job.optimizer_state {
            Some(digest) => Some(self.blobs.get(digest)?),
            None => None,
        };
        let optimizer_state = match crate::server_opt::step(
            spec.server_optimizer,
            &mut global,
            &mean,
            previous.as_deref(),
        )? {
            Some(bytes) => Some(self.blobs.put(&bytes)?),
            None => None,
        };
        crate::crash_points::reached("close:before_model");
        let digest = self.put_model(job, round.round, &global).with_context(|| {
            format!(
                "writing the global model of round {} of {} (the previous model is intact; \
                     the round stays open and is closed again once this succeeds)",
                round.round, job.id
            )
        })?;
        crate::crash_points::reached("close:after_model");
        let mut budget_refusal = None;
        let after = if round.round >= spec.total_rounds() {
            AfterClose::Finished
        } else if spec.is_evaluation_round(round.round + 1) {
            // The evaluation round releases only the sites' scores, without
            // noise and outside the ledger (README, privacy section).
            AfterClose::NextRound {
                deadline: now() + spec.round_timeout_s as i64,
            }
        } else if let Some(why) = crate::ledger::refuse_next(&self.state(), job, round.round + 1)? {
            // The next round would pass the job's ε budget: it is not run,
            // and the job ends with this round's model.
            budget_refusal = Some(why);
            AfterClose::Finished
        } else {
            AfterClose::NextRound {
                deadline: now() + spec.round_timeout_s as i64,
            }
        };
        let closed = self.state().close_round(
            round,
            updates.len(),
            &digest,
            optimizer_state.as_deref(),
            note,
            &after,
        )?;
        if closed {
            if let Some(why) = &budget_refusal {
                tracing::warn!(job = %job.id, "{why}");
                self.state().audit("dp_budget_refused", None, why)?;
            }
            self.metrics.rounds_closed.inc();
            self.metrics
                .aggregation_time
                .observe(aggregating.elapsed().as_secs_f64());
            self.metrics
                .round_duration
                .observe((now() - round.opened_at).max(0) as f64);
            if matches!(after, AfterClose::NextRound { .. }) {
                self.metrics.rounds_opened.inc();
            }
            tracing::info!(job = %job.id, round = round.round, digest, "{note}");
        } else {
            tracing::info!(job = %job.id, round = round.round, "an update arrived during aggregation, or the job was cancelled; looking again");
        }
        Ok(closed)
    }

    /// Closes a finetune job's evaluation round: nothing is aggregated, and
    /// the job finishes with the model the sites scored.
    fn close_evaluation_round(
        &self,
        job: &JobRow,
        round: &RoundRow,
        updates: &[crate::state::UpdateRow],
        note: &str,
    ) -> anyhow::Result<bool> {
        let closed = self.state().close_round(
            round,
            updates.len(),
            &round.base_digest,
            job.optimizer_state.as_deref(),
            note,
            &AfterClose::Evaluated,
        )?;
        if closed {
            self.metrics.rounds_closed.inc();
            self.metrics
                .round_duration
                .observe((now() - round.opened_at).max(0) as f64);
            tracing::info!(job = %job.id, round = round.round, digest = %round.base_digest, "evaluation round closed: {note}");
        }
        Ok(closed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_outlasts_the_flood() {
        // A client that waits as told must come back to a bucket at least half
        // full, or its next request starts a new flood.
        assert!(RETRY_AFTER_S as f64 * PER_SECOND >= BURST / 2.0);
    }
}
