//! Where the knee is in a volume, found from the image alone.
//!
//! A fixed centre crop and a fixed window of central slices matched where our
//! own phantom put the ACL and failed on knees made elsewhere (issue 12). What
//! holds for any sagittal knee series, whatever the contrast or scanner, is
//! that the leg is brighter than the air around it: the cruciate ligaments lie
//! in the middle of the leg's anterior–posterior extent, near the joint line
//! at the vertical middle of a knee field of view, and in the slices at the
//! middle of the knee's medial–lateral extent. So the locator separates tissue
//! from air (Otsu's threshold on the logarithm of the mean projection over
//! slices), takes the median midpoint between the leg's outer edges as the
//! anterior–posterior centre, and robust centres (medians) of the tissue in
//! the other two directions. It decides only the centre; how large a window
//! to keep around it is the caller's recipe.

use crate::data::Volume;

/// The knee's centre in voxel coordinates (fractional), and how much of the
/// volume is tissue.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KneeCentre {
    pub slice: f64,
    pub row: f64,
    pub col: f64,
    /// Share of the mean projection above the tissue threshold; near 0 or 1
    /// means no clear tissue/air contrast and the centre is the image centre.
    pub tissue_fraction: f64,
}

/// Finds the knee's centre. A volume without a clear tissue/air split (all
/// tissue, or noise) gets the geometric centre, which is what a field of view
/// planned on the knee gives.
pub fn knee_centre(volume: &Volume) -> KneeCentre {
    let (d, h, w) = (volume.depth, volume.height, volume.width);
    let centre = KneeCentre {
        slice: (d as f64 - 1.0) / 2.0,
        row: (h as f64 - 1.0) / 2.0,
        col: (w as f64 - 1.0) / 2.0,
        tissue_fraction: 1.0,
    };
    if d == 0 || h == 0 || w == 0 {
        return centre;
    }
    let n = h * w;
    let mut projection = vec![0f64; n];
    for z in 0..d {
        for (p, &v) in projection.iter_mut().zip(volume.slice(z)) {
            *p += f64::from(v);
        }
    }
    for p in &mut projection {
        *p /= d as f64;
    }
    let threshold = tissue_threshold(&projection);
    let tissue: Vec<bool> = projection.iter().map(|&p| p > threshold).collect();
    let count = tissue.iter().filter(|&&t| t).count();
    let tissue_fraction = count as f64 / n as f64;
    // Air in a magnitude image is noise, far darker than any tissue; when
    // the darker class is not, Otsu has split tissue from tissue and there
    // is no leg/air boundary to centre on.
    let class_mean = |want: bool| {
        let (sum, n) = projection
            .iter()
            .zip(&tissue)
            .filter(|(_, t)| **t == want)
            .fold((0.0, 0usize), |(s, n), (p, _)| (s + p, n + 1));
        sum / n.max(1) as f64
    };
    if !(0.02..=0.98).contains(&tissue_fraction) || class_mean(false) >= 0.5 * class_mean(true) {
        return KneeCentre {
            tissue_fraction,
            ..centre
        };
    }
    let mut row_counts = vec![0f64; h];
    let mut col_counts = vec![0f64; w];
    for (i, _) in tissue.iter().enumerate().filter(|(_, t)| **t) {
        row_counts[i / w] += 1.0;
        col_counts[i % w] += 1.0;
    }
    // Per slice, how much brighter the leg's footprint is than the air
    // around it. A threshold chosen on the projection (where averaging has
    // tamed the noise) would count single slices' noisy air as tissue; a
    // contrast of means does not, and it falls off towards the sides of the
    // leg, where sagittal slices cut a narrower chord of it.
    let slice_area: Vec<f64> = (0..d)
        .map(|z| {
            let (mut inside, mut outside) = (0.0, 0.0);
            for (&v, &t) in volume.slice(z).iter().zip(&tissue) {
                if t {
                    inside += f64::from(v);
                } else {
                    outside += f64::from(v);
                }
            }
            let contrast = inside / count as f64 - outside / (n - count) as f64;
            contrast.max(0.0)
        })
        .collect();
    KneeCentre {
        slice: weighted_median(&slice_area).unwrap_or(centre.slice),
        row: weighted_median(&row_counts).unwrap_or(centre.row),
        col: leg_midline(&tissue, h, w)
            .or_else(|| weighted_median(&col_counts))
            .unwrap_or(centre.col),
        tissue_fraction,
    }
}

/// The median over rows of the midpoint between the leg's outer edges. The
/// tissue mask's interior depends on the contrast (fat-suppressed marrow and
/// fat fall below the threshold and leave holes on one side of the leg),
/// but its outer edges are the skin under any contrast.
fn leg_midline(tissue: &[bool], h: usize, w: usize) -> Option<f64> {
    // A run this long is skin and tissue, not a noise speck in the air.
    const RUN: usize = 3;
    let first_run = |row: &[bool], reversed: bool| -> Option<usize> {
        let mut run = 0;
        for i in 0..w {
            let x = if reversed { w - 1 - i } else { i };
            run = if row[x] { run + 1 } else { 0 };
            if run == RUN {
                return Some(if reversed { x + RUN - 1 } else { x + 1 - RUN });
            }
        }
        None
    };
    let mut midpoints: Vec<f64> = (0..h)
        .filter_map(|y| {
            let row = &tissue[y * w..(y + 1) * w];
            let (left, right) = (first_run(row, false)?, first_run(row, true)?);
            Some((left + right) as f64 / 2.0)
        })
        .collect();
    if midpoints.is_empty() {
        return None;
    }
    midpoints.sort_unstable_by(f64::total_cmp);
    Some(midpoints[midpoints.len() / 2])
}

/// Otsu's threshold on the logarithm of the projection. On a linear scale a
/// fat-suppressed knee's histogram has its widest gap between bright fluid
/// and everything else, and Otsu split off a few percent of bright tissue
/// instead of the leg; air is noise, orders of magnitude darker than any
/// tissue, and the logarithm makes that the widest gap.
fn tissue_threshold(projection: &[f64]) -> f64 {
    let top = projection.iter().copied().fold(0.0, f64::max);
    if top <= 0.0 {
        return 0.0;
    }
    // Keeps exact zeros (padding, masked air) from stretching the log scale.
    let floor = top * 1e-4;
    let logs: Vec<f64> = projection.iter().map(|&p| p.max(floor).ln()).collect();
    otsu(&logs).exp()
}

/// Otsu's threshold over 256 bins between the 0.5th and 99.5th percentiles,
/// so that a few extreme pixels (flow artefacts, hot spots) do not squeeze
/// the histogram.
fn otsu(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable_by(f64::total_cmp);
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    let (lo, hi) = (at(0.005), at(0.995));
    if hi <= lo {
        return lo;
    }
    const BINS: usize = 256;
    let mut hist = [0f64; BINS];
    let scale = (BINS - 1) as f64 / (hi - lo);
    for &v in values {
        hist[((v.clamp(lo, hi) - lo) * scale).round() as usize] += 1.0;
    }
    let total: f64 = hist.iter().sum();
    let sum_all: f64 = hist.iter().enumerate().map(|(i, c)| i as f64 * c).sum();
    let (mut w0, mut sum0, mut best, mut best_i) = (0.0, 0.0, -1.0, 0usize);
    for (i, &c) in hist.iter().enumerate() {
        w0 += c;
        sum0 += i as f64 * c;
        let w1 = total - w0;
        if w0 == 0.0 || w1 == 0.0 {
            continue;
        }
        let (m0, m1) = (sum0 / w0, (sum_all - sum0) / w1);
        let between = w0 * w1 * (m0 - m1) * (m0 - m1);
        if between > best {
            best = between;
            best_i = i;
        }
    }
    lo + (best_i as f64 + 0.5) / scale
}

/// The index (fractional, interpolated) below which half of the weight lies.
fn weighted_median(weights: &[f64]) -> Option<f64> {
    let total: f64 = weights.iter().sum();
    if total <= 0.0 {
        return None;
    }
    let half = total / 2.0;
    let mut acc = 0.0;
    for (i, &w) in weights.iter().enumerate() {
        if w > 0.0 && acc + w >= half {
            // Inside bin i, spread uniformly over [i - 0.5, i + 0.5].
            return Some(i as f64 - 0.5 + (half - acc) / w);
        }
        acc += w;
    }
    Some(weights.len() as f64 - 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bright block (the "leg") at rows r0..r1, cols c0..c1 on slices z0..z1
    /// of a dark, noisy volume.
    fn block(
        d: usize,
        h: usize,
        w: usize,
        z: (usize, usize),
        r: (usize, usize),
        c: (usize, usize),
    ) -> Volume {
        let mut v = Volume::zeros(d, h, w);
        for zz in 0..d {
            for y in 0..h {
                for x in 0..w {
                    let inside = (z.0..z.1).contains(&zz)
                        && (r.0..r.1).contains(&y)
                        && (c.0..c.1).contains(&x);
                    let noise = ((zz * 31 + y * 17 + x * 7) % 5) as f32;
                    v.voxels[(zz * h + y) * w + x] = if inside { 200.0 + noise } else { noise };
                }
            }
        }
        v
    }

    #[test]
    fn finds_an_off_centre_knee() {
        let v = block(20, 64, 80, (4, 12), (0, 64), (40, 70));
        let c = knee_centre(&v);
        assert!((c.col - 54.5).abs() < 1.0, "{c:?}");
        assert!((c.row - 31.5).abs() < 1.0, "{c:?}");
        assert!((c.slice - 7.5).abs() < 1.0, "{c:?}");
        assert!(c.tissue_fraction > 0.2 && c.tissue_fraction < 0.5);
    }

    #[test]
    fn the_centre_does_not_depend_on_contrast_or_gain() {
        let v = block(10, 48, 48, (2, 8), (10, 40), (5, 25));
        let mut scaled = v.clone();
        for p in &mut scaled.voxels {
            *p = *p * 13.0 + 100.0;
        }
        assert_eq!(knee_centre(&v), knee_centre(&scaled));
    }

    #[test]
    fn a_dim_fat_suppressed_leg_is_found_not_its_bright_fluid() {
        // Dim leg (cols 20..60) with suppressed marrow on its anterior half
        // and a small bright fluid pocket; on a linear scale Otsu's widest
        // gap is between the fluid and everything else.
        let (d, h, w) = (8, 64, 80);
        let mut v = block(d, h, w, (0, d), (0, h), (20, 60));
        for z in 0..d {
            for y in 0..h {
                for x in 20..60 {
                    let noise = ((z * 31 + y * 17 + x * 7) % 5) as f32;
                    let value = match x {
                        50..56 if (28..36).contains(&y) => 2000.0,
                        20..24 => 30.0,
                        24..40 => 6.0,
                        _ => 25.0,
                    };
                    v.voxels[(z * h + y) * w + x] = value + noise;
                }
            }
        }
        let c = knee_centre(&v);
        assert!((c.col - 39.5).abs() < 2.0, "{c:?}");
        assert!(c.tissue_fraction > 0.4, "{c:?}");
    }

    #[test]
    fn a_volume_without_air_is_centred_geometrically() {
        let v = block(6, 32, 32, (0, 6), (0, 32), (0, 32));
        let c = knee_centre(&v);
        assert_eq!((c.slice, c.row, c.col), (2.5, 15.5, 15.5), "{c:?}");
    }
}
