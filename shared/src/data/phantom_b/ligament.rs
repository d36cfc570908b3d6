//! Ligaments as swept tubes: a cubic Bézier centreline with a radius profile,
//! turned into capsule chains the SDF code can evaluate.

use super::geom::{V3, v3};
use super::sdf::Prim;

/// Segments per full-length tube: enough for a smooth bend at ACL scale (≈ 3.5 mm each).
const SEGMENTS: usize = 10;

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Ligament {
    /// Bézier control points; `p[0]` femoral attachment, `p[3]` tibial attachment.
    pub p: [V3; 4],
    /// Radius at the femoral and tibial ends (the ACL fans out towards the tibia).
    pub r0: f32,
    pub r1: f32,
}

impl Ligament {
    pub fn point(&self, t: f32) -> V3 {
        let u = 1.0 - t;
        self.p[0] * (u * u * u)
            + self.p[1] * (3.0 * u * u * t)
            + self.p[2] * (3.0 * u * t * t)
            + self.p[3] * (t * t * t)
    }

    pub fn tangent(&self, t: f32) -> V3 {
        let u = 1.0 - t;
        ((self.p[1] - self.p[0]) * (3.0 * u * u)
            + (self.p[2] - self.p[1]) * (6.0 * u * t)
            + (self.p[3] - self.p[2]) * (3.0 * t * t))
            .normalized()
    }

    /// Unit vector across the ligament within the sagittal plane (anterior-superior side).
    pub fn across(&self, t: f32) -> V3 {
        let n = v3(1.0, 0.0, 0.0).cross(self.tangent(t)).normalized();
        if n.y + n.z < 0.0 { -n } else { n }
    }

    pub fn radius(&self, t: f32) -> f32 {
        self.r0 + (self.r1 - self.r0) * t
    }

    pub fn length(&self) -> f32 {
        (1..=32)
            .map(|i| (self.point(i as f32 / 32.0) - self.point((i - 1) as f32 / 32.0)).len())
            .sum()
    }

    /// The part `t0..t1` as a tube whose centre is `shift(t, centre)` and whose radius
    /// is `radius(t) · scale(t)`.
    pub fn tube(
        &self,
        t0: f32,
        t1: f32,
        shift: impl Fn(f32, V3) -> V3,
        scale: impl Fn(f32) -> f32,
    ) -> Prim {
        let n = ((SEGMENTS as f32 * (t1 - t0)).ceil() as usize).max(2);
        let ts: Vec<f32> = (0..=n)
            .map(|i| t0 + (t1 - t0) * i as f32 / n as f32)
            .collect();
        Prim::Tube {
            pts: ts.iter().map(|&t| shift(t, self.point(t))).collect(),
            radii: ts.iter().map(|&t| self.radius(t) * scale(t)).collect(),
        }
    }
}
