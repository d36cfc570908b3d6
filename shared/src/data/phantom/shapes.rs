//! 2-D signed-distance primitives the anatomy is built from.
//!
//! Signed distances (negative inside) let one outline give cortex, cartilage and fluid
//! rims as bands of distance, and smooth unions make bone outlines look grown rather
//! than drawn.

/// A point or direction in anatomy units (fractions of the image width).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct V2 {
    pub x: f32,
    pub y: f32,
}

impl V2 {
    pub(crate) const fn new(x: f32, y: f32) -> Self {
        Self { x, y }
    }

    pub(crate) fn add(self, o: V2) -> V2 {
        V2::new(self.x + o.x, self.y + o.y)
    }

    pub(crate) fn sub(self, o: V2) -> V2 {
        V2::new(self.x - o.x, self.y - o.y)
    }

    pub(crate) fn scale(self, k: f32) -> V2 {
        V2::new(self.x * k, self.y * k)
    }

    pub(crate) fn dot(self, o: V2) -> f32 {
        self.x * o.x + self.y * o.y
    }

    pub(crate) fn len(self) -> f32 {
        self.dot(self).sqrt()
    }

    /// The direction rotated a quarter turn; used as the across-ligament axis.
    pub(crate) fn perp(self) -> V2 {
        V2::new(-self.y, self.x)
    }
}

/// An in-plane rotation, kept as cosine/sine so per-pixel use costs four multiplies.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rot {
    c: f32,
    s: f32,
}

impl Rot {
    pub(crate) fn new(angle: f32) -> Self {
        Self {
            c: angle.cos(),
            s: angle.sin(),
        }
    }

    pub(crate) fn apply(self, p: V2) -> V2 {
        V2::new(self.c * p.x - self.s * p.y, self.s * p.x + self.c * p.y)
    }

    pub(crate) fn inverse(self, p: V2) -> V2 {
        V2::new(self.c * p.x + self.s * p.y, -self.s * p.x + self.c * p.y)
    }
}

pub(crate) fn circle(p: V2, c: V2, r: f32) -> f32 {
    p.sub(c).len() - r
}

/// Box with rounded corners; `half` is the half-size including the rounding.
pub(crate) fn round_box(p: V2, c: V2, half: V2, r: f32) -> f32 {
    let qx = (p.x - c.x).abs() - half.x + r;
    let qy = (p.y - c.y).abs() - half.y + r;
    let outside = V2::new(qx.max(0.0), qy.max(0.0)).len();
    outside + qx.max(qy).min(0.0) - r
}

/// Approximate distance to a rotated ellipse; exact enough for thin rims on a patella.
pub(crate) fn ellipse(p: V2, c: V2, axes: V2, rot: Rot) -> f32 {
    let q = rot.inverse(p.sub(c));
    let k = V2::new(q.x / axes.x, q.y / axes.y).len();
    (k - 1.0) * axes.x.min(axes.y)
}

/// Polynomial smooth minimum: the union of two shapes with a fillet of size `k`.
pub(crate) fn smooth_union(a: f32, b: f32, k: f32) -> f32 {
    let h = (0.5 + 0.5 * (b - a) / k).clamp(0.0, 1.0);
    b + (a - b) * h - k * h * (1.0 - h)
}

pub(crate) fn smooth_intersection(a: f32, b: f32, k: f32) -> f32 {
    -smooth_union(-a, -b, k)
}

/// Distance to a straight band of half-width `half` between `a` and `b`.
pub(crate) fn capsule(p: V2, a: V2, b: V2, half: f32) -> f32 {
    let ab = b.sub(a);
    let t = (p.sub(a).dot(ab) / ab.dot(ab).max(1e-12)).clamp(0.0, 1.0);
    p.sub(a.add(ab.scale(t))).len() - half
}

/// Distance to a polyline (an open curve sampled densely enough to look smooth).
pub(crate) fn polyline(p: V2, pts: &[V2]) -> f32 {
    pts.windows(2)
        .map(|w| capsule(p, w[0], w[1], 0.0))
        .fold(f32::INFINITY, f32::min)
}

/// Points of the quadratic Bézier `p0 → p2` pulled towards `p1`.
pub(crate) fn bezier(p0: V2, p1: V2, p2: V2, n: usize) -> Vec<V2> {
    (0..=n)
        .map(|i| {
            let t = i as f32 / n.max(1) as f32;
            let u = 1.0 - t;
            p0.scale(u * u)
                .add(p1.scale(2.0 * u * t))
                .add(p2.scale(t * t))
        })
        .collect()
}

pub(crate) fn smoothstep(e0: f32, e1: f32, x: f32) -> f32 {
    let t = ((x - e0) / (e1 - e0)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances_have_the_right_sign() {
        let o = V2::new(0.0, 0.0);
        assert!(circle(o, o, 1.0) < 0.0);
        assert!((circle(V2::new(2.0, 0.0), o, 1.0) - 1.0).abs() < 1e-6);
        assert!(round_box(o, o, V2::new(1.0, 1.0), 0.2) < 0.0);
        assert!((round_box(V2::new(3.0, 0.0), o, V2::new(1.0, 1.0), 0.2) - 2.0).abs() < 1e-6);
        assert!(ellipse(V2::new(0.0, 1.5), o, V2::new(1.0, 2.0), Rot::new(0.0)) < 0.0);
        assert!(ellipse(V2::new(1.5, 0.0), o, V2::new(1.0, 2.0), Rot::new(0.0)) > 0.0);
        let line = [V2::new(0.0, 0.0), V2::new(1.0, 0.0)];
        assert!((polyline(V2::new(0.5, 0.25), &line) - 0.25).abs() < 1e-6);
        assert!(smooth_union(1.0, 1.0, 0.5) < 1.0);
    }

    #[test]
    fn rotation_round_trips() {
        let r = Rot::new(0.3);
        let p = V2::new(0.2, -0.7);
        let q = r.inverse(r.apply(p));
        assert!((q.x - p.x).abs() < 1e-6 && (q.y - p.y).abs() < 1e-6);
    }
}
