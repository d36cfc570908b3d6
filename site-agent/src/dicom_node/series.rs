//! When a series is complete, and what happens then.
//!
//! The scheduler (an async task) hears of every filed instance. A series is
//! complete once no instance has arrived for it for the quiet period; it is
//! then queued for the inference thread, which owns the predictor and runs
//! one series at a time: predict, write result.json and the SR (or
//! error.json), optionally send the SR on. An instance that arrives while its
//! series is being predicted, or after, makes the series due again one quiet
//! period later.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use fedslice::export::predict::Predictor;
use fedslice::export::sr;
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use super::association::Arrival;
use super::send::{self, Destination};
use super::storage::{self, SeriesPlace};
use crate::predict::write_atomically;

/// A complete series, for the inference thread.
#[derive(Debug)]
pub struct Job {
    pub place: SeriesPlace,
    pub last_arrival: Instant,
}

struct State {
    place: SeriesPlace,
    last_arrival: Instant,
    /// Instances arrived since the last prediction started.
    pending: bool,
    running: bool,
}

/// Runs until `shutdown`; then drops the job queue, which lets the inference
/// thread finish the series in hand and stop.
pub async fn schedule(
    quiet: Duration,
    initial: Vec<SeriesPlace>,
    mut arrivals: mpsc::Receiver<Arrival>,
    jobs: mpsc::UnboundedSender<Job>,
    mut done: mpsc::UnboundedReceiver<PathBuf>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut series: HashMap<PathBuf, State> = HashMap::new();
    let now = Instant::now();
    for place in initial {
        tracing::info!(series = %place.series_key, "series received before a restart and not yet predicted: due after the quiet period");
        series.insert(
            place.dir.clone(),
            State {
                place,
                last_arrival: now,
                pending: true,
                running: false,
            },
        );
    }
    loop {
        let next = series
            .values()
            .filter(|s| s.pending && !s.running)
            .map(|s| s.last_arrival + quiet)
            .min();
        tokio::select! {
            _ = shutdown.changed() => break,
            arrival = arrivals.recv() => {
                let Some(Arrival { place, at }) = arrival else { break };
                let state = series.entry(place.dir.clone()).or_insert_with(|| {
                    tracing::info!(series = %place.series_key, study = %place.study_key, "receiving instances of a series");
                    State { place, last_arrival: at, pending: true, running: false }
                });
                state.last_arrival = state.last_arrival.max(at);
                state.pending = true;
            }
            finished = done.recv() => {
                let Some(dir) = finished else { break };
                if let Some(state) = series.get_mut(&dir) {
                    state.running = false;
                    if !state.pending {
                        series.remove(&dir);
                    }
                }
            }
            _ = tokio::time::sleep_until(next.unwrap_or(now).into()), if next.is_some() => {
                let now = Instant::now();
                for state in series.values_mut() {
                    if state.pending && !state.running && now >= state.last_arrival + quiet {
                        state.pending = false;
                        state.running = true;
                        tracing::info!(
                            series = %state.place.series_key,
                            quiet_s = quiet.as_secs_f64(),
                            "series complete (no new instance for the quiet period): predicting"
                        );
                        let job = Job { place: state.place.clone(), last_arrival: state.last_arrival };
                        if jobs.send(job).is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// What `error.json` holds.
#[derive(Serialize)]
struct ErrorRecord<'a> {
    series_key: &'a str,
    error: String,
    at_unix_s: u64,
}

/// What `sent.json` holds.
#[derive(Serialize)]
struct SentRecord<'a> {
    destination: String,
    sop_instance_uid: &'a str,
    ok: bool,
    status: Option<String>,
    error: Option<String>,
    at_unix_s: u64,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub struct Worker {
    pub predictor: Predictor,
    pub destination: Option<Destination>,
    pub ae_title: String,
    pub max_pdu: u32,
    /// Set at shutdown: queued series are left for the next start.
    pub stopping: Arc<AtomicBool>,
}

impl Worker {
    /// The inference thread's loop (blocking).
    pub fn run(self, mut jobs: mpsc::UnboundedReceiver<Job>, done: mpsc::UnboundedSender<PathBuf>) {
        while let Some(job) = jobs.blocking_recv() {
            if self.stopping.load(Ordering::SeqCst) {
                tracing::info!(series = %job.place.series_key, "shutting down: left for the next start");
                continue;
            }
            let dir = job.place.dir.clone();
            let outcome =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.process(&job)));
            let result = match outcome {
                Ok(r) => r,
                Err(_) => Err(anyhow::anyhow!("internal error: the predictor panicked")),
            };
            if let Err(e) = result {
                tracing::error!(series = %job.place.series_key, "prediction failed: {e:#}");
                let record = ErrorRecord {
                    series_key: &job.place.series_key,
                    error: format!("{e:#}"),
                    at_unix_s: unix_now(),
                };
                let written = serde_json::to_vec_pretty(&record)
                    .map_err(anyhow::Error::from)
                    .and_then(|json| {
                        write_atomically(&job.place.result_dir.join(storage::ERROR_JSON), &json)
                    });
                if let Err(e) = written {
                    tracing::error!(series = %job.place.series_key, "cannot record the failure: {e:#}");
                }
                // An older result describes fewer instances than are now on disk.
                for stale in [storage::RESULT_JSON, storage::SR_FILE, storage::SENT_JSON] {
                    let _ = std::fs::remove_file(job.place.result_dir.join(stale));
                }
            }
            let _ = done.send(dir);
        }
        tracing::debug!("inference thread stopped");
    }

    fn process(&self, job: &Job) -> anyhow::Result<()> {
        let place = &job.place;
        let (prediction, _) = self
            .predictor
            .predict_path(&place.dir)
            .with_context(|| format!("predicting on series folder {}", place.dir.display()))?;
        let json = serde_json::to_string_pretty(&prediction)?;
        write_atomically(
            &place.result_dir.join(storage::RESULT_JSON),
            json.as_bytes(),
        )?;
        let sr_path = place.result_dir.join(storage::SR_FILE);
        let written = sr::write_sr(&prediction, &sr_path)
            .with_context(|| format!("writing the structured report {}", sr_path.display()))?;
        let _ = std::fs::remove_file(place.result_dir.join(storage::ERROR_JSON));
        let _ = std::fs::remove_file(place.result_dir.join(storage::SENT_JSON));
        let (slices, used_key) = prediction
            .input
            .series
            .as_ref()
            .map(|s| (s.slices, s.series_key.as_str()))
            .unwrap_or((0, ""));
        if used_key != place.series_key {
            // The folder holds one series by construction; say so if not.
            tracing::warn!(series = %place.series_key, used = %used_key, "the predictor chose another series than the folder's");
        }
        tracing::info!(
            series = %place.series_key,
            probability = format!("{:.6}", prediction.probability),
            label = %prediction.label,
            threshold = format!("{:.3}", prediction.threshold),
            slices,
            predict_ms = format!("{:.0}", prediction.timing.total_ms),
            after_last_instance_ms = format!("{:.0}", job.last_arrival.elapsed().as_secs_f64() * 1e3),
            "prediction written (result.json, fedslice-sr.dcm)"
        );
        if let Some(to) = &self.destination {
            self.send(place, to, &written.path, &written.sop_instance_uid);
        }
        Ok(())
    }

    /// Sends the SR and records the outcome; a failure is logged, not fatal.
    fn send(&self, place: &SeriesPlace, to: &Destination, path: &std::path::Path, instance: &str) {
        let started = Instant::now();
        let outcome = send::send_sr(path, to, &self.ae_title, self.max_pdu);
        let (ok, status, error) = match &outcome {
            Ok(code) if super::dimse::status::stored(*code) => (true, Some(*code), None),
            Ok(code) => (
                false,
                Some(*code),
                Some(format!("refused with status {code:04X}H")),
            ),
            Err(e) => (false, None, Some(format!("{e:#}"))),
        };
        if ok {
            tracing::info!(
                series = %place.series_key,
                destination = %to,
                status = status.map(|s| format!("{s:04X}H")).unwrap_or_default(),
                ms = format!("{:.0}", started.elapsed().as_secs_f64() * 1e3),
                "SR sent"
            );
        } else {
            tracing::error!(
                series = %place.series_key,
                destination = %to,
                "SR not sent: {}",
                error.as_deref().unwrap_or("")
            );
        }
        let record = SentRecord {
            destination: to.to_string(),
            sop_instance_uid: instance,
            ok,
            status: status.map(|s| format!("{s:04X}H")),
            error,
            at_unix_s: unix_now(),
        };
        let written = serde_json::to_vec_pretty(&record)
            .map_err(anyhow::Error::from)
            .and_then(|json| write_atomically(&place.result_dir.join(storage::SENT_JSON), &json));
        if let Err(e) = written {
            tracing::error!(series = %place.series_key, "cannot record the send: {e:#}");
        }
    }
}
