//! burn modules ↔ [`TensorMap`]. Both directions go through safetensors bytes,
//! so the tensor names are exactly those of the saved checkpoints and loading
//! is as strict as loading a checkpoint: a missing, extra or mis-shaped tensor
//! is an error, never a half-loaded model.

use burn::module::Module;
use burn::store::{ModuleSnapshot, SafetensorsStore};

use super::FederatedError;
use crate::wire::{Dtype, TensorMap};

pub fn to_tensor_map<M: Module>(model: &M) -> Result<TensorMap, FederatedError> {
    let mut store = SafetensorsStore::from_bytes(None);
    model
        .save_into(&mut store)
        .map_err(|e| FederatedError::Model(format!("serialising the model: {e}")))?;
    let bytes = store
        .get_bytes()
        .map_err(|e| FederatedError::Model(format!("serialising the model: {e}")))?;
    Ok(TensorMap::from_safetensors(&bytes)?)
}

pub fn from_tensor_map<M: Module>(mut model: M, map: &TensorMap) -> Result<M, FederatedError> {
    let bytes = map.to_safetensors(Dtype::F32)?;
    let mut store = SafetensorsStore::from_bytes(Some(bytes)).allow_partial(false);
    let result = model
        .load_from(&mut store)
        .map_err(|e| FederatedError::Model(format!("loading tensors into the model: {e}")))?;
    if !result.errors.is_empty() || !result.missing.is_empty() || !result.unused.is_empty() {
        return Err(FederatedError::Model(format!(
            "tensors do not fit the model: errors {:?}; missing {:?}; unexpected {:?}",
            result.errors, result.missing, result.unused
        )));
    }
    Ok(model)
}
