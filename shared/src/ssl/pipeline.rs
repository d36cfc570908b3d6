//! The pretraining data pipeline: shuffles slices, augments, masks and
//! patchifies them on a worker thread, and hands ready batches to the training
//! thread through a bounded channel (so it never runs ahead by more than a few
//! batches and never holds the whole epoch in memory).

use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use super::augment::{AugmentConfig, augment};
use super::mask::{MaskConfig, corrupt_batch};
use crate::data::preprocess::PreparedExam;

/// A batch ready for a GMML step. `target` and `mask` are in patch space
/// `[B, N, p·p]`, the layout of the reconstruction head's output.
#[derive(Debug, Clone)]
pub struct PretrainBatch {
    pub epoch: usize,
    pub size: usize,
    pub corrupted: Vec<f32>,
    pub target: Vec<f32>,
    pub mask: Vec<f32>,
}

#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub batch_size: usize,
    pub epochs: usize,
    /// Epochs before this one are skipped: a resumed run produces exactly the
    /// batches the interrupted one would have.
    pub first_epoch: usize,
    pub seed: u64,
    pub side: usize,
    pub patch_size: usize,
    pub augment: AugmentConfig,
    pub mask: MaskConfig,
}

impl PipelineConfig {
    /// Batches per epoch for `slices` slices; a last batch of a single slice is
    /// dropped because other-image filling needs a partner.
    pub fn batches_per_epoch(&self, slices: usize) -> usize {
        let full = slices / self.batch_size;
        let rest = slices % self.batch_size;
        full + usize::from(rest >= 2)
    }
}

/// Reorders a `side × side` image into `[N, p·p]` patches, row-major over the
/// patch grid (the token order of the patch embedding).
pub fn patchify(image: &[f32], side: usize, p: usize) -> Vec<f32> {
    let g = side / p;
    let mut out = Vec::with_capacity(side * side);
    for gy in 0..g {
        for gx in 0..g {
            for y in 0..p {
                let row = (gy * p + y) * side + gx * p;
                out.extend_from_slice(&image[row..row + p]);
            }
        }
    }
    out
}

/// Handle to the worker; iterate it for batches.
pub struct BatchStream {
    receiver: Receiver<PretrainBatch>,
    worker: Option<JoinHandle<()>>,
}

impl Iterator for BatchStream {
    type Item = PretrainBatch;
    fn next(&mut self) -> Option<PretrainBatch> {
        match self.receiver.recv() {
            Ok(batch) => Some(batch),
            Err(_) => {
                if let Some(worker) = self.worker.take() {
                    // A panic in the worker is a bug; surface it on this thread.
                    if let Err(panic) = worker.join() {
                        std::panic::resume_unwind(panic);
                    }
                }
                None
            }
        }
    }
}

/// The random stream of one epoch. Each epoch has its own, so that a run
/// resumed at epoch `k` draws what an uninterrupted one draws there.
pub fn epoch_rng(seed: u64, epoch: usize) -> StdRng {
    StdRng::seed_from_u64(
        seed.wrapping_add((epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .rotate_left(17),
    )
}

/// Starts the worker over every slice of `exams`, from `config.first_epoch`.
/// Deterministic per seed and epoch.
pub fn spawn(exams: Arc<Vec<PreparedExam>>, config: PipelineConfig) -> BatchStream {
    let (sender, receiver) = sync_channel(4);
    let worker = std::thread::Builder::new()
        .name("gmml-pipeline".into())
        .spawn(move || {
            let index: Vec<(usize, usize)> = exams
                .iter()
                .enumerate()
                .flat_map(|(e, exam)| (0..exam.depth).map(move |z| (e, z)))
                .collect();
            let side = config.side;
            for epoch in config.first_epoch..config.epochs {
                let mut rng = epoch_rng(config.seed, epoch);
                let mut order = index.clone();
                order.shuffle(&mut rng);
                for chunk in order.chunks(config.batch_size) {
                    if chunk.len() < 2 {
                        continue;
                    }
                    let clean: Vec<Vec<f32>> = chunk
                        .iter()
                        .map(|&(e, z)| augment(&mut rng, exams[e].slice(z), side, &config.augment))
                        .collect();
                    let corrupted =
                        corrupt_batch(&mut rng, &clean, side, config.patch_size, &config.mask);
                    let mut batch = PretrainBatch {
                        epoch,
                        size: chunk.len(),
                        corrupted: Vec::with_capacity(chunk.len() * side * side),
                        target: Vec::with_capacity(chunk.len() * side * side),
                        mask: Vec::with_capacity(chunk.len() * side * side),
                    };
                    for (image, c) in clean.iter().zip(&corrupted) {
                        batch.corrupted.extend_from_slice(&c.image);
                        batch
                            .target
                            .extend(patchify(image, side, config.patch_size));
                        let mask: Vec<f32> = c
                            .mask
                            .pixels
                            .iter()
                            .map(|&m| f32::from(u8::from(m)))
                            .collect();
                        batch.mask.extend(patchify(&mask, side, config.patch_size));
                    }
                    if sender.send(batch).is_err() {
                        return; // the trainer stopped early
                    }
                }
            }
        });
    match worker {
        Ok(handle) => BatchStream {
            receiver,
            worker: Some(handle),
        },
        // Spawning a thread only fails when the OS is out of resources; an
        // empty stream lets the caller report "no batches" instead of panicking.
        Err(_) => BatchStream {
            receiver,
            worker: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patchify_orders_patches_row_major() {
        // 4×4 image, patch 2: first patch is the top-left 2×2 block.
        let image: Vec<f32> = (0..16).map(|v| v as f32).collect();
        let p = patchify(&image, 4, 2);
        assert_eq!(&p[0..4], &[0.0, 1.0, 4.0, 5.0]);
        assert_eq!(&p[4..8], &[2.0, 3.0, 6.0, 7.0]);
        assert_eq!(&p[12..16], &[10.0, 11.0, 14.0, 15.0]);
    }

    #[test]
    fn pipeline_yields_every_epoch_deterministically() {
        let exam = |id: &str| PreparedExam {
            id: id.into(),
            depth: 5,
            side: 16,
            pixels: (0..5 * 256).map(|v| (v % 17) as f32).collect(),
            label: None,
        };
        let exams = Arc::new(vec![exam("a"), exam("b")]);
        let config = PipelineConfig {
            batch_size: 4,
            epochs: 2,
            first_epoch: 0,
            seed: 9,
            side: 16,
            patch_size: 4,
            augment: AugmentConfig::default(),
            mask: MaskConfig::default(),
        };
        let first: Vec<_> = spawn(exams.clone(), config.clone()).collect();
        let second: Vec<_> = spawn(exams.clone(), config.clone()).collect();
        let exams_again = exams;
        let per_epoch = config.batches_per_epoch(10);
        assert_eq!(first.len(), 2 * per_epoch);
        assert_eq!(first.last().map(|b| b.epoch), Some(1));
        for (a, b) in first.iter().zip(&second) {
            assert_eq!(a.corrupted, b.corrupted);
            assert_eq!(a.mask, b.mask);
        }
        let masked: f32 = first[0].mask.iter().sum();
        assert!(masked > 0.0);
        assert_ne!(first[0].corrupted, first[per_epoch].corrupted);

        // Starting at epoch 1 gives exactly the second epoch's batches.
        let resumed: Vec<_> = spawn(
            exams_again,
            PipelineConfig {
                first_epoch: 1,
                ..config
            },
        )
        .collect();
        assert_eq!(resumed.len(), per_epoch);
        for (a, b) in first[per_epoch..].iter().zip(&resumed) {
            assert_eq!(a.epoch, b.epoch);
            assert_eq!(a.corrupted, b.corrupted);
            assert_eq!(a.target, b.target);
            assert_eq!(a.mask, b.mask);
        }
    }
}
