//! Turning a volume into model input: resample each slice to the model's size,
//! clip to the volume's 0.5–99.5 percentiles, z-score per volume (DESIGN.md §3).

use serde::{Deserialize, Serialize};

use super::Volume;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreprocessConfig {
    pub image_size: usize,
    /// Side of the central square kept before resampling, as a fraction of the
    /// slice (1.0 keeps the whole field of view). The cruciate ligaments sit in
    /// the middle of a sagittal knee slice; cropping keeps more of their pixels
    /// at a small model input size.
    #[serde(default = "full_field")]
    pub crop_fraction: f64,
    /// Keep only this many central slices (0 keeps all). In a sagittal knee
    /// series the cruciate ligaments lie in the central notch slices.
    #[serde(default)]
    pub central_slices: usize,
    pub clip_low_percentile: f64,
    pub clip_high_percentile: f64,
}

fn full_field() -> f64 {
    1.0
}

impl PreprocessConfig {
    pub fn new(image_size: usize) -> Self {
        Self {
            image_size,
            crop_fraction: 1.0,
            central_slices: 0,
            clip_low_percentile: 0.5,
            clip_high_percentile: 99.5,
        }
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
}

/// Preprocesses one exam. A constant or non-finite volume is an error rather
/// than a silent block of zeros.
pub fn prepare(
    id: &str,
    volume: &Volume,
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
    let side = config.image_size;
    let keep = config.crop_fraction.clamp(0.05, 1.0);
    let crop = Crop {
        y0: h as f64 * (1.0 - keep) / 2.0,
        x0: w as f64 * (1.0 - keep) / 2.0,
        h: h as f64 * keep,
        w: w as f64 * keep,
    };
    let kept = if config.central_slices == 0 {
        d
    } else {
        config.central_slices.min(d)
    };
    let first = (d - kept) / 2;
    let mut pixels = Vec::with_capacity(kept * side * side);
    for z in first..first + kept {
        pixels.extend(resample(volume.slice(z), h, w, crop, side));
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

/// A source window in pixel coordinates (may be fractional).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Crop {
    pub y0: f64,
    pub x0: f64,
    pub h: f64,
    pub w: f64,
}

impl Crop {
    pub fn full(h: usize, w: usize) -> Self {
        Self {
            y0: 0.0,
            x0: 0.0,
            h: h as f64,
            w: w as f64,
        }
    }
}

/// Per output index, the source indices and weights along one axis. Shrinking
/// averages the whole source interval (a box filter, so no aliasing when
/// 256 px become 64); enlarging interpolates linearly.
fn axis_weights(src_len: usize, start: f64, extent: f64, out_len: usize) -> Vec<Vec<(usize, f32)>> {
    let scale = extent / out_len as f64;
    (0..out_len)
        .map(|o| {
            if scale > 1.0 {
                let a = start + o as f64 * scale;
                let b = a + scale;
                let mut taps = Vec::new();
                let first = a.floor().max(0.0) as usize;
                let last = (b.ceil() as usize).min(src_len);
                for s in first..last {
                    let overlap = (b.min(s as f64 + 1.0) - a.max(s as f64)).max(0.0);
                    if overlap > 0.0 {
                        taps.push((s, (overlap / scale) as f32));
                    }
                }
                if taps.is_empty() {
                    taps.push((first.min(src_len - 1), 1.0));
                }
                taps
            } else {
                let c = (start + (o as f64 + 0.5) * scale - 0.5).clamp(0.0, (src_len - 1) as f64);
                let i0 = c.floor() as usize;
                let i1 = (i0 + 1).min(src_len - 1);
                let t = (c - i0 as f64) as f32;
                vec![(i0, 1.0 - t), (i1, t)]
            }
        })
        .collect()
}

/// Resamples the `crop` window of a row-major `h × w` image to `side × side`.
pub fn resample(src: &[f32], h: usize, w: usize, crop: Crop, side: usize) -> Vec<f32> {
    let rows = axis_weights(h, crop.y0, crop.h, side);
    let cols = axis_weights(w, crop.x0, crop.w, side);
    // Separable: first along x for every source row, then along y.
    let mut horizontal = vec![0f32; h * side];
    for y in 0..h {
        let row = &src[y * w..(y + 1) * w];
        for (x, taps) in cols.iter().enumerate() {
            horizontal[y * side + x] = taps.iter().map(|&(s, wt)| row[s] * wt).sum();
        }
    }
    let mut out = vec![0f32; side * side];
    for (y, taps) in rows.iter().enumerate() {
        for x in 0..side {
            out[y * side + x] = taps
                .iter()
                .map(|&(s, wt)| horizontal[s * side + x] * wt)
                .sum();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downsampling_by_four_averages_blocks() {
        let src: Vec<f32> = (0..16).map(|v| v as f32).collect(); // 4×4
        let out = resample(&src, 4, 4, Crop::full(4, 4), 2);
        assert_eq!(out, vec![2.5, 4.5, 10.5, 12.5]);
    }

    #[test]
    fn identity_size_is_identity() {
        let src: Vec<f32> = (0..64).map(|v| (v * 7 % 13) as f32).collect();
        let out = resample(&src, 8, 8, Crop::full(8, 8), 8);
        for (a, b) in out.iter().zip(&src) {
            assert!((a - b).abs() < 1e-5);
        }
    }

    #[test]
    fn prepared_volume_is_z_scored_and_clipped() {
        let mut v = Volume::zeros(3, 16, 16);
        for (i, p) in v.voxels.iter_mut().enumerate() {
            *p = (i % 97) as f32;
        }
        v.voxels[5] = 1e6; // an outlier the clip must tame
        let p = prepare("e", &v, Some(true), &PreprocessConfig::new(8)).expect("valid volume");
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
            prepare("c", &v, None, &PreprocessConfig::new(4)),
            Err(PreprocessError::Constant { .. })
        ));
        let mut v = Volume::zeros(2, 4, 4);
        v.voxels[3] = f32::NAN;
        assert!(matches!(
            prepare("n", &v, None, &PreprocessConfig::new(4)),
            Err(PreprocessError::NonFinite { .. })
        ));
    }
}
