//! `site-agent serve-model`: the predictor as an HTTP endpoint for workflow
//! engines inside the hospital. POST one series (multipart DICOM files, a tar
//! or zip archive, or a single DICOM file) to `/v1/predict` and get the same
//! JSON `site-agent predict` prints. `GET /health` and `GET /v1/model`.
//!
//! Uploads are bounded (body size, archive entries, unpacked bytes), unpacked
//! into a private temporary folder under flat generated names (an archive's
//! own paths are never used), and deleted after the answer. One inference
//! runs at a time on a blocking thread; the rest wait their turn.
//!
//! Access (see `access`): loopback by default; a reachable address needs TLS
//! and a bearer token or client certificates unless `--insecure-no-auth`.
//! Predictions in progress, their duration, the body size, the connections
//! and the time to send request headers are all bounded.

mod access;

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Extension, Multipart, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use fedslice::device::{self, BackendKind};
use fedslice::export::predict::{PredictError, Predictor};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

/// Options of `serve-model`.
pub struct ServeModelOptions {
    pub model: PathBuf,
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    pub device: String,
    /// Bearer token callers must send (`--token-file`).
    pub token_file: Option<PathBuf>,
    /// Certificate and key for HTTPS (`--tls-cert`, `--tls-key`).
    pub tls_cert_key: Option<(PathBuf, PathBuf)>,
    /// Clients must present a certificate from this CA (`--client-ca`).
    pub client_ca: Option<PathBuf>,
    /// Serve a reachable address without TLS and authentication anyway.
    pub insecure_no_auth: bool,
    /// Prediction requests in progress at once.
    pub max_concurrent: usize,
    /// Longest a prediction request may take, upload and inference together.
    pub request_timeout: Duration,
}

/// Open connections at once; more are closed unanswered. Each is cheap, but
/// not free, and unauthenticated peers can open them.
const MAX_CONNECTIONS: usize = 256;
/// A client has this long to send its request headers (slow-loris bound).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// At most this many files in one upload.
const MAX_FILES: usize = 4096;

struct AppState {
    predictor: std::sync::Mutex<Predictor>,
    model_info: serde_json::Value,
    /// Unpacked bytes allowed per upload (archives may compress).
    max_unpacked_bytes: u64,
}

/// A JSON error response: `{"error": code, "message": text}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": self.code, "message": self.message});
        (self.status, Json(body)).into_response()
    }
}

impl From<PredictError> for ApiError {
    fn from(e: PredictError) -> Self {
        let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
        match &e {
            PredictError::NoDicom { .. } | PredictError::UnknownInput(_) => Self::new(
                unprocessable,
                "no_dicom",
                "the upload holds no readable DICOM image",
            ),
            PredictError::NoSeriesInPlane { plane, series, .. } => Self::new(
                unprocessable,
                "no_series_in_plane",
                format!(
                    "none of the {series} series uploaded is {plane:?}; this model reads {plane:?} series"
                ),
            ),
            PredictError::Dicom(inner) => {
                Self::new(unprocessable, "invalid_series", scrub(&inner.to_string()))
            }
            PredictError::Preprocess(inner) => {
                Self::new(unprocessable, "unusable_images", scrub(&inner.to_string()))
            }
            _ => Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
        }
    }
}

/// Error texts name the temporary file; the client knows its upload by its own names.
fn scrub(message: &str) -> String {
    match message.split_once(": ") {
        Some((path, rest)) if path.contains("fedslice-upload") => rest.to_owned(),
        _ => message.to_owned(),
    }
}

pub fn run(options: ServeModelOptions) -> anyhow::Result<()> {
    // Access settings first: a refused configuration fails before the model loads.
    if options.client_ca.is_some() && options.tls_cert_key.is_none() {
        anyhow::bail!("--client-ca needs --tls-cert and --tls-key");
    }
    if options.max_concurrent == 0 {
        anyhow::bail!("--max-concurrent must be at least 1");
    }
    let token = options
        .token_file
        .as_deref()
        .map(access::Token::load)
        .transpose()?;
    let tls = options
        .tls_cert_key
        .as_ref()
        .map(|(cert, key)| {
            access::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: options.client_ca.clone(),
            }
            .server_config()
        })
        .transpose()?;
    access::check_exposure(
        options.listen,
        tls.is_some(),
        token.is_some() || options.client_ca.is_some(),
        options.insecure_no_auth,
    )?;
    let kind: BackendKind = options.device.parse()?;
    let device = device::open(kind)?;
    let predictor = Predictor::open(&options.model, &device)
        .with_context(|| format!("opening the model bundle {}", options.model.display()))?;
    let config = &predictor.bundle.config;
    let model_info = serde_json::json!({
        "bundle": options.model.display().to_string(),
        "weights_sha256": predictor.bundle.weights_sha256,
        "bundle_sha256": predictor.bundle.bundle_sha256,
        "fedslice_version": config.fedslice_version,
        "format_version": config.format_version,
        "architecture": config.architecture,
        "plane": config.plane,
        "threshold": config.threshold,
        "labels": config.labels,
        "input": config.input,
        "max_body_bytes": options.max_body_bytes,
    });
    let state = Arc::new(AppState {
        predictor: std::sync::Mutex::new(predictor),
        model_info,
        max_unpacked_bytes: (options.max_body_bytes as u64).saturating_mul(4),
    });
    let limits = Arc::new(access::Limits {
        slots: Arc::new(Semaphore::new(options.max_concurrent)),
        max_concurrent: options.max_concurrent,
        timeout: options.request_timeout,
        max_body_bytes: options.max_body_bytes,
    });
    let app = router(state, limits, token.map(Arc::new));
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .with_context(|| format!("listening on {}", options.listen))?;
        let local = listener.local_addr()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::info!(
            "serving the model on {scheme}://{local} (POST /v1/predict); token: {}, client certificates: {}",
            if options.token_file.is_some() { "required" } else { "none" },
            if options.client_ca.is_some() { "required" } else { "none" },
        );
        println!("listening on {local}");
        serve(listener, app, tls.map(TlsAcceptor::from), options.request_timeout).await;
        Ok(())
    })
}

/// Accepts connections until Ctrl-C, then lets requests in progress finish
/// (up to one request timeout) before returning.
async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    request_timeout: Duration,
) {
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let (stop, stopped) = watch::channel(false);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut ctrl_c => break,
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            tracing::warn!(%peer, "connection closed unanswered: {MAX_CONNECTIONS} already open");
            continue;
        };
        let app = app.clone();
        let tls = tls.clone();
        let stopped = stopped.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                None => serve_connection(TokioIo::new(tcp), app, stopped, peer).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            serve_connection(TokioIo::new(stream), app, stopped, peer).await
                        }
                        Ok(Err(e)) => tracing::warn!(%peer, "TLS handshake refused: {e}"),
                        Err(_) => tracing::warn!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
    tracing::info!("stopping: finishing the requests in progress");
    let _ = stop.send(true);
    let all = u32::try_from(MAX_CONNECTIONS).unwrap_or(u32::MAX);
    if tokio::time::timeout(request_timeout, connections.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("stopped with requests still in progress");
    }
}

async fn serve_connection<I>(
    io: I,
    app: Router,
    mut stopped: watch::Receiver<bool>,
    peer: SocketAddr,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(true)
        .serve_connection(io, TowerToHyperService::new(app));
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = stopped.changed() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, "connection ended: {e}");
    }
}

/// `/health` stays open (it says only "ok") so that probes need no secret;
/// `/v1/*` needs the token when one is set, and predictions are limited.
fn router(
    state: Arc<AppState>,
    limits: Arc<access::Limits>,
    token: Option<Arc<access::Token>>,
) -> Router {
    let max_body_bytes = limits.max_body_bytes;
    let predict_route = Router::new()
        .route("/v1/predict", post(predict))
        .route_layer(axum::middleware::from_fn_with_state(limits, access::limit));
    let mut api = Router::new()
        .route("/v1/model", get(model_info))
        .merge(predict_route);
    if let Some(token) = token {
        api = api.route_layer(axum::middleware::from_fn_with_state(
            token,
            access::require_token,
        ));
    }
    Router::new()
        .route(
            "/health",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .merge(api)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

async fn model_info(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(state.model_info.clone())
}

/// What kind of body the client sent, from its Content-Type.
enum Upload {
    Multipart,
    Tar,
    Zip,
    Dicom,
}

fn upload_kind(headers: &HeaderMap) -> Result<Upload, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let essence = content_type.split(';').next().unwrap_or("").trim();
    match essence {
        "multipart/form-data" => Ok(Upload::Multipart),
        "application/x-tar" | "application/tar" => Ok(Upload::Tar),
        "application/zip" | "application/x-zip-compressed" => Ok(Upload::Zip),
        "application/dicom" => Ok(Upload::Dicom),
        other => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "Content-Type `{other}` is not accepted; send multipart/form-data DICOM files, application/x-tar, application/zip or application/dicom"
            ),
        )),
    }
}

async fn predict(
    State(state): State<Arc<AppState>>,
    Extension(slot): Extension<access::Slot>,
    headers: HeaderMap,
    request: axum::extract::Request,
) -> Result<Json<serde_json::Value>, ApiError> {
    let started = Instant::now();
    let kind = upload_kind(&headers)?;
    let folder = tempfile::Builder::new()
        .prefix("fedslice-upload")
        .tempdir()
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let mut sink = UploadSink::new(folder.path(), state.max_unpacked_bytes);
    match kind {
        Upload::Multipart => {
            let mut multipart =
                <Multipart as axum::extract::FromRequest<()>>::from_request(request, &())
                    .await
                    .map_err(|e| rejection(e.status(), e.body_text(), "bad_multipart"))?;
            while let Some(field) = multipart.next_field().await.map_err(multipart_error)? {
                let bytes = field.bytes().await.map_err(multipart_error)?;
                sink.add(&bytes)?;
            }
        }
        Upload::Tar | Upload::Zip | Upload::Dicom => {
            let body = body_bytes(request).await?;
            match kind {
                Upload::Tar => sink.add_tar(&body)?,
                Upload::Zip => sink.add_zip(&body)?,
                _ => sink.add(&body)?,
            }
        }
    }
    if sink.files == 0 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "empty_upload",
            "the upload holds no files",
        ));
    }
    let received_ms = started.elapsed().as_secs_f64() * 1e3;
    let files = sink.files;
    let state2 = Arc::clone(&state);
    let path = folder.path().to_path_buf();
    let result = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let predictor = state2.predictor.lock().map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "predictor poisoned by an earlier panic",
            )
        })?;
        predictor.predict_path(&path).map_err(ApiError::from)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let (prediction, _) = result?;
    let mut json = serde_json::to_value(&prediction)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    json["input"]["path"] = serde_json::json!(format!("upload ({files} files)"));
    json["timing"]["upload_ms"] = serde_json::json!(received_ms);
    if let Some(series) = &prediction.input.series {
        tracing::info!(
            "predicted series {}: p={:.3} {} ({} files, {:.0} ms)",
            series.series_key,
            prediction.probability,
            prediction.label,
            files,
            started.elapsed().as_secs_f64() * 1e3
        );
    }
    Ok(Json(json))
}

/// An extractor's rejection as our error: `too_large` for 413, else `code`.
fn rejection(status: StatusCode, text: String, code: &'static str) -> ApiError {
    let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
        "too_large"
    } else {
        code
    };
    ApiError::new(status, code, text)
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    rejection(e.status(), e.body_text(), "bad_multipart")
}

async fn body_bytes(request: axum::extract::Request) -> Result<Bytes, ApiError> {
    <Bytes as axum::extract::FromRequest<()>>::from_request(request, &())
        .await
        .map_err(|e| rejection(e.status(), e.body_text(), "bad_body"))
}

/// Writes uploaded files under generated names, within the limits.
struct UploadSink<'a> {
    dir: &'a Path,
    files: usize,
    bytes: u64,
    max_bytes: u64,
}

impl<'a> UploadSink<'a> {
    fn new(dir: &'a Path, max_bytes: u64) -> Self {
        Self {
            dir,
            files: 0,
            bytes: 0,
            max_bytes,
        }
    }

    fn too_large(&self) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "the upload unpacks to more than {} bytes or {MAX_FILES} files",
                self.max_bytes
            ),
        )
    }

    fn add(&mut self, bytes: &[u8]) -> Result<(), ApiError> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.files += 1;
        self.bytes += bytes.len() as u64;
        if self.files > MAX_FILES || self.bytes > self.max_bytes {
            return Err(self.too_large());
        }
        let path = self.dir.join(format!("f{:05}.dcm", self.files));
        std::fs::write(&path, bytes).map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        })
    }

    /// Reads one archive entry, refusing it once the running total passes the limit.
    fn add_reader(&mut self, reader: impl Read) -> Result<(), ApiError> {
        let remaining = self.max_bytes.saturating_sub(self.bytes);
        let mut buffer = Vec::new();
        reader
            .take(remaining + 1)
            .read_to_end(&mut buffer)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_archive", e.to_string()))?;
        if buffer.len() as u64 > remaining {
            return Err(self.too_large());
        }
        self.add(&buffer)
    }

    fn add_tar(&mut self, body: &[u8]) -> Result<(), ApiError> {
        let bad = |e: std::io::Error| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_archive",
                format!("not a tar archive: {e}"),
            )
        };
        let mut archive = tar::Archive::new(body);
        for entry in archive.entries().map_err(bad)? {
            let entry = entry.map_err(bad)?;
            if entry.header().entry_type().is_file() {
                self.add_reader(entry)?;
            }
        }
        Ok(())
    }

    fn add_zip(&mut self, body: &[u8]) -> Result<(), ApiError> {
        let bad = |e: zip::result::ZipError| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_archive",
                format!("not a zip archive: {e}"),
            )
        };
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(body)).map_err(bad)?;
        if archive.len() > MAX_FILES {
            return Err(self.too_large());
        }
        for i in 0..archive.len() {
            let entry = archive.by_index(i).map_err(bad)?;
            if entry.is_file() {
                self.add_reader(entry)?;
            }
        }
        Ok(())
    }
}
