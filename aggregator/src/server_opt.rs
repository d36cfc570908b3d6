//! Applying the round's aggregated update with the job's server optimiser, and
//! persisting FedAdam's moments between rounds (one safetensors blob holding
//! `m.<name>` and `v.<name>`), so a restarted aggregator continues exactly.

use fedslice::aggregate::{ServerOptimizer, ServerState};
use fedslice::wire::{Dtype, TensorMap};

fn split_moments(bytes: &[u8]) -> anyhow::Result<(TensorMap, TensorMap)> {
    let all = TensorMap::from_safetensors(bytes)?;
    let (mut m, mut v) = (TensorMap::new(), TensorMap::new());
    for (name, tensor) in all.iter() {
        let (target, rest) = match name.split_once('.') {
            Some(("m", rest)) => (&mut m, rest),
            Some(("v", rest)) => (&mut v, rest),
            _ => anyhow::bail!("optimizer state holds an unexpected tensor `{name}`"),
        };
        target.insert(rest, tensor.shape().to_vec(), tensor.data().to_vec())?;
    }
    Ok((m, v))
}

/// Moves `global` by `mean`; returns the optimiser state to persist, if any.
pub fn step(
    optimizer: ServerOptimizer,
    global: &mut TensorMap,
    mean: &TensorMap,
    previous: Option<&[u8]>,
) -> anyhow::Result<Option<Vec<u8>>> {
    let schema = global.schema();
    let mut state = match previous {
        Some(bytes) if matches!(optimizer, ServerOptimizer::Adam { .. }) => {
            let (m, v) = split_moments(bytes)?;
            ServerState::with_moments(optimizer, &schema, m, v)?
        }
        _ => ServerState::new(optimizer, &schema)?,
    };
    state.apply(global, mean)?;
    let Some((m, v)) = state.moments() else {
        return Ok(None);
    };
    let mut both = TensorMap::new();
    for (prefix, map) in [("m", m), ("v", v)] {
        for (name, tensor) in map.iter() {
            both.insert(
                format!("{prefix}.{name}"),
                tensor.shape().to_vec(),
                tensor.data().to_vec(),
            )?;
        }
    }
    Ok(Some(both.to_safetensors(Dtype::F32)?))
}
