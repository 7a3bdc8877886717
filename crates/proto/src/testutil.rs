//! Test-only helpers: a deterministic byte mutator, so every parser can be hammered with
//! variations of real captured input (a cheap, dependency-free stand-in for the fuzz targets).

/// xorshift64* — deterministic, so a failure reproduces.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `0..n` (`n > 0`).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Bytes that tend to matter to the parsers under test.
const INTERESTING: &[u8] = b"\0\xff\r\n<>&;:=%+/\"' \x01\x08\x09\xB0STF";

/// `count` mutated copies of `seed`, each with 1–4 random edits (byte flips, interesting bytes,
/// insertions, deletions, truncation, duplication of a span).
pub(crate) fn mutations(seed: &[u8], count: usize, rng_seed: u64) -> Vec<Vec<u8>> {
    let mut rng = Rng::new(rng_seed);
    (0..count)
        .map(|_| {
            let mut v = seed.to_vec();
            for _ in 0..=rng.below(4) {
                let len = v.len();
                match rng.below(6) {
                    0 if len > 0 => {
                        let i = rng.below(len);
                        v[i] ^= 1 << rng.below(8);
                    }
                    1 if len > 0 => {
                        let i = rng.below(len);
                        v[i] = INTERESTING[rng.below(INTERESTING.len())];
                    }
                    2 => {
                        let i = rng.below(len + 1);
                        v.insert(i, INTERESTING[rng.below(INTERESTING.len())]);
                    }
                    3 if len > 0 => {
                        v.remove(rng.below(len));
                    }
                    4 => v.truncate(rng.below(len + 1)),
                    _ if len > 0 => {
                        let a = rng.below(len);
                        let b = a + rng.below(len - a).min(64);
                        let span = v[a..b].to_vec();
                        let at = rng.below(len + 1);
                        v.splice(at..at, span);
                    }
                    _ => v.push(rng.next_u64() as u8),
                }
            }
            v
        })
        .collect()
}
