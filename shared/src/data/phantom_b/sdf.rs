//! Signed distance fields (mm, negative inside) and their bounding boxes.
//!
//! The fields are exact or close to 1-Lipschitz, which is what lets the renderer
//! decide a whole tile from one evaluation at its centre. Smooth unions and the
//! ellipsoid approximation bend that a little; the renderer's margin absorbs it.

use super::geom::{Frame, V3, v3};

/// Axis-aligned box in knee coordinates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Aabb {
    pub lo: V3,
    pub hi: V3,
}

const BIG: f32 = 1.0e4;

impl Aabb {
    pub const EVERYWHERE: Aabb = Aabb {
        lo: v3(-BIG, -BIG, -BIG),
        hi: v3(BIG, BIG, BIG),
    };
    pub fn around(c: V3, r: f32) -> Aabb {
        Aabb {
            lo: c - v3(r, r, r),
            hi: c + v3(r, r, r),
        }
    }
    pub fn union(self, o: Aabb) -> Aabb {
        Aabb {
            lo: self.lo.min(o.lo),
            hi: self.hi.max(o.hi),
        }
    }
    pub fn intersect(self, o: Aabb) -> Aabb {
        Aabb {
            lo: self.lo.max(o.lo),
            hi: self.hi.min(o.hi),
        }
    }
    pub fn grow(self, r: f32) -> Aabb {
        Aabb {
            lo: self.lo - v3(r, r, r),
            hi: self.hi + v3(r, r, r),
        }
    }
    /// Squared distance from `p` to the box (0 inside).
    pub fn dist2(&self, p: V3) -> f32 {
        let d = (self.lo - p).max(p - self.hi).max(V3::default());
        d.dot(d)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Prim {
    Ellipsoid {
        f: Frame,
        r: V3,
    },
    /// Box of half-size `half` with edges rounded by `round` (extends `half + round`).
    RoundBox {
        f: Frame,
        half: V3,
        round: f32,
    },
    /// Cone-capsule from `a` (radius `ra`) to `b` (radius `rb`).
    Capsule {
        a: V3,
        b: V3,
        ra: f32,
        rb: f32,
    },
    /// Polyline of cone-capsules: a swept tube with a varying radius.
    Tube {
        pts: Vec<V3>,
        radii: Vec<f32>,
    },
    /// Elliptic cylinder along the local z axis, unbounded.
    Cylinder {
        f: Frame,
        rx: f32,
        ry: f32,
    },
    /// Meniscus: a ring of triangular cross-section on the local xy plane, thickest at
    /// its outer rim (`rx`, `ry`), thinning to nothing at `inner` × the outer radius.
    Wedge {
        f: Frame,
        rx: f32,
        ry: f32,
        inner: f32,
        height: f32,
    },
    /// `n · p − d`, `n` unit.
    HalfSpace {
        n: V3,
        d: f32,
    },
}

fn capsule(p: V3, a: V3, b: V3, ra: f32, rb: f32) -> f32 {
    let ba = b - a;
    let pa = p - a;
    let h = (pa.dot(ba) / ba.dot(ba).max(1e-6)).clamp(0.0, 1.0);
    (pa - ba * h).len() - (ra + (rb - ra) * h)
}

fn ellipse_like(k0: f32, k1: f32) -> f32 {
    if k1 < 1e-6 {
        -1.0e3
    } else {
        k0 * (k0 - 1.0) / k1
    }
}

impl Prim {
    pub fn eval(&self, p: V3) -> f32 {
        match self {
            Prim::Ellipsoid { f, r } => {
                let q = f.local(p);
                let k0 = q.div(*r).len();
                let k1 = q.div(v3(r.x * r.x, r.y * r.y, r.z * r.z)).len();
                ellipse_like(k0, k1)
            }
            Prim::RoundBox { f, half, round } => {
                let q = f.local(p).abs() - *half;
                q.max(V3::default()).len() + q.max_elem().min(0.0) - round
            }
            Prim::Capsule { a, b, ra, rb } => capsule(p, *a, *b, *ra, *rb),
            Prim::Tube { pts, radii } => {
                let mut d = f32::MAX;
                for i in 1..pts.len() {
                    d = d.min(capsule(p, pts[i - 1], pts[i], radii[i - 1], radii[i]));
                }
                d
            }
            Prim::Cylinder { f, rx, ry } => {
                let q = f.local(p);
                let (ax, ay) = (q.x / rx, q.y / ry);
                let k0 = (ax * ax + ay * ay).sqrt();
                let (bx, by) = (ax / rx, ay / ry);
                ellipse_like(k0, (bx * bx + by * by).sqrt())
            }
            Prim::Wedge {
                f,
                rx,
                ry,
                inner,
                height,
            } => {
                let q = f.local(p);
                let mean = 0.5 * (rx + ry);
                let r = ((q.x / rx).powi(2) + (q.y / ry).powi(2)).sqrt() * mean;
                let (r_in, r_out) = (inner * mean, mean);
                let run = r_out - r_in;
                let slope =
                    (q.z * run - height * (r - r_in)) / (height * height + run * run).sqrt();
                (-q.z).max(r - r_out).max(slope)
            }
            Prim::HalfSpace { n, d } => n.dot(p) - d,
        }
    }

    pub fn aabb(&self) -> Aabb {
        match self {
            Prim::Ellipsoid { f, r } => Aabb::around(f.origin, r.max_elem()),
            Prim::RoundBox { f, half, round } => Aabb::around(f.origin, half.len() + round),
            Prim::Capsule { a, b, ra, rb } => {
                let r = ra.max(*rb);
                Aabb::around(*a, r).union(Aabb::around(*b, r))
            }
            Prim::Tube { pts, radii } => pts
                .iter()
                .zip(radii)
                .map(|(p, r)| Aabb::around(*p, *r))
                .reduce(Aabb::union)
                .unwrap_or(Aabb::around(V3::default(), 0.0)),
            Prim::Wedge {
                f, rx, ry, height, ..
            } => Aabb::around(f.origin, rx.max(*ry).max(*height)),
            Prim::Cylinder { .. } | Prim::HalfSpace { .. } => Aabb::EVERYWHERE,
        }
    }
}

/// Constructive combination of primitives.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Shape {
    Prim(Prim),
    Union(Vec<Shape>),
    /// Polynomial smooth minimum with blend radius `k` mm: fillets where bones meet.
    SmoothUnion(Vec<Shape>, f32),
    Intersect(Vec<Shape>),
    /// `a` with `b` carved out.
    Subtract(Box<Shape>, Box<Shape>),
    /// Grown by `r` mm (shrunk when negative).
    Offset(Box<Shape>, f32),
    /// The shell `lo < d < hi` around the surface of the inner shape.
    Band(Box<Shape>, f32, f32),
}

fn smin(a: f32, b: f32, k: f32) -> f32 {
    let h = (k - (a - b).abs()).max(0.0) / k;
    a.min(b) - h * h * k * 0.25
}

impl Shape {
    pub fn eval(&self, p: V3) -> f32 {
        match self {
            Shape::Prim(q) => q.eval(p),
            Shape::Union(v) => v.iter().map(|s| s.eval(p)).fold(f32::MAX, f32::min),
            Shape::SmoothUnion(v, k) => v
                .iter()
                .map(|s| s.eval(p))
                .reduce(|a, b| smin(a, b, *k))
                .unwrap_or(f32::MAX),
            Shape::Intersect(v) => v.iter().map(|s| s.eval(p)).fold(f32::MIN, f32::max),
            Shape::Subtract(a, b) => a.eval(p).max(-b.eval(p)),
            Shape::Offset(a, r) => a.eval(p) - r,
            Shape::Band(a, lo, hi) => {
                let d = a.eval(p);
                (d - hi).max(lo - d)
            }
        }
    }

    /// `eval(p) < 0`, skipping what cannot change the answer (cheap children of an
    /// intersection or a subtraction should come first).
    pub fn inside(&self, p: V3) -> bool {
        match self {
            Shape::Prim(q) => q.eval(p) < 0.0,
            Shape::Union(v) => v.iter().any(|s| s.inside(p)),
            Shape::Intersect(v) => v.iter().all(|s| s.inside(p)),
            Shape::Subtract(a, b) => a.inside(p) && !b.inside(p),
            _ => self.eval(p) < 0.0,
        }
    }

    pub fn aabb(&self) -> Aabb {
        match self {
            Shape::Prim(q) => q.aabb(),
            Shape::Union(v) => Self::union_box(v, 0.0),
            Shape::SmoothUnion(v, k) => Self::union_box(v, *k * 0.25),
            Shape::Intersect(v) => v
                .iter()
                .map(Shape::aabb)
                .reduce(Aabb::intersect)
                .unwrap_or(Aabb::EVERYWHERE),
            Shape::Subtract(a, _) => a.aabb(),
            Shape::Offset(a, r) => a.aabb().grow(r.max(0.0)),
            Shape::Band(a, _, hi) => a.aabb().grow(hi.max(0.0)),
        }
    }

    fn union_box(v: &[Shape], grow: f32) -> Aabb {
        v.iter()
            .map(Shape::aabb)
            .reduce(Aabb::union)
            .unwrap_or(Aabb::around(V3::default(), 0.0))
            .grow(grow)
    }
}

impl From<Prim> for Shape {
    fn from(p: Prim) -> Shape {
        Shape::Prim(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::phantom_b::geom::{Affine, M3};

    #[test]
    fn primitives_have_the_expected_sign_and_scale() {
        let f = Frame::on(&Affine::IDENTITY, v3(0.0, 0.0, 0.0), M3::IDENTITY);
        let e = Prim::Ellipsoid {
            f,
            r: v3(10.0, 20.0, 5.0),
        };
        assert!(e.eval(v3(0.0, 0.0, 0.0)) < 0.0);
        assert!((e.eval(v3(12.0, 0.0, 0.0)) - 2.0).abs() < 0.3);
        let c = Prim::Capsule {
            a: v3(0.0, 0.0, 0.0),
            b: v3(0.0, 0.0, 10.0),
            ra: 2.0,
            rb: 2.0,
        };
        assert!((c.eval(v3(5.0, 0.0, 5.0)) - 3.0).abs() < 1e-5);
        let w = Prim::Wedge {
            f,
            rx: 20.0,
            ry: 20.0,
            inner: 0.5,
            height: 6.0,
        };
        assert!(
            w.eval(v3(18.0, 0.0, 1.0)) < 0.0,
            "rim is inside the meniscus"
        );
        assert!(w.eval(v3(5.0, 0.0, 1.0)) > 0.0, "the centre is uncovered");
        let band = Shape::Band(Box::new(e.clone().into()), 0.0, 2.0);
        assert!(band.eval(v3(11.0, 0.0, 0.0)) < 0.0);
        assert!(band.eval(v3(9.0, 0.0, 0.0)) > 0.0);
    }
}
