//! The project's own seeded random generator (splitmix64): shuffles, augmentation, metric loss
//! pairs, and the vectors tests and benchmarks make in Rust. (libtorch's generator, seeded with
//! `tch::manual_seed`, draws head weights and the tensors some benchmarks make.) The same seed gives the same numbers on
//! every machine, so a split, a test matrix or a benchmark's catalogue never changes under us.

/// splitmix64 (Steele, Lea and Flood): one 64-bit state, one add and two multiplies per number.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` at least 1; the modulo bias is negligible for our small `n`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in [0, 1), with 53 random bits.
    pub fn unit_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, 1), with 24 random bits (all an f32 holds).
    pub fn unit_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// `count` numbers uniform in [-shift, 1 - shift): the rows of a test or benchmark matrix.
    pub fn vector(&mut self, count: usize, shift: f32) -> Vec<f32> {
        (0..count).map(|_| self.unit_f32() - shift).collect()
    }

    /// Fisher-Yates: the same seed gives the same order on every machine.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sequence_is_splitmix64s() {
        // The reference values of splitmix64 seeded with 0 (Vigna's C code).
        let mut rng = Rng::new(0);
        assert_eq!([rng.next_u64(), rng.next_u64(), rng.next_u64()], [0xE220_A839_7B1D_CDAF, 0x6E78_9E6A_A1B9_65F4, 0x06C4_5D18_8009_454F]);
        let mut shuffled: Vec<u32> = (0..10).collect();
        Rng::new(7).shuffle(&mut shuffled);
        let mut sorted = shuffled.clone();
        sorted.sort();
        assert!(shuffled != sorted && sorted == (0..10).collect::<Vec<_>>(), "a permutation: {shuffled:?}");
        assert!((0..1000).map(|_| rng.unit_f32()).all(|x| (0.0..1.0).contains(&x)));
    }
}
