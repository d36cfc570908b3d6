//! A job's recipe: the defaults a consortium starts from, and the global model
//! version 0 the aggregator publishes when the job starts.

use burn::tensor::Device;

use super::{FederatedError, from_tensor_map, to_tensor_map};
use crate::aggregate::ServerOptimizer;
use crate::data::preprocess::PreprocessConfig;
use crate::model::{ClassifierConfig, ExamClassifier, SliceEmbedding, SlicePooling, VitConfig};
use crate::protocol::{Aggregation, JobSpec, Phase};
use crate::ssl::GmmlModel;
use crate::train::{FinetuneConfig, PretrainConfig};
use crate::wire::{Dtype, TensorMap};

/// What `aggregator job create` lets an operator choose; the rest of the
/// recipe is the measured defaults of `fedslice train`.
#[derive(Debug, Clone)]
pub struct JobOptions {
    pub phase: Phase,
    pub preset: String,
    pub pooling: SlicePooling,
    pub slice_embedding: SliceEmbedding,
    pub rounds: u32,
    pub min_sites: u32,
    pub local_epochs: usize,
    pub round_timeout_s: u64,
    pub init_from: Option<String>,
    pub dtype: Dtype,
    pub aggregation: Aggregation,
    pub server_optimizer: ServerOptimizer,
    pub clip_update_norm: Option<f64>,
    /// FedProx μ for the sites' local training (0 = plain FedAvg).
    pub fedprox_mu: f64,
    pub seed: u64,
}

pub fn job_spec(options: &JobOptions) -> Result<JobSpec, FederatedError> {
    let encoder =
        VitConfig::preset(&options.preset).map_err(|e| FederatedError::Recipe(e.to_string()))?;
    if options.rounds == 0 || options.local_epochs == 0 || options.min_sites == 0 {
        return Err(FederatedError::Recipe(
            "rounds, local epochs and min-sites must each be at least 1".into(),
        ));
    }
    if !(0.0..=1e3).contains(&options.fedprox_mu) {
        return Err(FederatedError::Recipe(format!(
            "--fedprox-mu must be in [0, 1000], got {}",
            options.fedprox_mu
        )));
    }
    if options.phase == Phase::Pretrain && options.init_from.is_some() {
        return Err(FederatedError::Recipe(
            "--init-from applies to finetune jobs only".into(),
        ));
    }
    let preprocess = PreprocessConfig::knee(encoder.image_size);
    Ok(JobSpec {
        phase: options.phase,
        preset: options.preset.clone(),
        model: ClassifierConfig {
            slice_embedding: options.slice_embedding,
            ..ClassifierConfig::new(encoder, options.pooling)
        },
        preprocess,
        pretrain: PretrainConfig {
            epochs: options.local_epochs,
            seed: options.seed,
            proximal_mu: options.fedprox_mu,
            ..PretrainConfig::default()
        },
        finetune: FinetuneConfig {
            epochs: options.local_epochs,
            exams_per_step: 1,
            lr: 3e-4,
            seed: options.seed,
            proximal_mu: options.fedprox_mu,
            ..FinetuneConfig::default()
        },
        rounds: options.rounds,
        min_sites: options.min_sites,
        round_timeout_s: options.round_timeout_s,
        init_from: options.init_from.clone(),
        dtype: options.dtype,
        aggregation: options.aggregation,
        server_optimizer: options.server_optimizer,
        clip_update_norm: options.clip_update_norm,
        max_update_norm: 1.0e4,
        validation_fraction: 0.2,
        seed: options.seed,
        dp: None,
    })
}

/// Global model version 0. A pretrain job starts from a seeded random GMML
/// model; a finetune job from a seeded random classifier whose encoder, when
/// `init` holds a finished pretrain job's global model, is that encoder.
pub fn initial_model(
    spec: &JobSpec,
    init: Option<&TensorMap>,
    device: &Device,
) -> Result<TensorMap, FederatedError> {
    device.seed(spec.seed);
    match spec.phase {
        Phase::Pretrain => to_tensor_map(&GmmlModel::new(&spec.model.encoder, device)),
        Phase::Finetune => {
            let classifier = match init {
                Some(pretrained) => {
                    let gmml =
                        from_tensor_map(GmmlModel::new(&spec.model.encoder, device), pretrained)
                            .map_err(|e| {
                                FederatedError::Recipe(format!(
                                    "the pretrain job's model does not fit preset `{}`: {e}",
                                    spec.preset
                                ))
                            })?;
                    ExamClassifier::from_encoder(gmml.encoder, &spec.model)
                }
                None => ExamClassifier::new(&spec.model, device),
            };
            to_tensor_map(&classifier)
        }
    }
}
