//! Tissue grain: a periodic 3-D value-noise field, drawn per exam and fixed to the
//! anatomy (knee coordinates), so trabeculae and muscle fibres stay put across slices.

use super::geom::V3;
use super::rng::Rng;

const N: usize = 32;
const MASK: i32 = N as i32 - 1;

#[derive(Debug, Clone)]
pub(crate) struct GrainField {
    v: Vec<f32>,
}

impl GrainField {
    pub fn new(seed: u64) -> Self {
        let mut r = Rng::new(seed);
        Self {
            v: (0..N * N * N)
                .map(|_| (r.unit() * 2.0 - 1.0) as f32)
                .collect(),
        }
    }

    fn at(&self, x: i32, y: i32, z: i32) -> f32 {
        self.v[(((z & MASK) as usize * N) + (y & MASK) as usize) * N + (x & MASK) as usize]
    }

    /// Trilinear value noise at lattice coordinates, roughly in [−1, 1].
    fn sample(&self, x: f32, y: f32, z: f32) -> f32 {
        let (fx, fy, fz) = (x.floor(), y.floor(), z.floor());
        let (ix, iy, iz) = (fx as i32, fy as i32, fz as i32);
        let (tx, ty, tz) = (x - fx, y - fy, z - fz);
        let l = |a: f32, b: f32, t: f32| a + (b - a) * t;
        let plane = |z| {
            l(
                l(self.at(ix, iy, z), self.at(ix + 1, iy, z), tx),
                l(self.at(ix, iy + 1, z), self.at(ix + 1, iy + 1, z), tx),
                ty,
            )
        };
        l(plane(iz), plane(iz + 1), tz)
    }

    /// Isotropic grain with ≈ 1.6 mm cells (trabecular bone, fat lobules).
    pub fn iso(&self, p: V3) -> f32 {
        self.sample(p.x * 0.62 + 7.3, p.y * 0.62 + 2.1, p.z * 0.62)
    }

    /// Grain elongated superior-inferior (muscle fibres, ligament striation).
    pub fn fibre(&self, p: V3) -> f32 {
        self.sample(p.x * 0.9 + 13.1, p.y * 0.9 + 5.7, p.z * 0.2 + 3.3)
    }
}
