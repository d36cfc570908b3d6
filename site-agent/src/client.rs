//! The agent's only network code: outbound HTTPS to the aggregator with the
//! site's client certificate. It never listens, and it sends only what the
//! caller hands it (update payloads).

use std::time::Duration;

use anyhow::Context;
use fedslice::protocol::{
    ApiError, HEARTBEAT_HEADER, PollResponse, UPLOAD_LENGTH, UPLOAD_OFFSET, UploadProgress,
    UploadReceipt, paths,
};
use fedslice::wire;

use crate::config::SiteConfig;
use fedslice::process::Permanent;

/// A failed request, with a TLS trust failure explained in words and marked
/// permanent: retrying a handshake with the wrong CA never succeeds.
fn sent(
    result: Result<reqwest::Response, reqwest::Error>,
    what: impl FnOnce() -> String,
) -> anyhow::Result<reqwest::Response> {
    result.map_err(
        |e| match fedslice::tls::explain_trust_failure(&e, fedslice::tls::Side::Site) {
            Some(why) => anyhow::Error::new(e)
                .context(why)
                .context(Permanent::TlsTrust)
                .context(what()),
            None => anyhow::Error::new(e).context(what()),
        },
    )
}

/// A refusal from the aggregator (4xx): retrying the same request will not help.
#[derive(Debug, thiserror::Error)]
#[error("aggregator refused ({status}): {message}")]
pub struct Refused {
    pub status: u16,
    pub message: String,
}

/// The aggregator asked the site to slow down (429): retry, but not before
/// `retry_after` when it said how long.
#[derive(Debug, thiserror::Error)]
#[error("aggregator asks this site to slow down (429): {message}")]
pub struct Throttled {
    pub retry_after: Option<Duration>,
    pub message: String,
}

/// `Retry-After` in its delay-seconds form; the HTTP-date form is not worth
/// a date parser here (the aggregator sends seconds), so it reads as absent.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    let seconds: u64 = value.trim().parse().ok()?;
    // An absurd value from a confused proxy must not park the agent for days.
    Some(Duration::from_secs(seconds.min(300)))
}

/// What the aggregator made of one upload request.
#[derive(Debug)]
pub enum PartOutcome {
    /// Complete, validated and recorded.
    Done(UploadReceipt),
    /// Stored; this many bytes are held so far.
    Incomplete(u64),
    /// The chunk did not start where the held part ends.
    ResumeElsewhere,
    /// Another request is writing the same upload.
    Busy,
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    /// Attached to every request when set (issue 15 heartbeats).
    heartbeat: Option<std::sync::Arc<crate::heartbeat::Reporter>>,
}

impl Client {
    /// Reads and checks the site's TLS bundle (see [`crate::credentials`]).
    pub fn new(config: &SiteConfig) -> anyhow::Result<Self> {
        Self::with_tls(config, crate::credentials::load(config)?.tls)
    }

    pub fn with_tls(config: &SiteConfig, tls: rustls::ClientConfig) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(Duration::from_secs(10))
            .tcp_keepalive(Duration::from_secs(30))
            // Below the aggregator's idle timeout (30 s by default), so a
            // pooled connection is dropped here before the server closes it
            // under a request in flight.
            .pool_idle_timeout(Duration::from_secs(20))
            // The aggregator never redirects. Following one would let whoever
            // answers for it aim this hospital host, update in hand, at any
            // other host or at plain HTTP (security review L2).
            .redirect(reqwest::redirect::Policy::none())
            .https_only(true)
            .build()
            .context("building the HTTPS client")?;
        Ok(Self {
            http,
            base: config.aggregator_url.clone(),
            heartbeat: None,
        })
    }

    /// Sends `reporter`'s state with every request from now on.
    pub fn with_heartbeat(mut self, reporter: std::sync::Arc<crate::heartbeat::Reporter>) -> Self {
        self.heartbeat = Some(reporter);
        self
    }

    fn beat(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.heartbeat {
            Some(reporter) => request.header(HEARTBEAT_HEADER, reporter.header()),
            None => request,
        }
    }

    /// A heartbeat on its own, for when the agent has no other reason to
    /// call (training): `GET /v1/health`, which every aggregator answers.
    pub async fn heartbeat(&self) -> anyhow::Result<()> {
        let request = self
            .http
            .get(format!("{}{}", self.base, paths::HEALTH))
            .timeout(Duration::from_secs(20));
        let response = self
            .beat(request)
            .send()
            .await
            .with_context(|| format!("heartbeat to {}", self.base))?;
        Self::check(response).await?;
        Ok(())
    }

    async fn check(response: reqwest::Response) -> anyhow::Result<reqwest::Response> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        if status.is_redirection() {
            return Err(Refused {
                status: status.as_u16(),
                message: format!(
                    "answered with a redirect{}; the agent follows none: check aggregator_url",
                    response
                        .headers()
                        .get(reqwest::header::LOCATION)
                        .and_then(|l| l.to_str().ok())
                        .map(|l| format!(" to {}", fedslice::text::bounded(l, 200)))
                        .unwrap_or_default()
                ),
            }
            .into());
        }
        let retry_after = retry_after(response.headers());
        let body = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<ApiError>(&body)
            .map(|e| e.error)
            .unwrap_or(body);
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(Throttled {
                retry_after,
                message,
            }
            .into());
        }
        // Only the site check answers 403: revoked, not enrolled, or an old
        // certificate. No retry changes that; the operator must act.
        if status == reqwest::StatusCode::FORBIDDEN {
            return Err(anyhow::Error::new(Refused {
                status: status.as_u16(),
                message,
            })
            .context(Permanent::Revoked));
        }
        // 408 is "try again later", not a verdict on the request.
        if status.is_client_error() && status != reqwest::StatusCode::REQUEST_TIMEOUT {
            return Err(Refused {
                status: status.as_u16(),
                message,
            }
            .into());
        }
        anyhow::bail!("aggregator error ({status}): {message}")
    }

    /// One authenticated request that changes nothing: the handshake both
    /// ways and the site check (enrolled, not revoked).
    pub async fn hello(&self) -> anyhow::Result<()> {
        let response = self
            .http
            .get(format!("{}{}", self.base, paths::HEALTH))
            .timeout(Duration::from_secs(30))
            .send()
            .await;
        let response = sent(response, || format!("connecting to {}", self.base))?;
        Self::check(response).await?;
        Ok(())
    }

    /// Long-polls for work: the aggregator answers as soon as there is some,
    /// or after `wait`. With `until_idle` it also answers at once when no job
    /// is open (an older aggregator ignores the flag and always does).
    pub async fn poll(&self, wait: Duration, until_idle: bool) -> anyhow::Result<PollResponse> {
        let request = self
            .http
            .get(format!(
                "{}{}?wait={}{}",
                self.base,
                paths::WORK,
                wait.as_secs(),
                if until_idle { "&until_idle=true" } else { "" }
            ))
            .timeout(wait + Duration::from_secs(20));
        let response = self.beat(request).send().await;
        let response = sent(response, || format!("polling {}", self.base))?;
        let poll: PollResponse = Self::check(response).await?.json().await?;
        if let Some(work) = &poll.work {
            work.check_ids()
                .context("the aggregator sent work whose identifiers the agent refuses")?;
        }
        Ok(poll)
    }

    /// Downloads a global model into `partial` (resuming what an earlier,
    /// broken download left there) and checks it is the one asked for.
    pub async fn model(&self, digest: &str, partial: &std::path::Path) -> anyhow::Result<Vec<u8>> {
        use futures_util::StreamExt;
        use tokio::io::AsyncWriteExt;
        let have = tokio::fs::metadata(partial)
            .await
            .map(|m| m.len())
            .unwrap_or(0);
        let mut request = self
            .http
            .get(format!("{}{}/{digest}", self.base, paths::MODELS))
            .timeout(Duration::from_secs(600));
        if have > 0 {
            request = request.header(reqwest::header::RANGE, format!("bytes={have}-"));
        }
        let response = self.beat(request).send().await;
        let response = sent(response, || {
            format!("downloading model {digest} from {}", self.base)
        })?;
        if response.status() == reqwest::StatusCode::RANGE_NOT_SATISFIABLE {
            // What we hold is not a prefix of this model: start over.
            let _ = tokio::fs::remove_file(partial).await;
            anyhow::bail!("partial download of {digest} was unusable; restarting it");
        }
        let resumed = response.status() == reqwest::StatusCode::PARTIAL_CONTENT;
        let response = Self::check(response).await?;
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(resumed)
            .truncate(!resumed)
            .open(partial)
            .await
            .with_context(|| format!("writing {}", partial.display()))?;
        if resumed {
            tracing::info!(digest, from = have, "resuming model download");
        }
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.with_context(|| format!("downloading model {digest}"))?;
            file.write_all(&chunk)
                .await
                .with_context(|| format!("writing {}", partial.display()))?;
        }
        file.flush().await?;
        drop(file);
        let bytes = tokio::fs::read(partial)
            .await
            .with_context(|| format!("reading {}", partial.display()))?;
        let actual = wire::digest(&bytes);
        if actual != digest {
            let _ = tokio::fs::remove_file(partial).await;
            anyhow::bail!(
                "model download {digest} arrived as {actual}: corrupted in transit; retrying from scratch"
            );
        }
        Ok(bytes)
    }

    /// Tells the aggregator this site declines a job under its local policy.
    pub async fn refuse(&self, refusal: &fedslice::protocol::WorkRefusal) -> anyhow::Result<()> {
        let response = self
            .http
            .post(format!("{}{}", self.base, paths::REFUSALS))
            .json(refusal)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .with_context(|| format!("telling {} the site refuses {}", self.base, refusal.job))?;
        Self::check(response).await?;
        Ok(())
    }

    /// Uploads an update, resuming after whatever part of it an earlier,
    /// interrupted attempt delivered (the aggregator keeps it).
    pub async fn upload(&self, payload: Vec<u8>) -> anyhow::Result<UploadReceipt> {
        let digest = wire::digest(&payload);
        let total = payload.len() as u64;
        for _ in 0..5 {
            let offset = self.upload_progress(&digest).await?;
            if offset > total {
                anyhow::bail!("aggregator holds {offset} bytes of a {total}-byte upload");
            }
            if offset > 0 {
                tracing::info!(digest, offset, total, "resuming upload");
            }
            let body = reqwest::Body::from(payload[offset as usize..].to_vec());
            match self.upload_part(&digest, offset, total, body).await? {
                PartOutcome::Done(receipt) => return Ok(receipt),
                // Incomplete, moved on, or busy: ask again where to resume.
                PartOutcome::Incomplete(_) | PartOutcome::ResumeElsewhere => {}
                PartOutcome::Busy => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
        anyhow::bail!("upload of {digest} did not complete after 5 attempts")
    }

    /// Bytes of the upload named `digest` that the aggregator holds.
    pub async fn upload_progress(&self, digest: &str) -> anyhow::Result<u64> {
        let request = self
            .http
            .get(format!("{}{}/{digest}", self.base, paths::UPLOADS));
        let response = self.beat(request).send().await;
        let response = sent(response, || {
            format!("asking {} about upload {digest}", self.base)
        })?;
        let progress: UploadProgress = Self::check(response).await?.json().await?;
        Ok(progress.received)
    }

    /// Sends `body` as the bytes of the upload `digest` (`total` bytes long)
    /// from `offset` on.
    pub async fn upload_part(
        &self,
        digest: &str,
        offset: u64,
        total: u64,
        body: reqwest::Body,
    ) -> anyhow::Result<PartOutcome> {
        let request = self
            .http
            .patch(format!("{}{}/{digest}", self.base, paths::UPLOADS))
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .header(UPLOAD_OFFSET, offset)
            .header(UPLOAD_LENGTH, total)
            .timeout(Duration::from_secs(600))
            .body(body);
        let response = self.beat(request).send().await;
        let response = sent(response, || format!("uploading to {}", self.base))?;
        match response.status() {
            reqwest::StatusCode::RANGE_NOT_SATISFIABLE => Ok(PartOutcome::ResumeElsewhere),
            reqwest::StatusCode::LOCKED => Ok(PartOutcome::Busy),
            reqwest::StatusCode::ACCEPTED => {
                let progress: UploadProgress = response.json().await?;
                Ok(PartOutcome::Incomplete(progress.received))
            }
            _ => Ok(PartOutcome::Done(
                Self::check(response).await?.json().await?,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};

    #[test]
    fn retry_after_reads_seconds_and_ignores_the_rest() {
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(RETRY_AFTER, HeaderValue::from_static(v));
            retry_after(&h)
        };
        assert_eq!(with("3"), Some(Duration::from_secs(3)));
        assert_eq!(with("86400"), Some(Duration::from_secs(300)));
        assert_eq!(with("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }
}
