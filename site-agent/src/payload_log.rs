//! The privacy officer's record: one JSON line per payload this site sent,
//! written before the payload leaves, saying what it contains.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use fedslice::wire::PayloadHeader;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SentPayload {
    pub time_unix_s: u64,
    pub job: String,
    pub round: u32,
    pub kind: String,
    pub bytes: u64,
    pub digest: String,
    pub samples: u64,
    pub tensors: usize,
    pub dtype: String,
    pub metrics: Vec<String>,
    pub contains: String,
}

pub struct PayloadLog {
    path: PathBuf,
}

impl PayloadLog {
    pub const FILE: &'static str = "sent-payloads.jsonl";

    pub fn new(cache_dir: &Path) -> Self {
        Self {
            path: cache_dir.join(Self::FILE),
        }
    }

    pub fn record(&self, header: &PayloadHeader, bytes: usize, digest: &str) -> anyhow::Result<()> {
        let entry = SentPayload {
            time_unix_s: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            job: header.job.clone(),
            round: header.round,
            kind: serde_json::to_value(header.kind)?
                .as_str()
                .unwrap_or("unknown")
                .to_string(),
            bytes: bytes as u64,
            digest: digest.to_string(),
            samples: header.samples,
            tensors: header.num_tensors,
            dtype: serde_json::to_value(header.dtype)?.as_str().unwrap_or("?").to_string(),
            metrics: header.metrics.keys().cloned().collect(),
            contains: "model weight delta (w_local - w_global), training sample count, aggregate metrics; no pixels, headers or identifiers".into(),
        };
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .with_context(|| format!("opening {}", self.path.display()))?;
        writeln!(file, "{}", serde_json::to_string(&entry)?)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("writing {}", self.path.display()))
    }

    pub fn read(cache_dir: &Path) -> anyhow::Result<Vec<SentPayload>> {
        let path = cache_dir.join(Self::FILE);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).with_context(|| format!("parsing {}", path.display())))
            .collect()
    }
}
