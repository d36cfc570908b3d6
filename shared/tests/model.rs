//! Model shapes, GMML loss semantics and learning steps
//! on the tiny `test` preset (CPU, flex).

use burn::module::Module;
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use fedslice::model::{
    ClassifierConfig, ExamClassifier, SlicePooling, VisionTransformer, VitConfig,
};
use fedslice::ssl::{GmmlModel, masked_l1};
use fedslice::train::Optimizer;

fn device() -> Device {
    Device::flex()
}

fn test_config() -> VitConfig {
    VitConfig::preset("test").expect("preset exists")
}

#[test]
fn presets_match_the_design() {
    let tiny = VitConfig::preset("vit-tiny").expect("preset");
    assert_eq!(
        (
            tiny.image_size,
            tiny.patch_size,
            tiny.embed_dim,
            tiny.depth,
            tiny.num_heads
        ),
        (224, 16, 192, 12, 3)
    );
    let small = VitConfig::preset("vit-small").expect("preset");
    assert_eq!((small.embed_dim, small.num_heads), (384, 6));
    assert!(VitConfig::preset("vit-huge").is_err());
}

#[test]
fn encoder_and_head_output_shapes() {
    let cfg = test_config();
    let d = device();
    let model = GmmlModel::new(&cfg, &d);
    let images = Tensor::<4>::random([3, 1, 64, 64], Distribution::Normal(0.0, 1.0), &d);
    assert_eq!(
        model.encoder.forward_tokens(images.clone()).dims(),
        [3, 65, 64]
    );
    assert_eq!(model.encoder.forward_cls(images.clone()).dims(), [3, 64]);
    // The mean-patch embedding averages the 64 patch tokens and leaves CLS out.
    let tokens: Vec<f32> = model
        .encoder
        .forward_tokens(images.clone())
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    let mean = model.encoder.forward_mean_patch(images.clone());
    assert_eq!(mean.dims(), [3, 64]);
    let mean: Vec<f32> = mean.into_data().try_to_vec::<f32>().unwrap();
    for (b, row) in mean.chunks(64).enumerate() {
        for (c, &got) in row.iter().enumerate() {
            let want = (1..65).map(|t| tokens[(b * 65 + t) * 64 + c]).sum::<f32>() / 64.0;
            assert!((got - want).abs() < 1e-5, "[{b}, {c}]: {got} vs {want}");
        }
    }
    assert_eq!(model.reconstruct(images).dims(), [3, 64, 64]);
}

#[test]
fn position_embedding_interpolates_for_other_sizes() {
    let cfg = test_config();
    let d = device();
    let encoder = VisionTransformer::new(&cfg, &d);
    let images = Tensor::<4>::random([2, 1, 96, 96], Distribution::Normal(0.0, 1.0), &d);
    assert_eq!(encoder.forward_tokens(images).dims(), [2, 1 + 12 * 12, 64]);
}

#[test]
fn classifier_gives_one_logit_per_exam_for_both_poolings() {
    let d = device();
    for pooling in [SlicePooling::Transformer, SlicePooling::Max] {
        let model = ExamClassifier::new(&ClassifierConfig::new(test_config(), pooling), &d);
        let slices =
            Tensor::<4>::random([3 + 5 + 1, 1, 64, 64], Distribution::Normal(0.0, 1.0), &d);
        let logits = model.forward(slices, &[3, 5, 1]);
        assert_eq!(logits.dims(), [3]);
        let values = logits.into_data().try_to_vec::<f32>().expect("f32");
        assert!(values.iter().all(|v| v.is_finite()));
    }
}

fn fixed_batch(d: &Device, b: usize) -> (Tensor<4>, Tensor<3>, Tensor<3>) {
    let images = Tensor::<4>::random([b, 1, 64, 64], Distribution::Normal(0.0, 1.0), d);
    let target = Tensor::<3>::random([b, 64, 64], Distribution::Normal(0.0, 1.0), d);
    let mask = Tensor::<3>::random([b, 64, 64], Distribution::Uniform(0.0, 1.0), d)
        .greater_elem(0.5)
        .float();
    (images, target, mask)
}

#[test]
fn loss_ignores_unmasked_pixels() {
    let d = device();
    let model = GmmlModel::new(&test_config(), &d);
    let (images, target, mask) = fixed_batch(&d, 2);
    let base = model
        .loss(images.clone(), target.clone(), mask.clone())
        .into_scalar::<f32>();
    // Change every unmasked target pixel: the loss must not move.
    let unmasked = mask.clone().neg() + 1.0;
    let changed = target.clone() + unmasked * 100.0;
    let same = model
        .loss(images.clone(), changed, mask.clone())
        .into_scalar::<f32>();
    assert_eq!(base, same);
    // Changing masked pixels must move it.
    let moved = model
        .loss(images, target + mask.clone() * 100.0, mask)
        .into_scalar::<f32>();
    assert!(moved > base + 10.0, "{moved} vs {base}");
}

#[test]
fn masked_l1_matches_a_hand_computed_value() {
    let d = device();
    let pred = Tensor::<3>::from_data(TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0], [1, 2, 2]), &d);
    let target =
        Tensor::<3>::from_data(TensorData::new(vec![0.0f32, 0.0, 0.0, 0.0], [1, 2, 2]), &d);
    let mask = Tensor::<3>::from_data(TensorData::new(vec![1.0f32, 0.0, 1.0, 0.0], [1, 2, 2]), &d);
    let loss = masked_l1(pred, target, mask).into_scalar::<f32>();
    assert!((loss - 2.0).abs() < 1e-6, "(1 + 3) / 2 = 2, got {loss}");
}

#[test]
fn one_pretraining_step_lowers_the_loss_on_a_fixed_batch() {
    let d = device();
    let train = d.clone().autodiff();
    let mut model = GmmlModel::new(&test_config(), &train).train();
    let (images, target, mask) = fixed_batch(&train, 8);
    let mut optimizer = Optimizer::adamw(3.0);
    let before = model.loss(images.clone(), target.clone(), mask.clone());
    let before_value = before.clone().into_scalar::<f32>();
    model = optimizer.step(model, before, 1e-3, 0.04);
    let after = model.loss(images, target, mask).into_scalar::<f32>();
    assert!(
        after < before_value,
        "loss went from {before_value} to {after}"
    );
}

#[test]
fn classifier_fits_a_small_labelled_batch() {
    use fedslice::train::{FinetuneConfig, NoCheckpoints, NoProgress, finetune, predict};
    let d = device();
    let exams = toy_exams();
    for pooling in [SlicePooling::Transformer, SlicePooling::Max] {
        let model = ExamClassifier::new(&ClassifierConfig::new(test_config(), pooling), &d);
        let config = FinetuneConfig {
            epochs: 30,
            lr: 3e-3,
            warmup_epochs: 0.0,
            ..FinetuneConfig::default()
        };
        let (model, report) = finetune(
            model,
            &exams,
            &config,
            &d,
            &mut NoProgress,
            &mut NoCheckpoints,
        )
        .expect("fine-tunes");
        let first = report.epoch_losses[0];
        let last = *report.epoch_losses.last().expect("epochs");
        assert!(
            last < 0.5 * first,
            "{pooling:?}: fine-tuning loss {first} → {last}"
        );
        let p = predict(&model, &exams, &d);
        for (e, p) in exams.iter().zip(&p) {
            assert_eq!(
                e.label,
                Some(*p >= 0.5),
                "{pooling:?}: exam {} scored {p}",
                e.id
            );
        }
    }
}

/// Eight random "exams"; the positives carry a bright square in one slice,
/// which a classifier must learn to find.
fn toy_exams() -> Vec<fedslice::data::preprocess::PreparedExam> {
    use fedslice::data::preprocess::PreparedExam;
    (0..8)
        .map(|i| {
            let depth = 3 + i % 3;
            let mut pixels: Vec<f32> = (0..depth * 64 * 64)
                .map(|j| (((j * 2654435761usize + i * 97) % 1000) as f32 / 1000.0) - 0.5)
                .collect();
            let torn = i % 2 == 0;
            if torn {
                for y in 20..36 {
                    for x in 20..36 {
                        pixels[64 * 64 + y * 64 + x] = 3.0;
                    }
                }
            }
            PreparedExam {
                id: format!("e{i}"),
                depth,
                side: 64,
                pixels,
                label: Some(torn),
            }
        })
        .collect()
}

#[test]
fn fedprox_keeps_local_training_near_the_global_weights() {
    use fedslice::federated::to_tensor_map;
    use fedslice::train::{FinetuneConfig, NoCheckpoints, NoProgress, finetune};
    let d = device();
    let exams = toy_exams();
    let config = ClassifierConfig::new(test_config(), SlicePooling::Max);
    d.seed(5);
    let global = ExamClassifier::new(&config, &d);
    let start = to_tensor_map(&global).expect("tensors");
    let drift = |mu: f64| {
        let train = FinetuneConfig {
            epochs: 5,
            lr: 3e-3,
            warmup_epochs: 0.0,
            proximal_mu: mu,
            ..FinetuneConfig::default()
        };
        let (local, _) = finetune(
            global.clone(),
            &exams,
            &train,
            &d,
            &mut NoProgress,
            &mut NoCheckpoints,
        )
        .expect("fine-tunes");
        to_tensor_map(&local)
            .expect("tensors")
            .sub(&start)
            .expect("same schema")
            .l2_norm()
    };
    let (free, proximal) = (drift(0.0), drift(100.0));
    eprintln!("weight drift after 5 epochs: plain {free:.4}, FedProx mu=100 {proximal:.4}");
    assert!(free > 0.0, "training moved the weights");
    assert!(
        proximal < 0.7 * free,
        "FedProx μ=100 drifted {proximal:.4}, plain {free:.4}"
    );
}
