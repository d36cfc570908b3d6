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
