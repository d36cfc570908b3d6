//! `aggregator serve`: the HTTPS API over rustls with client certificates
//! required, and the background task that advances rounds.
//!
//! Identity comes only from the verified client certificate: its common name
//! must be an active site whose registered certificate fingerprint matches, on
//! every request. TLS failures and refused requests go to the audit log.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, Path as UrlPath, Query, Request, State as AxumState};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use fedslice::protocol::{
    ApiError, HEARTBEAT_HEADER, Heartbeat, PollResponse, UploadReceipt, paths,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio_rustls::TlsAcceptor;

use crate::engine::{Engine, Rejection};
use crate::pki::{PeerIdentity, peer_identity};

/// How long a site's long-poll may wait before an empty answer; kept below
/// common proxy idle timeouts.
pub const MAX_POLL_WAIT: Duration = Duration::from_secs(25);
/// An unfinished upload nobody extended for this long is deleted.
const STALE_PART: Duration = Duration::from_secs(2 * 24 * 3600);

pub struct ServeOptions {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    pub limits: crate::limits::ConnectionLimits,
    /// How long refusals from one peer are counted into one audit row.
    pub refusal_window: Duration,
    /// The operator listener; `None` when switched off.
    pub operator: Option<crate::operator::OperatorOptions>,
}

/// The site a request comes from, after the registry check.
#[derive(Clone, Debug)]
pub(crate) struct Site(pub(crate) String);

fn api_error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(ApiError {
            error: message.into(),
        }),
    )
        .into_response()
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let throttled = matches!(self, Rejection::TooManyRequests(_));
        let mut response = api_error(self.status(), self.to_string());
        if throttled {
            // Tells a well-behaved client how long to back off instead of
            // leaving it to guess (and retry into the limit again).
            response.headers_mut().insert(
                header::RETRY_AFTER,
                axum::http::HeaderValue::from(crate::engine::RETRY_AFTER_S),
            );
        }
        response
    }
}

/// Refuses a request unless the certificate's name is an active site with
/// this exact certificate (a revoked or re-issued one no longer counts).
async fn authorise(
    AxumState(engine): AxumState<Arc<Engine>>,
    Extension(peer): Extension<Arc<PeerIdentity>>,
    mut request: Request,
    next: Next,
) -> Response {
    // The request log (`-v`, or RUST_LOG=aggregator::server=debug): one line
    // per site request, refused ones included, to see how often sites call.
    tracing::debug!(
        site = %peer.common_name,
        method = %request.method(),
        path = request.uri().path(),
        "site request"
    );
    match engine.authorise(&peer) {
        Ok(()) => {
            keep_heartbeat(&engine, &peer.common_name, request.headers());
            request
                .extensions_mut()
                .insert(Site(peer.common_name.clone()));
            next.run(request).await
        }
        Err(rejection) => {
            // A certificate that is refused will be refused on every request:
            // close its connection rather than let it hold a slot (M3).
            let forbidden = matches!(rejection, Rejection::Forbidden(_));
            let mut response = rejection.into_response();
            if forbidden {
                response.headers_mut().insert(
                    header::CONNECTION,
                    axum::http::HeaderValue::from_static("close"),
                );
            }
            response
        }
    }
}

/// Keeps the heartbeat a request carries (issue 15). A malformed one is
/// dropped and never refuses the request: the header is optional.
fn keep_heartbeat(engine: &Engine, site: &str, headers: &axum::http::HeaderMap) {
    let Some(value) = headers.get(HEARTBEAT_HEADER) else {
        return;
    };
    let beat = value
        .to_str()
        .map_err(|e| e.to_string())
        .and_then(|v| Heartbeat::parse(v).map_err(|e| e.to_string()));
    match beat {
        Ok(beat) => {
            if let Err(e) = engine.state().record_heartbeat(site, &beat) {
                tracing::warn!(site, "keeping the heartbeat: {e}");
            }
        }
        Err(e) => tracing::debug!(site, "heartbeat ignored: {e}"),
    }
}

async fn health() -> &'static str {
    "ok"
}

/// `GET /v1/work?wait=S[&until_idle=true]`. Unknown parameters are ignored,
/// so agents and aggregators of different versions understand each other.
#[derive(serde::Deserialize)]
struct PollQuery {
    wait: Option<u64>,
    /// Sent by agents run with `--until-idle`, which exit once no job is
    /// open: they need that answer at once rather than after the wait.
    #[serde(default)]
    until_idle: bool,
}

async fn poll_work(
    AxumState(engine): AxumState<Arc<Engine>>,
    Extension(Site(site)): Extension<Site>,
    Query(query): Query<PollQuery>,
) -> Result<axum::Json<PollResponse>, Rejection> {
    let wait = Duration::from_secs(query.wait.unwrap_or(0)).min(MAX_POLL_WAIT);
    let until = tokio::time::Instant::now() + wait;
    let mut first: Option<PollResponse> = None;
    loop {
        // Register for wake-ups before looking, so a change between the look
        // and the wait is not missed.
        let changed = engine.changed.notified();
        let response = engine.poll(&site)?;
        // With no job open the poll waits too (issue 15): answering at once
        // made an idle agent poll in a tight loop into the rate limit. A job
        // created meanwhile is started by the round task, which wakes us.
        // Any other change for this site (a job finished, say) is answered
        // at once, so the agent's log follows the consortium's state.
        let news = first.as_ref().is_some_and(|first| *first != response);
        if response.work.is_some()
            || news
            || (response.open_jobs == 0 && query.until_idle)
            || tokio::time::Instant::now() >= until
        {
            return Ok(axum::Json(response));
        }
        first.get_or_insert(response);
        tokio::select! {
            _ = changed => {}
            _ = tokio::time::sleep_until(until) => {}
        }
    }
}

/// The start offset of a `Range: bytes=N-` request (the only form agents send,
/// to resume a broken download).
fn range_start(headers: &axum::http::HeaderMap) -> Option<usize> {
    let value = headers.get(header::RANGE)?.to_str().ok()?;
    let start = value.strip_prefix("bytes=")?.strip_suffix('-')?;
    start.parse().ok()
}

async fn get_model(
    AxumState(engine): AxumState<Arc<Engine>>,
    Extension(Site(site)): Extension<Site>,
    UrlPath(digest): UrlPath<String>,
    headers: axum::http::HeaderMap,
) -> Result<Response, Rejection> {
    let bytes = engine.model_bytes(&site, &digest)?;
    let total = bytes.len();
    match range_start(&headers) {
        Some(start) if start < total => Ok((
            StatusCode::PARTIAL_CONTENT,
            [
                (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                (
                    header::CONTENT_RANGE,
                    format!("bytes {start}-{}/{total}", total - 1),
                ),
            ],
            Bytes::from(bytes).slice(start..),
        )
            .into_response()),
        Some(_) => Ok((
            StatusCode::RANGE_NOT_SATISFIABLE,
            [(header::CONTENT_RANGE, format!("bytes */{total}"))],
        )
            .into_response()),
        None => Ok((
            [
                (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                (header::ACCEPT_RANGES, "bytes".to_string()),
            ],
            Bytes::from(bytes),
        )
            .into_response()),
    }
}

/// The next chunk of a body, or a refusal if the client stalls longer than
/// `idle` (hyper bounds only the request head; a body can trickle forever).
pub(crate) async fn next_chunk<S, T>(stream: &mut S, idle: Duration) -> Result<Option<T>, Rejection>
where
    S: futures_util::Stream<Item = T> + Unpin,
{
    use futures_util::StreamExt;
    tokio::time::timeout(idle, stream.next())
        .await
        .map_err(|_| {
            Rejection::BadRequest(format!(
                "upload stalled: nothing received for {} s",
                idle.as_secs()
            ))
        })
}

/// Streams the body to a temporary file (bounded by the body limit) so a
/// large update never sits in memory twice, then validates it.
async fn post_update(
    AxumState(engine): AxumState<Arc<Engine>>,
    Extension(Site(site)): Extension<Site>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Result<axum::Json<UploadReceipt>, Rejection> {
    let tmp = engine.incoming_path();
    let result = async {
        let limit = {
            let engine = engine.clone();
            tokio::task::spawn_blocking(move || crate::intake::upload_limit(&engine))
                .await
                .map_err(|e| Rejection::Internal(format!("sizing upload: {e}")))??
        };
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(crate::intake::too_large(limit));
        }
        // The frame is judged from the first bytes (security review M5):
        // a body that is no update is refused before it is spooled or read.
        let mut head = crate::intake::HeadCheck::new(limit);
        let mut file = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| Rejection::Internal(format!("spooling upload: {e}")))?;
        let mut stream = body.into_data_stream();
        let mut received = 0u64;
        while let Some(chunk) = next_chunk(&mut stream, engine.body_idle_timeout).await? {
            let chunk = chunk.map_err(|e| {
                Rejection::BadRequest(format!("upload interrupted or over the size limit: {e}"))
            })?;
            received += chunk.len() as u64;
            // Counted as it arrives: a body refused from its first bytes
            // still crossed the network.
            engine.metrics.bytes_in.inc_by(chunk.len() as u64);
            crate::crash_points::reached("upload:mid_body");
            if received > limit {
                return Err(crate::intake::too_large(limit));
            }
            head.feed(&chunk)?;
            file.write_all(&chunk)
                .await
                .map_err(|e| Rejection::Internal(format!("spooling upload: {e}")))?;
        }
        file.flush()
            .await
            .map_err(|e| Rejection::Internal(format!("spooling upload: {e}")))?;
        let bytes = tokio::fs::read(&tmp)
            .await
            .map_err(|e| Rejection::Internal(format!("spooling upload: {e}")))?;
        debug_assert_eq!(bytes.len() as u64, received);
        let engine = engine.clone();
        let site = site.clone();
        tokio::task::spawn_blocking(move || engine.accept_update(&site, &bytes))
            .await
            .map_err(|e| Rejection::Internal(format!("validating upload: {e}")))?
    }
    .await;
    let _ = tokio::fs::remove_file(&tmp).await;
    match &result {
        Ok(_) => engine.wake(),
        Err(rejection) => engine.record_rejection(&site, rejection),
    }
    result.map(axum::Json)
}

/// `POST /v1/refusals`: a site declines a job under its privacy policy.
async fn post_refusal(
    AxumState(engine): AxumState<Arc<Engine>>,
    Extension(Site(site)): Extension<Site>,
    axum::Json(refusal): axum::Json<fedslice::protocol::WorkRefusal>,
) -> StatusCode {
    engine.record_refusal(&site, &refusal);
    StatusCode::NO_CONTENT
}

fn router(engine: Arc<Engine>) -> Router {
    Router::new()
        .route(paths::HEALTH, get(health))
        .route(paths::WORK, get(poll_work))
        .route(&format!("{}/{{digest}}", paths::MODELS), get(get_model))
        .route(paths::UPDATES, post(post_update))
        .route(paths::REFUSALS, post(post_refusal))
        .route(
            &format!("{}/{{digest}}", paths::UPLOADS),
            get(crate::uploads::get_upload).patch(crate::uploads::patch_upload),
        )
        .route_layer(middleware::from_fn_with_state(engine.clone(), authorise))
        .with_state(engine)
}

pub async fn serve(state_dir: &Path, options: ServeOptions) -> anyhow::Result<()> {
    // Held until the process exits: `aggregator status` reads it as running.
    let mut serve_lock =
        crate::operator::ServeLock::acquire(&crate::engine::StatePaths::new(state_dir))?;
    let mut engine = Engine::open(state_dir, options.max_body_bytes)?
        .with_refusal_window(options.refusal_window);
    engine.body_idle_timeout = options.limits.idle_timeout;
    let engine = Arc::new(engine);
    let tls = engine
        .tls_server_config()
        .context(fedslice::process::Permanent::Credentials)?;
    let acceptor = TlsAcceptor::from(tls);
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("binding {}", options.listen))?;
    let local = listener.local_addr()?;
    tracing::info!(listen = %local, state = %state_dir.display(), "aggregator serving (mutual TLS 1.3)");
    engine.audit_event("service_started", None, &format!("listening on {local}"));
    crate::uploads::sweep_stale(&engine, STALE_PART);
    let operator = match options.operator {
        Some(operator) => crate::operator::start(engine.clone(), operator).await?,
        None => None,
    };
    serve_lock.record(operator)?;

    let ticker = engine.clone();
    tokio::spawn(async move {
        let mut last_sweep = tokio::time::Instant::now();
        loop {
            let engine = ticker.clone();
            let sweep = last_sweep.elapsed() > Duration::from_secs(3600);
            if sweep {
                last_sweep = tokio::time::Instant::now();
            }
            if let Err(e) = tokio::task::spawn_blocking(move || {
                engine.advance();
                engine.flush_refusals();
                if sweep {
                    crate::uploads::sweep_stale(&engine, STALE_PART);
                }
            })
            .await
            {
                tracing::error!("round task panicked: {e}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });

    let app = router(engine.clone());
    let gate = crate::limits::Gate::new(options.limits);
    loop {
        let (tcp, peer_addr) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!("accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (connection, handshake) = match gate.admit(peer_addr.ip()) {
            Ok(permits) => permits,
            Err(refused) => {
                // Closed before any TLS work; counted, and audited once per
                // window per address and reason.
                drop(tcp);
                engine.metrics.refused_request("connection_limit");
                let reason = refused.reason(&gate.limits);
                refuse(
                    &engine,
                    "connection_refused",
                    &peer_addr.ip().to_string(),
                    &reason,
                );
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let engine = engine.clone();
        let limits = gate.limits.clone();
        tokio::spawn(async move {
            let _connection = connection;
            let peer_ip = peer_addr.ip().to_string();
            let accepted =
                tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await;
            drop(handshake);
            let tls = match accepted {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    // In words: "BadSignature" does not tell the operator
                    // that a site holds another consortium's bundle.
                    let why = match fedslice::tls::explain_trust_failure(
                        &e,
                        fedslice::tls::Side::Aggregator,
                    ) {
                        Some(words) => format!("{words} ({e})"),
                        None => e.to_string(),
                    };
                    refuse(&engine, "tls_refused", &peer_ip, &why);
                    return;
                }
                Err(_) => {
                    refuse(&engine, "tls_refused", &peer_ip, "handshake timed out");
                    return;
                }
            };
            let identity = match tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .map(|cert| peer_identity(cert.as_ref()))
            {
                Some(Ok(identity)) => identity,
                Some(Err(e)) => {
                    refuse(
                        &engine,
                        "tls_refused",
                        &peer_ip,
                        &format!("unreadable certificate: {e}"),
                    );
                    return;
                }
                None => {
                    refuse(&engine, "tls_refused", &peer_ip, "no client certificate");
                    return;
                }
            };
            let service = TowerToHyperService::new(app.layer(Extension(Arc::new(identity))));
            // Without a timer hyper silently ignores its header timeout
            // (security review M3). The timeout also runs while a kept-alive
            // connection waits for its next request, so it is the idle limit.
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.idle_timeout)
                .keep_alive(true)
                .serve_connection(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(peer = %peer_addr, "connection ended: {e}");
            }
        });
    }
}

/// Counts a connection-level refusal; the rare audit write it leads to runs
/// on a blocking thread, never on the accept loop.
fn refuse(engine: &Arc<Engine>, event: &'static str, peer: &str, reason: &str) {
    if let Some(entry) = engine.note_refusal(event, None, peer, reason) {
        let engine = engine.clone();
        tokio::task::spawn_blocking(move || engine.write_refusals(vec![entry]));
    }
}
