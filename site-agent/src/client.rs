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

    /// Downloads a global model and checks it is the one asked for.
    pub async fn model(&self, digest: &str) -> anyhow::Result<Vec<u8>> {
        let response = self
            .http
            .get(format!("{}{}/{digest}", self.base, paths::MODELS))
            .timeout(Duration::from_secs(600))
            .send()
            .await
            .with_context(|| format!("downloading model {digest} from {}", self.base))?;
        let bytes = Self::check(response).await?.bytes().await?.to_vec();
        let actual = wire::digest(&bytes);
        anyhow::ensure!(
            actual == digest,
            "model download {digest} arrived as {actual}: corrupted in transit"
        );
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
