//! Epoch checkpoints: a training run resumed from the state saved after an
//! epoch ends bit-identical to the run that never stopped (weights, losses,
//! step count), for GMML pretraining and for fine-tuning (with flips and
//! exam augmentation), with FedProx on; a resume without the optimiser
//! moments does not, so the test would notice if they were lost. The
//! checkpoint file refuses damage and other runs.

use std::sync::Arc;

use burn::tensor::Device;
use fedslice::data::preprocess::PreparedExam;
use fedslice::federated::to_tensor_map;
use fedslice::model::{ClassifierConfig, ExamClassifier, SlicePooling, VitConfig};
use fedslice::ssl::GmmlModel;
use fedslice::ssl::augment::ExamAugment;
use fedslice::train::{
    CheckpointError, CheckpointFile, EpochCheckpoints, FinetuneConfig, NoCheckpoints, Optimizer,
    PretrainConfig, Progress, TrainState, finetune, pretrain,
};
use fedslice::wire::TensorMap;

/// Keeps every saved state; offers `offer` to resume from.
#[derive(Default)]
struct Recorder {
    saved: Vec<TrainState>,
    offer: Option<TrainState>,
}

impl EpochCheckpoints for Recorder {
    fn resume(&mut self) -> Option<TrainState> {
        self.offer.take()
    }
    fn save(&mut self, state: &TrainState) -> Result<(), CheckpointError> {
        self.saved.push(state.clone());
        Ok(())
    }
}

#[derive(Default)]
struct StepCount(usize);

impl Progress for StepCount {
    fn step(&mut self, _: f64) {
        self.0 += 1;
    }
}

fn exams(side: usize) -> Vec<PreparedExam> {
    (0..6)
        .map(|i| {
            let depth = 3 + i % 2;
            let mut pixels: Vec<f32> = (0..depth * side * side)
                .map(|j| (((j * 2654435761usize + i * 97) % 1000) as f32 / 1000.0) - 0.5)
                .collect();
            let torn = i % 2 == 0;
            if torn {
                for y in side / 4..side / 2 {
                    for x in side / 4..side / 2 {
                        pixels[side * side + y * side + x] = 3.0;
                    }
                }
            }
            PreparedExam {
                id: format!("e{i}"),
                depth,
                side,
                pixels,
                label: Some(torn),
            }
        })
        .collect()
}

fn bits(map: &TensorMap) -> Vec<(String, Vec<u32>)> {
    map.iter()
        .map(|(name, t)| {
            (
                name.to_owned(),
                t.data().iter().map(|v| v.to_bits()).collect(),
            )
        })
        .collect()
}

fn without_moments(state: &TrainState) -> TrainState {
    TrainState {
        optimizer: Optimizer::adamw(1.0).state_bytes().expect("empty state"),
        ..state.clone()
    }
}

#[test]
fn resumed_pretraining_is_bit_identical_to_an_uninterrupted_run() {
    let device = Device::flex();
    let vit = VitConfig::preset("test").expect("preset");
    let data = Arc::new(exams(vit.image_size));
    let config = PretrainConfig {
        epochs: 3,
        batch_size: 4,
        warmup_epochs: 1.0,
        proximal_mu: 0.5,
        seed: 11,
        ..PretrainConfig::default()
    };
    device.seed(3);
    let start = GmmlModel::new(&vit, &device);
    let run = |offer: Option<TrainState>| {
        let mut checkpoints = Recorder {
            offer,
            ..Recorder::default()
        };
        let mut steps = StepCount::default();
        let (model, report) = pretrain(
            start.clone(),
            data.clone(),
            &config,
            &device,
            &mut steps,
            &mut checkpoints,
        )
        .expect("pretrains");
        let weights = to_tensor_map(&model).expect("tensors");
        (weights, report, checkpoints.saved, steps.0)
    };

    let (full, report, saved, full_steps) = run(None);
    assert_eq!(
        saved.len(),
        2,
        "a state after epochs 1 and 2, none after the last"
    );
    assert_eq!(saved[0].epochs_done, 1);
    assert_eq!(saved[1].epoch_losses, report.epoch_losses[..2]);

    for state in &saved {
        let (resumed, resumed_report, _, steps) = run(Some(state.clone()));
        assert!(
            bits(&resumed) == bits(&full),
            "resumed after epoch {} differs from the uninterrupted run",
            state.epochs_done
        );
        assert_eq!(resumed_report.epoch_losses, report.epoch_losses);
        assert_eq!(resumed_report.steps, report.steps);
        assert_eq!(
            steps,
            full_steps - state.steps,
            "only the remaining steps ran"
        );
    }

    let (lost, _, _, _) = run(Some(without_moments(&saved[0])));
    assert!(
        bits(&lost) != bits(&full),
        "dropping the AdamW moments changed nothing: the test could not see them"
    );
}

#[test]
fn resumed_finetuning_is_bit_identical_to_an_uninterrupted_run() {
    let device = Device::flex();
    let vit = VitConfig::preset("test").expect("preset");
    let data = exams(vit.image_size);
    let config = FinetuneConfig {
        epochs: 3,
        exams_per_step: 2,
        lr: 3e-3,
        flip: true,
        augment: Some(ExamAugment::default()),
        proximal_mu: 0.5,
        seed: 5,
        ..FinetuneConfig::default()
    };
    device.seed(9);
    let start = ExamClassifier::new(
        &ClassifierConfig::new(vit, SlicePooling::Transformer),
        &device,
    );
    let run = |offer: Option<TrainState>| {
        let mut checkpoints = Recorder {
            offer,
            ..Recorder::default()
        };
        let mut steps = StepCount::default();
        let (model, report) = finetune(
            start.clone(),
            &data,
            &config,
            &device,
            &mut steps,
            &mut checkpoints,
        )
        .expect("fine-tunes");
        let weights = to_tensor_map(&model).expect("tensors");
        (weights, report, checkpoints.saved, steps.0)
    };

    let (full, report, saved, full_steps) = run(None);
    assert_eq!(saved.len(), 2);
    let (plain, _) = finetune(
        start.clone(),
        &data,
        &config,
        &device,
        &mut StepCount::default(),
        &mut NoCheckpoints,
    )
    .expect("fine-tunes");
    assert!(
        bits(&to_tensor_map(&plain).expect("tensors")) == bits(&full),
        "saving checkpoints changed the training"
    );

    let state = &saved[1];
    let (resumed, resumed_report, _, steps) = run(Some(state.clone()));
    assert!(bits(&resumed) == bits(&full), "resumed fine-tuning differs");
    assert_eq!(resumed_report.epoch_losses, report.epoch_losses);
    assert_eq!(steps, full_steps - state.steps);

    let (lost, _, _, _) = run(Some(without_moments(state)));
    assert!(
        bits(&lost) != bits(&full),
        "the AdamW moments made no difference"
    );
}

#[test]
fn the_checkpoint_file_round_trips_and_refuses_damage_and_other_runs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("ckpt").join("job-r2.ckpt");
    let state = TrainState {
        epochs_done: 2,
        steps: 14,
        epoch_losses: vec![0.5, 0.25],
        model: (0..=255u8).cycle().take(5000).collect(),
        optimizer: vec![7; 300],
    };
    let mut file = CheckpointFile::new(&path, "job/r2/abc");
    assert!(file.resume().is_none(), "nothing saved yet");
    file.save(&state).expect("saves");
    assert_eq!(file.read().expect("reads"), Some(state.clone()));
    assert!(
        !path.with_extension("part").exists(),
        "no temporary file left"
    );

    // Another run's key: not resumed, and the stale file is cleared.
    let mut other = CheckpointFile::new(&path, "job/r3/abc");
    assert!(matches!(other.read(), Err(CheckpointError::State(m)) if m.contains("another run")));
    assert!(other.resume().is_none());
    assert!(!path.exists(), "the unusable checkpoint was removed");

    // One flipped byte in the body, and a truncated file.
    file.save(&state).expect("saves");
    let mut bytes = std::fs::read(&path).expect("file");
    let last = bytes.len() - 10;
    bytes[last] ^= 1;
    std::fs::write(&path, &bytes).expect("write");
    assert!(matches!(file.read(), Err(CheckpointError::State(m)) if m.contains("digest")));
    std::fs::write(&path, &bytes[..bytes.len() / 2]).expect("write");
    assert!(matches!(file.read(), Err(CheckpointError::State(m)) if m.contains("truncated")));
    assert!(file.resume().is_none());
    assert!(!path.exists());
}
