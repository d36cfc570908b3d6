//! Choosing where tensors live. One model code path serves every backend; the
//! backend is picked at run time (`--device flex|wgpu`), and a binary built
//! without a backend says so instead of failing obscurely.

use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    /// burn's pure-Rust CPU backend.
    Flex,
    /// GPU through wgpu (Vulkan, Metal, DX12); needs the `wgpu` cargo feature.
    Wgpu,
}

impl std::str::FromStr for BackendKind {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "flex" | "cpu" => Ok(Self::Flex),
            "wgpu" | "gpu" => Ok(Self::Wgpu),
            other => Err(DeviceError::Unknown(other.to_string())),
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Flex => "flex",
            Self::Wgpu => "wgpu",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("unknown device `{0}` (expected flex or wgpu)")]
    Unknown(String),
    #[error(
        "this binary was built without GPU support; rebuild with `cargo build --release --features wgpu` to use --device wgpu"
    )]
    NotBuilt,
    #[error("the wgpu device could not be started ({0}); is a Vulkan/Metal/DX12 driver installed?")]
    Unavailable(String),
}

/// Whether this build includes the GPU backend.
pub const WGPU_BUILT: bool = cfg!(feature = "wgpu");

/// Opens the device and runs one tiny operation on it, so a missing GPU driver
/// is reported here rather than as a panic in the middle of training.
pub fn open(kind: BackendKind) -> Result<Device, DeviceError> {
    let device = match kind {
        BackendKind::Flex => Device::flex(),
        BackendKind::Wgpu => wgpu_device()?,
    };
    let probe = device.clone();
    std::panic::catch_unwind(move || {
        let t = Tensor::<1>::from_floats([1.0, 2.0], &probe);
        t.sum().into_scalar::<f32>()
    })
    .map_err(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown error".into());
        DeviceError::Unavailable(message)
    })?;
    Ok(device)
}

#[cfg(feature = "wgpu")]
fn wgpu_device() -> Result<Device, DeviceError> {
    Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice))
}

#[cfg(not(feature = "wgpu"))]
fn wgpu_device() -> Result<Device, DeviceError> {
    Err(DeviceError::NotBuilt)
}
