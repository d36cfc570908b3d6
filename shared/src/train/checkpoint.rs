//! Epoch checkpoints: what a training loop needs to continue after a crash
//! exactly as if it had never stopped — the weights with their `ParamId`s,
//! the AdamW moments, how many epochs and steps are done, and the losses so
//! far. The data streams need no saving: each epoch's random stream is derived
//! from the seed and the epoch number.
//!
//! The loops only see [`EpochCheckpoints`]; where the state is kept is the
//! caller's business ([`CheckpointFile`] keeps it in one file).

use std::io::Write;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::store::{BurnpackStore, ModuleSnapshot};
use burn::tensor::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::optimizer::Optimizer;

/// Training progress after a whole number of epochs.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainState {
    pub epochs_done: usize,
    pub steps: usize,
    pub epoch_losses: Vec<f64>,
    /// The model as burnpack bytes (which keep each parameter's `ParamId`,
    /// the key of its optimiser state).
    pub model: Vec<u8>,
    /// [`super::Optimizer::state_bytes`].
    pub optimizer: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    State(String),
}

/// Where a training loop resumes from and saves to.
pub trait EpochCheckpoints {
    /// Whether to build and [`save`](Self::save) states at all.
    fn wanted(&self) -> bool {
        true
    }
    /// The state to continue from, if there is one for this run.
    fn resume(&mut self) -> Option<TrainState>;
    /// Called after every completed epoch but the last.
    fn save(&mut self, state: &TrainState) -> Result<(), CheckpointError>;
}

/// Training that starts from scratch and keeps nothing.
pub struct NoCheckpoints;

impl EpochCheckpoints for NoCheckpoints {
    fn wanted(&self) -> bool {
        false
    }
    fn resume(&mut self) -> Option<TrainState> {
        None
    }
    fn save(&mut self, _: &TrainState) -> Result<(), CheckpointError> {
        Ok(())
    }
}

/// Where a loop starts: epoch 0 with a fresh optimiser, or a checkpoint.
pub(crate) struct Start<M> {
    pub model: M,
    pub optimizer: Optimizer,
    pub first_epoch: usize,
    pub steps: usize,
    pub epoch_losses: Vec<f64>,
}

/// Applies the checkpoint `checkpoints` offers, if it fits a run of `epochs`
/// epochs; otherwise (none, or one that cannot be used: said in the log)
/// starts from `model` with a fresh optimiser.
pub(crate) fn start<M: Module>(
    checkpoints: &mut dyn EpochCheckpoints,
    model: M,
    clip_grad_norm: f32,
    epochs: usize,
) -> Start<M> {
    let fresh = |model| Start {
        model,
        optimizer: Optimizer::adamw(clip_grad_norm),
        first_epoch: 0,
        steps: 0,
        epoch_losses: Vec::new(),
    };
    let Some(state) = checkpoints.resume() else {
        return fresh(model);
    };
    if state.epochs_done == 0
        || state.epochs_done >= epochs
        || state.epoch_losses.len() != state.epochs_done
    {
        tracing::warn!(
            epochs_done = state.epochs_done,
            epochs,
            "the checkpoint does not fit this run; training from the start"
        );
        return fresh(model);
    }
    let loaded = load_model(model.clone(), &state.model).and_then(|resumed| {
        Optimizer::adamw(clip_grad_norm)
            .load_state_bytes(&state.optimizer)
            .map(|optimizer| (resumed, optimizer))
            .map_err(CheckpointError::State)
    });
    match loaded {
        Ok((resumed, optimizer)) => {
            tracing::info!(
                "resuming local training after epoch {}/{epochs} ({} steps done)",
                state.epochs_done,
                state.steps
            );
            Start {
                model: resumed,
                optimizer,
                first_epoch: state.epochs_done,
                steps: state.steps,
                epoch_losses: state.epoch_losses,
            }
        }
        Err(e) => {
            tracing::warn!("{e}; training from the start");
            fresh(model)
        }
    }
}

/// Hands the state after `epoch_losses.len()` epochs to `checkpoints`. A
/// failure to save costs only the ability to resume: it is logged, and
/// training goes on.
pub(crate) fn save<M: Module>(
    checkpoints: &mut dyn EpochCheckpoints,
    model: &M,
    optimizer: &Optimizer,
    steps: usize,
    epoch_losses: &[f64],
) {
    if !checkpoints.wanted() {
        return;
    }
    let state = model_bytes(model).and_then(|model| {
        Ok(TrainState {
            epochs_done: epoch_losses.len(),
            steps,
            epoch_losses: epoch_losses.to_vec(),
            model,
            optimizer: optimizer.state_bytes().map_err(CheckpointError::State)?,
        })
    });
    if let Err(e) = state.and_then(|state| checkpoints.save(&state)) {
        tracing::warn!("could not save the epoch checkpoint: {e}; training goes on");
    }
}

pub(crate) fn model_bytes<M: Module>(model: &M) -> Result<Vec<u8>, CheckpointError> {
    let mut store = BurnpackStore::from_bytes(None);
    model
        .save_into(&mut store)
        .map_err(|e| CheckpointError::State(format!("serialising the model: {e}")))?;
    store
        .get_bytes()
        .map(|b| b.to_vec())
        .map_err(|e| CheckpointError::State(format!("serialising the model: {e}")))
}

/// Loads `bytes` into `model`, parameter ids included; every tensor must fit.
pub(crate) fn load_model<M: Module>(mut model: M, bytes: &[u8]) -> Result<M, CheckpointError> {
    let mut store =
        BurnpackStore::from_bytes(Some(Bytes::from_bytes_vec(bytes.to_vec()))).allow_partial(false);
    let result = model
        .load_from(&mut store)
        .map_err(|e| CheckpointError::State(format!("loading the checkpointed model: {e}")))?;
    if !result.errors.is_empty() || !result.missing.is_empty() || !result.unused.is_empty() {
        return Err(CheckpointError::State(format!(
            "the checkpoint does not fit the model: errors {:?}; missing {:?}; unexpected {:?}",
            result.errors, result.missing, result.unused
        )));
    }
    Ok(model)
}

const MAGIC: &[u8; 8] = b"FSCKPT1\n";

#[derive(Serialize, Deserialize)]
struct Header {
    /// What run the state belongs to; a file with another key is ignored.
    key: String,
    epochs_done: usize,
    steps: usize,
    epoch_losses: Vec<f64>,
    model_len: usize,
    optimizer_len: usize,
    /// SHA-256 of the model and optimizer bytes that follow the header.
    body_sha256: String,
}

/// One file holding the latest [`TrainState`] of one run, identified by
/// `key` (e.g. job, round, base model and configuration). Written to a
/// temporary file, synced and renamed: a crash leaves the previous epoch's
/// state or the new one. A file that is damaged or belongs to another run is
/// reported, removed and training starts over.
pub struct CheckpointFile {
    path: PathBuf,
    key: String,
}

impl CheckpointFile {
    pub fn new(path: impl Into<PathBuf>, key: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            key: key.into(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Deletes the file (once the run's result is safely elsewhere).
    pub fn remove(&self) -> Result<(), CheckpointError> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(CheckpointError::Io {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// The stored state, or why there is none usable.
    pub fn read(&self) -> Result<Option<TrainState>, CheckpointError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(CheckpointError::Io {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        let damaged = |what: &str| CheckpointError::State(format!("damaged checkpoint: {what}"));
        let rest = bytes
            .strip_prefix(MAGIC)
            .ok_or_else(|| damaged("not a checkpoint file"))?;
        let (len, rest) = rest
            .split_at_checked(8)
            .ok_or_else(|| damaged("truncated"))?;
        let len = u64::from_le_bytes(len.try_into().map_err(|_| damaged("truncated"))?);
        let len = usize::try_from(len).map_err(|_| damaged("header length"))?;
        let (header, body) = rest
            .split_at_checked(len)
            .ok_or_else(|| damaged("truncated header"))?;
        let header: Header =
            serde_json::from_slice(header).map_err(|e| damaged(&format!("header: {e}")))?;
        if header.key != self.key {
            return Err(CheckpointError::State(
                "the checkpoint belongs to another run".into(),
            ));
        }
        if header.model_len.checked_add(header.optimizer_len) != Some(body.len()) {
            return Err(damaged("truncated body"));
        }
        if hex::encode(Sha256::digest(body)) != header.body_sha256 {
            return Err(damaged("digest mismatch"));
        }
        let (model, optimizer) = body.split_at(header.model_len);
        Ok(Some(TrainState {
            epochs_done: header.epochs_done,
            steps: header.steps,
            epoch_losses: header.epoch_losses,
            model: model.to_vec(),
            optimizer: optimizer.to_vec(),
        }))
    }

    pub fn write(&self, state: &TrainState) -> Result<(), CheckpointError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CheckpointError::Io { path, source }
        };
        let mut hasher = Sha256::new();
        hasher.update(&state.model);
        hasher.update(&state.optimizer);
        let header = serde_json::to_vec(&Header {
            key: self.key.clone(),
            epochs_done: state.epochs_done,
            steps: state.steps,
            epoch_losses: state.epoch_losses.clone(),
            model_len: state.model.len(),
            optimizer_len: state.optimizer.len(),
            body_sha256: hex::encode(hasher.finalize()),
        })
        .map_err(|e| CheckpointError::State(format!("encoding the checkpoint header: {e}")))?;
        crate::atomic_file::write_with(&self.path, |file| {
            file.write_all(MAGIC)?;
            file.write_all(&(header.len() as u64).to_le_bytes())?;
            file.write_all(&header)?;
            file.write_all(&state.model)?;
            file.write_all(&state.optimizer)
        })
        .map_err(io(&self.path))?;
        Ok(())
    }
}

impl EpochCheckpoints for CheckpointFile {
    fn resume(&mut self) -> Option<TrainState> {
        match self.read() {
            Ok(state) => state,
            Err(e) => {
                tracing::warn!(
                    path = %self.path.display(),
                    "{e}; starting the local training over"
                );
                let _ = self.remove();
                None
            }
        }
    }

    fn save(&mut self, state: &TrainState) -> Result<(), CheckpointError> {
        self.write(state)
    }
}
