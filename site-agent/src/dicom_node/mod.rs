//! `site-agent dicom-node`: a DICOM node (Storage SCP, Verification SCP) that
//! a PACS or router sends knee MR series to. Each series is classified once
//! it is complete (no new instance for the quiet period); the result is
//! written beside it as JSON and as a Comprehensive SR, which can be sent on
//! to a destination node with C-STORE.
//!
//! The upper layer (association negotiation, PDUs) is dicom-ul's; this module
//! adds the DIMSE services, storage and scheduling. Network work runs on
//! tokio tasks, at most `max_associations` at once; inference runs on its own
//! thread. Logs name series by their digest keys and peers by address and AE
//! title, never by a patient or study identifier.

mod association;
mod dimse;
mod send;
mod series;
mod storage;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use fedslice::device::{self, BackendKind};
use fedslice::export::predict::Predictor;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

pub use send::Destination;

/// No PDU for this long ends the association (also bounds negotiation).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// At shutdown, open associations get this long to finish before an A-ABORT.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Connections over the limit that are still answered with an A-ASSOCIATE-RJ;
/// past that they are closed unanswered.
const MAX_REJECTING: usize = 16;

pub struct NodeOptions<'a> {
    pub model: &'a Path,
    pub ae_title: &'a str,
    pub port: u16,
    pub listen_host: &'a str,
    pub storage: &'a Path,
    pub quiet_period: Duration,
    pub destination: Option<Destination>,
    pub device: &'a str,
    pub max_associations: usize,
    pub max_pdu: u32,
}

/// Parses `--quiet-period` (seconds, fractions allowed).
pub fn parse_quiet_period(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(0.05..=86_400.0).contains(&secs) {
        return Err(format!("{secs} s is outside 0.05 s … 1 day"));
    }
    Ok(Duration::from_secs_f64(secs))
}

pub fn run(options: NodeOptions<'_>) -> anyhow::Result<()> {
    let ae_title = options.ae_title.trim();
    if !storage::is_valid_ae_title(ae_title) {
        bail!(
            "--ae-title {:?} is not a DICOM AE title (1–16 printable ASCII characters, no backslash)",
            options.ae_title
        );
    }
    if options.max_associations == 0 {
        bail!("--max-associations must be at least 1");
    }
    if !(4096..=1 << 20).contains(&options.max_pdu) {
        bail!("--max-pdu must be between 4096 and 1048576 bytes");
    }
    let kind: BackendKind = options.device.parse()?;
    let device = device::open(kind)?;
    let predictor = Predictor::open(options.model, &device)
        .with_context(|| format!("opening the model bundle {}", options.model.display()))?;
    std::fs::create_dir_all(options.storage)
        .with_context(|| format!("creating the storage folder {}", options.storage.display()))?;
    let storage = options
        .storage
        .canonicalize()
        .with_context(|| format!("resolving {}", options.storage.display()))?;
    let removed = storage::clean_incoming(&storage);
    if removed > 0 {
        tracing::info!(removed, "removed partial instances left by a previous run");
    }
    let unfinished = storage::unfinished_series(&storage);

    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(serve(options, ae_title, storage, predictor, unfinished))
}

async fn serve(
    options: NodeOptions<'_>,
    ae_title: &str,
    storage: PathBuf,
    predictor: Predictor,
    unfinished: Vec<storage::SeriesPlace>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind((options.listen_host, options.port))
        .await
        .with_context(|| format!("listening on {}:{}", options.listen_host, options.port))?;
    let local = listener
        .local_addr()
        .context("reading the listening address")?;
    let mut shutdown_signal = std::pin::pin!(shutdown_signals()?);

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (abort_tx, abort_rx) = watch::channel(false);
    let (arrivals_tx, arrivals_rx) = mpsc::channel(4096);
    let (jobs_tx, jobs_rx) = mpsc::unbounded_channel();
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let stopping = Arc::new(AtomicBool::new(false));

    let worker = series::Worker {
        predictor,
        destination: options.destination.clone(),
        ae_title: ae_title.to_owned(),
        max_pdu: options.max_pdu,
        stopping: stopping.clone(),
    };
    let inference = std::thread::Builder::new()
        .name("inference".into())
        .spawn(move || worker.run(jobs_rx, done_tx))
        .context("starting the inference thread")?;
    let scheduler = tokio::spawn(series::schedule(
        options.quiet_period,
        unfinished,
        arrivals_rx,
        jobs_tx,
        done_rx,
        shutdown_rx.clone(),
    ));

    let scp = Arc::new(association::scp_options(
        ae_title,
        options.max_pdu,
        IDLE_TIMEOUT,
    ));
    let ctx = Arc::new(association::Context {
        ae_title: ae_title.to_owned(),
        storage: storage.clone(),
        arrivals: arrivals_tx,
    });
    let slots = Arc::new(Semaphore::new(options.max_associations));
    let rejecting = Arc::new(Semaphore::new(MAX_REJECTING));
    let mut tasks = JoinSet::new();

    tracing::info!(
        ae_title = %ctx.ae_title,
        address = %local,
        storage = %storage.display(),
        quiet_s = options.quiet_period.as_secs_f64(),
        destination = options.destination.as_ref().map(|d| d.to_string()).unwrap_or_default(),
        max_associations = options.max_associations,
        max_pdu = options.max_pdu,
        "DICOM node listening"
    );

    loop {
        tokio::select! {
            name = &mut shutdown_signal => {
                tracing::info!("{name}: shutting down");
                break;
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            accepted = listener.accept() => {
                let (socket, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!("accepting a connection: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = socket.set_nodelay(true);
                match slots.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let (scp, ctx, abort) = (scp.clone(), ctx.clone(), abort_rx.clone());
                        tasks.spawn(async move {
                            association::serve(scp, ctx, socket, peer, abort).await;
                            drop(permit);
                        });
                    }
                    Err(_) => match rejecting.clone().try_acquire_owned() {
                        Ok(permit) => {
                            let limit = options.max_associations;
                            tasks.spawn(async move {
                                association::reject_busy(socket, peer, limit).await;
                                drop(permit);
                            });
                        }
                        Err(_) => tracing::warn!(%peer, "connection closed unanswered: too many connections"),
                    },
                }
            }
        }
    }

    // Stop listening and scheduling; let open associations finish, briefly.
    drop(listener);
    stopping.store(true, Ordering::SeqCst);
    let _ = shutdown_tx.send(true);
    if !tasks.is_empty() {
        tracing::info!(open = tasks.len(), "waiting for open associations");
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            let _ = abort_tx.send(true);
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while tasks.join_next().await.is_some() {}
            })
            .await;
            tasks.abort_all();
        }
    }
    let _ = scheduler.await;
    // The scheduler dropped the job queue: the inference thread finishes the
    // series in hand (if any) and stops.
    tracing::info!("waiting for the prediction in progress, if any");
    tokio::task::spawn_blocking(move || inference.join())
        .await
        .ok()
        .and_then(|r| r.ok())
        .context("the inference thread failed")?;
    tracing::info!("DICOM node stopped");
    Ok(())
}

/// Installs the Ctrl-C and SIGTERM handlers now (so a signal that comes
/// before the first poll is not the default, fatal one) and returns a future
/// that resolves, with the signal's name, when either arrives.
#[cfg(unix)]
fn shutdown_signals() -> anyhow::Result<impl std::future::Future<Output = &'static str>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "interrupted",
        }
    })
}

#[cfg(not(unix))]
fn shutdown_signals() -> anyhow::Result<impl std::future::Future<Output = &'static str>> {
    Ok(async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot wait for Ctrl-C ({e}); stop the node by other means");
            std::future::pending::<()>().await;
        }
        "interrupted"
    })
}

/// An error and its causes on one line (dicom-ul's errors are snafu chains).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
