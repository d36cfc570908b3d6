//! `site-agent serve-model`: the predictor as an HTTP endpoint for workflow
//! engines inside the hospital. POST one series (multipart DICOM files, a tar
//! or zip archive, or a single DICOM file) to `/v1/predict` and get the same
//! JSON `site-agent predict` prints. `GET /health` and `GET /v1/model`.
//!
//! Uploads are bounded (body size, archive entries, unpacked bytes), unpacked
//! into a private temporary folder under flat generated names (an archive's
//! own paths are never used), and deleted after the answer. One inference
//! runs at a time on a blocking thread; the rest wait their turn.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Multipart, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use fedslice::device::{self, BackendKind};
use fedslice::export::predict::{PredictError, Predictor};

/// Options of `serve-model`.
pub struct ServeModelOptions {
    pub model: PathBuf,
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    pub device: String,
}

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
    let app = router(state, options.max_body_bytes);
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .with_context(|| format!("listening on {}", options.listen))?;
        let local = listener.local_addr()?;
        tracing::info!("serving the model on http://{local} (POST /v1/predict)");
        println!("listening on {local}");
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .context("serving HTTP")
    })
}

fn router(state: Arc<AppState>, max_body_bytes: usize) -> Router {
    Router::new()
        .route(
            "/health",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/v1/model", get(model_info))
        .route("/v1/predict", post(predict))
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
