//! Activation formulas shared by every backend, each written once as float32 steps so the CPU reference and
//! the GPU kernels evaluate the same expression with the same constants (the GPU shader gets these
//! coefficients as exact hex literals).

/// Which GELU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GeluKind {
    /// `gelu_pytorch_tanh`: `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`, evaluated as the identical
    /// `x / (1 + exp(-2u))` (no cancellation, no `tanh` builtin, which some GPU drivers get wrong for large
    /// arguments).
    Tanh,
    /// Exact GELU `0.5 x (1 + erf(x / sqrt 2))` with [`erf`] below.
    Erf,
}

/// `sqrt(2 / pi)`, as torch's `M_SQRT2 * M_2_SQRTPI * 0.5` rounded to f32.
pub const GELU_TANH_BETA: f32 = 0.797_884_6;
pub const GELU_TANH_KAPPA: f32 = 0.044715;
/// `1 / sqrt 2` rounded to f32 (torch's `M_SQRT1_2`).
pub const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// `2 / sqrt(pi)` rounded to f32.
pub const FRAC_2_SQRT_PI: f32 = std::f32::consts::FRAC_2_SQRT_PI;

/// Below this |x| [`erf`] uses its Taylor polynomial, from here on the erfc fit.
pub const ERF_SPLIT: f32 = 1.0;
/// |x| is clamped here (erf is 1.0 in f32 well before), so infinities never enter the arithmetic.
pub const ERF_CLAMP: f32 = 10.0;

/// Taylor coefficients of `erf(x) * sqrt(pi) / 2 / x - 1` in powers of `s = x^2`, from `s^1` to `s^12`:
/// `(-1)^n / (n! (2n + 1))`. At |x| < 1 the first omitted term is below 1e-9.
pub const ERF_TAYLOR: [f32; 12] = [
    -1.0 / 3.0,
    1.0 / 10.0,
    -1.0 / 42.0,
    1.0 / 216.0,
    -1.0 / 1320.0,
    1.0 / 9360.0,
    -1.0 / 75600.0,
    1.0 / 685440.0,
    -1.0 / 6894720.0,
    1.0 / 76204800.0,
    -1.0 / 918086400.0,
    1.0 / 11975040000.0,
];

/// Numerical Recipes' Chebyshev fit `erfc(z) = t exp(-z^2 + P(t))`, `t = 1 / (1 + z/2)` (fractional error
/// below 1.2e-7 for every z >= 0); coefficients of P from t^0 to t^9 (the published decimals, written
/// with the digits that determine their f32 values).
pub const ERFC_FIT: [f32; 10] = [
    -1.265_512_2,
    1.000_023_7,
    0.374_091_96,
    0.096_784_18,
    -0.186_288_06,
    0.278_868_07,
    -1.135_204,
    1.488_515_9,
    -0.822_152_23,
    0.170_872_77,
];

/// erf in float32: `x (1 + s P(s))` times `2/sqrt(pi)` for |x| < 1, `1 - erfc(|x|)` with the sign of x
/// beyond. Measured maximum absolute error against a float64 erf: 1.3e-7 (`tests/model_ops.rs` checks
/// 2e-7); NaN stays NaN.
pub fn erf(x: f32) -> f32 {
    if x.is_nan() {
        // `min` below would turn NaN into the clamp.
        return x;
    }
    let z = x.abs().min(ERF_CLAMP);
    if z < ERF_SPLIT {
        let s = x * x;
        let mut p = ERF_TAYLOR[11];
        for &c in ERF_TAYLOR[..11].iter().rev() {
            p = p * s + c;
        }
        return (x + x * (p * s)) * FRAC_2_SQRT_PI;
    }
    let t = 1.0 / (1.0 + 0.5 * z);
    let mut p = ERFC_FIT[9];
    for &c in ERFC_FIT[..9].iter().rev() {
        p = p * t + c;
    }
    let erfc = t * (-z * z + p).exp();
    (1.0 - erfc).copysign(x)
}

/// GELU of one value in float32.
pub fn gelu(x: f32, kind: GeluKind) -> f32 {
    match kind {
        GeluKind::Erf => x * 0.5 * (1.0 + erf(x * FRAC_1_SQRT_2)),
        GeluKind::Tanh => {
            let u = GELU_TANH_BETA * (x + GELU_TANH_KAPPA * (x * x * x));
            x / (1.0 + (-2.0 * u).exp())
        }
    }
}

/// `relu(g)^2 * u` in float32, as transformers' `ReLUSquaredActivation` then `* up`: `(r * r) * u`.
pub fn relu2_mul(g: f32, u: f32) -> f32 {
    let r = if g > 0.0 { g } else { 0.0 };
    (r * r) * u
}

/// `silu(g) * u` in float32, `silu(g) = g / (1 + exp(-g))`.
pub fn silu_mul(g: f32, u: f32) -> f32 {
    g / (1.0 + (-g).exp()) * u
}
