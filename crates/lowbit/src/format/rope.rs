//! Rotary position embedding (RoPE) data shared by every backend: the pair layout, the inverse frequencies
//! (Hugging Face transformers' default and `llama3` rules, in float32 as torch computes them) and the cos/sin
//! tables that every backend's RoPE kernel reads, so all of them rotate with the same cos/sin bits (GPU
//! `sin`/`cos` builtins are too imprecise to be the spec).

use std::f64::consts::PI;
use std::ops::Range;

/// Which elements of a head are rotated together.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RopeLayout {
    /// GPT-NeoX and transformers' `rotate_half`: pairs `(i, i + rotary_dim / 2)`.
    Halves,
    /// Meta's original Llama and GPT-J: pairs `(2i, 2i + 1)`.
    Interleaved,
}

/// Frequency scaling rules (`rope_scaling` in config.json).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RopeScaling {
    /// `rope_type: "llama3"` (Llama 3.1 and later), transformers' `_compute_llama3_parameters`.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
}

/// `1 / theta^(2i / rotary_dim)` for `i < rotary_dim / 2`, as transformers computes it in float32:
/// `1.0 / (base ** (torch.arange(0, dim, 2).float() / dim))`, then the scaling rule if any.
///
/// Each step is one float32 operation as in torch: the exponent `f32(2i) / f32(dim)` and the final
/// reciprocal are correctly rounded divisions; `base ** e` is evaluated in f64 and rounded once (torch's
/// vectorised `powf` is within 1 ulp of that, so a given torch build may differ by 1 ulp in a few entries).
/// An odd `rotary_dim` yields `rotary_dim.div_ceil(2)` entries, as `arange(0, dim, 2)` does.
pub fn inv_freq(rotary_dim: usize, theta: f64, scaling: Option<&RopeScaling>) -> Vec<f32> {
    // torch casts the Python-float base to the tensor dtype.
    let base = theta as f32 as f64;
    let dim = rotary_dim as f32;
    let inv: Vec<f32> = (0..rotary_dim)
        .step_by(2)
        .map(|i| {
            let e = i as f32 / dim;
            let p = base.powf(e as f64) as f32;
            1.0 / p
        })
        .collect();
    match scaling {
        None => inv,
        Some(s) => scale(&inv, s),
    }
}

/// The scaling rule applied to default inverse frequencies.
fn scale(inv: &[f32], scaling: &RopeScaling) -> Vec<f32> {
    match *scaling {
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            let old = original_max_position_embeddings as f64;
            // Python floats (f64), cast to f32 where they meet a float32 tensor.
            let low_wavelen = (old / low_freq_factor) as f32;
            let high_wavelen = (old / high_freq_factor) as f32;
            let factor32 = factor as f32;
            let low32 = low_freq_factor as f32;
            let span = (high_freq_factor - low_freq_factor) as f32;
            let two_pi = (2.0 * PI) as f32;
            inv.iter()
                .map(|&f| {
                    // `scalar / tensor` is `tensor.reciprocal() * scalar` in torch.
                    let wavelen = (1.0 / f) * two_pi;
                    let f_llama = if wavelen > low_wavelen {
                        f / factor32
                    } else {
                        f
                    };
                    let smooth = ((1.0 / wavelen) * old as f32 - low32) / span;
                    let smoothed = (1.0 - smooth) * f_llama / factor32 + smooth * f_llama;
                    // torch's `~(w < high) * ~(w > low)`; the same for every non-NaN wavelength.
                    let medium = wavelen >= high_wavelen && wavelen <= low_wavelen;
                    if medium { smoothed } else { f_llama }
                })
                .collect()
        }
    }
}

/// cos and sin tables `[positions.len(), inv_freq.len()]` (row-major): the angle is one float32 multiply
/// `f32(pos) * inv_freq[i]` (torch's `inv_freq @ position_ids`, a product of one term), and cos/sin of
/// that float32 angle are evaluated in f64 and rounded once to f32.
pub fn cos_sin_table(inv_freq: &[f32], positions: Range<usize>) -> (Vec<f32>, Vec<f32>) {
    let n = positions.len() * inv_freq.len();
    let mut cos = Vec::with_capacity(n);
    let mut sin = Vec::with_capacity(n);
    for pos in positions {
        for &f in inv_freq {
            let angle = (pos as f32 * f) as f64;
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    (cos, sin)
}
