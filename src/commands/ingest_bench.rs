//! `fedslice bench --ingest`: how fast a site turns files into prepared
//! slices, per format, cold (decode + preprocess + cache write) and from the
//! preprocessing cache (hash the inputs + read the entry).
//!
//! The 256 × 256 rows use phantom exams written by the project's own writers.
//! No pure-Rust RLE or JPEG 2000 encoder is at hand, so those rows decode a
//! third-party 64 × 64 single-slice file (pydicom's MR_small, MIT) copied
//! into many one-slice series; their cold figures are per 64 × 64 slice.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use fedslice::data::cache::PreparedCache;
use fedslice::data::dicom::read_series_dir;
use fedslice::data::phantom::{PhantomConfig, PhantomFormat, write_cohort_as};
use fedslice::data::preprocess::{PreprocessConfig, prepare};
use fedslice::data::source;
use serde::Serialize;

const MR_SMALL_RLE: &[u8] = include_bytes!("../../tests/fixtures/dicom/pydicom/MR_small_RLE.dcm");
const MR_SMALL_J2K: &[u8] =
    include_bytes!("../../tests/fixtures/dicom/pydicom/MR_small_jp2klossless.dcm");

#[derive(Debug, Serialize)]
pub struct IngestRow {
    pub format: String,
    pub slice_shape: String,
    pub exams: usize,
    pub slices: usize,
    pub input_mb: f64,
    pub cold_slices_per_second: f64,
    /// `None` where the row has no cached variant (see the module docs).
    pub cached_slices_per_second: Option<f64>,
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                total += entry.metadata().map_or(0, |m| m.len());
            }
        }
    }
    total
}

/// One pass over a site: hash every exam's inputs, then prepare it through
/// the cache. Returns prepared slices and seconds.
fn pass(
    site: &Path,
    cache: &PreparedCache,
    config: &PreprocessConfig,
) -> anyhow::Result<(usize, f64)> {
    let started = Instant::now();
    let listed = source::list_site(site)?;
    let (exams, unreadable) = source::digest_all(listed.exams);
    if let Some((exam, e)) = unreadable.into_iter().next() {
        anyhow::bail!("exam {}: {e}", exam.id);
    }
    let (prepared, summary) = cache.prepare_all(&exams, config, &|| {});
    anyhow::ensure!(
        summary.failed.is_empty(),
        "exams failed to prepare: {:?}",
        summary.failed
    );
    let slices = prepared.iter().map(|e| e.depth).sum();
    Ok((slices, started.elapsed().as_secs_f64()))
}

fn phantom_rows(
    work: &Path,
    exams: usize,
    side: usize,
    config: &PreprocessConfig,
) -> anyhow::Result<Vec<IngestRow>> {
    let cohort = PhantomConfig {
        sites: 1,
        exams_per_site: exams,
        seed: 1,
        image_size: side,
        valid_fraction: 0.0,
        ..PhantomConfig::default()
    };
    let mut rows = Vec::new();
    for (name, format) in [
        ("MRNet .npy (uint8)", PhantomFormat::Mrnet),
        ("DICOM explicit LE 16-bit", PhantomFormat::Dicom),
        ("NIfTI .nii.gz (float32)", PhantomFormat::Nifti),
    ] {
        let out = work.join(format!("{format:?}"));
        tracing::info!(format = name, exams, "writing phantom site");
        write_cohort_as(&out, &cohort, format)
            .with_context(|| format!("writing {}", out.display()))?;
        let site = out.join("site-00");
        let cache = PreparedCache::open(&work.join(format!("cache-{format:?}")))?;
        let (slices, cold) = pass(&site, &cache, config)?;
        let (_, warm) = pass(&site, &cache, config)?;
        rows.push(IngestRow {
            format: name.into(),
            slice_shape: format!("{side}x{side}"),
            exams,
            slices,
            input_mb: dir_bytes(&site) as f64 / 1e6,
            cold_slices_per_second: slices as f64 / cold,
            cached_slices_per_second: Some(slices as f64 / warm),
        });
    }
    Ok(rows)
}

fn fixture_row(
    work: &Path,
    name: &str,
    bytes: &[u8],
    copies: usize,
    config: &PreprocessConfig,
) -> anyhow::Result<IngestRow> {
    let root = work.join(name.replace(' ', "-"));
    for i in 0..copies {
        let dir = root.join(format!("{i:05}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("slice.dcm"), bytes)
            .with_context(|| format!("writing {}", dir.display()))?;
    }
    use rayon::prelude::*;
    let started = Instant::now();
    let done = (0..copies)
        .into_par_iter()
        .map(|i| {
            let dir = root.join(format!("{i:05}"));
            let series =
                read_series_dir(&dir).with_context(|| format!("reading {}", dir.display()))?;
            let v = &series.volume;
            let exam = prepare(&format!("{i}"), v, Some(series.info.spacing), None, config)?;
            Ok((exam.depth, format!("{}x{}", v.height, v.width)))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let seconds = started.elapsed().as_secs_f64();
    let slices = done.iter().map(|(d, _)| d).sum();
    let shape = done.first().map(|(_, s)| s.clone()).unwrap_or_default();
    Ok(IngestRow {
        format: name.into(),
        slice_shape: shape,
        exams: copies,
        slices,
        input_mb: dir_bytes(&root) as f64 / 1e6,
        cold_slices_per_second: slices as f64 / seconds,
        cached_slices_per_second: None,
    })
}

fn measure(
    work: &Path,
    exams: usize,
    side: usize,
) -> anyhow::Result<(Vec<IngestRow>, PreprocessConfig)> {
    let config = PreprocessConfig::new(128);
    let mut rows = phantom_rows(work, exams, side, &config)?;
    let copies = 400;
    rows.push(fixture_row(
        work,
        "DICOM RLE lossless",
        MR_SMALL_RLE,
        copies,
        &config,
    )?);
    rows.push(fixture_row(
        work,
        "DICOM JPEG 2000 lossless",
        MR_SMALL_J2K,
        copies,
        &config,
    )?);
    Ok((rows, config))
}

pub fn run(exams: usize, side: usize, json: bool) -> anyhow::Result<()> {
    let work = std::env::temp_dir().join(format!("fedslice-ingest-bench-{}", std::process::id()));
    let result = measure(&work, exams, side);
    let _ = std::fs::remove_dir_all(&work);
    let (rows, config) = result?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "ingest": rows,
                "model_input": config.image_size,
                "threads": threads,
            }))?
        );
        return Ok(());
    }
    println!(
        "{:<26} {:>8} {:>6} {:>7} {:>9} {:>14} {:>14}",
        "format", "slice", "exams", "slices", "input MB", "cold slices/s", "cached slices/s"
    );
    for r in &rows {
        println!(
            "{:<26} {:>8} {:>6} {:>7} {:>9.1} {:>14.0} {:>14}",
            r.format,
            r.slice_shape,
            r.exams,
            r.slices,
            r.input_mb,
            r.cold_slices_per_second,
            r.cached_slices_per_second
                .map_or("-".into(), |s| format!("{s:.0}"))
        );
    }
    println!(
        "(prepared to {0}x{0}; {threads} threads; cold = hash + decode + preprocess + cache write, \
         cached = hash + cache read; RLE and JPEG 2000 rows: one-slice series, no cache)",
        config.image_size
    );
    Ok(())
}
