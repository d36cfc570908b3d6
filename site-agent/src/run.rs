//! `site-agent run`: ingest the site's exams once, then loop: wait for work,
//! train, upload. Network failures are retried with jittered backoff forever;
//! local training leaves a checkpoint after every epoch, so an agent killed
//! mid-training continues from its last epoch; a computed update is kept in
//! the outbox until the aggregator acknowledges it, so a restart re-sends it
//! instead of retraining.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use fedslice::federated::{SiteExams, SiteReport, evaluate_round, train_round};
use fedslice::protocol::{Activity, Work};
use fedslice::train::CheckpointFile;
use fedslice::wire::{self, DecodeLimits};
use rand::Rng;

use crate::client::{Client, Refused, Throttled};
use crate::config::SiteConfig;
use crate::heartbeat::{BUSY_EVERY, Reporter, TrainingProgress};
use crate::payload_log::PayloadLog;
use crate::site_data::SiteData;
use fedslice::process::Permanent;

pub struct RunOptions {
    /// Exit once the aggregator has no open jobs (demos and tests).
    pub until_idle: bool,
    pub poll_wait: Duration,
    /// Overrides the configuration's `cache_dir`.
    pub cache_dir: Option<PathBuf>,
}

/// Jittered exponential backoff for transient failures. A 429 waits at least
/// the aggregator's `Retry-After`, and a streak of them is one warning: being
/// told to slow down again on every retry is not news for the site's log.
struct Backoff {
    attempt: u32,
    /// The current 429 streak has been warned about; a success ends it.
    throttle_warned: bool,
}

impl Backoff {
    fn new() -> Self {
        Self {
            attempt: 0,
            throttle_warned: false,
        }
    }
    fn reset(&mut self) {
        self.attempt = 0;
        self.throttle_warned = false;
    }
    /// How long to wait after `why` (`jitter` in 0.5..1.5), and whether to
    /// warn about it.
    fn next(&mut self, why: &anyhow::Error, jitter: f64) -> (Duration, bool) {
        let base = Duration::from_millis(500)
            .saturating_mul(1 << self.attempt.min(7))
            .min(Duration::from_secs(60));
        let mut delay = base.mul_f64(jitter);
        self.attempt += 1;
        let warn = match why.downcast_ref::<Throttled>() {
            Some(throttled) => {
                if let Some(after) = throttled.retry_after {
                    delay = delay.max(after);
                }
                !std::mem::replace(&mut self.throttle_warned, true)
            }
            None => true,
        };
        (delay, warn)
    }
    async fn wait(&mut self, why: &anyhow::Error) {
        let jitter = rand::rng().random_range(0.5..1.5);
        let (delay, warn) = self.next(why, jitter);
        if warn {
            tracing::warn!("{why:#}; retrying in {:.1} s", delay.as_secs_f64());
        } else {
            tracing::debug!("{why:#}; retrying in {:.1} s", delay.as_secs_f64());
        }
        tokio::time::sleep(delay).await;
    }
}

/// The least time between two polls that found no work. A current aggregator
/// holds such a poll for the whole wait; one from before issue 15 answered at
/// once when no job was open, and the agent must not spin against it.
fn idle_poll_floor(poll_wait: Duration) -> Duration {
    poll_wait.clamp(Duration::from_secs(1), Duration::from_secs(5))
}

/// The file-name stem of a round's local files: a digest of the job id, never
/// the id itself, so no string from the aggregator names a file on the site.
fn round_stem(job: &str, round: u32) -> String {
    format!("{}-r{round}", &wire::digest(job.as_bytes())[..16])
}

fn outbox_path(cache: &Path, job: &str, round: u32) -> PathBuf {
    cache
        .join("outbox")
        .join(format!("{}.fslw", round_stem(job, round)))
}

/// Where a global model is cached: named by its digest, which must be one.
fn model_path(cache: &Path, digest: &str) -> anyhow::Result<PathBuf> {
    anyhow::ensure!(
        wire::is_sha256_hex(digest),
        "model digest `{}` is not 64 lowercase hex digits",
        fedslice::text::bounded(digest, 80)
    );
    Ok(cache.join("models").join(format!("{digest}.fslw")))
}

/// The round's local-training checkpoint. Its key names everything the
/// training depends on, so a state from another round, base model,
/// configuration, site identity or set of exams is never resumed.
fn round_checkpoint(
    cache: &Path,
    work: &Work,
    salt: u64,
    exams: &[fedslice::data::preprocess::PreparedExam],
) -> anyhow::Result<CheckpointFile> {
    let spec = serde_json::to_vec(&work.spec).context("encoding the job spec")?;
    let ids: Vec<(&str, usize)> = exams.iter().map(|e| (e.id.as_str(), e.depth)).collect();
    let exams = serde_json::to_vec(&ids).context("listing the exams")?;
    let key = format!(
        "{}/r{}/{}/{}/{salt:016x}/{}",
        work.job,
        work.round,
        work.model_digest,
        wire::digest(&spec),
        wire::digest(&exams)
    );
    let dir = cache.join("checkpoints");
    let name = format!("{}.ckpt", round_stem(&work.job, work.round));
    // Checkpoints of other rounds can never be resumed: drop them.
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy() != name {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    Ok(CheckpointFile::new(dir.join(name), key))
}

pub fn run(config_path: &Path, options: RunOptions) -> anyhow::Result<()> {
    let mut config = SiteConfig::load(config_path)?;
    if let Some(dir) = options.cache_dir {
        config.cache_dir = dir;
    }
    config.ensure_data_set(config_path)?;
    let backend: fedslice::device::BackendKind = config
        .device
        .parse()
        .with_context(|| format!("`device` in {}", config_path.display()))
        .context(Permanent::Config)?;
    // The bundle, then the aggregator's verdict on it, before the data
    // folder is listed: listing and hashing thousands of studies only to
    // find a missing key or a revoked site wastes minutes on every restart.
    let credentials = crate::credentials::load(&config)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let _runtime_context = runtime.enter();
    let reporter = Reporter::new(&backend.to_string());
    let client = Client::with_tls(&config, credentials.tls)?.with_heartbeat(reporter.clone());
    if let Err(e) = runtime.block_on(client.hello()) {
        if fedslice::process::permanent_kind(&e).is_some() {
            return Err(e);
        }
        // Unreachable for now: the loop below retries.
        tracing::warn!("{e:#}");
    }
    for sub in ["models", "outbox"] {
        std::fs::create_dir_all(config.cache_dir.join(sub))
            .with_context(|| format!("creating {}", config.cache_dir.join(sub).display()))?;
    }
    let device = fedslice::device::open(backend)?;
    let mut data = SiteData::load(&config.data, config.plane, &config.cache_dir)?;
    // Each site's augmentation and masking streams differ; with a `site` name
    // they are also the same from one run to the next.
    let salt_source = match &config.site {
        Some(name) => name.as_bytes().to_vec(),
        None => std::fs::read(&config.cert)
            .with_context(|| format!("reading {}", config.cert.display()))?,
    };
    let salt = fedslice::federated::site_salt(&salt_source);
    tracing::info!(
        site = %data.name,
        exams = data.len(),
        device = %backend,
        aggregator = %config.aggregator_url,
        "site agent ready"
    );
    runtime.block_on(async {
        spawn_heartbeats(client.clone(), reporter.clone());
        let log = PayloadLog::new(&config.cache_dir);
        let mut backoff = Backoff::new();
        let mut last_wait = String::new();
        // The first poll is answered at once, so the log says from the start
        // whether the site has work or waits; later ones wait for news.
        let mut first = true;
        // Jobs this site's privacy policy refused: said once (log and
        // aggregator), then waited out like having no work.
        let mut refused_jobs = std::collections::BTreeSet::new();
        loop {
            let asked = Instant::now();
            let first_poll = first;
            let wait = if first_poll {
                Duration::ZERO
            } else {
                options.poll_wait
            };
            let poll = match client.poll(wait, options.until_idle).await {
                Ok(poll) => {
                    backoff.reset();
                    first = false;
                    poll
                }
                Err(e)
                    if e.downcast_ref::<Refused>().is_some()
                        || fedslice::process::permanent_kind(&e).is_some() =>
                {
                    return Err(e);
                }
                Err(e) => {
                    backoff.wait(&e).await;
                    continue;
                }
            };
            let refusal = poll.work.as_ref().and_then(|w| {
                config
                    .privacy
                    .check(w.spec.dp.as_ref())
                    .err()
                    .map(|r| (w, r))
            });
            if let Some((work, reason)) = refusal {
                if refused_jobs.insert(work.job.clone()) {
                    tracing::warn!(job = %work.job, "refusing the job: {reason}");
                    let refusal = fedslice::protocol::WorkRefusal {
                        job: work.job.clone(),
                        round: work.round,
                        reason,
                    };
                    if let Err(e) = client.refuse(&refusal).await {
                        tracing::warn!("could not tell the aggregator about the refusal: {e:#}");
                    }
                }
                let floor = idle_poll_floor(options.poll_wait);
                if let Some(rest) = floor.checked_sub(asked.elapsed()) {
                    tokio::time::sleep(rest).await;
                }
                continue;
            }
            match poll.work {
                Some(work) => {
                    last_wait.clear();
                    let round = Round {
                        client: &client,
                        config: &config,
                        log: &log,
                        reporter: &reporter,
                    };
                    match do_round(&round, &mut data, salt, &device, &work).await {
                        Ok(()) => reporter.set(Activity::Idle),
                        Err(e) => {
                            if fedslice::process::permanent_kind(&e).is_some() {
                                return Err(e);
                            }
                            // Shown to the operator until the next attempt
                            // moves on: a site that keeps failing says why.
                            reporter.set(Activity::Error {
                                reason: format!("{e:#}"),
                            });
                            match e.downcast_ref::<Refused>() {
                                // A refusal (stale round, invalid update) will not change on retry: move on.
                                Some(refused) => {
                                    tracing::warn!(job = %work.job, round = work.round, "dropping this round's work: {refused}")
                                }
                                None => backoff.wait(&e).await,
                            }
                        }
                    }
                }
                None if poll.open_jobs == 0 && options.until_idle => {
                    tracing::info!("no open jobs; exiting (--until-idle)");
                    return Ok(());
                }
                None => {
                    reporter.set(Activity::Idle);
                    let why = poll.waiting_for.unwrap_or_else(|| "a job".into());
                    // Once per change of state, not per poll: an idle site
                    // says "waiting for a job" once and is then quiet.
                    if why != last_wait {
                        tracing::info!("waiting for {why}");
                        last_wait = why;
                    }
                    let floor = idle_poll_floor(options.poll_wait);
                    if let Some(rest) = floor.checked_sub(asked.elapsed())
                        && !first_poll
                    {
                        tokio::time::sleep(rest).await;
                    }
                }
            }
        }
    })
}

async fn global_model(client: &Client, cache: &Path, digest: &str) -> anyhow::Result<Vec<u8>> {
    let path = model_path(cache, digest)?;
    if let Ok(bytes) = std::fs::read(&path)
        && wire::digest(&bytes) == digest
    {
        return Ok(bytes);
    }
    let partial = path.with_extension("download");
    let bytes = client.model(digest, &partial).await?;
    std::fs::rename(&partial, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(bytes)
}

/// Sends a heartbeat of its own when the state changes or a busy agent has
/// been quiet for [`BUSY_EVERY`]; requests the agent makes anyway carry one.
fn spawn_heartbeats(client: Client, reporter: Arc<Reporter>) {
    tokio::spawn(async move {
        loop {
            if reporter.due(BUSY_EVERY)
                && !matches!(reporter.activity(), Activity::Idle)
                && let Err(e) = client.heartbeat().await
            {
                tracing::debug!("{e:#}");
            }
            tokio::select! {
                _ = reporter.changed.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    });
}

/// What one round of work needs from the agent's loop.
struct Round<'a> {
    client: &'a Client,
    config: &'a SiteConfig,
    log: &'a PayloadLog,
    reporter: &'a Arc<Reporter>,
}

async fn do_round(
    round: &Round<'_>,
    data: &mut SiteData,
    salt: u64,
    device: &burn::tensor::Device,
    work: &Work,
) -> anyhow::Result<()> {
    let Round {
        client,
        config,
        log,
        reporter,
    } = *round;
    let started = Instant::now();
    let outbox = outbox_path(&config.cache_dir, &work.job, work.round);
    let (payload, report) = match std::fs::read(&outbox) {
        Ok(bytes)
            if wire::decode_header(&bytes)
                .is_ok_and(|h| h.base_digest.as_deref() == Some(work.model_digest.as_str())) =>
        {
            tracing::info!(job = %work.job, round = work.round, "re-sending the update computed before a restart");
            let header = wire::decode_header(&bytes)?;
            // Only for the summary line below: the aggregator validates the
            // report and refuses the upload with the reason if it is wrong.
            let report = SiteReport::from_metrics(&header.metrics).unwrap_or_else(|e| {
                tracing::warn!("the stored update's report: {e}");
                SiteReport::default()
            });
            (bytes, report)
        }
        _ if work.spec.is_evaluation_round(work.round) => {
            let model = global_model(client, &config.cache_dir, &work.model_digest).await?;
            let (_, global) = wire::decode(&model, &DecodeLimits::DEFAULT)
                .with_context(|| format!("decoding global model {}", work.model_digest))?;
            let exams = data.prepared(&work.spec.preprocess, &|done, total| {
                reporter.set(Activity::Preparing {
                    done: done as u32,
                    total: total as u32,
                })
            })?;
            let site = SiteExams { exams, salt };
            let (spec, device) = (work.spec.clone(), device.clone());
            let scored = tokio::task::spawn_blocking(move || {
                evaluate_round(&spec, &global, &site, &device).map(|report| (report, global))
            })
            .await
            .context("scoring the final global model panicked")?;
            let (report, global) = scored?;
            // No weights leave in this round: the delta is all zeros.
            let zeros = global.sub(&global)?;
            let samples = report.validation.map_or(1, |v| v.exams.max(1));
            let payload = work.encode_update(&zeros, samples, report.clone())?;
            fedslice::atomic_file::write(&outbox, &payload)
                .with_context(|| format!("writing {}", outbox.display()))?;
            (payload, report)
        }
        _ => {
            let model = global_model(client, &config.cache_dir, &work.model_digest).await?;
            let (_, global) = wire::decode(&model, &DecodeLimits::DEFAULT)
                .with_context(|| format!("decoding global model {}", work.model_digest))?;
            let exams = data.prepared(&work.spec.preprocess, &|done, total| {
                reporter.set(Activity::Preparing {
                    done: done as u32,
                    total: total as u32,
                })
            })?;
            let mut checkpoints = round_checkpoint(&config.cache_dir, work, salt, &exams)?;
            let site = SiteExams { exams, salt };
            let work_owned = work.clone();
            let device = device.clone();
            let mut progress = TrainingProgress::new(
                reporter.clone(),
                &work.job,
                work.round,
                work.spec.local_epochs(),
            );
            let update = tokio::task::spawn_blocking(move || {
                let update = train_round(
                    &work_owned,
                    &global,
                    &site,
                    &device,
                    &mut progress,
                    &mut checkpoints,
                );
                (update, checkpoints)
            })
            .await
            .context("local training panicked")?;
            let (update, checkpoints) = update;
            let mut update = update?;
            if let Some(dp) = &work.spec.dp {
                // DP-FedAvg: the update Δ (never the weights) leaves the site
                // with L2 norm at most C; the aggregator adds the noise.
                let clip = fedslice::privacy::clip::clip_update(&mut update.delta, dp.clip_norm);
                tracing::info!(
                    job = %work.job,
                    round = work.round,
                    norm = clip.norm,
                    clip_norm = dp.clip_norm,
                    clipped = clip.clipped,
                    "DP job: update clipped"
                );
            }
            let payload =
                work.encode_update(&update.delta, update.samples, update.report.clone())?;
            fedslice::atomic_file::write(&outbox, &payload)
                .with_context(|| format!("writing {}", outbox.display()))?;
            // The outbox now holds the result; the epoch checkpoint is spent.
            if let Err(e) = checkpoints.remove() {
                tracing::warn!("{e}; it is removed when the next round starts");
            }
            (payload, update.report)
        }
    };
    let header = wire::decode_header(&payload)?;
    let digest = wire::digest(&payload);
    let bytes = payload.len();
    log.record(&header, bytes, &digest)?;
    reporter.set(Activity::Uploading {
        job: work.job.clone(),
        round: work.round,
        bytes: bytes as u64,
    });
    let result = client.upload(payload).await;
    match &result {
        Ok(_) => {
            let _ = std::fs::remove_file(&outbox);
        }
        Err(e) if e.downcast_ref::<Refused>().is_some() => {
            let _ = std::fs::remove_file(&outbox);
        }
        Err(_) => {}
    }
    let receipt = result?;
    let loss = report.losses.map_or("local loss -".into(), |l| {
        format!("local loss {:.4} → {:.4}", l.first, l.last)
    });
    let auc = report
        .auc()
        .map_or(String::new(), |a| format!(", global model val AUC {a:.3}"));
    let phase = if work.spec.is_evaluation_round(work.round) {
        "evaluation of the final model".to_string()
    } else {
        work.spec.phase.to_string()
    };
    println!(
        "[{}] {} round {}/{} ({phase}): {loss}{auc}, {} samples, {} bytes sent, {:.1} s; {}/{} sites reported",
        data.name,
        work.job,
        work.round,
        work.spec.total_rounds(),
        header.samples,
        bytes,
        started.elapsed().as_secs_f64(),
        receipt.reported,
        receipt.expected
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_files_stay_in_the_cache_whatever_the_job_id() {
        // Security review M1: a job id of `../../../..<dir>` put the outbox
        // update (and the epoch checkpoint) wherever the aggregator said.
        let cache = Path::new("/srv/site/cache");
        let hostile = [
            "../../../../tmp/planted",
            "/etc/cron.d/planted",
            "a/../../b",
            "..",
            "job-1",
        ];
        let mut stems = std::collections::HashSet::new();
        for job in hostile {
            let outbox = outbox_path(cache, job, 1);
            assert_eq!(
                outbox.parent(),
                Some(cache.join("outbox").as_path()),
                "{job}"
            );
            let name = outbox.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let stem = round_stem(job, 1);
            assert_eq!(name, format!("{stem}.fslw"));
            assert!(!stem.contains(job), "{job} names {name}");
            assert!(
                stem.bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b'-' || b == b'r'),
                "{name}"
            );
            assert!(stems.insert(stem), "{job}");
        }
        assert_ne!(round_stem("job-1", 1), round_stem("job-1", 2));
    }

    #[test]
    fn a_429_streak_waits_as_told_and_warns_once() {
        let throttled = |secs: Option<u64>| {
            anyhow::Error::from(Throttled {
                retry_after: secs.map(Duration::from_secs),
                message: "slow down".into(),
            })
        };
        let mut backoff = Backoff::new();
        let (delay, warn) = backoff.next(&throttled(Some(3)), 1.0);
        assert_eq!((delay, warn), (Duration::from_secs(3), true));
        for _ in 0..20 {
            let (delay, warn) = backoff.next(&throttled(Some(3)), 0.5);
            assert!(delay >= Duration::from_secs(3), "{delay:?}");
            assert!(!warn, "one warning per streak");
        }
        // Without Retry-After, the exponential backoff alone applies.
        let (delay, warn) = backoff.next(&throttled(None), 1.0);
        assert_eq!((delay, warn), (Duration::from_secs(60), false));
        // Other failures are still warned about every time.
        assert!(backoff.next(&anyhow::anyhow!("connection refused"), 1.0).1);
        // A success ends the streak: the next 429 is news again.
        backoff.reset();
        assert!(backoff.next(&throttled(Some(3)), 1.0).1);
    }

    #[test]
    fn idle_polls_never_spin() {
        assert_eq!(idle_poll_floor(Duration::ZERO), Duration::from_secs(1));
        assert_eq!(
            idle_poll_floor(Duration::from_secs(2)),
            Duration::from_secs(2)
        );
        assert_eq!(
            idle_poll_floor(Duration::from_secs(25)),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn only_a_digest_names_a_cached_model() {
        let cache = Path::new("/srv/site/cache");
        let digest = wire::digest(b"model");
        assert_eq!(
            model_path(cache, &digest).unwrap(),
            cache.join("models").join(format!("{digest}.fslw"))
        );
        for bad in ["../../../../tmp/planted", "", &digest.to_uppercase()] {
            assert!(model_path(cache, bad).is_err(), "{bad}");
        }
    }
}
