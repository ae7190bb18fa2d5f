//! Deterministic synthetic data for the demo, benchmarks and tests: Gaussian weights with a per-row scale
//! spread and a few outlier input columns, like trained transformer layers (LLM.int8()'s motivating case).

use crate::tensor::{DType, FloatVec, Tensor};
use rayon::prelude::*;

/// SplitMix64: tiny, fast, and good enough for synthetic data; one stream per row keeps generation parallel.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
    /// Two independent standard normals (Box-Muller).
    pub fn normal_pair(&mut self) -> (f64, f64) {
        let u1 = self.next_f64().max(1e-300);
        let u2 = self.next_f64();
        let r = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (2.0 * std::f64::consts::PI * u2).sin_cos();
        (r * c, r * s)
    }

    /// Fills `out` with standard normals times `scale`.
    pub fn fill_normal(&mut self, out: &mut [f32], scale: f32) {
        for pair in out.chunks_mut(2) {
            let (a, b) = self.normal_pair();
            pair[0] = a as f32 * scale;
            if let Some(v) = pair.get_mut(1) {
                *v = b as f32 * scale;
            }
        }
    }
}

/// How a synthetic linear weight is shaped.
#[derive(Clone, Copy, Debug)]
pub struct WeightSpec {
    pub rows: usize,
    pub cols: usize,
    /// Typical standard deviation (Llama-7B projections: about 0.02).
    pub std: f32,
    /// Number of input columns scaled up as outliers.
    pub outlier_cols: usize,
    /// Scale of the outlier columns.
    pub outlier_scale: f32,
    pub seed: u64,
}

/// A `[rows, cols]` weight in `dtype`: N(0, std * row_scale) with row_scale in [0.5, 1.5) and a few columns
/// scaled by `outlier_scale`.
///
/// # Panics
/// When `rows * cols` overflows `usize` (no such tensor fits in memory).
pub fn linear_weight(spec: WeightSpec, dtype: DType) -> Tensor {
    let mut col_rng = SplitMix64::new(spec.seed ^ 0xC0FFEE);
    let outliers: Vec<usize> = (0..spec.outlier_cols)
        .map(|_| (col_rng.next_u64() as usize) % spec.cols)
        .collect();
    let n = spec
        .rows
        .checked_mul(spec.cols)
        .expect("rows * cols overflows usize");
    let mut w = vec![0.0f32; n];
    w.par_chunks_mut(spec.cols)
        .enumerate()
        .for_each(|(r, row)| {
            let mut rng = SplitMix64::new(spec.seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ r as u64);
            let row_std = spec.std * (0.5 + rng.next_f64() as f32);
            rng.fill_normal(row, row_std);
            for &c in &outliers {
                row[c] *= spec.outlier_scale;
            }
        });
    Tensor::vector(FloatVec::from_f32(w, dtype))
        .reshape(vec![spec.rows, spec.cols])
        .expect("rows * cols values were generated")
}

/// `n` standard-normal values times `scale` in `dtype` (activations).
///
/// # Panics
/// When the shape's element count overflows `usize` (no such tensor fits in memory).
pub fn normal(shape: Vec<usize>, scale: f32, seed: u64, dtype: DType) -> Tensor {
    let n = crate::tensor::checked_numel(&shape).expect("shape element count overflows usize");
    let mut v = vec![0.0f32; n];
    v.par_chunks_mut(4096).enumerate().for_each(|(i, c)| {
        let mut rng = SplitMix64::new(seed ^ (i as u64).wrapping_mul(0x9E37_79B9));
        rng.fill_normal(c, scale);
    });
    Tensor::vector(FloatVec::from_f32(v, dtype))
        .reshape(shape)
        .expect("one value was generated per element of the shape")
}
