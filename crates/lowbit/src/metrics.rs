//! Error metrics between a reference and an approximation.

use serde::Serialize;

/// Quantization error of an approximation against its reference.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct ErrorStats {
    pub rmse: f64,
    /// Signal-to-quantization-noise ratio in dB: 10·log10(Σx² / Σ(x-y)²).
    pub sqnr_db: f64,
    pub max_abs: f64,
    /// Σ|x-y| / Σ|x|.
    pub mean_rel: f64,
}

pub fn error_stats(reference: &[f32], approx: &[f32]) -> ErrorStats {
    assert_eq!(
        reference.len(),
        approx.len(),
        "error_stats needs equal lengths"
    );
    let (mut se, mut sx, mut max, mut sa, mut sd) = (0.0f64, 0.0f64, 0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in reference.iter().zip(approx) {
        let d = x as f64 - y as f64;
        se += d * d;
        sx += (x as f64) * (x as f64);
        max = max.max(d.abs());
        sa += (x as f64).abs();
        sd += d.abs();
    }
    let n = reference.len().max(1) as f64;
    ErrorStats {
        rmse: (se / n).sqrt(),
        sqnr_db: if se == 0.0 {
            f64::INFINITY
        } else {
            10.0 * (sx / se).log10()
        },
        max_abs: max,
        mean_rel: if sa == 0.0 { 0.0 } else { sd / sa },
    }
}

/// max over i of |y_i - ref_i| / (Σ_k |x_k w_ik|): the error of a dot product relative to its conditioning.
pub fn dot_error_ratio(y: &[f32], reference: &[f64], abs_dot: &[f64]) -> f64 {
    y.iter()
        .zip(reference)
        .zip(abs_dot)
        .map(|((&y, &r), &a)| (y as f64 - r).abs() / a.max(1e-300))
        .fold(0.0, f64::max)
}

/// max |got − want| / max |want|: the error of an output relative to its scale.
pub fn max_rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "max_rel_err needs equal lengths");
    let scale = want
        .iter()
        .fold(0.0f64, |m, &v| m.max(v.abs() as f64))
        .max(1e-30);
    got.iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w as f64).abs())
        .fold(0.0, f64::max)
        / scale
}
