//! The agent's only network code: outbound HTTPS to the aggregator with the
//! site's client certificate. It never listens, and it sends only what the
//! caller hands it (update payloads).

use std::time::Duration;

use anyhow::Context;
use fedslice::protocol::{ApiError, PollResponse, UploadReceipt, paths};
use fedslice::wire;

use crate::config::SiteConfig;

/// A refusal from the aggregator (4xx): retrying the same request will not help.
#[derive(Debug, thiserror::Error)]
#[error("aggregator refused ({status}): {message}")]
pub struct Refused {
    pub status: u16,
    pub message: String,
}

pub struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    pub fn new(config: &SiteConfig) -> anyhow::Result<Self> {
        let read = |p: &std::path::Path| {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
        };
        let tls = fedslice::tls::client_config(
            &read(&config.ca_cert)?,
            &read(&config.cert)?,
            &read(&config.key)?,
        )
        .context("loading the site's TLS bundle")?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(Duration::from_secs(10))
            .tcp_keepalive(Duration::from_secs(30))
            .build()
            .context("building the HTTPS client")?;
        Ok(Self {
            http,
            base: config.aggregator_url.clone(),
        })
    }

    async fn check(response: reqwest::Response) -> anyhow::Result<reqwest::Response> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<ApiError>(&body)
            .map(|e| e.error)
            .unwrap_or(body);
        // 429 and 408 are "try again later", not a verdict on the request.
        if status.is_client_error() && status.as_u16() != 429 && status.as_u16() != 408 {
            return Err(Refused {
                status: status.as_u16(),
                message,
            }
            .into());
        }
        anyhow::bail!("aggregator error ({status}): {message}")
    }

    /// Long-polls for work: the aggregator answers as soon as there is some, or after `wait`.
    pub async fn poll(&self, wait: Duration) -> anyhow::Result<PollResponse> {
        let response = self
            .http
            .get(format!(
                "{}{}?wait={}",
                self.base,
                paths::WORK,
                wait.as_secs()
            ))
            .timeout(wait + Duration::from_secs(20))
            .send()
            .await
            .with_context(|| format!("polling {}", self.base))?;
        Ok(Self::check(response).await?.json().await?)
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
        let response = request
            .send()
            .await
            .with_context(|| format!("downloading model {digest} from {}", self.base))?;
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

    pub async fn upload(&self, payload: Vec<u8>) -> anyhow::Result<UploadReceipt> {
        let response = self
            .http
            .post(format!("{}{}", self.base, paths::UPDATES))
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .timeout(Duration::from_secs(600))
            .body(payload)
            .send()
            .await
            .with_context(|| format!("uploading to {}", self.base))?;
        Ok(Self::check(response).await?.json().await?)
    }
}
