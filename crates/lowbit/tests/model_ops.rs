//! The CPU reference of the model ops (embedding, RoPE, SwiGLU/GELU, add, attention, KV-cache writes)
//! against float64 references written here independently, on random inputs (seed printed, `LOWBIT_SEED`
//! replays) in every float dtype; RoPE tables against values derived here from the formulas.
//!
//! Tolerances: the float32 arithmetic of each op is bounded a priori (a few units of 2^-24 per operation, the
//! bound is written next to each check), plus half an ulp of the output dtype for the final narrowing
//! (`2^-24`, `2^-11`, `2^-8` relative) and an underflow floor (f32's smallest normal; for f16 half its
//! smallest subnormal).

use half::{bf16, f16};
use lowbit::backend::cpu::reference::model;
use lowbit::format::activation::{self, GeluKind};
use lowbit::format::rope::{RopeLayout, RopeScaling, cos_sin_table, inv_freq};
use lowbit::tensor::{DType, Float};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const EPS32: f64 = 1.0 / (1u64 << 24) as f64;

fn rng(test: &str) -> StdRng {
    let seed = std::env::var("LOWBIT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random::<u64>());
    println!("{test}: seed {seed} (LOWBIT_SEED={seed} replays)");
    StdRng::seed_from_u64(seed)
}

/// Half an ulp of `dt` relative, and an absolute floor for underflow (f32's smallest normal: results
/// below it, e.g. silu(-100), may flush through `exp` overflow; half of f16's smallest subnormal).
fn narrowing(dt: DType) -> (f64, f64) {
    let tiny = f32::MIN_POSITIVE as f64;
    match dt {
        DType::F32 => (EPS32, tiny),
        DType::F16 => (1.0 / 2048.0, 2f64.powi(-25)),
        _ => (1.0 / 256.0, tiny),
    }
}

fn uniform(r: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| r.random_range(-1.0f32..1.0) * scale)
        .collect()
}

fn to<T: Float>(v: &[f32]) -> Vec<T> {
    v.iter().map(|&x| T::from_f32(x)).collect()
}

fn wide<T: Float>(v: &[T]) -> Vec<f32> {
    v.iter().map(|x| x.to_f32()).collect()
}

/// Checks `got` against the float64 `want` element-wise: `|got - want| <= arith[i] + narrowing(dt)`.
fn check(what: &str, dt: DType, got: &[f32], want: &[f64], arith: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let (rel, abs) = narrowing(dt);
    let mut worst = 0.0f64;
    for i in 0..got.len() {
        let err = (got[i] as f64 - want[i]).abs();
        let bound = arith[i] + rel * want[i].abs() + abs;
        assert!(
            err <= bound,
            "{what} {dt}: element {i}: got {} want {} (error {err:e} > bound {bound:e})",
            got[i],
            want[i]
        );
        worst = worst.max(err / bound);
    }
    println!("{what} {dt}: worst error / bound = {worst:.3}");
}

/// Runs `f` once per dtype with the test's f32 inputs narrowed to that dtype.
macro_rules! each_dtype {
    ($f:ident ( $($arg:expr),* )) => {
        $f::<f32>($($arg),*);
        $f::<f16>($($arg),*);
        $f::<bf16>($($arg),*);
    };
}

// ---------------------------------------------------------------- RoPE tables

#[test]
fn inv_freq_matches_the_formula() {
    // Exact cases: 10000^(-1/2) = 1/100 and 500000^(-1/2) = 1/sqrt(500000), one rounding each.
    assert_eq!(inv_freq(4, 10000.0, None), vec![1.0, 0.01]);
    let want = 1.0f32 / (500000f64.sqrt() as f32);
    assert_eq!(inv_freq(4, 500000.0, None), vec![1.0, want]);
    // Odd dims: arange(0, 5, 2) has three entries.
    assert_eq!(inv_freq(5, 10000.0, None).len(), 3);
    for (theta, dim) in [
        (10000.0, 128usize),
        (500000.0, 128),
        (10000.0, 64),
        (1e6, 96),
    ] {
        let got = inv_freq(dim, theta, None);
        assert_eq!(got.len(), dim / 2);
        for (i, &g) in got.iter().enumerate() {
            // The exponent 2i/dim is rounded to f32 (relative 2^-24), which moves theta^-e by
            // ln(theta) * e * 2^-24 relative; pow and the reciprocal add one rounding each.
            let e = 2.0 * i as f64 / dim as f64;
            let want = theta.powf(-e);
            let bound = want * (theta.ln() * e * EPS32 + 3.0 * EPS32);
            assert!(
                (g as f64 - want).abs() <= bound,
                "theta {theta} dim {dim} i {i}: {g} vs {want}"
            );
        }
    }
}

#[test]
fn llama3_scaling_matches_the_piecewise_rule() {
    let s = RopeScaling::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192,
    };
    let plain = inv_freq(128, 500000.0, None);
    let scaled = inv_freq(128, 500000.0, Some(&s));
    // Llama 3.1: wavelength 2 pi 500000^(i/64) is below 8192/4 for i <= 28 (kept), above 8192 for i >= 35
    // (divided by 8), smoothly interpolated for 29..=34; derived here in f64.
    let (mut kept, mut divided, mut smooth) = (0, 0, 0);
    for i in 0..64 {
        let f = 500000f64.powf(-(i as f64) / 64.0);
        let wavelen = 2.0 * std::f64::consts::PI / f;
        let want = if wavelen < 2048.0 {
            kept += 1;
            assert_eq!(
                scaled[i], plain[i],
                "i {i}: high frequencies are kept bit for bit"
            );
            f
        } else if wavelen > 8192.0 {
            divided += 1;
            assert_eq!(
                scaled[i],
                plain[i] / 8.0,
                "i {i}: low frequencies are divided by 8"
            );
            f / 8.0
        } else {
            smooth += 1;
            let sm = (8192.0 / wavelen - 1.0) / 3.0;
            assert!(scaled[i] < plain[i] && scaled[i] > plain[i] / 8.0, "i {i}");
            (1.0 - sm) * f / 8.0 + sm * f
        };
        // The f32 chain (reciprocal, products, the blend) stays within a few units of 2^-24 plus the
        // exponent's rounding (see inv_freq_matches_the_formula).
        let bound = want * (500000f64.ln() * EPS32 + 16.0 * EPS32);
        assert!(
            (scaled[i] as f64 - want).abs() <= bound,
            "i {i}: {} vs {want}",
            scaled[i]
        );
    }
    assert_eq!((kept, divided, smooth), (29, 29, 6));
}

#[test]
fn cos_sin_tables_match_f64() {
    let (c, s) = cos_sin_table(&[1.0, 0.5], 0..3);
    assert_eq!(c.len(), 6);
    assert_eq!((c[0], s[0], c[1], s[1]), (1.0, 0.0, 1.0, 0.0));
    assert_eq!((c[2], s[2]), (1f64.cos() as f32, 1f64.sin() as f32));
    assert_eq!((c[5], s[5]), (1f64.cos() as f32, 1f64.sin() as f32));
    assert_eq!((c[4], s[4]), (2f64.cos() as f32, 2f64.sin() as f32));
    assert_eq!(c[2], 0.540_302_3);
    // Against the exact angle pos * f: the f32 product moves the angle by at most half an ulp.
    let inv = inv_freq(128, 500000.0, None);
    let (c, s) = cos_sin_table(&inv, 100..4200);
    for (row, pos) in (100..4200usize).enumerate() {
        for (i, &f) in inv.iter().enumerate() {
            let angle = pos as f64 * f as f64;
            let bound = angle * EPS32 + EPS32;
            let k = row * 64 + i;
            assert!(
                (c[k] as f64 - angle.cos()).abs() <= bound,
                "cos pos {pos} i {i}"
            );
            assert!(
                (s[k] as f64 - angle.sin()).abs() <= bound,
                "sin pos {pos} i {i}"
            );
        }
    }
}

// ---------------------------------------------------------------- element-wise ops

/// erf in float64: Taylor series below 2.5, Lentz's continued fraction for erfc above.
fn erf64(x: f64) -> f64 {
    let z = x.abs();
    let r = if z < 2.5 {
        let (mut term, mut sum, mut n) = (z, z, 0.0);
        while term.abs() > 1e-18 * sum.abs() {
            n += 1.0;
            term *= -z * z / n;
            sum += term / (2.0 * n + 1.0);
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        // erfc(z) = exp(-z^2)/sqrt(pi) * 1/(z + (1/2)/(z + 1/(z + (3/2)/(z + ...))))
        let mut f = z;
        for k in (1..200).rev() {
            f = z + (k as f64 / 2.0) / f;
        }
        1.0 - (-z * z).exp() / std::f64::consts::PI.sqrt() / f
    };
    r.copysign(x)
}

#[test]
fn erf_approximation_is_within_2e_7() {
    let mut r = rng("erf");
    let mut worst = (0.0f64, 0.0f32);
    let mut xs: Vec<f32> = (0..2_000_000)
        .map(|_| r.random_range(-6.0f32..6.0))
        .collect();
    // Dense around the branch point and tiny values.
    xs.extend((0..20000).map(|i| 0.99 + i as f32 * 1e-6));
    xs.extend([
        0.0,
        -0.0,
        1e-30,
        1e-10,
        1.0,
        -1.0,
        9.99,
        10.0,
        1e30,
        f32::INFINITY,
    ]);
    for &x in &xs {
        let err = (activation::erf(x) as f64 - erf64(x as f64)).abs();
        if err > worst.0 {
            worst = (err, x);
        }
    }
    println!("erf: worst absolute error {:e} at {}", worst.0, worst.1);
    assert!(worst.0 <= 2e-7, "erf error {:e} at {}", worst.0, worst.1);
    assert!(activation::erf(f32::NAN).is_nan());
    assert_eq!(activation::erf(f32::NEG_INFINITY), -1.0);
}

fn elementwise_case<T: Float>(r: &mut StdRng) {
    let dt = T::DTYPE;
    let n = 4099;
    let mut g = uniform(r, n, 8.0);
    g.extend([0.0, -0.0, 30.0, -30.0, 100.0, -100.0, 1e-3]);
    let n = g.len();
    let u = uniform(r, n, 4.0);
    let (gt, ut) = (to::<T>(&g), to::<T>(&u));
    let (gw, uw) = (wide(&gt), wide(&ut));

    let got = wide(&model::silu_mul(&gt, &ut));
    let want: Vec<f64> = (0..n)
        .map(|i| {
            let (a, b) = (gw[i] as f64, uw[i] as f64);
            a / (1.0 + (-a).exp()) * b
        })
        .collect();
    // exp, 1 + e, the division and the product: a few roundings relative to the result.
    let arith: Vec<f64> = want.iter().map(|w| 8.0 * EPS32 * w.abs()).collect();
    check("silu_mul", dt, &got, &want, &arith);

    let got = wide(&model::relu2_mul(&gt, &ut));
    let want: Vec<f64> = (0..n)
        .map(|i| {
            let r = (gw[i] as f64).max(0.0);
            r * r * uw[i] as f64
        })
        .collect();
    // The square and the product: two roundings.
    let arith: Vec<f64> = want.iter().map(|w| 3.0 * EPS32 * w.abs()).collect();
    check("relu2_mul", dt, &got, &want, &arith);

    let got = wide(&model::add(&gt, &ut));
    let want: Vec<f64> = (0..n).map(|i| gw[i] as f64 + uw[i] as f64).collect();
    let arith: Vec<f64> = want.iter().map(|w| EPS32 * w.abs()).collect();
    check("add", dt, &got, &want, &arith);

    let got = wide(&model::gelu(&gt, GeluKind::Erf));
    let want: Vec<f64> = gw
        .iter()
        .map(|&x| {
            let x = x as f64;
            0.5 * x * (1.0 + erf64(x / 2f64.sqrt()))
        })
        .collect();
    // erf's absolute 2e-7 times |x|/2, and a few roundings of the result.
    let arith: Vec<f64> = (0..n)
        .map(|i| 1e-7 * (gw[i] as f64).abs() + 4.0 * EPS32 * want[i].abs())
        .collect();
    check("gelu erf", dt, &got, &want, &arith);

    let got = wide(&model::gelu(&gt, GeluKind::Tanh));
    let want: Vec<f64> = gw
        .iter()
        .map(|&x| {
            let x = x as f64;
            let inner = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
            0.5 * x * (1.0 + inner.tanh())
        })
        .collect();
    // The inner polynomial's roundings move u by ~4 eps |u|; d/du of x sigmoid(2u) is at most |x| / 2.
    let arith: Vec<f64> = (0..n)
        .map(|i| {
            let x = (gw[i] as f64).abs();
            let u = 0.8 * (x + 0.045 * x * x * x);
            8.0 * EPS32 * (want[i].abs() + x * u.min(20.0))
        })
        .collect();
    check("gelu tanh", dt, &got, &want, &arith);
}

#[test]
fn elementwise_ops_match_f64() {
    let mut r = rng("elementwise");
    each_dtype!(elementwise_case(&mut r));
}

// ---------------------------------------------------------------- embedding, KV rows

fn embedding_case<T: Float>(r: &mut StdRng) {
    let (vocab, dim) = (37, 24);
    let table = to::<T>(&uniform(r, vocab * dim, 3.0));
    let ids: Vec<u32> = (0..11).map(|_| r.random_range(0..vocab as u32)).collect();
    let got = model::embedding(&table, dim, &ids);
    assert_eq!(got.len(), ids.len() * dim);
    for (t, &id) in ids.iter().enumerate() {
        for d in 0..dim {
            let (g, w) = (
                got[t * dim + d].to_f32(),
                table[id as usize * dim + d].to_f32(),
            );
            assert_eq!(g.to_bits(), w.to_bits(), "token {t} dim {d}");
        }
    }
    assert!(model::embedding(&table, dim, &[]).is_empty());
}

#[test]
fn embedding_is_an_exact_gather() {
    let mut r = rng("embedding");
    each_dtype!(embedding_case(&mut r));
}

#[test]
fn copy_rows_writes_whole_rows() {
    let mut cache = vec![0u16; 5 * 4];
    model::copy_rows(&mut cache, 4, 2, &[1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(&cache[..8], &[0; 8]);
    assert_eq!(&cache[8..16], &[1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(&cache[16..], &[0; 4]);
}

// ---------------------------------------------------------------- RoPE

fn rope_case<T: Float>(r: &mut StdRng) {
    let dt = T::DTYPE;
    let inv = inv_freq(32, 10000.0, None);
    let (cos, sin) = cos_sin_table(&inv, 0..64);
    for layout in [RopeLayout::Halves, RopeLayout::Interleaved] {
        // Full rotation and partial rotation (dims past rotary_dim untouched).
        for (head_dim, rotary_dim) in [(32, 32), (48, 32)] {
            let (tokens, heads, pos_start) = (5, 3, 17);
            let x = to::<T>(&uniform(r, tokens * heads * head_dim, 2.0));
            let xw = wide(&x);
            let got = wide(&model::rope(
                &x, heads, head_dim, rotary_dim, &cos, &sin, pos_start, layout,
            ));
            let mut want = vec![0.0f64; xw.len()];
            let mut arith = vec![0.0f64; xw.len()];
            for t in 0..tokens {
                for h in 0..heads {
                    let base = (t * heads + h) * head_dim;
                    for d in rotary_dim..head_dim {
                        want[base + d] = xw[base + d] as f64;
                    }
                    let half = rotary_dim / 2;
                    for i in 0..half {
                        // Pairs written out per layout, independently of the kernel's indexing.
                        let (ia, ib) = if layout == RopeLayout::Halves {
                            (base + i, base + half + i)
                        } else {
                            (base + 2 * i, base + 2 * i + 1)
                        };
                        let c = cos[(pos_start + t) * half + i] as f64;
                        let s = sin[(pos_start + t) * half + i] as f64;
                        let (a, b) = (xw[ia] as f64, xw[ib] as f64);
                        want[ia] = a * c - b * s;
                        want[ib] = b * c + a * s;
                        // Two products and a sum: 2 eps of |a| + |b|.
                        arith[ia] = 2.0 * EPS32 * (a.abs() + b.abs());
                        arith[ib] = arith[ia];
                    }
                }
            }
            check(
                &format!("rope {layout:?} {head_dim}/{rotary_dim}"),
                dt,
                &got,
                &want,
                &arith,
            );
        }
    }
}

#[test]
fn rope_matches_f64() {
    let mut r = rng("rope");
    each_dtype!(rope_case(&mut r));
}

#[test]
fn rope_at_position_zero_is_identity_and_rotation_preserves_norm() {
    let inv = inv_freq(8, 10000.0, None);
    let (cos, sin) = cos_sin_table(&inv, 0..4);
    let x: Vec<f32> = (0..16).map(|i| i as f32 - 7.5).collect();
    let y = model::rope(&x, 2, 8, 8, &cos, &sin, 0, RopeLayout::Halves);
    assert_eq!(x, y);
    let y = model::rope(&x, 2, 8, 8, &cos, &sin, 3, RopeLayout::Interleaved);
    for p in 0..8 {
        let n0 = x[2 * p].powi(2) + x[2 * p + 1].powi(2);
        let n1 = y[2 * p].powi(2) + y[2 * p + 1].powi(2);
        assert!((n0 - n1).abs() <= 1e-5 * n0, "pair {p}");
    }
    assert_ne!(x, y);
}

// ---------------------------------------------------------------- attention

/// Causal GQA attention in f64 straight from the definition, with its a-priori float32 error bound per
/// output element.
#[allow(clippy::too_many_arguments)]
fn attention64(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    n_heads: usize,
    n_kv: usize,
    hd: usize,
    kv_len: usize,
    pos_start: usize,
    scale: f32,
) -> (Vec<f64>, Vec<f64>) {
    let nq = q.len() / (n_heads * hd);
    let mut out = vec![0.0; q.len()];
    let mut bound = vec![0.0; q.len()];
    for i in 0..nq {
        let last = (pos_start + i).min(kv_len - 1);
        for h in 0..n_heads {
            let kvh = h * n_kv / n_heads;
            let qo = (i * n_heads + h) * hd;
            let mut s = Vec::new();
            let mut ds = 0.0f64;
            for j in 0..=last {
                let ko = (j * n_kv + kvh) * hd;
                let dot: f64 = (0..hd).map(|d| q[qo + d] as f64 * k[ko + d] as f64).sum();
                let mag: f64 = (0..hd)
                    .map(|d| (q[qo + d] as f64 * k[ko + d] as f64).abs())
                    .sum();
                s.push(dot * scale as f64);
                // A sequential f32 dot of hd terms errs by at most hd eps sum|q k|; then the scale.
                ds = ds
                    .max(((hd + 1) as f64 * EPS32 * mag + EPS32 * dot.abs()) * scale.abs() as f64);
            }
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let p: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
            let l: f64 = p.iter().sum();
            let n = (last + 1) as f64;
            for d in 0..hd {
                let vmax = (0..=last)
                    .map(|j| (v[(j * n_kv + kvh) * hd + d] as f64).abs())
                    .fold(0.0, f64::max);
                out[qo + d] = (0..=last)
                    .map(|j| p[j] * v[(j * n_kv + kvh) * hd + d] as f64)
                    .sum::<f64>()
                    / l;
                // Score errors shift each weight by ~2 ds relative (the max's error cancels); exp, the
                // sums of n terms and the division add (n + 4) eps; all relative to max |v|.
                bound[qo + d] = vmax * (4.0 * ds + 2.0 * (n + 4.0) * EPS32);
            }
        }
    }
    (out, bound)
}

#[allow(clippy::too_many_arguments)]
fn attention_case<T: Float>(
    r: &mut StdRng,
    n_heads: usize,
    n_kv: usize,
    hd: usize,
    nq: usize,
    kv_len: usize,
    pos_start: usize,
    spread: f32,
) {
    let dt = T::DTYPE;
    let capacity = kv_len + 3;
    let q = to::<T>(&uniform(r, nq * n_heads * hd, spread));
    let mut k = to::<T>(&uniform(r, capacity * n_kv * hd, 1.0));
    let mut v = to::<T>(&uniform(r, capacity * n_kv * hd, 1.0));
    // Rows past kv_len must never be read.
    let row = n_kv * hd;
    for x in k[kv_len * row..]
        .iter_mut()
        .chain(v[kv_len * row..].iter_mut())
    {
        *x = T::from_f32(f32::NAN);
    }
    let scale = 1.0 / (hd as f32).sqrt();
    let (want, bound) = attention64(
        &wide(&q),
        &wide(&k),
        &wide(&v),
        n_heads,
        n_kv,
        hd,
        kv_len,
        pos_start,
        scale,
    );
    // The reference and the vectorised CPU kernel, each within the a-priori bound.
    let kernels: [(&str, AttentionFn<T>); 2] = [
        ("reference", model::attention),
        ("fast", lowbit::backend::cpu::fast::attention::attention),
    ];
    for (name, kernel) in kernels {
        let got = wide(&kernel(
            &q, &k, &v, n_heads, n_kv, hd, kv_len, pos_start, scale,
        ));
        check(
            &format!(
                "{name} attention heads {n_heads}/{n_kv} hd {hd} nq {nq} kv {kv_len} pos {pos_start}"
            ),
            dt,
            &got,
            &want,
            &bound,
        );
    }
}

type AttentionFn<T> = fn(&[T], &[T], &[T], usize, usize, usize, usize, usize, f32) -> Vec<T>;

#[test]
fn attention_matches_f64() {
    let mut r = rng("attention");
    for (n_heads, n_kv) in [(4, 4), (8, 2), (8, 1)] {
        // Decode: one query at the last cache row.
        each_dtype!(attention_case(&mut r, n_heads, n_kv, 64, 1, 300, 299, 1.0));
        // Prefill of 7 rows after 5 cached ones (causal inside the block).
        each_dtype!(attention_case(&mut r, n_heads, n_kv, 32, 7, 12, 5, 1.0));
        // Peaky softmax (scores of tens).
        each_dtype!(attention_case(&mut r, n_heads, n_kv, 16, 2, 40, 38, 30.0));
        // A head size that is not a multiple of 16 (the fast kernel's partial sums).
        each_dtype!(attention_case(&mut r, n_heads, n_kv, 40, 3, 50, 47, 1.0));
        // A prefill block of 40 rows after 20 cached ones (the fast kernel's GEMM route from 16 rows).
        each_dtype!(attention_case(&mut r, n_heads, n_kv, 64, 40, 60, 20, 1.0));
        // The same with a peaky softmax, a head size off the GEMM's tile widths and rows past the cache.
        each_dtype!(attention_case(&mut r, n_heads, n_kv, 40, 24, 30, 10, 30.0));
    }
    // Queries past the cache end see the whole cache.
    each_dtype!(attention_case(&mut r, 2, 1, 8, 3, 4, 10, 1.0));
    // A prompt of 300 rows: the GEMM route's causal blocks of 128 query rows, each against the keys its last
    // row sees; then the same with rows past the cache end in the last blocks.
    each_dtype!(attention_case(&mut r, 8, 2, 64, 300, 320, 20, 1.0));
    each_dtype!(attention_case(&mut r, 4, 2, 32, 300, 200, 20, 1.0));
    // Head sizes of 80 and 128: the fused f32 kernel's value columns in one pass of 64 and a shorter one,
    // and in two of 64; 17 rows (a 12-row score tile and a partial one).
    each_dtype!(attention_case(&mut r, 4, 2, 80, 17, 40, 23, 1.0));
    each_dtype!(attention_case(&mut r, 2, 1, 128, 17, 17, 0, 1.0));
}

#[test]
fn attention_causal_rows_and_single_key() {
    // One key: the output is that key's value row, exactly.
    let q = vec![0.3f32, -0.2, 0.9, 0.1];
    let k = vec![1.0f32, 2.0, 3.0, 4.0];
    let v = vec![5.0f32, -6.0, 7.0, 0.25];
    assert_eq!(model::attention(&q, &k, &v, 1, 1, 4, 1, 0, 0.5), v);
    // Query 0 of a prefill sees only row 0 even though two rows are cached.
    let q2 = [q.clone(), q.clone()].concat();
    let k2 = [k.clone(), vec![9.0; 4]].concat();
    let v2 = [v.clone(), vec![-1.0; 4]].concat();
    let out = model::attention(&q2, &k2, &v2, 1, 1, 4, 2, 0, 0.5);
    assert_eq!(&out[..4], &v[..]);
    assert_ne!(&out[4..], &v[..]);
    // An empty cache gives zeros.
    assert_eq!(
        model::attention(&q, &k, &v, 1, 1, 4, 0, 0, 0.5),
        vec![0.0; 4]
    );
}
