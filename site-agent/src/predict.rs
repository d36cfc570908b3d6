//! `site-agent predict`: one exam through an exported bundle, answered as JSON
//! (stdout or `--json`) and, for DICOM input, as a Structured Report (`--sr`).

use std::path::Path;

use anyhow::Context;
use fedslice::device::{self, BackendKind};
use fedslice::export::predict::Predictor;
use fedslice::export::sr;

pub struct PredictOptions<'a> {
    pub model: &'a Path,
    pub input: &'a Path,
    pub json: Option<&'a Path>,
    pub sr: Option<&'a Path>,
    pub device: &'a str,
}

pub fn run(options: PredictOptions<'_>) -> anyhow::Result<()> {
    let kind: BackendKind = options.device.parse()?;
    let device = device::open(kind)?;
    let predictor = Predictor::open(options.model, &device)
        .with_context(|| format!("opening the model bundle {}", options.model.display()))?;
    let (prediction, _) = predictor
        .predict_path(options.input)
        .with_context(|| format!("predicting on {}", options.input.display()))?;
    if let Some(series) = &prediction.input.series {
        tracing::info!(
            "used series {} ({} slices, {:?}); {} series in {} studies found",
            series.series_key,
            series.slices,
            series.plane,
            series.series_found,
            series.studies_found
        );
    }
    let json = serde_json::to_string_pretty(&prediction)?;
    match options.json {
        Some(path) => write_atomically(path, json.as_bytes())?,
        None => println!("{json}"),
    }
    if let Some(path) = options.sr {
        let written = sr::write_sr(&prediction, path)
            .with_context(|| format!("writing the structured report {}", path.display()))?;
        tracing::info!("wrote SR {}", written.path.display());
    }
    eprintln!(
        "{}: p(ACL tear) = {:.3} → {} (threshold {:.3}), {:.0} ms",
        options.input.display(),
        prediction.probability,
        prediction.label,
        prediction.threshold,
        prediction.timing.total_ms
    );
    Ok(())
}

/// Writes beside and renames, so a watcher never reads half a result.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    fedslice::atomic_file::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}
