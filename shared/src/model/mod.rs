//! Neural networks: the ViT encoder, the GMML reconstruction head and the
//! slice-based exam classifier. Every model runs on any burn [`Device`](burn::tensor::Device).

mod attention;
mod checkpoint;
mod classifier;
mod config;
mod recon_head;
mod vit;

pub use checkpoint::{CheckpointError, load_safetensors, save_safetensors};
pub use classifier::ExamClassifier;
pub use config::{ClassifierConfig, SliceEmbedding, SlicePooling, UnknownPreset, VitConfig};
pub use recon_head::ReconstructionHead;
pub use vit::{Block, VisionTransformer};
