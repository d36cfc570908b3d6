//! Clipping a site's update Δ = w_local − w_global (never the weights) to L2 norm C.

use crate::aggregate::clip_norm;
use crate::wire::TensorMap;

/// What clipping did to one update.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Clipped {
    /// L2 norm before clipping.
    pub norm: f64,
    pub clipped: bool,
}

/// Scales `delta` so its global L2 norm (over every tensor together) is at
/// most `c`. The scaling runs in f32, whose rounding can leave the norm a few
/// ulps above `c`; a DP bound needs `≤ c` exactly, so it shrinks again until it is.
pub fn clip_update(delta: &mut TensorMap, c: f64) -> Clipped {
    let norm = delta.l2_norm();
    let clipped = clip_norm(delta, c);
    if clipped {
        let mut shrink = 1.0 - 1e-6;
        while delta.l2_norm() > c && shrink > 0.5 {
            delta.scale(shrink as f32);
            shrink *= shrink;
        }
    }
    Clipped { norm, clipped }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipping_bounds_the_norm_and_keeps_the_direction() {
        let mut m = TensorMap::new();
        m.insert("a", vec![2], vec![3e5, 4e5]).unwrap();
        m.insert("b", vec![1], vec![-8e5]).unwrap();
        let before = m.clone();
        let out = clip_update(&mut m, 0.7);
        assert!(out.clipped);
        assert!((out.norm - before.l2_norm()).abs() < 1e-6 * out.norm);
        assert!(m.l2_norm() <= 0.7, "{}", m.l2_norm());
        assert!(m.l2_norm() > 0.7 * (1.0 - 1e-5));
        // Same direction: every coordinate scaled by one factor.
        let ratio = f64::from(m.get("a").unwrap().data()[0]) / 3e5;
        for (name, t) in before.iter() {
            for (x, y) in t.data().iter().zip(m.get(name).unwrap().data()) {
                assert!((f64::from(*y) - ratio * f64::from(*x)).abs() < 1e-6);
            }
        }
        // An update inside the ball is left alone.
        let mut small = TensorMap::new();
        small.insert("a", vec![2], vec![0.1, 0.2]).unwrap();
        let copy = small.clone();
        assert!(!clip_update(&mut small, 1.0).clipped);
        assert_eq!(small, copy);
    }
}
