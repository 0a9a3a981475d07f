//! Injectable randomness.
//!
//! Everything in ephemera that must be unpredictable (ephemeral ports, hash
//! keys, TCP initial sequence numbers) draws from a [`Rng`] handed in by the
//! caller. Tests pass a seeded [`SeededRng`] and get the same run every time;
//! production uses [`SeededRng::from_entropy`].

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

/// A source of random 64-bit words.
pub trait Rng {
    /// The next random word.
    fn next_u64(&mut self) -> u64;

    /// A value uniform in `0..bound` (`bound` must be non-zero).
    fn below(&mut self, bound: u64) -> u64 {
        debug_assert!(bound > 0);
        // Lemire's multiply-shift: unbiased enough for port choice and tests,
        // and branch-free.
        ((self.next_u64() as u128 * bound as u128) >> 64) as u64
    }
}

/// xoshiro256** seeded through SplitMix64: small, fast and well studied.
/// Not a CSPRNG, and not all of its output stays hidden: it keys the port
/// table's hashes, and seeds smoltcp's generator and the keys of the
/// stack's initial sequence numbers (neither of which peers see: smoltcp's
/// ISNs are hidden behind the stack's own), and it picks the random steps
/// of RFC 6056 allocation and the random start from which a bind to port 0
/// takes the first free port, so a bound port shows one output reduced to
/// the range. Production seeds it from the OS.
#[derive(Clone, Debug)]
pub struct SeededRng {
    s: [u64; 4],
}

impl SeededRng {
    /// A generator whose whole output is fixed by `seed`.
    pub fn new(seed: u64) -> SeededRng {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        SeededRng {
            s: [next(), next(), next(), next()],
        }
    }

    /// A generator seeded from the process's random hash keys, which std
    /// draws from the operating system.
    pub fn from_entropy() -> SeededRng {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(std::process::id() as u64);
        SeededRng::new(h.finish())
    }
}

impl Rng for SeededRng {
    fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_different_seed_different_stream() {
        let a: Vec<u64> = (0..8)
            .map({
                let mut r = SeededRng::new(7);
                move |_| r.next_u64()
            })
            .collect();
        let b: Vec<u64> = (0..8)
            .map({
                let mut r = SeededRng::new(7);
                move |_| r.next_u64()
            })
            .collect();
        let c: Vec<u64> = (0..8)
            .map({
                let mut r = SeededRng::new(8);
                move |_| r.next_u64()
            })
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn below_stays_in_bounds_and_covers_them() {
        let mut r = SeededRng::new(1);
        let mut seen = [0u32; 10];
        for _ in 0..10_000 {
            let v = r.below(10);
            assert!(v < 10);
            seen[v as usize] += 1;
        }
        // Each bucket expects 1000; a fair generator stays well inside this.
        assert!(seen.iter().all(|&n| (850..1150).contains(&n)), "{seen:?}");
    }
}
