//! Smooth value noise for marrow trabeculae and muscle striation.
//!
//! Real marrow is not flat: a textured background is what makes a small bright bruise
//! or a faint ligament signal change a detection problem rather than a threshold.

use super::random::{hash64, mix};

/// One octave of lattice noise for one slice, precomputed so per-pixel cost is a
/// bilinear lookup.
pub(crate) struct SliceNoise {
    cells: usize,
    grid: Vec<f32>,
}

impl SliceNoise {
    /// `cells` lattice cells across the textured square. `layer` is the plane's
    /// position through the stack in lattice units: planes between two lattice layers
    /// blend them, so texture is coherent through the volume as in a real 3-D knee and
    /// thin slices one millimetre apart look alike.
    pub(crate) fn new(seed: u64, layer: f32, cells: usize) -> Self {
        let cells = cells.max(1);
        let n = cells + 1;
        let grid_layer = |k: i64| -> Vec<f32> {
            let base = mix(seed, k as u64);
            (0..n * n)
                .map(|i| (hash64(base ^ i as u64) >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0)
                .collect()
        };
        let below = layer.floor();
        let f = layer - below;
        let a = grid_layer(below as i64);
        let b = grid_layer(below as i64 + 1);
        let grid = a
            .iter()
            .zip(&b)
            .map(|(x, y)| x * (1.0 - f) + y * f)
            .collect();
        Self { cells, grid }
    }

    /// Noise in about `[-1, 1]` at image-relative position `(u, v)` in `[0, 1]`.
    pub(crate) fn at(&self, u: f32, v: f32) -> f32 {
        let n = self.cells + 1;
        let fx = (u.clamp(0.0, 1.0) * self.cells as f32).min(self.cells as f32 - 1e-3);
        let fy = (v.clamp(0.0, 1.0) * self.cells as f32).min(self.cells as f32 - 1e-3);
        let (ix, iy) = (fx as usize, fy as usize);
        let (tx, ty) = (fx - ix as f32, fy - iy as f32);
        let (sx, sy) = (tx * tx * (3.0 - 2.0 * tx), ty * ty * (3.0 - 2.0 * ty));
        let g = |x: usize, y: usize| self.grid[y * n + x];
        let top = g(ix, iy) * (1.0 - sx) + g(ix + 1, iy) * sx;
        let bottom = g(ix, iy + 1) * (1.0 - sx) + g(ix + 1, iy + 1) * sx;
        top * (1.0 - sy) + bottom * sy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_is_bounded_and_varies() {
        let n = SliceNoise::new(9, 3.5, 8);
        let vals: Vec<f32> = (0..50).map(|i| n.at(i as f32 / 49.0, 0.3)).collect();
        assert!(vals.iter().all(|v| (-1.0..=1.0).contains(v)));
        let spread = vals.iter().cloned().fold(f32::MIN, f32::max)
            - vals.iter().cloned().fold(f32::MAX, f32::min);
        assert!(spread > 0.1);
    }
}
