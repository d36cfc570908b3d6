//! The GMML mask generator (DESIGN.md §4).
//!
//! Per image a target masked fraction f ~ U[min, max] is drawn, and rectangular
//! blocks (top-left uniform, each side uniform in [align, max_side·side)) are
//! added until the masked area reaches f. Blocks may overlap, so coverage can
//! overshoot f by at most one block.

use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

/// What replaces the masked pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fill {
    /// N(0, 1) noise in normalised intensity space.
    Noise,
    Zeros,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MaskConfig {
    pub min_fraction: f64,
    pub max_fraction: f64,
    /// Upper bound of a block side, as a fraction of the image side (exclusive).
    pub max_side_fraction: f64,
    /// Snap blocks to the patch grid (sides and corners multiples of the patch size).
    pub align_to_patches: bool,
    pub fill: Fill,
    /// Fraction of a batch's images whose blocks are filled with the same
    /// pixels of another image of the batch instead of `fill`.
    pub other_image_probability: f64,
    /// Masked fraction used for the other-image replacement.
    pub other_image_fraction: f64,
}

impl Default for MaskConfig {
    fn default() -> Self {
        Self {
            min_fraction: 0.5,
            max_fraction: 0.75,
            max_side_fraction: 0.3,
            align_to_patches: false,
            fill: Fill::Noise,
            other_image_probability: 0.5,
            other_image_fraction: 0.3,
        }
    }
}

/// A rectangle `[y0, y0 + h) × [x0, x0 + w)` in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub y0: usize,
    pub x0: usize,
    pub h: usize,
    pub w: usize,
}

/// A boolean mask over a `side × side` image plus the blocks that made it.
#[derive(Debug, Clone)]
pub struct Mask {
    pub side: usize,
    pub pixels: Vec<bool>,
    pub blocks: Vec<Block>,
}

impl Mask {
    pub fn coverage(&self) -> f64 {
        self.pixels.iter().filter(|&&m| m).count() as f64 / self.pixels.len() as f64
    }
}

/// Draws one block side in pixels: uniform over `[align, max_side)` in units of
/// `align` (the patch size when aligned, one pixel otherwise).
fn draw_side<R: Rng>(rng: &mut R, side: usize, align: usize, max_side_fraction: f64) -> usize {
    let max_exclusive = ((max_side_fraction * side as f64).ceil() as usize).max(align + 1);
    let units = (max_exclusive - 1) / align; // largest whole number of units below the bound
    align * rng.random_range(1..=units.max(1))
}

/// Builds a mask of a `side × side` image reaching `target` coverage.
pub fn generate_mask<R: Rng>(
    rng: &mut R,
    side: usize,
    patch_size: usize,
    target: f64,
    config: &MaskConfig,
) -> Mask {
    let align = if config.align_to_patches {
        patch_size.max(1)
    } else {
        1
    };
    let mut pixels = vec![false; side * side];
    let mut blocks = Vec::new();
    let goal = (target.clamp(0.0, 1.0) * (side * side) as f64).ceil() as usize;
    let mut covered = 0usize;
    // Each block covers at least align² pixels of a finite image, so this ends;
    // the cap only guards against a degenerate config.
    let max_blocks = side * side;
    while covered < goal && blocks.len() < max_blocks {
        let h = draw_side(rng, side, align, config.max_side_fraction).min(side);
        let w = draw_side(rng, side, align, config.max_side_fraction).min(side);
        let y0 = align * rng.random_range(0..=(side - h) / align);
        let x0 = align * rng.random_range(0..=(side - w) / align);
        for y in y0..y0 + h {
            for px in &mut pixels[y * side + x0..y * side + x0 + w] {
                if !*px {
                    *px = true;
                    covered += 1;
                }
            }
        }
        blocks.push(Block { y0, x0, h, w });
    }
    Mask {
        side,
        pixels,
        blocks,
    }
}

/// One corrupted image and what the loss needs to know about it.
#[derive(Debug, Clone)]
pub struct Corrupted {
    pub image: Vec<f32>,
    pub mask: Mask,
    pub filled_from_other: bool,
}

/// Corrupts every image of a batch in place of a copy (GMML's three fills).
/// `images` are `side × side`, already augmented and normalised.
pub fn corrupt_batch<R: Rng>(
    rng: &mut R,
    images: &[Vec<f32>],
    side: usize,
    patch_size: usize,
    config: &MaskConfig,
) -> Vec<Corrupted> {
    let n = images.len();
    (0..n)
        .map(|i| {
            let use_other =
                n > 1 && rng.random_bool(config.other_image_probability.clamp(0.0, 1.0));
            let target = if use_other {
                config.other_image_fraction
            } else {
                rng.random_range(config.min_fraction..=config.max_fraction)
            };
            let mask = generate_mask(rng, side, patch_size, target, config);
            let mut image = images[i].clone();
            if use_other {
                let other = (i + rng.random_range(1..n)) % n;
                for (p, (&m, src)) in image.iter_mut().zip(mask.pixels.iter().zip(&images[other])) {
                    if m {
                        *p = *src;
                    }
                }
            } else {
                for (p, &m) in image.iter_mut().zip(&mask.pixels) {
                    if m {
                        *p = match config.fill {
                            Fill::Noise => StandardNormal.sample(rng),
                            Fill::Zeros => 0.0,
                        };
                    }
                }
            }
            Corrupted {
                image,
                mask,
                filled_from_other: use_other,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn coverage_reaches_target_and_overshoots_by_at_most_one_block() {
        let mut rng = StdRng::seed_from_u64(7);
        let config = MaskConfig::default();
        for align in [false, true] {
            let config = MaskConfig {
                align_to_patches: align,
                ..config.clone()
            };
            for _ in 0..500 {
                let target = rng.random_range(config.min_fraction..=config.max_fraction);
                let mask = generate_mask(&mut rng, 64, 8, target, &config);
                let last = mask.blocks.last().expect("at least one block");
                let one_block = (last.h * last.w) as f64 / (64.0 * 64.0);
                let c = mask.coverage();
                assert!(
                    c >= 0.5 && c >= target - 1e-9,
                    "coverage {c} below target {target}"
                );
                assert!(
                    c <= 0.75 + one_block + 1e-9,
                    "coverage {c} above 0.75 + one block"
                );
            }
        }
    }

    #[test]
    fn block_sides_stay_within_bounds() {
        let mut rng = StdRng::seed_from_u64(11);
        for (align, patch) in [(false, 8), (true, 8), (true, 16)] {
            let config = MaskConfig {
                align_to_patches: align,
                ..MaskConfig::default()
            };
            let side = 224;
            let bound = 0.3 * side as f64;
            for _ in 0..200 {
                let mask = generate_mask(&mut rng, side, patch, 0.6, &config);
                for b in &mask.blocks {
                    let unit = if align { patch } else { 1 };
                    assert!(b.h >= unit && b.w >= unit, "{b:?} smaller than {unit}");
                    assert!(
                        (b.h as f64) < bound && (b.w as f64) < bound,
                        "{b:?} ≥ 0.3·side"
                    );
                    assert!(
                        b.y0 + b.h <= side && b.x0 + b.w <= side,
                        "{b:?} leaves the image"
                    );
                    if align {
                        assert_eq!(b.y0 % patch + b.x0 % patch + b.h % patch + b.w % patch, 0);
                    }
                }
            }
        }
    }

    #[test]
    fn fills_change_only_masked_pixels() {
        let mut rng = StdRng::seed_from_u64(3);
        let images: Vec<Vec<f32>> = (0..32).map(|i| vec![10.0 + i as f32; 32 * 32]).collect();
        let config = MaskConfig {
            fill: Fill::Zeros,
            ..MaskConfig::default()
        };
        let out = corrupt_batch(&mut rng, &images, 32, 8, &config);
        for (i, c) in out.iter().enumerate() {
            for (p, (&m, &orig)) in c.image.iter().zip(c.mask.pixels.iter().zip(&images[i])) {
                if !m {
                    assert_eq!(*p, orig);
                } else if c.filled_from_other {
                    assert_ne!(*p, orig, "other-image fill must copy another image");
                } else {
                    assert_eq!(*p, 0.0);
                }
            }
        }
        assert!(out.iter().any(|c| c.filled_from_other));
        assert!(out.iter().any(|c| !c.filled_from_other));
    }
}
