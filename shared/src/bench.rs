//! Measurements behind `fedslice bench` and `cargo bench`: GMML training-step
//! time and mask-generation throughput.

use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Device, Distribution, Tensor};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::Serialize;

use crate::device::BackendKind;
use crate::model::{UnknownPreset, VitConfig};
use crate::ssl::GmmlModel;
use crate::ssl::mask::{MaskConfig, generate_mask};
use crate::train::Optimizer;

#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    pub preset: String,
    pub device: String,
    pub batch: usize,
    pub steps: usize,
    pub step_ms_mean: f64,
    pub step_ms_min: f64,
    pub images_per_second: f64,
    pub params: usize,
}

/// Times full GMML steps (forward, masked L1, backward, clipping, AdamW) on
/// random inputs of the preset's shape. The device is synchronised by reading
/// the loss back every step, so each step's time includes all of its work.
pub fn gmml_step(
    preset: &str,
    backend: BackendKind,
    device: &Device,
    batch: usize,
    warmup: usize,
    steps: usize,
) -> Result<BenchRow, UnknownPreset> {
    let config = VitConfig::preset(preset)?;
    let train_device = device.clone().autodiff();
    let mut model = GmmlModel::new(&config, &train_device).train();
    let params = model.num_params();
    let mut optimizer = Optimizer::adamw(3.0);
    let side = config.image_size;
    let n = config.num_patches();
    let pp = config.patch_size * config.patch_size;
    let images = Tensor::<4>::random(
        [batch, 1, side, side],
        Distribution::Normal(0.0, 1.0),
        &train_device,
    );
    let target = Tensor::<3>::random(
        [batch, n, pp],
        Distribution::Normal(0.0, 1.0),
        &train_device,
    );
    let mask = Tensor::<3>::random(
        [batch, n, pp],
        Distribution::Uniform(0.0, 1.0),
        &train_device,
    )
    .greater_elem(0.4)
    .float();
    let mut times = Vec::with_capacity(steps);
    for i in 0..warmup + steps {
        let started = Instant::now();
        let loss = model.loss(images.clone(), target.clone(), mask.clone());
        model = optimizer.step(model, loss.clone(), 1e-4, 0.04);
        let _ = loss.into_scalar::<f32>();
        if i >= warmup {
            times.push(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    let mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
    let min = times.iter().copied().fold(f64::INFINITY, f64::min);
    Ok(BenchRow {
        preset: preset.to_string(),
        device: backend.to_string(),
        batch,
        steps,
        step_ms_mean: mean,
        step_ms_min: min,
        images_per_second: batch as f64 / (mean / 1e3),
        params,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct MaskThroughput {
    pub side: usize,
    pub patch: usize,
    pub masks: usize,
    pub masks_per_second: f64,
}

/// Masks per second on one thread at GMML's default settings.
pub fn mask_throughput(side: usize, patch: usize, masks: usize) -> MaskThroughput {
    let mut rng = StdRng::seed_from_u64(0);
    let config = MaskConfig::default();
    let started = Instant::now();
    let mut covered = 0usize;
    for i in 0..masks {
        let target = 0.5 + 0.25 * (i % 100) as f64 / 100.0;
        covered += generate_mask(&mut rng, side, patch, target, &config)
            .blocks
            .len();
    }
    std::hint::black_box(covered);
    MaskThroughput {
        side,
        patch,
        masks,
        masks_per_second: masks as f64 / started.elapsed().as_secs_f64(),
    }
}

/// One aggregation measurement: `sites` updates of a preset's GMML model
/// decoded (digest, zstd, safetensors, finiteness) and accumulated into a
/// streaming FedAvg, as the aggregator does when a round closes.
#[derive(Debug, Clone, Serialize)]
pub struct AggregationRow {
    pub preset: String,
    pub sites: usize,
    pub dtype: String,
    pub params: usize,
    pub model_mb: f64,
    pub bytes_per_update: usize,
    pub seconds: f64,
    /// Encoded update bytes decoded and accumulated per second.
    pub mb_per_second: f64,
    /// Peak resident memory during the accumulation (Linux `VmHWM`, reset before each row).
    pub peak_rss_mb: Option<f64>,
}

fn reset_peak_rss() {
    // Linux ≥ 4.0: writing 5 resets the peak RSS ("VmHWM") of this process.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// An update of `preset`'s GMML model with small random values (incompressible
/// mantissas: the worst case for zstd), encoded in `dtype`.
pub fn synthetic_update(
    preset: &str,
    dtype: crate::wire::Dtype,
) -> Result<(Vec<u8>, crate::wire::Schema, usize), String> {
    use rand::Rng;
    let config = VitConfig::preset(preset).map_err(|e| e.to_string())?;
    let device = crate::device::open(BackendKind::Flex).map_err(|e| e.to_string())?;
    let model = crate::federated::to_tensor_map(&GmmlModel::new(&config, &device))
        .map_err(|e| e.to_string())?;
    let mut rng = StdRng::seed_from_u64(7);
    let mut delta = crate::wire::TensorMap::new();
    for (name, t) in model.iter() {
        let data = (0..t.data().len())
            .map(|_| rng.random_range(-1e-3f32..1e-3))
            .collect();
        delta
            .insert(name, t.shape().to_vec(), data)
            .map_err(|e| e.to_string())?;
    }
    let payload = crate::wire::encode(
        crate::wire::PayloadMeta {
            kind: crate::wire::PayloadKind::Update,
            job: "bench".into(),
            round: 1,
            base_digest: None,
            samples: 1,
            metrics: Default::default(),
        },
        &delta,
        dtype,
        3,
    )
    .map_err(|e| e.to_string())?;
    Ok((payload, delta.schema(), delta.num_values()))
}

/// Decodes and accumulates the same encoded update `sites` times (the work per
/// update does not depend on its values). Memory must stay flat in `sites`.
pub fn aggregation(
    preset: &str,
    sites: usize,
    dtype: crate::wire::Dtype,
) -> Result<AggregationRow, String> {
    let (payload, schema, params) = synthetic_update(preset, dtype)?;
    reset_peak_rss();
    let limits = crate::wire::DecodeLimits::for_schema(&schema);
    let mut fedavg = crate::aggregate::FedAvg::new(schema);
    let started = Instant::now();
    for site in 0..sites {
        let (_, delta) = crate::wire::decode(&payload, &limits).map_err(|e| e.to_string())?;
        fedavg
            .add(&delta, 1.0 + site as f64)
            .map_err(|e| e.to_string())?;
    }
    let mean = fedavg.finish().map_err(|e| e.to_string())?;
    let seconds = started.elapsed().as_secs_f64();
    let peak = peak_rss_mb();
    drop(mean);
    Ok(AggregationRow {
        preset: preset.to_string(),
        sites,
        dtype: dtype.to_string(),
        params,
        model_mb: params as f64 * 4.0 / 1e6,
        bytes_per_update: payload.len(),
        seconds,
        mb_per_second: (payload.len() * sites) as f64 / 1e6 / seconds.max(1e-9),
        peak_rss_mb: peak,
    })
}
