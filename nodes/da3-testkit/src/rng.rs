//! A small seeded PRNG (xorshift64*): no dependency, same sequence everywhere.

/// xorshift64* generator.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        // splitmix64 of the seed, so that small seeds give unrelated streams.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Self((z ^ (z >> 31)) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (0 when `n == 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// Uniform index in `0..n`.
    pub fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        let span = (hi as i128 - lo as i128 + 1) as u128;
        (lo as i128 + (self.next_u64() as u128 % span) as i128) as i64
    }

    /// `true` with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }

    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.index(xs.len())]
    }

    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }

    /// A float in `[lo, hi)`.
    pub fn float(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * (hi - lo)
    }

    /// Up to `max_edits` random edits of `data`: bit flips, byte sets to
    /// boundary values, inserts, deletes, duplicated or truncated ranges.
    pub fn mutate(&mut self, data: &mut Vec<u8>, max_edits: usize) {
        let edits = 1 + self.index(max_edits.max(1));
        for _ in 0..edits {
            let len = data.len();
            match self.below(7) {
                0 if len > 0 => {
                    let i = self.index(len);
                    data[i] ^= 1 << self.below(8);
                }
                1 if len > 0 => {
                    let i = self.index(len);
                    data[i] = *self.pick(&[0, 1, 0x7f, 0x80, 0xfe, 0xff]);
                }
                2 => {
                    let i = self.index(len + 1);
                    let n = 1 + self.index(16);
                    let ins = self.bytes(n);
                    data.splice(i..i, ins);
                }
                3 if len > 0 => {
                    let i = self.index(len);
                    let n = (1 + self.index(16)).min(len - i);
                    data.drain(i..i + n);
                }
                4 if len > 1 => {
                    let i = self.index(len);
                    let n = (1 + self.index(64)).min(len - i);
                    let chunk: Vec<u8> = data[i..i + n].to_vec();
                    let at = self.index(data.len() + 1);
                    data.splice(at..at, chunk);
                }
                5 if len > 0 => {
                    let keep = self.index(len);
                    data.truncate(keep);
                }
                _ if len >= 4 => {
                    // A 32-bit little-endian field set to an extreme value.
                    let i = self.index(len - 3);
                    let v: u32 = *self.pick(&[0, 1, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff]);
                    data[i..i + 4].copy_from_slice(&v.to_le_bytes());
                }
                _ => data.push(self.byte()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reproducible_and_spread() {
        let a: Vec<u64> = (0..5)
            .map({
                let mut r = Rng::new(7);
                move |_| r.next_u64()
            })
            .collect();
        let mut r = Rng::new(7);
        assert_eq!(a, (0..5).map(|_| r.next_u64()).collect::<Vec<_>>());
        let mut r = Rng::new(1);
        let mut seen = [0u32; 10];
        for _ in 0..10_000 {
            seen[r.index(10)] += 1;
        }
        assert!(seen.iter().all(|&n| (800..1200).contains(&n)), "{seen:?}");
        for _ in 0..1000 {
            let v = r.range(-3, 3);
            assert!((-3..=3).contains(&v));
        }
    }
}
