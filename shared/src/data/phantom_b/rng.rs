//! The generator's own random streams (SplitMix64), independent of any other phantom.
//!
//! Every stream is keyed by what it decides (protocol, anatomy, lesion, noise of slice
//! k, …), so a torn and an intact version of one exam share everything but the lesion,
//! and results never depend on thread count or on the order exams are generated in.

/// Stream keys: one per independent decision, so adding draws to one never shifts another.
pub(crate) mod key {
    pub const PROTOCOL: u64 = 0x5052_4f54;
    pub const COHORT: u64 = 0x434f_484f;
    pub const EXAM: u64 = 0x4558_414d;
    pub const ANATOMY: u64 = 0x414e_4154;
    pub const LESION: u64 = 0x4c45_5349;
    pub const ACQUIRE: u64 = 0x4143_5155;
    pub const NOISE: u64 = 0x4e4f_4953;
    pub const GRAIN: u64 = 0x4752_4149;
}

/// One SplitMix64 finalisation: a strong 64-bit mixer.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Seed for the stream `key` under `parent`, optionally indexed.
pub(crate) fn derive(parent: u64, key: u64, index: u64) -> u64 {
    mix(mix(parent ^ mix(key)).wrapping_add(index))
}

#[derive(Debug, Clone)]
pub(crate) struct Rng {
    state: u64,
    spare: Option<f64>,
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self {
            state: mix(seed),
            spare: None,
        }
    }
    pub fn stream(parent: u64, key: u64, index: u64) -> Self {
        Self::new(derive(parent, key, index))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
    /// `range` as f32, for scene geometry.
    pub fn rf(&mut self, lo: f32, hi: f32) -> f32 {
        self.range(lo as f64, hi as f64) as f32
    }
    /// Uniform in (−a, a).
    pub fn sym(&mut self, a: f32) -> f32 {
        self.rf(-a, a)
    }
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
    /// Uniform integer in `lo..=hi`.
    pub fn int(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.unit() * (hi - lo + 1) as f64) as usize
    }
    /// Standard normal (Box–Muller, the second value kept for the next call).
    pub fn normal(&mut self) -> f64 {
        if let Some(v) = self.spare.take() {
            return v;
        }
        let u1 = 1.0 - self.unit();
        let u2 = self.unit();
        let r = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (std::f64::consts::TAU * u2).sin_cos();
        self.spare = Some(r * s);
        r * c
    }
    /// Index drawn with the given relative weights.
    pub fn pick(&mut self, weights: &[f64]) -> usize {
        let total: f64 = weights.iter().sum();
        let mut u = self.unit() * total;
        for (i, w) in weights.iter().enumerate() {
            if u < *w {
                return i;
            }
            u -= w;
        }
        weights.len().saturating_sub(1)
    }
}

/// A fast normal pair for per-voxel noise, in f32: Box–Muller on 2×24 random bits.
pub(crate) fn normal_pair(rng: &mut Rng) -> (f32, f32) {
    let bits = rng.next_u64();
    let u1 = ((bits >> 40) as f32 + 1.0) * (1.0 / 16_777_217.0);
    let u2 = ((bits >> 16) & 0xff_ffff) as f32 * (1.0 / 16_777_216.0);
    let r = (-2.0 * u1.ln()).sqrt();
    let (s, c) = (std::f32::consts::TAU * u2).sin_cos();
    (r * c, r * s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_independent() {
        let a: Vec<u64> = (0..4)
            .map(|_| Rng::stream(7, key::ANATOMY, 0).next_u64())
            .collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        assert_ne!(derive(7, key::ANATOMY, 0), derive(7, key::LESION, 0));
        assert_ne!(derive(7, key::NOISE, 0), derive(7, key::NOISE, 1));
        let mut r = Rng::new(1);
        let n = 20_000;
        let (mut s, mut s2) = (0.0, 0.0);
        for _ in 0..n {
            let (x, y) = normal_pair(&mut r);
            s += (x + y) as f64;
            s2 += (x * x + y * y) as f64;
        }
        let (mean, var) = (s / (2 * n) as f64, s2 / (2 * n) as f64);
        assert!(
            mean.abs() < 0.03 && (var - 1.0).abs() < 0.05,
            "{mean} {var}"
        );
    }
}
