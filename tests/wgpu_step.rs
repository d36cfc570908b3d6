//! The GPU code path: one GMML step on wgpu must agree with flex and learn.
//! CI has no GPU and runs this on Mesa's software Vulkan (lavapipe).
#![cfg(feature = "wgpu")]

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use fedslice::device::{BackendKind, open};
use fedslice::model::VitConfig;
use fedslice::ssl::GmmlModel;
use fedslice::train::Optimizer;

fn batch(device: &Device) -> (Tensor<4>, Tensor<3>, Tensor<3>) {
    // Deterministic inputs, identical on both devices.
    let b = 4;
    let images: Vec<f32> = (0..b * 64 * 64)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let target: Vec<f32> = (0..b * 64 * 64)
        .map(|i| ((i * 104729) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let mask: Vec<f32> = (0..b * 64 * 64)
        .map(|i| f32::from(u8::from((i / 64) % 3 != 0)))
        .collect();
    (
        Tensor::from_data(TensorData::new(images, [b, 1, 64, 64]), device),
        Tensor::from_data(TensorData::new(target, [b, 64, 64]), device),
        Tensor::from_data(TensorData::new(mask, [b, 64, 64]), device),
    )
}

#[test]
fn gmml_step_on_wgpu_matches_flex_and_lowers_the_loss() {
    let gpu = match open(BackendKind::Wgpu) {
        Ok(device) => device,
        Err(e) => {
            panic!("wgpu device unavailable ({e}); CI installs mesa-vulkan-drivers for this test")
        }
    };
    let config = VitConfig::preset("test").expect("preset");
    let cpu_model = GmmlModel::new(&config, &Device::flex());

    let (x, t, m) = batch(&Device::flex());
    let cpu_loss = cpu_model.loss(x, t, m).into_scalar::<f32>();

    let train = gpu.clone().autodiff();
    let mut model = cpu_model.to_device(&train).train();
    let (x, t, m) = batch(&train);
    let loss = model.loss(x.clone(), t.clone(), m.clone());
    let gpu_loss = loss.clone().into_scalar::<f32>();
    assert!(
        (gpu_loss - cpu_loss).abs() < 1e-3 * cpu_loss.abs().max(1.0),
        "wgpu {gpu_loss} vs flex {cpu_loss}"
    );

    let mut optimizer = Optimizer::adamw(3.0);
    model = optimizer.step(model, loss, 1e-3, 0.04);
    let after = model.loss(x, t, m).into_scalar::<f32>();
    assert!(
        after < gpu_loss,
        "loss on wgpu went from {gpu_loss} to {after}"
    );
}
