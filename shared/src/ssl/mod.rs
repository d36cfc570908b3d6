//! Group masked model learning (GMML): corrupt groups of connected pixels and
//! train the encoder to reconstruct them.
//!
//! Masks and augmentations are built on the CPU in [`pipeline`], on a thread of
//! their own, so the training thread only moves ready batches to the device.

pub mod augment;
mod gmml;
pub mod mask;
pub mod pipeline;

pub use gmml::{GmmlModel, masked_l1};
