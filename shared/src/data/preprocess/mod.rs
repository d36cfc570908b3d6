//! Turning a volume into model input (DESIGN.md §3): find the knee in the
//! image, keep a window of fixed physical size around it (in-plane and across
//! slices, using the voxel spacing), resample it to the model's size, clip to
//! the window's 0.5–99.5 percentiles and z-score.
//!
//! Older bundles framed the input with a fixed centre crop and a fixed number
//! of central slices; their configs (without `field_mm`) still load and are
//! prepared exactly as before.

mod locate;
mod resample;

use serde::{Deserialize, Serialize};

pub use locate::{KneeCentre, knee_centre};
pub use resample::{Crop, resample, resample_filled};

use super::{Spacing, Volume};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreprocessConfig {
    pub image_size: usize,
    /// Legacy framing (when `field_mm` is 0): side of the central square kept
    /// before resampling, as a fraction of the slice (1.0 keeps the whole
    /// field of view).
    #[serde(default = "full_field")]
    pub crop_fraction: f64,
    /// Legacy framing (when `slab_mm` is 0): keep only this many central
    /// slices (0 keeps all).
    #[serde(default)]
    pub central_slices: usize,
    pub clip_low_percentile: f64,
    pub clip_high_percentile: f64,
    /// Side in mm of the square kept around the located knee and resampled to
    /// `image_size` (so every exam gets the same physical pixel size). 0 uses
    /// the legacy `crop_fraction` around the image centre.
    #[serde(default)]
    pub field_mm: f64,
    /// Thickness in mm of the slab of slices kept around the knee's
    /// medial–lateral centre. 0 uses the legacy `central_slices`.
    #[serde(default)]
    pub slab_mm: f64,
    /// Pixel and slice spacing assumed for inputs that record none (MRNet
    /// `.npy`): the larger image side spans `assumed_fov_mm`.
    #[serde(default = "default_assumed_fov")]
    pub assumed_fov_mm: f64,
    #[serde(default = "default_assumed_slice")]
    pub assumed_slice_mm: f64,
}

fn full_field() -> f64 {
    1.0
}

fn default_assumed_fov() -> f64 {
    160.0
}

fn default_assumed_slice() -> f64 {
    3.0
}

/// The knee recipe's framing: a 100 mm square around the located knee and a
/// 40 mm slab of slices around its medial–lateral centre. The ACL is about
/// 35 mm long and lies within about 15 mm of the knee's centre, so these
/// leave room for the locator's error while keeping the ligament several
/// pixels thick at 64 px (1.6 mm per pixel). Chosen on phantom style A only.
pub const KNEE_FIELD_MM: f64 = 100.0;
pub const KNEE_SLAB_MM: f64 = 40.0;

impl PreprocessConfig {
    /// The whole field of view and every slice, as stored.
    pub fn new(image_size: usize) -> Self {
        Self {
            image_size,
            crop_fraction: 1.0,
            central_slices: 0,
            clip_low_percentile: 0.5,
            clip_high_percentile: 99.5,
            field_mm: 0.0,
            slab_mm: 0.0,
            assumed_fov_mm: default_assumed_fov(),
            assumed_slice_mm: default_assumed_slice(),
        }
    }

    /// The knee recipe: framed around the located knee at a fixed physical
    /// pixel size ([`KNEE_FIELD_MM`], [`KNEE_SLAB_MM`]).
    pub fn knee(image_size: usize) -> Self {
        Self {
            field_mm: KNEE_FIELD_MM,
            slab_mm: KNEE_SLAB_MM,
            ..Self::new(image_size)
        }
    }

    /// Rejects values that cannot frame anything.
    pub fn validate(&self) -> Result<(), String> {
        let finite_non_negative = |v: f64| v.is_finite() && v >= 0.0;
        if self.image_size == 0 {
            return Err("image size must be at least 1".into());
        }
        if !(self.crop_fraction > 0.0 && self.crop_fraction <= 1.0) {
            return Err(format!(
                "crop fraction must be in (0, 1], got {}",
                self.crop_fraction
            ));
        }
        if !finite_non_negative(self.field_mm) || !finite_non_negative(self.slab_mm) {
            return Err(format!(
                "field ({}) and slab ({}) must be finite and ≥ 0 mm",
                self.field_mm, self.slab_mm
            ));
        }
        if !(self.assumed_fov_mm > 0.0 && self.assumed_slice_mm > 0.0) {
            return Err("assumed field of view and slice spacing must be positive".into());
        }
        Ok(())
    }

    /// One sentence for model cards: how an exam becomes model input.
    pub fn describe(&self) -> String {
        let size = self.image_size;
        let window = if self.field_mm > 0.0 {
            format!(
                "a {:.0} mm square around the knee located in the image (tissue/air threshold, median centres), \
                 resampled to {size}×{size} ({:.2} mm per pixel)",
                self.field_mm,
                self.field_mm / size.max(1) as f64
            )
        } else {
            format!(
                "central crop {:.2} of the field of view, resampled to {size}×{size}",
                self.crop_fraction
            )
        };
        let slices = if self.slab_mm > 0.0 {
            format!(
                "a {:.0} mm slab of slices around the knee's medial–lateral centre",
                self.slab_mm
            )
        } else if self.central_slices > 0 {
            format!("{} central slices", self.central_slices)
        } else {
            "every slice".to_string()
        };
        format!(
            "{window}; {slices}; spacing from the file, or a {:.0} mm field of view and {:.1} mm slices assumed \
             when it records none; clip to the {}–{} percentiles, z-score per exam.",
            self.assumed_fov_mm,
            self.assumed_slice_mm,
            self.clip_low_percentile,
            self.clip_high_percentile
        )
    }

    /// The spacing used for `volume`: its own when recorded, else assumed.
    pub fn spacing_for(&self, volume: &Volume, spacing: Option<Spacing>) -> Spacing {
        spacing.filter(Spacing::is_valid).unwrap_or_else(|| {
            let pixel = self.assumed_fov_mm / volume.height.max(volume.width).max(1) as f64;
            Spacing {
                slice: self.assumed_slice_mm,
                row: pixel,
                col: pixel,
            }
        })
    }
}

/// An exam ready for the model: `depth` slices of `side × side` normalised pixels.
#[derive(Debug, Clone)]
pub struct PreparedExam {
    pub id: String,
    pub depth: usize,
    pub side: usize,
    pub pixels: Vec<f32>,
    pub label: Option<bool>,
}

impl PreparedExam {
    pub fn slice(&self, z: usize) -> &[f32] {
        let n = self.side * self.side;
        &self.pixels[z * n..(z + 1) * n]
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    #[error("exam {id}: empty volume ({depth}×{height}×{width})")]
    Empty {
        id: String,
        depth: usize,
        height: usize,
        width: usize,
    },
    #[error("exam {id}: volume contains non-finite intensities")]
    NonFinite { id: String },
    #[error("exam {id}: volume is constant ({value}); nothing to learn from")]
    Constant { id: String, value: f32 },
    #[error("exam {id}: {message}")]
    Config { id: String, message: String },
}

/// The slices and in-plane window an exam is framed by.
#[derive(Debug, Clone, PartialEq)]
pub struct Framing {
    pub slices: std::ops::Range<usize>,
    pub window: Crop,
}

/// Where `config` frames `volume` (with the spacing it was read with).
pub fn framing(volume: &Volume, spacing: Option<Spacing>, config: &PreprocessConfig) -> Framing {
    let (d, h, w) = (volume.depth, volume.height, volume.width);
    let located = (config.field_mm > 0.0 || config.slab_mm > 0.0).then(|| knee_centre(volume));
    let spacing = config.spacing_for(volume, spacing);
    let window = match located.filter(|_| config.field_mm > 0.0) {
        Some(centre) => {
            let (rows, cols) = (config.field_mm / spacing.row, config.field_mm / spacing.col);
            Crop {
                y0: centre.row + 0.5 - rows / 2.0,
                x0: centre.col + 0.5 - cols / 2.0,
                h: rows,
                w: cols,
            }
        }
        None => {
            let keep = config.crop_fraction.clamp(0.05, 1.0);
            Crop {
                y0: h as f64 * (1.0 - keep) / 2.0,
                x0: w as f64 * (1.0 - keep) / 2.0,
                h: h as f64 * keep,
                w: w as f64 * keep,
            }
        }
    };
    let slices = match located.filter(|_| config.slab_mm > 0.0) {
        Some(centre) => {
            let kept = ((config.slab_mm / spacing.slice).round() as usize).clamp(1, d);
            let first = (centre.slice + 0.5 - kept as f64 / 2.0)
                .round()
                .clamp(0.0, (d - kept) as f64) as usize;
            first..first + kept
        }
        None => {
            let kept = if config.central_slices == 0 {
                d
            } else {
                config.central_slices.min(d)
            };
            let first = (d - kept) / 2;
            first..first + kept
        }
    };
    Framing { slices, window }
}

/// Preprocesses one exam. A constant or non-finite volume is an error rather
/// than a silent block of zeros. `spacing` is the volume's voxel spacing when
/// its format records one.
pub fn prepare(
    id: &str,
    volume: &Volume,
    spacing: Option<Spacing>,
    label: Option<bool>,
    config: &PreprocessConfig,
) -> Result<PreparedExam, PreprocessError> {
    let (d, h, w) = (volume.depth, volume.height, volume.width);
    if d == 0 || h == 0 || w == 0 || volume.voxels.len() != d * h * w {
        return Err(PreprocessError::Empty {
            id: id.into(),
            depth: d,
            height: h,
            width: w,
        });
    }
    if volume.voxels.iter().any(|v| !v.is_finite()) {
        return Err(PreprocessError::NonFinite { id: id.into() });
    }
    config
        .validate()
        .map_err(|message| PreprocessError::Config {
            id: id.into(),
            message,
        })?;
    let side = config.image_size;
    let Framing { slices, window } = framing(volume, spacing, config);
    // Outside the image is air: the volume's darkest percentile.
    let fill = percentile_of(volume.voxels.iter().step_by(7).copied(), 0.5);
    let kept = slices.len();
    let mut pixels = Vec::with_capacity(kept * side * side);
    for z in slices {
        pixels.extend(resample_filled(volume.slice(z), h, w, window, side, fill));
    }
    let (lo, hi) = percentiles(
        &pixels,
        config.clip_low_percentile,
        config.clip_high_percentile,
    );
    if hi <= lo {
        return Err(PreprocessError::Constant {
            id: id.into(),
            value: lo,
        });
    }
    for p in &mut pixels {
        *p = p.clamp(lo, hi);
    }
    let n = pixels.len() as f64;
    let mean = pixels.iter().map(|&p| p as f64).sum::<f64>() / n;
    let var = pixels
        .iter()
        .map(|&p| (p as f64 - mean).powi(2))
        .sum::<f64>()
        / n;
    let std = var.sqrt().max(1e-6);
    for p in &mut pixels {
        *p = ((*p as f64 - mean) / std) as f32;
    }
    Ok(PreparedExam {
        id: id.into(),
        depth: kept,
        side,
        pixels,
        label,
    })
}

/// One percentile (0–100) of `values`, by nearest rank.
fn percentile_of(values: impl Iterator<Item = f32>, p: f64) -> f32 {
    let mut sorted: Vec<f32> = values.collect();
    if sorted.is_empty() {
        return 0.0;
    }
    sorted.sort_unstable_by(f32::total_cmp);
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Two percentiles (0–100) of `values`, by nearest rank on a sorted copy.
fn percentiles(values: &[f32], low: f64, high: f64) -> (f32, f32) {
    let mut sorted = values.to_vec();
    sorted.sort_unstable_by(f32::total_cmp);
    let at = |p: f64| {
        let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
        sorted[idx.min(sorted.len() - 1)]
    };
    (at(low), at(high))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepared_volume_is_z_scored_and_clipped() {
        let mut v = Volume::zeros(3, 16, 16);
        for (i, p) in v.voxels.iter_mut().enumerate() {
            *p = (i % 97) as f32;
        }
        v.voxels[5] = 1e6; // an outlier the clip must tame
        let p =
            prepare("e", &v, None, Some(true), &PreprocessConfig::new(8)).expect("valid volume");
        assert_eq!(p.pixels.len(), 3 * 64);
        let n = p.pixels.len() as f64;
        let mean = p.pixels.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = p
            .pixels
            .iter()
            .map(|&x| (x as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        assert!(mean.abs() < 1e-4 && (var - 1.0).abs() < 1e-3);
        assert!(p.pixels.iter().all(|x| x.abs() < 10.0));
    }

    #[test]
    fn constant_and_non_finite_volumes_are_refused() {
        let v = Volume::zeros(2, 4, 4);
        assert!(matches!(
            prepare("c", &v, None, None, &PreprocessConfig::new(4)),
            Err(PreprocessError::Constant { .. })
        ));
        let mut v = Volume::zeros(2, 4, 4);
        v.voxels[3] = f32::NAN;
        assert!(matches!(
            prepare("n", &v, None, None, &PreprocessConfig::new(4)),
            Err(PreprocessError::NonFinite { .. })
        ));
    }
}
