//! The training recipe from the flags `train` and `study` share.

use fedslice::data::preprocess::PreprocessConfig;
use fedslice::experiment::ExperimentConfig;
use fedslice::model::{ClassifierConfig, VitConfig};
use fedslice::ssl::augment::ExamAugment;
use fedslice::train::{FinetuneConfig, PretrainConfig};

use crate::cli::RecipeArgs;

/// The experiment the flags describe. `pretrain = false` is `--no-pretrain`.
pub fn experiment_config(
    recipe: &RecipeArgs,
    seed: u64,
    labelled_fraction: f64,
    pretrain: bool,
) -> anyhow::Result<ExperimentConfig> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&labelled_fraction) && labelled_fraction > 0.0,
        "--labelled-fraction must be in (0, 1], got {labelled_fraction}"
    );
    anyhow::ensure!(
        recipe.augment_min_scale > 0.0 && recipe.augment_min_scale <= 1.0,
        "--augment-min-scale must be in (0, 1], got {}",
        recipe.augment_min_scale
    );
    let vit = VitConfig::preset(&recipe.preset)?;
    let pooling = recipe.pooling.parse().map_err(anyhow::Error::msg)?;
    Ok(ExperimentConfig {
        model: ClassifierConfig {
            slice_embedding: recipe.slice_embedding,
            ..ClassifierConfig::new(vit, pooling)
        },
        pretrain: pretrain.then(|| PretrainConfig {
            epochs: recipe.pretrain_epochs,
            batch_size: recipe.batch_size,
            lr_per_256: recipe.pretrain_lr,
            seed,
            ..PretrainConfig::default()
        }),
        finetune: FinetuneConfig {
            epochs: recipe.finetune_epochs,
            lr: recipe.finetune_lr,
            exams_per_step: recipe.exams_per_step,
            augment: (!recipe.no_augment).then(|| ExamAugment {
                min_scale: recipe.augment_min_scale,
                ..ExamAugment::default()
            }),
            seed,
            ..FinetuneConfig::default()
        },
        labelled_fraction,
        validation_fraction: 0.2,
        bootstrap_resamples: 1000,
        seed,
    })
}

/// The framing the flags ask for: the knee recipe unless a legacy flag
/// (`--crop-fraction`, `--central-slices`) replaces part of it.
pub fn preprocess(recipe: &RecipeArgs, image_size: usize) -> anyhow::Result<PreprocessConfig> {
    let mut config = PreprocessConfig {
        field_mm: recipe.field_mm,
        slab_mm: recipe.slab_mm,
        ..PreprocessConfig::new(image_size)
    };
    if let Some(fraction) = recipe.crop_fraction {
        config.field_mm = 0.0;
        config.crop_fraction = fraction;
    }
    if let Some(slices) = recipe.central_slices {
        config.slab_mm = 0.0;
        config.central_slices = slices;
    }
    config
        .validate()
        .map_err(|e| anyhow::anyhow!("preprocessing flags: {e}"))?;
    Ok(config)
}
