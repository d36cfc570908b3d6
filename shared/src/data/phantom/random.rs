//! Seed derivation and the fast generator behind per-voxel noise.
//!
//! Every random choice in the phantom is a pure function of `(seed, site, exam, purpose)`
//! so that a cohort can be regenerated bit for bit on another machine, in any thread
//! order. Parameters come from `StdRng` (portable by contract); the millions of noise
//! samples per exam come from SplitMix64, which is portable too and much cheaper.

use rand::RngCore;
use rand::SeedableRng;
use rand::rngs::StdRng;

/// Salts keep the streams for different purposes independent even for equal indices.
pub(crate) mod salt {
    pub const SITE: u64 = 0x5173_0000_0000_0001;
    pub const PROFILE: u64 = 0x5173_0000_0000_0002;
    pub const EXAM: u64 = 0x5173_0000_0000_0003;
    pub const LABEL: u64 = 0x5173_0000_0000_0004;
    pub const SPLIT: u64 = 0x5173_0000_0000_0005;
    pub const ANATOMY: u64 = 0x5173_0000_0000_0006;
    pub const LESION: u64 = 0x5173_0000_0000_0007;
    pub const TEXTURE: u64 = 0x5173_0000_0000_0008;
    pub const NOISE: u64 = 0x5173_0000_0000_0009;
    pub const SCANNER: u64 = 0x5173_0000_0000_000a;
    pub const POSE: u64 = 0x5173_0000_0000_000b;
    pub const PALETTE: u64 = 0x5173_0000_0000_000c;
    pub const PROTOCOL: u64 = 0x5173_0000_0000_000d;
    pub const SKEW: u64 = 0x5173_0000_0000_000e;
}

/// SplitMix64 finaliser: a bijective avalanche of 64 bits.
pub(crate) fn hash64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Derives a child seed; order matters, so `mix(a, b) != mix(b, a)` in general.
pub(crate) fn mix(a: u64, b: u64) -> u64 {
    hash64(hash64(a) ^ b.rotate_left(17) ^ 0x2545_f491_4f6c_dd1d)
}

/// A uniform value in `[0, 1)` from a hash, for decisions that must not consume a stream.
pub(crate) fn unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

pub(crate) fn std_rng(seed: u64, purpose: u64) -> StdRng {
    StdRng::seed_from_u64(mix(seed, purpose))
}

/// SplitMix64 as an `RngCore`, so `rand_distr` samplers can draw from it.
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }
}

impl RngCore for SplitMix64 {
    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn fill_bytes(&mut self, dst: &mut [u8]) {
        for chunk in dst.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixing_is_order_sensitive_and_stable() {
        assert_ne!(mix(1, 2), mix(2, 1));
        assert_eq!(mix(1, 2), mix(1, 2));
        let u = unit(hash64(7));
        assert!((0.0..1.0).contains(&u));
    }

    #[test]
    fn splitmix_fills_partial_chunks() {
        let mut r = SplitMix64::new(3);
        let mut buf = [0u8; 11];
        r.fill_bytes(&mut buf);
        assert!(buf.iter().any(|&b| b != 0));
    }
}
