//! Where the (intact) ACL lands on the image: the slices that hold its fibres and the
//! pixel box they cover. Computed from the ligament's geometry, not from pixels, so
//! the torn and intact versions of a knee report the same territory.

use std::ops::Range;

use super::ligament::Ligament;
use super::render::Grid;

/// The intact ACL's envelope radius relative to its nominal radius (the bundles spread).
const ENVELOPE: f32 = 1.15;

pub(crate) fn acl_territory(acl: &Ligament, grid: &Grid) -> (Range<usize>, [usize; 4]) {
    let (mut k0, mut k1) = (usize::MAX, 0usize);
    let (mut y0, mut x0, mut y1, mut x1) = (f32::MAX, f32::MAX, f32::MIN, f32::MIN);
    let half_slab = grid.thickness * 0.5;
    let centre_k = (grid.depth as f32 - 1.0) * 0.5;
    for s in 0..=64 {
        let t = s as f32 / 64.0;
        let q = grid.pose.apply(acl.point(t));
        let rad = acl.radius(t) * ENVELOPE;
        for k in 0..grid.depth {
            let xk = (k as f32 - centre_k) * grid.spacing;
            if (q.x - xk).abs() < rad + half_slab {
                k0 = k0.min(k);
                k1 = k1.max(k + 1);
            }
        }
        let row = grid.rows as f32 * 0.5 - q.z / grid.px - 0.5;
        let col = grid.image_cols as f32 * 0.5 - q.y / grid.px - 0.5;
        let r = rad / grid.px;
        y0 = y0.min(row - r);
        y1 = y1.max(row + r);
        x0 = x0.min(col - r);
        x1 = x1.max(col + r);
    }
    let clamp = |v: f32, n: usize| (v.max(0.0) as usize).min(n);
    let bbox = [
        clamp(y0.floor(), grid.rows),
        clamp(x0.floor(), grid.image_cols),
        clamp(y1.ceil() + 1.0, grid.rows),
        clamp(x1.ceil() + 1.0, grid.image_cols),
    ];
    let slices = if k0 < k1 { k0..k1 } else { 0..0 };
    (slices, bbox)
}
