//! Resampling a window of a slice onto the model's square grid.
//!
//! The window may reach past the image (a knee near the edge of the field of
//! view, or a physical field larger than the scan's): the part outside is
//! filled with a given background value instead of smearing the edge pixels.

/// A source window in pixel coordinates (may be fractional, may extend past
/// the image).
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

/// Per output index along one axis: the source taps and the share of the
/// output pixel that lies inside the image (1 inside, 0 outside).
struct AxisTaps {
    taps: Vec<(usize, f32)>,
    inside: f32,
}

/// Shrinking averages the whole source interval (a box filter, so no aliasing
/// when 256 px become 64); enlarging interpolates linearly.
fn axis_weights(src_len: usize, start: f64, extent: f64, out_len: usize) -> Vec<AxisTaps> {
    let scale = extent / out_len as f64;
    let len = src_len as f64;
    (0..out_len)
        .map(|o| {
            if scale > 1.0 {
                let a = start + o as f64 * scale;
                let b = a + scale;
                let mut taps = Vec::new();
                let first = a.floor().clamp(0.0, len) as usize;
                let last = b.ceil().clamp(0.0, len) as usize;
                for s in first..last {
                    let overlap = (b.min(s as f64 + 1.0) - a.max(s as f64)).max(0.0);
                    if overlap > 0.0 {
                        taps.push((s, (overlap / scale) as f32));
                    }
                }
                let inside = taps.iter().map(|t| t.1).sum();
                AxisTaps { taps, inside }
            } else {
                let c = start + (o as f64 + 0.5) * scale - 0.5;
                if c < -0.5 || c > len - 0.5 {
                    return AxisTaps {
                        taps: Vec::new(),
                        inside: 0.0,
                    };
                }
                let c = c.clamp(0.0, len - 1.0);
                let i0 = c.floor() as usize;
                let i1 = (i0 + 1).min(src_len - 1);
                let t = (c - i0 as f64) as f32;
                AxisTaps {
                    taps: vec![(i0, 1.0 - t), (i1, t)],
                    inside: 1.0,
                }
            }
        })
        .collect()
}

/// Resamples the `crop` window of a row-major `h × w` image to `side × side`,
/// with `fill` wherever the window lies outside the image.
pub fn resample_filled(
    src: &[f32],
    h: usize,
    w: usize,
    crop: Crop,
    side: usize,
    fill: f32,
) -> Vec<f32> {
    let rows = axis_weights(h, crop.y0, crop.h, side);
    let cols = axis_weights(w, crop.x0, crop.w, side);
    // Separable: first along x for every source row, then along y.
    let mut horizontal = vec![0f32; h * side];
    for y in 0..h {
        let row = &src[y * w..(y + 1) * w];
        for (x, col) in cols.iter().enumerate() {
            horizontal[y * side + x] = col.taps.iter().map(|&(s, wt)| row[s] * wt).sum();
        }
    }
    let mut out = vec![0f32; side * side];
    for (y, row) in rows.iter().enumerate() {
        for (x, col) in cols.iter().enumerate() {
            let inside: f32 = row
                .taps
                .iter()
                .map(|&(s, wt)| horizontal[s * side + x] * wt)
                .sum();
            let cover = row.inside * col.inside;
            // Inside the image the box weights sum to 1 up to rounding; adding
            // `fill × 1e-8` there would only perturb the last bit.
            out[y * side + x] = if cover > 0.9999 {
                inside
            } else {
                inside + fill * (1.0 - cover)
            };
        }
    }
    out
}

/// [`resample_filled`] for windows inside the image.
pub fn resample(src: &[f32], h: usize, w: usize, crop: Crop, side: usize) -> Vec<f32> {
    resample_filled(src, h, w, crop, side, 0.0)
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
    fn outside_the_image_is_filled_not_smeared() {
        let src = vec![10.0f32; 16]; // 4×4 of 10
        // A window twice the image, centred: the outer ring of 8×8 output
        // pixels is outside when shrinking to 4 px (each covers 2 source px).
        let crop = Crop {
            y0: -2.0,
            x0: -2.0,
            h: 8.0,
            w: 8.0,
        };
        let out = resample_filled(&src, 4, 4, crop, 4, -1.0);
        assert_eq!(out[0], -1.0, "corner is background");
        assert_eq!(out[5], 10.0, "centre is image");
        assert_eq!(out[1], -1.0, "top edge is background");
        // Enlarging: the same window at 16 px interpolates inside, fills outside.
        let out = resample_filled(&src, 4, 4, crop, 16, -1.0);
        assert_eq!(out[0], -1.0);
        assert_eq!(out[8 * 16 + 8], 10.0);
    }
}
