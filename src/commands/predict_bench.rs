//! `fedslice bench --predict`: per-exam latency of the predictor (read a DICOM
//! series, preprocess, run the classifier with per-slice scores) for each
//! preset and device, with the training defaults (8 central slices) and with
//! every slice of the exam. Weights are untrained: latency does not depend on
//! their values.

use std::path::Path;

use anyhow::Context;
use fedslice::data::phantom::{PhantomConfig, PhantomFormat, write_cohort_as};
use fedslice::data::plane::Plane;
use fedslice::data::preprocess::PreprocessConfig;
use fedslice::device::{self, BackendKind};
use fedslice::export::predict::Predictor;
use fedslice::export::{BundleConfig, Origin, Provenance, write_bundle};
use fedslice::model::{ClassifierConfig, ExamClassifier, SlicePooling, VitConfig};
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct PredictRow {
    pub preset: String,
    pub device: String,
    pub slices_read: usize,
    pub slices_used: usize,
    pub runs: usize,
    pub read_ms_median: f64,
    pub preprocess_ms_median: f64,
    pub inference_ms_median: f64,
    pub total_ms_median: f64,
    pub total_ms_max: f64,
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn bundle_for(
    dir: &Path,
    preset: &str,
    knee_slab: bool,
    device: &burn::tensor::Device,
) -> anyhow::Result<()> {
    let vit = VitConfig::preset(preset)?;
    // The knee recipe, with its slab of slices or with every slice.
    let preprocess = PreprocessConfig {
        slab_mm: if knee_slab {
            fedslice::data::preprocess::KNEE_SLAB_MM
        } else {
            0.0
        },
        ..PreprocessConfig::knee(vit.image_size)
    };
    let arch = ClassifierConfig::new(vit, SlicePooling::Transformer);
    let model = ExamClassifier::new(&arch, device);
    let config = BundleConfig::new(
        arch,
        preprocess,
        Plane::Sagittal,
        0.5,
        "benchmark (untrained)",
    );
    let provenance = Provenance {
        origin: Origin::Centralised {
            run: "bench".into(),
        },
        sites: 0,
        pretrain_exams: None,
        labelled_exams: None,
        validation: Vec::new(),
        exported_at: 0,
        details: serde_json::Value::Null,
    };
    write_bundle(dir, &model, &config, &provenance)?;
    Ok(())
}

pub fn run(presets: &[String], devices: &[String], runs: usize, json: bool) -> anyhow::Result<()> {
    let work = tempfile_dir()?;
    let cohort = PhantomConfig {
        sites: 1,
        exams_per_site: 1,
        seed: 7,
        image_size: 256,
        valid_fraction: 0.0,
        ..PhantomConfig::default()
    };
    write_cohort_as(&work.join("data"), &cohort, PhantomFormat::Dicom)
        .context("writing the phantom exam")?;
    let train = work.join("data/site-00/train");
    let exam = std::fs::read_dir(&train)
        .with_context(|| format!("listing {}", train.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_dir())
        .context("the phantom wrote no exam folder")?;
    let mut rows = Vec::new();
    for device_name in devices {
        let kind: BackendKind = device_name.parse()?;
        let device = device::open(kind)?;
        for preset in presets {
            for knee_slab in [true, false] {
                let bundle = work.join(format!("bundle-{preset}-{knee_slab}"));
                bundle_for(&bundle, preset, knee_slab, &device)?;
                let predictor = Predictor::open(&bundle, &device)?;
                predictor.predict_path(&exam)?; // warm-up
                let (mut read, mut pre, mut inf, mut total) = (vec![], vec![], vec![], vec![]);
                let mut shape = (0, 0);
                for _ in 0..runs.max(1) {
                    let (p, _) = predictor.predict_path(&exam)?;
                    read.push(p.timing.read_ms);
                    pre.push(p.timing.preprocess_ms);
                    inf.push(p.timing.inference_ms);
                    total.push(p.timing.total_ms);
                    shape = (p.input.slices_read, p.input.slices_used);
                }
                let max = total.iter().copied().fold(0.0, f64::max);
                rows.push(PredictRow {
                    preset: preset.clone(),
                    device: kind.to_string(),
                    slices_read: shape.0,
                    slices_used: shape.1,
                    runs: runs.max(1),
                    read_ms_median: median(&mut read),
                    preprocess_ms_median: median(&mut pre),
                    inference_ms_median: median(&mut inf),
                    total_ms_median: median(&mut total),
                    total_ms_max: max,
                });
            }
        }
    }
    let _ = std::fs::remove_dir_all(&work);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "predict": rows }))?
        );
        return Ok(());
    }
    println!(
        "{:<10} {:<6} {:>7} {:>7} {:>9} {:>9} {:>11} {:>10} {:>9}",
        "preset",
        "device",
        "slices",
        "used",
        "read ms",
        "prep ms",
        "infer ms",
        "total ms",
        "max ms"
    );
    for r in &rows {
        println!(
            "{:<10} {:<6} {:>7} {:>7} {:>9.1} {:>9.1} {:>11.1} {:>10.1} {:>9.1}",
            r.preset,
            r.device,
            r.slices_read,
            r.slices_used,
            r.read_ms_median,
            r.preprocess_ms_median,
            r.inference_ms_median,
            r.total_ms_median,
            r.total_ms_max
        );
    }
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("fedslice-predict-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
