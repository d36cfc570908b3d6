//! Millimetre vectors and rigid transforms for the knee scene.
//!
//! `f32` is plenty for a ±300 mm scene and halves the cost of the hot SDF loop.
//! Axes in knee (patient) coordinates: `x` medial → lateral, `y` posterior → anterior,
//! `z` inferior → superior; the origin is the notch centre on the joint line.

use std::ops::{Add, Mul, Neg, Sub};

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct V3 {
    pub x: f32,
    pub y: f32,
    pub z: f32,
}

pub(crate) const fn v3(x: f32, y: f32, z: f32) -> V3 {
    V3 { x, y, z }
}

impl V3 {
    pub fn dot(self, o: V3) -> f32 {
        self.x * o.x + self.y * o.y + self.z * o.z
    }
    pub fn len(self) -> f32 {
        self.dot(self).sqrt()
    }
    pub fn abs(self) -> V3 {
        v3(self.x.abs(), self.y.abs(), self.z.abs())
    }
    pub fn max(self, o: V3) -> V3 {
        v3(self.x.max(o.x), self.y.max(o.y), self.z.max(o.z))
    }
    pub fn min(self, o: V3) -> V3 {
        v3(self.x.min(o.x), self.y.min(o.y), self.z.min(o.z))
    }
    pub fn max_elem(self) -> f32 {
        self.x.max(self.y).max(self.z)
    }
    pub fn div(self, o: V3) -> V3 {
        v3(self.x / o.x, self.y / o.y, self.z / o.z)
    }
    pub fn cross(self, o: V3) -> V3 {
        v3(
            self.y * o.z - self.z * o.y,
            self.z * o.x - self.x * o.z,
            self.x * o.y - self.y * o.x,
        )
    }
    pub fn normalized(self) -> V3 {
        let l = self.len();
        if l > 0.0 {
            self * (1.0 / l)
        } else {
            v3(0.0, 0.0, 1.0)
        }
    }
    pub fn lerp(self, o: V3, t: f32) -> V3 {
        self + (o - self) * t
    }
}

impl Add for V3 {
    type Output = V3;
    fn add(self, o: V3) -> V3 {
        v3(self.x + o.x, self.y + o.y, self.z + o.z)
    }
}
impl Sub for V3 {
    type Output = V3;
    fn sub(self, o: V3) -> V3 {
        v3(self.x - o.x, self.y - o.y, self.z - o.z)
    }
}
impl Mul<f32> for V3 {
    type Output = V3;
    fn mul(self, s: f32) -> V3 {
        v3(self.x * s, self.y * s, self.z * s)
    }
}
impl Neg for V3 {
    type Output = V3;
    fn neg(self) -> V3 {
        v3(-self.x, -self.y, -self.z)
    }
}

/// 3×3 matrix stored by rows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct M3 {
    pub r: [V3; 3],
}

impl M3 {
    pub const IDENTITY: M3 = M3 {
        r: [v3(1.0, 0.0, 0.0), v3(0.0, 1.0, 0.0), v3(0.0, 0.0, 1.0)],
    };

    /// Rotation by `deg` about the medial-lateral (x) axis; positive tips +y towards +z.
    pub fn rot_x(deg: f32) -> M3 {
        let (s, c) = deg.to_radians().sin_cos();
        M3 {
            r: [v3(1.0, 0.0, 0.0), v3(0.0, c, -s), v3(0.0, s, c)],
        }
    }
    pub fn rot_y(deg: f32) -> M3 {
        let (s, c) = deg.to_radians().sin_cos();
        M3 {
            r: [v3(c, 0.0, s), v3(0.0, 1.0, 0.0), v3(-s, 0.0, c)],
        }
    }
    pub fn rot_z(deg: f32) -> M3 {
        let (s, c) = deg.to_radians().sin_cos();
        M3 {
            r: [v3(c, -s, 0.0), v3(s, c, 0.0), v3(0.0, 0.0, 1.0)],
        }
    }
    /// The matrix whose rows are `a`, `b`, `c` (maps world to a frame with those axes).
    pub fn from_rows(a: V3, b: V3, c: V3) -> M3 {
        M3 { r: [a, b, c] }
    }
    pub fn apply(&self, v: V3) -> V3 {
        v3(self.r[0].dot(v), self.r[1].dot(v), self.r[2].dot(v))
    }
    pub fn transpose(&self) -> M3 {
        let [a, b, c] = self.r;
        M3 {
            r: [v3(a.x, b.x, c.x), v3(a.y, b.y, c.y), v3(a.z, b.z, c.z)],
        }
    }
    pub fn mul(&self, o: &M3) -> M3 {
        let t = o.transpose();
        M3 {
            r: [0, 1, 2].map(|i| {
                v3(
                    self.r[i].dot(t.r[0]),
                    self.r[i].dot(t.r[1]),
                    self.r[i].dot(t.r[2]),
                )
            }),
        }
    }
}

/// A rigid placement: `world = rot · local + t`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Affine {
    pub rot: M3,
    pub t: V3,
}

impl Affine {
    pub const IDENTITY: Affine = Affine {
        rot: M3::IDENTITY,
        t: v3(0.0, 0.0, 0.0),
    };

    /// Rotation by `deg` about the x-parallel axis through `centre`.
    pub fn about_x(centre: V3, deg: f32) -> Affine {
        let rot = M3::rot_x(deg);
        Affine {
            rot,
            t: centre - rot.apply(centre),
        }
    }
    pub fn apply(&self, p: V3) -> V3 {
        self.rot.apply(p) + self.t
    }
    pub fn then(&self, outer: &Affine) -> Affine {
        Affine {
            rot: outer.rot.mul(&self.rot),
            t: outer.apply(self.t),
        }
    }
}

/// Where a primitive's local frame sits: `local = rot · (world − origin)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Frame {
    pub origin: V3,
    pub rot: M3,
}

impl Frame {
    /// A primitive centred at `centre` with local orientation `orient` (local → bone),
    /// on a bone placed by `bone`.
    pub fn on(bone: &Affine, centre: V3, orient: M3) -> Frame {
        Frame {
            origin: bone.apply(centre),
            rot: bone.rot.mul(&orient).transpose(),
        }
    }
    pub fn local(&self, p: V3) -> V3 {
        self.rot.apply(p - self.origin)
    }
}

impl Affine {
    /// The local point that `apply` maps to `p`.
    pub fn unapply(&self, p: V3) -> V3 {
        self.rot.transpose().apply(p - self.t)
    }
}
