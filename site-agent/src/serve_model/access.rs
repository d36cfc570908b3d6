//! Who may use `serve-model` and how much of it: the bind policy checked at
//! start, the bearer token, TLS (optionally with client certificates) and the
//! per-request limits.
//!
//! Answers carry study and series UIDs and the endpoint runs a model on
//! whatever it is sent, so a listener that other machines can reach must
//! authenticate its callers over TLS; loopback is the default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::ApiError;

/// Shorter tokens are refused at start: a guessable token is no authentication.
const MIN_TOKEN_LEN: usize = 16;

/// The bearer token callers must present. Only its SHA-256 is kept, so the
/// comparison always runs over 32 bytes whatever the length presented.
pub struct Token {
    digest: [u8; 32],
}

impl Token {
    /// Reads the token from `path`: the first line, surrounding whitespace removed.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the token file {}", path.display()))?;
        warn_if_readable_by_others(path);
        let token = text.lines().next().unwrap_or("").trim();
        if token.len() < MIN_TOKEN_LEN {
            anyhow::bail!(
                "the token in {} is shorter than {MIN_TOKEN_LEN} characters; \
                 make one with e.g. `openssl rand -hex 32`",
                path.display()
            );
        }
        // It must survive a trip through an HTTP header unchanged.
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            anyhow::bail!(
                "the token in {} holds spaces or non-ASCII characters; use printable ASCII only",
                path.display()
            );
        }
        Ok(Self::new(token))
    }

    fn new(token: &str) -> Self {
        Self {
            digest: Sha256::digest(token.as_bytes()).into(),
        }
    }

    /// Constant-time, so response timing does not reveal how much of a guess was right.
    fn matches(&self, presented: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        self.digest.ct_eq(&digest).into()
    }
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            "the token file {} is readable by other users; chmod 600 it",
            path.display()
        );
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

/// TLS material named on the command line.
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    pub fn server_config(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
        };
        let ca = self.client_ca.as_deref().map(read).transpose()?;
        fedslice::tls::https_server_config(&read(&self.cert)?, &read(&self.key)?, ca.as_deref())
            .with_context(|| {
                format!(
                    "loading the TLS certificate {} and key {}",
                    self.cert.display(),
                    self.key.display()
                )
            })
    }
}

/// Refuses to start a listener that other machines can reach unless callers
/// must authenticate (token or client certificate) over TLS. A token sent in
/// plain HTTP can be read and replayed by anyone on the path, so it does not
/// count without TLS. `insecure` is the operator's explicit override.
pub fn check_exposure(
    listen: SocketAddr,
    tls: bool,
    authenticated: bool,
    insecure: bool,
) -> anyhow::Result<()> {
    if listen.ip().is_loopback() || (tls && authenticated) {
        return Ok(());
    }
    if insecure {
        tracing::warn!(
            "serving {listen} without {}: anyone who can reach it can run the model and read the study and series UIDs it answers with",
            if tls {
                "authentication"
            } else {
                "TLS and authentication"
            }
        );
        return Ok(());
    }
    let missing = match (tls, authenticated) {
        (false, false) => "TLS and authentication",
        (false, true) => "TLS (the token would cross the network in clear)",
        _ => "authentication",
    };
    anyhow::bail!(
        "refusing to serve on {listen}, which other machines can reach, without {missing}. \
         Bind 127.0.0.1 (the default) behind a TLS reverse proxy, or give --tls-cert and --tls-key \
         with --token-file and/or --client-ca; --insecure-no-auth serves it unprotected anyway"
    )
}

/// Middleware: a request without the right `Authorization: Bearer` token
/// gets 401 before its body is read.
pub async fn require_token(
    State(token): State<Arc<Token>>,
    request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, value)| value.trim());
    match presented {
        Some(value) if token.matches(value.as_bytes()) => next.run(request).await,
        other => {
            tracing::warn!(
                path = %request.uri().path(),
                "request refused: {}",
                if other.is_some() { "wrong token" } else { "no bearer token" }
            );
            let mut response = refusal(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send `Authorization: Bearer <token>` with the serve-model token",
            ));
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"serve-model\""),
            );
            response
        }
    }
}

/// An answer given before the request body was read: the rest of the body
/// is still on the wire, so the connection cannot carry another request.
/// Saying so lets the client open a new one instead of reusing this one
/// and finding it closed.
fn refusal(error: ApiError) -> Response {
    let mut response = error.into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Bounds on each prediction request.
pub struct Limits {
    /// Requests in progress at once; one more is answered 503 at once rather
    /// than queued, so waiting uploads cannot pile up in memory.
    pub slots: Arc<Semaphore>,
    pub max_concurrent: usize,
    pub timeout: Duration,
    pub max_body_bytes: usize,
}

/// Held by a prediction until its inference ends, even when the client has
/// gone or the request timed out: the blocking inference keeps running, and
/// its slot must not be handed to another request until then.
#[derive(Clone)]
pub struct Slot {
    _permit: Arc<OwnedSemaphorePermit>,
}

/// Middleware: declared body size, free slot, then the request under the time limit.
pub async fn limit(
    State(limits): State<Arc<Limits>>,
    mut request: Request,
    next: Next,
) -> Response {
    // A declared length over the limit is refused before a byte of it is read;
    // bodies without one are cut by `DefaultBodyLimit` as they stream.
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(length) = declared
        && length > limits.max_body_bytes as u64
    {
        return refusal(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "the body ({length} bytes) is larger than the {} bytes this server accepts",
                limits.max_body_bytes
            ),
        ));
    }
    let Ok(permit) = Arc::clone(&limits.slots).try_acquire_owned() else {
        tracing::warn!(
            "request refused: {} predictions already in progress",
            limits.max_concurrent
        );
        let mut response = refusal(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            format!(
                "{} predictions are already in progress; try again shortly",
                limits.max_concurrent
            ),
        ));
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return response;
    };
    request.extensions_mut().insert(Slot {
        _permit: Arc::new(permit),
    });
    match tokio::time::timeout(limits.timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(
                "request timed out after {} s (upload and inference)",
                limits.timeout.as_secs()
            );
            refusal(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                format!(
                    "the request took longer than {} s (upload and inference)",
                    limits.timeout.as_secs()
                ),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_matches_only_itself() {
        let token = Token::new("0123456789abcdef0123");
        assert!(token.matches(b"0123456789abcdef0123"));
        assert!(!token.matches(b"0123456789abcdef012"));
        assert!(!token.matches(b""));
    }

    #[test]
    fn exposure_policy() {
        let loopback: SocketAddr = "127.0.0.1:8080".parse().expect("addr");
        let v6_loopback: SocketAddr = "[::1]:8080".parse().expect("addr");
        let any: SocketAddr = "0.0.0.0:8080".parse().expect("addr");
        assert!(check_exposure(loopback, false, false, false).is_ok());
        assert!(check_exposure(v6_loopback, false, false, false).is_ok());
        assert!(check_exposure(any, true, true, false).is_ok());
        assert!(check_exposure(any, false, false, false).is_err());
        assert!(check_exposure(any, false, true, false).is_err());
        assert!(check_exposure(any, true, false, false).is_err());
        assert!(check_exposure(any, false, false, true).is_ok());
    }
}
