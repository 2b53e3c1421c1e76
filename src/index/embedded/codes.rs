//! The compressed copy of a generation that searches scan: every dimension of every vector as
//! a 4-bit code, scaled per dimension between that dimension's smallest and largest value.
//!
//! Scanning is memory-bound: the f32 matrix (100,000 x 3,072, 1.2 GB) cost 104 ms a query on
//! one core here, int8 codes 32 ms (9.6 GB/s, whether our AVX2 kernel or simsimd's `i8::dot`
//! read them: both 32 ms), so int8 alone could not get under a quarter of the f32 scan. 4-bit
//! codes read an eighth of the bytes. They only pick candidates: the best few (see
//! `RERANK_MIN`) are scored again from the full-precision vectors, so every hit and score a user
//! sees is exact. simsimd has no 4-bit kernel, so this one is ours.
//!
//! Layout: each row is `stride` bytes, blocks of 32 bytes for 64 dimensions; byte `j` of a
//! block holds dimension `j` in its low nibble and dimension `32 + j` in its high nibble (so a
//! kernel unpacks a block with one mask and one shift). Dimensions past `dim` are padding, code
//! 0, weighted 0.

use std::ops::Range;

use serde::{Deserialize, Serialize};

/// Dimensions per 32-byte block.
const BLOCK: usize = 64;
/// Largest code.
const LEVELS: f32 = 15.0;

/// Where each dimension's codes start (`low`) and how far apart they are (`step`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quantizer {
    pub low: Vec<f32>,
    pub step: Vec<f32>,
}

impl Quantizer {
    /// Spans each dimension of `matrix` (rows of `dim`) from its smallest to its largest value.
    pub fn fit(matrix: &[f32], dim: usize) -> Quantizer {
        let mut low = vec![f32::INFINITY; dim];
        let mut high = vec![f32::NEG_INFINITY; dim];
        for row in matrix.chunks_exact(dim) {
            for ((l, h), &x) in low.iter_mut().zip(high.iter_mut()).zip(row) {
                *l = l.min(x);
                *h = h.max(x);
            }
        }
        let step = low.iter().zip(&high).map(|(l, h)| if h > l { (h - l) / LEVELS } else { 0.0 }).collect();
        let low = low.into_iter().map(|l| if l.is_finite() { l } else { 0.0 }).collect();
        Quantizer { low, step }
    }

    pub fn dim(&self) -> usize {
        self.low.len()
    }

    /// Bytes per row.
    pub fn stride(&self) -> usize {
        self.dim().div_ceil(BLOCK) * BLOCK / 2
    }

    fn code(&self, d: usize, x: f32) -> u8 {
        if self.step[d] > 0.0 {
            ((x - self.low[d]) / self.step[d]).round().clamp(0.0, LEVELS) as u8
        } else {
            0
        }
    }

    /// Codes of every row of `matrix`.
    pub fn encode(&self, matrix: &[f32]) -> Vec<u8> {
        let (dim, stride) = (self.dim(), self.stride());
        let mut out = vec![0u8; matrix.len() / dim.max(1) * stride];
        for (row, codes) in matrix.chunks_exact(dim).zip(out.chunks_exact_mut(stride)) {
            for (d, &x) in row.iter().enumerate() {
                let (block, within) = (d / BLOCK, d % BLOCK);
                codes[block * BLOCK / 2 + within % 32] |= self.code(d, x) << (4 * (within / 32));
            }
        }
        out
    }

    /// The query as the kernels read it: `q . x ~= constant + factor * sum(weight[d] * code[d])`.
    pub fn prepare(&self, query: &[f32]) -> Prepared {
        let stride = self.stride();
        let scaled: Vec<f32> = query.iter().zip(&self.step).map(|(q, s)| q * s).collect();
        let largest = scaled.iter().fold(0f32, |m, w| m.max(w.abs()));
        let factor = if largest > 0.0 { largest / 127.0 } else { 1.0 };
        let mut weights = vec![0i8; stride * 2];
        let mut rounding = 0f32;
        for (d, w) in scaled.iter().enumerate() {
            let (block, within) = (d / BLOCK, d % BLOCK);
            let weight = (w / factor).round().clamp(-127.0, 127.0);
            rounding += (w - weight * factor).abs() * LEVELS;
            weights[block * BLOCK + within] = weight as i8;
        }
        let constant = query.iter().zip(&self.low).map(|(q, l)| q * l).sum();
        // Each code is within half a step of its value; each weight within `rounding`'s share.
        let bound = 0.5 * scaled.iter().map(|w| w.abs()).sum::<f32>() + rounding;
        // A value's rounding error is spread evenly over its half-steps (variance 1/12 of a
        // step squared), independently per dimension; a weight's rounding error meets a code
        // anywhere from 0 to 15 (variance at most 15^2 / 4).
        let variance: f32 = scaled
            .iter()
            .enumerate()
            .map(|(d, w)| {
                let (block, within) = (d / BLOCK, d % BLOCK);
                let weight_error = w - weights[block * BLOCK + within] as f32 * factor;
                w * w / 12.0 + weight_error * weight_error * LEVELS * LEVELS / 4.0
            })
            .sum();
        Prepared { weights, factor, constant, bound, spread: variance.sqrt() }
    }
}

/// A query ready for [`Codes::approximate`].
#[derive(Debug, Clone)]
pub struct Prepared {
    /// One i8 per dimension (padding 0), in block order: a block's first 32 pair with the low
    /// nibbles, the next 32 with the high ones.
    weights: Vec<i8>,
    factor: f32,
    constant: f32,
    /// How far an approximate dot product can be from the exact one, at most.
    pub bound: f32,
    /// The standard deviation of that error, were roundings independent and even: a few of it
    /// is as far as a row's approximation strays in practice, far inside `bound`.
    pub spread: f32,
}

/// The codes of a generation's rows.
#[derive(Debug, Clone)]
pub struct Codes {
    pub quantizer: Quantizer,
    pub bytes: Vec<u8>,
}

impl Codes {
    pub fn encode(quantizer: Quantizer, matrix: &[f32]) -> Codes {
        let bytes = quantizer.encode(matrix);
        Codes { quantizer, bytes }
    }

    /// Approximate dot products of `query` with `rows`, split over the machine's cores when
    /// there are many.
    pub fn approximate(&self, rows: Range<usize>, query: &Prepared) -> Vec<f32> {
        let stride = self.quantizer.stride();
        let codes = &self.bytes[rows.start * stride..rows.end * stride];
        let mut out = vec![0f32; rows.len()];
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        if threads == 1 || codes.len() < 1 << 20 {
            scan(codes, stride, query, &mut out);
            return out;
        }
        let per_thread = rows.len().div_ceil(threads);
        std::thread::scope(|scope| {
            for (part, slots) in codes.chunks(per_thread * stride).zip(out.chunks_mut(per_thread)) {
                scope.spawn(move || scan(part, stride, query, slots));
            }
        });
        out
    }
}

fn scan(codes: &[u8], stride: usize, query: &Prepared, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked above); the kernel reads only inside the slices.
        unsafe { avx2::sums(codes, stride, &query.weights, out) };
        return finish(query, out);
    }
    portable_sums(codes, stride, &query.weights, out);
    finish(query, out)
}

fn finish(query: &Prepared, out: &mut [f32]) {
    for value in out {
        *value = query.constant + query.factor * *value;
    }
}

/// The integer sums, one row at a time: the reference the AVX2 kernel must equal exactly.
fn portable_sums(codes: &[u8], stride: usize, weights: &[i8], out: &mut [f32]) {
    for (row, slot) in codes.chunks_exact(stride).zip(out) {
        let mut sum = 0i32;
        for (block, w) in row.chunks_exact(BLOCK / 2).zip(weights.chunks_exact(BLOCK)) {
            for (j, &byte) in block.iter().enumerate() {
                sum += (byte & 15) as i32 * w[j] as i32 + (byte >> 4) as i32 * w[32 + j] as i32;
            }
        }
        *slot = sum as f32;
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// Four rows at a time, one 32-byte block (64 dimensions) per step: unpack the nibbles with
    /// a mask and a shift, multiply by the i8 weights into i16 pairs (`maddubs`: at most
    /// 2 x 15 x 127, never saturating), widen into i32 lanes. 100,000 x 3,072 took 17-19 ms on
    /// one core here (12-16 ms on two), against 28-32 ms for int8 codes and 97-104 ms for f32.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn sums(codes: &[u8], stride: usize, weights: &[i8], out: &mut [f32]) {
        let rows = codes.len() / stride;
        let blocks = stride / 32;
        let (mask, ones) = (_mm256_set1_epi8(15), _mm256_set1_epi16(1));
        let mut row = 0;
        while row < rows {
            let take = (rows - row).min(4);
            let mut acc = [_mm256_setzero_si256(); 4];
            for block in 0..blocks {
                let w_low = _mm256_loadu_si256(weights.as_ptr().add(block * 64) as *const __m256i);
                let w_high = _mm256_loadu_si256(weights.as_ptr().add(block * 64 + 32) as *const __m256i);
                for (k, sum) in acc.iter_mut().enumerate().take(take) {
                    let bytes = _mm256_loadu_si256(codes.as_ptr().add((row + k) * stride + block * 32) as *const __m256i);
                    let low = _mm256_and_si256(bytes, mask);
                    let high = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), mask);
                    let pairs = _mm256_add_epi16(_mm256_maddubs_epi16(low, w_low), _mm256_maddubs_epi16(high, w_high));
                    *sum = _mm256_add_epi32(*sum, _mm256_madd_epi16(pairs, ones));
                }
            }
            for (k, sum) in acc.iter().enumerate().take(take) {
                let half = _mm_add_epi32(_mm256_castsi256_si128(*sum), _mm256_extracti128_si256(*sum, 1));
                let half = _mm_add_epi32(half, _mm_shuffle_epi32(half, 0b0100_1110));
                let half = _mm_add_epi32(half, _mm_shuffle_epi32(half, 0b1011_0001));
                out[row + k] = _mm_cvtsi128_si32(half) as f32;
            }
            row += take;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::rank::dot;

    fn matrix(rows: usize, dim: usize, seed: u64) -> Vec<f32> {
        crate::rng::Rng::new(seed).vector(rows * dim, 0.3)
    }

    #[test]
    fn approximate_dot_products_stay_within_their_bound_and_the_kernels_agree_exactly() {
        // 150 dimensions: two whole blocks and a padded third; 9 rows: two groups of four and one.
        for dim in [150, 3, 64] {
            let rows = matrix(9, dim, dim as u64);
            let quantizer = Quantizer::fit(&rows, dim);
            let codes = Codes::encode(quantizer, &rows);
            let query = matrix(1, dim, 99);
            let prepared = codes.quantizer.prepare(&query);
            let approximate = codes.approximate(0..9, &prepared);
            let mut portable = vec![0f32; 9];
            portable_sums(&codes.bytes, codes.quantizer.stride(), &prepared.weights, &mut portable);
            finish(&prepared, &mut portable);
            assert_eq!(approximate, portable, "the SIMD kernel and the reference sum the same integers");
            for (r, row) in rows.chunks_exact(dim).enumerate() {
                let exact = dot(row, &query);
                assert!((approximate[r] - exact).abs() <= prepared.bound * 1.0001 + 1e-5, "dim {dim} row {r}: {} vs {exact}, bound {}", approximate[r], prepared.bound);
            }
            // The bound is not vacuous: it is a small share of the query's reach.
            let reach: f32 = query.iter().zip(&codes.quantizer.step).map(|(q, s)| q.abs() * s * LEVELS).sum();
            assert!(prepared.bound < 0.1 * reach, "dim {dim}: bound {} against {reach}", prepared.bound);
        }
    }

    #[test]
    fn a_constant_dimension_and_the_extremes_encode_exactly() {
        let rows = vec![1.0, -2.0, 0.5, 1.0, 4.0, 0.5];
        let quantizer = Quantizer::fit(&rows, 3);
        assert_eq!(quantizer.step, [0.0, 0.4, 0.0]);
        let codes = quantizer.encode(&rows);
        assert_eq!(codes.len(), 2 * 32, "one 32-byte block per row");
        assert_eq!((codes[0], codes[1], codes[32 + 1]), (0, 0, 15), "the smallest value codes 0, the largest 15");
        let prepared = quantizer.prepare(&[1.0, 1.0, 1.0]);
        let approximate = Codes { quantizer, bytes: codes }.approximate(0..2, &prepared);
        assert!((approximate[0] - -0.5).abs() < 1e-4 && (approximate[1] - 5.5).abs() < 1e-4, "{approximate:?}");
    }
}
