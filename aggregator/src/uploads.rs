//! Resumable update uploads. A site that loses its connection mid-upload asks
//! how much arrived (`GET /v1/uploads/{digest}`) and sends only the rest
//! (`PATCH` with `upload-offset` and `upload-length`). The bytes received so
//! far are kept in a per-site part file named by the payload's SHA-256; once
//! complete, the payload must hash to that name, and is then validated and
//! recorded exactly like a single-request upload (`POST /v1/updates`).
//!
//! A part can only be extended at its current length (else 416: ask again),
//! by one request at a time (else 423: retry), up to the body limit; a
//! refused payload's part is deleted, so resending it starts from zero.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Extension, Path as UrlPath, State as AxumState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use fedslice::protocol::{UPLOAD_LENGTH, UPLOAD_OFFSET, UploadProgress};
use fedslice::wire;
use tokio::io::AsyncWriteExt;

use crate::engine::{Engine, Rejection};
use crate::server::Site;

/// Parts being written right now, so two requests never interleave in one.
#[derive(Default)]
pub struct InProgress(Mutex<HashSet<PathBuf>>);

struct Claim<'a> {
    set: &'a InProgress,
    path: PathBuf,
}

impl InProgress {
    fn is_claimed(&self, path: &Path) -> bool {
        let set = self.0.lock().unwrap_or_else(|p| p.into_inner());
        set.contains(path)
    }

    fn claim(&self, path: &Path) -> Option<Claim<'_>> {
        let mut set = self.0.lock().unwrap_or_else(|p| p.into_inner());
        set.insert(path.to_path_buf()).then(|| Claim {
            set: self,
            path: path.to_path_buf(),
        })
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut set = self.set.0.lock().unwrap_or_else(|p| p.into_inner());
        set.remove(&self.path);
    }
}

fn is_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `incoming/uploads/<site key>-<digest>.part`; the site key keeps sites'
/// parts apart without putting names into paths.
fn part_path(engine: &Engine, site: &str, digest: &str) -> Result<PathBuf, Rejection> {
    if !is_digest(digest) {
        return Err(Rejection::BadRequest(format!(
            "`{digest}` is not a payload digest (64 lowercase hex characters)"
        )));
    }
    let dir = engine.paths.incoming().join("uploads");
    std::fs::create_dir_all(&dir)
        .map_err(|e| Rejection::Internal(format!("creating {}: {e}", dir.display())))?;
    let site_key = &wire::digest(site.as_bytes())[..16];
    Ok(dir.join(format!("{site_key}-{digest}.part")))
}

/// Removes parts nobody has extended for `max_age` (a site that gave up, or
/// a round that closed without them), at start-up and then hourly.
pub(crate) fn sweep_stale(engine: &Engine, max_age: std::time::Duration) {
    let dir = engine.paths.incoming().join("uploads");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for entry in entries.flatten() {
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > max_age);
        if stale && std::fs::remove_file(entry.path()).is_ok() {
            tracing::info!(part = %entry.path().display(), "removed an abandoned partial upload");
        }
    }
}

/// Before a site starts a new part: deletes its oldest unfinished parts so
/// that it holds fewer than [`crate::intake::MAX_PARTS_PER_SITE`] (security
/// review M4). Parts being written right now are left alone; if they alone
/// fill the quota, the new upload waits.
fn make_room(engine: &Engine, site: &str, new: &Path) -> Result<(), Rejection> {
    let dir = new.parent().unwrap_or(new);
    let prefix = format!("{}-", &wire::digest(site.as_bytes())[..16]);
    let mut parts: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(dir)
        .map_err(|e| Rejection::Internal(format!("listing {}: {e}", dir.display())))?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| {
            let at = e
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            (at, e.path())
        })
        .collect();
    parts.sort();
    let busy = |p: &Path| engine.uploads.is_claimed(p);
    let mut held = parts.len();
    for (_, part) in &parts {
        if held < crate::intake::MAX_PARTS_PER_SITE {
            break;
        }
        if !busy(part) && std::fs::remove_file(part).is_ok() {
            tracing::info!(site, part = %part.display(), "deleted an older unfinished upload: a new one started");
            held -= 1;
        }
    }
    if held >= crate::intake::MAX_PARTS_PER_SITE {
        return Err(Rejection::Busy(format!(
            "{held} unfinished uploads of this site are being written; retry when one ends"
        )));
    }
    Ok(())
}

/// The first bytes of a part, enough to judge its frame.
async fn read_prefix(path: &Path) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let file = tokio::fs::File::open(path).await?;
    let mut prefix = Vec::new();
    file.take(8 + wire::MAX_HEADER_LEN as u64)
        .read_to_end(&mut prefix)
        .await?;
    Ok(prefix)
}

fn received(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

pub(crate) async fn get_upload(
    AxumState(engine): AxumState<Arc<Engine>>,
    Extension(Site(site)): Extension<Site>,
    UrlPath(digest): UrlPath<String>,
) -> Result<axum::Json<UploadProgress>, Rejection> {
    let path = part_path(&engine, &site, &digest)?;
    Ok(axum::Json(UploadProgress {
        received: received(&path),
    }))
}

fn header_u64(headers: &HeaderMap, name: &str) -> Result<u64, Rejection> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| Rejection::BadRequest(format!("missing or invalid `{name}` header")))
}

pub(crate) async fn patch_upload(
    AxumState(engine): AxumState<Arc<Engine>>,
    Extension(Site(site)): Extension<Site>,
    UrlPath(digest): UrlPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Rejection> {
    let result = append(&engine, &site, &digest, &headers, body).await;
    match &result {
        Ok(r) if r.status() == StatusCode::OK => engine.wake(),
        Ok(_) | Err(Rejection::ResumeElsewhere(_) | Rejection::Busy(_)) => {}
        Err(rejection) => engine.record_rejection(&site, rejection),
    }
    result
}

async fn append(
    engine: &Arc<Engine>,
    site: &str,
    digest: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, Rejection> {
    let path = part_path(engine, site, digest)?;
    let offset = header_u64(headers, UPLOAD_OFFSET)?;
    let length = header_u64(headers, UPLOAD_LENGTH)?;
    let limit = {
        let engine = engine.clone();
        tokio::task::spawn_blocking(move || crate::intake::upload_limit(&engine))
            .await
            .map_err(|e| Rejection::Internal(format!("sizing upload: {e}")))??
    };
    if length == 0 || length > limit {
        return Err(crate::intake::too_large(limit));
    }
    let Some(_claim) = engine.uploads.claim(&path) else {
        return Err(Rejection::Busy(
            "another request is still writing this upload; retry shortly".into(),
        ));
    };
    if !path.exists() {
        make_room(engine, site, &path)?;
    }
    let mut have = received(&path);
    if have > length {
        let _ = tokio::fs::remove_file(&path).await;
        return Err(Rejection::ResumeElsewhere(format!(
            "{have} bytes held but the upload is {length} long; start again from 0"
        )));
    }
    if offset != have {
        return Err(Rejection::ResumeElsewhere(format!(
            "upload offset {offset} does not match the {have} bytes received; resume from {have}"
        )));
    }
    if offset > 0 {
        tracing::info!(site, digest, offset, "upload resumed at byte {offset}");
    }
    let io = |e: std::io::Error| Rejection::Internal(format!("spooling upload: {e}"));
    // The frame is judged from the first bytes, those already held included
    // (security review M5); a part that cannot become an update is deleted.
    let mut head = crate::intake::HeadCheck::new(limit);
    if have > 0 {
        let held = read_prefix(&path).await.map_err(io)?;
        if let Err(refused) = head.feed(&held) {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(refused);
        }
    }
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .await
        .map_err(io)?;
    let mut stream = body.into_data_stream();
    loop {
        let next = match crate::server::next_chunk(&mut stream, engine.body_idle_timeout).await {
            Ok(next) => next,
            Err(stalled) => {
                // Keep what arrived: the site resumes from here.
                let _ = file.flush().await;
                let _ = file.sync_data().await;
                return Err(stalled);
            }
        };
        let Some(chunk) = next else { break };
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => {
                // Keep what arrived: the site resumes from here.
                let _ = file.flush().await;
                let _ = file.sync_data().await;
                return Err(Rejection::BadRequest(format!(
                    "upload interrupted after {} bytes ({e}); resume from there",
                    received(&path)
                )));
            }
        };
        if have + chunk.len() as u64 > length {
            drop(file);
            let _ = tokio::fs::remove_file(&path).await;
            return Err(Rejection::BadRequest(format!(
                "more than the announced {length} bytes were sent; start again from 0"
            )));
        }
        engine.metrics.bytes_in.inc_by(chunk.len() as u64);
        if let Err(refused) = head.feed(&chunk) {
            drop(file);
            let _ = tokio::fs::remove_file(&path).await;
            return Err(refused);
        }
        file.write_all(&chunk).await.map_err(io)?;
        have += chunk.len() as u64;
        crate::crash_points::reached("upload:mid_body");
    }
    file.flush().await.map_err(io)?;
    file.sync_data().await.map_err(io)?;
    drop(file);
    if have < length {
        return Ok((
            StatusCode::ACCEPTED,
            axum::Json(UploadProgress { received: have }),
        )
            .into_response());
    }
    let bytes = tokio::fs::read(&path).await.map_err(io)?;
    let actual = wire::digest(&bytes);
    if actual != digest {
        let _ = tokio::fs::remove_file(&path).await;
        return Err(Rejection::Unprocessable(format!(
            "the uploaded bytes hash to {actual}, not to {digest}; start again from 0"
        )));
    }
    let engine_for_check = engine.clone();
    let site_owned = site.to_string();
    let outcome =
        tokio::task::spawn_blocking(move || engine_for_check.accept_update(&site_owned, &bytes))
            .await
            .map_err(|e| Rejection::Internal(format!("validating upload: {e}")))?;
    // A verdict on the payload is final; an internal fault (a full disk) is
    // not, and the complete part is kept for the retry.
    if !matches!(outcome, Err(Rejection::Internal(_))) {
        let _ = tokio::fs::remove_file(&path).await;
    }
    Ok(axum::Json(outcome?).into_response())
}
