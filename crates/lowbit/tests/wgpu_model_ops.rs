#![cfg(feature = "wgpu")]
//! Every model-op GPU kernel against the CPU reference on fresh random inputs (seed printed, `LOWBIT_SEED`
//! replays), in every input dtype.
//!
//! The GPU writes f32; it is compared with the reference run in f32 on the same (exactly widened) inputs:
//! embedding, KV-row copies and casts bit for bit; RoPE within 2^-23 of max |x| (two products and a sum,
//! which a driver may fuse); element-wise ops and attention within a relative error stated at each check
//! (the GPU's `exp` and division are not correctly rounded, and attention sums in another order). The
//! GPU's narrowing (`cast`) of each f32 result must then match the reference output in the input dtype
//! (the same bits wherever the f32 values agree, else within one ulp of that dtype).

mod wgpu_common;

use half::{bf16, f16};
use lowbit::backend::cpu::reference::model;
use lowbit::backend::wgpu::Gpu;
use lowbit::backend::wgpu::model_ops::{self as gm, AttentionDims, RopeDims};
use lowbit::format::activation::GeluKind;
use lowbit::format::rope::{RopeLayout, cos_sin_table, inv_freq};
use lowbit::tensor::{DType, Float, FloatVec, Floats};
use lowbit::{Error, backend::wgpu::WgpuBackend};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

fn rng(test: &str) -> StdRng {
    let seed = std::env::var("LOWBIT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random::<u64>());
    println!("{test}: seed {seed} (LOWBIT_SEED={seed} replays)");
    StdRng::seed_from_u64(seed)
}

fn gpu() -> Option<WgpuBackend> {
    wgpu_common::gpu()
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

fn floats<T: Float>(v: &[T]) -> FloatVec {
    FloatVec::from_f32(wide(v), T::DTYPE)
}

/// max |got - want| / max |want|, printed with the bound it is held to.
fn check_rel(what: &str, got: &[f32], want: &[f32], bound: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want
        .iter()
        .fold(0.0f64, |m, &w| m.max(w.abs() as f64))
        .max(1e-30);
    let mut worst = (0.0f64, 0);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let e = (g as f64 - w as f64).abs() / scale;
        if e > worst.0 || e.is_nan() {
            worst = (e, i);
        }
    }
    println!(
        "{what}: max error {:.2e} of max |y| (bound {bound:.0e})",
        worst.0
    );
    assert!(
        worst.0 <= bound,
        "{what}: element {}: got {} want {} ({:.2e} > {bound:.0e})",
        worst.1,
        got[worst.1],
        want[worst.1],
        worst.0
    );
}

/// Narrows the GPU's f32 result on the GPU and compares it with the reference's output in `T`: equal bits
/// where the f32 results agree bit for bit, else at most one ulp of `T` apart.
fn check_narrowed<T: Float>(g: &Gpu, what: &str, got32: &[f32], want32: &[f32], want_t: &[T]) {
    if T::DTYPE == DType::F32 {
        return;
    }
    let narrowed = gm::cast(g, Floats::F32(got32), T::DTYPE).unwrap();
    let bits = |v: &FloatVec| -> Vec<u16> {
        match v {
            FloatVec::F16(x) => x.iter().map(|h| h.to_bits()).collect(),
            FloatVec::BF16(x) => x.iter().map(|h| h.to_bits()).collect(),
            FloatVec::F32(_) => unreachable!("narrowed to a half type"),
        }
    };
    let got = bits(&narrowed);
    let want = bits(&floats(want_t));
    for i in 0..got.len() {
        if got32[i].to_bits() == want32[i].to_bits() {
            assert_eq!(got[i], want[i], "{what}: element {i} narrowed differently");
        } else {
            // The f32 results differ within the op's stated f32 bound (GPU exp/division are not correctly
            // rounded, e.g. NVIDIA's): the narrowed values may then differ by that bound plus one unit in the
            // last place of `T`, not by more.
            let d = (got[i] as i32 - want[i] as i32).abs();
            let to_f32 = |b: u16| match T::DTYPE {
                DType::F16 => half::f16::from_bits(b).to_f32(),
                _ => half::bf16::from_bits(b).to_f32(),
            };
            let (gv, wv) = (to_f32(got[i]), to_f32(want[i]));
            let eps = if T::DTYPE == DType::F16 {
                1.0 / 1024.0
            } else {
                1.0 / 128.0
            };
            let max = want32.iter().fold(0f32, |m, v| m.max(v.abs()));
            let bound = 4e-6 * max + eps * wv.abs().max(6.1e-5);
            assert!(
                d <= 1 || (got[i] | want[i]) & 0x7fff == 0 || (gv - wv).abs() <= bound,
                "{what}: element {i}: {:#06x} vs {:#06x}",
                got[i],
                want[i]
            );
        }
    }
}

macro_rules! each_dtype {
    ($f:ident ( $($arg:expr),* )) => {
        $f::<f32>($($arg),*);
        $f::<f16>($($arg),*);
        $f::<bf16>($($arg),*);
    };
}

// ---------------------------------------------------------------- cast

fn half_bits(v: &FloatVec) -> Vec<u16> {
    match v {
        FloatVec::F16(x) => x.iter().map(|h| h.to_bits()).collect(),
        FloatVec::BF16(x) => x.iter().map(|h| h.to_bits()).collect(),
        FloatVec::F32(_) => panic!("expected a half type"),
    }
}

fn f32_bits(v: &FloatVec) -> Vec<u32> {
    match v {
        FloatVec::F32(x) => x.iter().map(|h| h.to_bits()).collect(),
        _ => panic!("expected f32"),
    }
}

#[test]
fn cast_widening_is_bit_exact_for_every_pattern() {
    let Some(b) = gpu() else { return };
    let g = b.gpu();
    let all: Vec<u16> = (0..=u16::MAX).collect();
    let h: Vec<f16> = all.iter().map(|&x| f16::from_bits(x)).collect();
    let got = f32_bits(&gm::cast(g, Floats::F16(&h), DType::F32).unwrap());
    for (i, x) in h.iter().enumerate() {
        assert_eq!(got[i], x.to_f32().to_bits(), "f16 {:#06x}", all[i]);
    }
    let bh: Vec<bf16> = all.iter().map(|&x| bf16::from_bits(x)).collect();
    let got = f32_bits(&gm::cast(g, Floats::BF16(&bh), DType::F32).unwrap());
    for (i, x) in bh.iter().enumerate() {
        assert_eq!(got[i], x.to_f32().to_bits(), "bf16 {:#06x}", all[i]);
    }
}

/// f32 patterns that exercise narrowing: every half value widened, the exact midpoints between
/// neighbouring halves (ties) and their f32 neighbours, NaNs with assorted payloads, infinities, f32
/// subnormals, the overflow thresholds, and random bit patterns.
fn narrowing_patterns(r: &mut StdRng) -> Vec<u32> {
    let mut v = Vec::new();
    for h in 0..=u16::MAX {
        for w in [f16::from_bits(h).to_f32(), bf16::from_bits(h).to_f32()] {
            let b = w.to_bits();
            v.extend([b, b.wrapping_add(1), b.wrapping_sub(1)]);
        }
        // Ties: f16 spacing is 2^13 f32 ulps in the normal range, bf16 spacing 2^16.
        let f = f16::from_bits(h).to_f32().to_bits();
        v.extend([f + 0x1000, f + 0x0fff, f + 0x1001]);
        let bb = (h as u32) << 16;
        v.extend([bb | 0x8000, bb | 0x7fff, bb | 0x8001]);
    }
    // f16 subnormal ties (spacing 2^-24): k * 2^-24 + 2^-25.
    for k in 0..1024u32 {
        let x = (k as f64 * 2f64.powi(-24) + 2f64.powi(-25)) as f32;
        v.extend([x.to_bits(), (-x).to_bits()]);
    }
    for x in [
        65504.0f32,
        65519.99,
        65520.0,
        65536.0,
        3.0e38,
        2f32.powi(-25),
        2f32.powi(-26),
    ] {
        v.extend([x.to_bits(), (-x).to_bits()]);
    }
    v.extend([
        0,
        0x8000_0000,
        0x7f80_0000,
        0xff80_0000,
        0x7fc0_0000,
        0x7f80_0001,
        0xffbf_ffff,
    ]);
    v.extend([
        0x7fa0_0000,
        0x7f80_2000,
        0x7f80_1fff,
        0x0000_0001,
        0x8000_0001,
        0x007f_ffff,
    ]);
    v.extend((0..1_000_000).map(|_| r.random::<u32>()));
    v
}

#[test]
fn cast_narrowing_matches_half_bit_for_bit() {
    let Some(b) = gpu() else { return };
    let g = b.gpu();
    let mut r = rng("cast_narrowing");
    let mut pats = narrowing_patterns(&mut r);
    // An odd count exercises the half-filled last word.
    if pats.len().is_multiple_of(2) {
        pats.push(0x3f80_1000);
    }
    let x: Vec<f32> = pats.iter().map(|&b| f32::from_bits(b)).collect();
    let got = half_bits(&gm::cast(g, Floats::F32(&x), DType::F16).unwrap());
    for (i, &v) in x.iter().enumerate() {
        assert_eq!(
            got[i],
            f16::from_f32(v).to_bits(),
            "f16 of {:#010x}",
            pats[i]
        );
    }
    let got = half_bits(&gm::cast(g, Floats::F32(&x), DType::BF16).unwrap());
    for (i, &v) in x.iter().enumerate() {
        assert_eq!(
            got[i],
            bf16::from_f32(v).to_bits(),
            "bf16 of {:#010x}",
            pats[i]
        );
    }
    println!("cast: {} f32 patterns narrowed bit-exactly", x.len());
}

// ---------------------------------------------------------------- embedding, copy_rows

fn embedding_case<T: Float>(g: &Gpu, r: &mut StdRng) {
    let (vocab, dim) = (50, 33);
    let mut table = uniform(r, vocab * dim, 4.0);
    table[5] = f32::INFINITY;
    table[7] = 1e-40; // subnormal in f32, flushed or not by the dtype's rounding alone
    let table = to::<T>(&table);
    let ids: Vec<u32> = (0..9)
        .map(|_| r.random_range(0..vocab as u32))
        .chain([0, 49])
        .collect();
    let tf = floats(&table);
    let got = gm::embedding(g, tf.as_floats(), dim, &ids).unwrap();
    let want = wide(&model::embedding(&table, dim, &ids));
    let gb: Vec<u32> = got.iter().map(|x| x.to_bits()).collect();
    let wb: Vec<u32> = want.iter().map(|x| x.to_bits()).collect();
    assert_eq!(gb, wb, "embedding {}", T::DTYPE);
    let err = gm::embedding(g, tf.as_floats(), dim, &[50]).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
}

#[test]
fn embedding_is_bit_exact() {
    let Some(b) = gpu() else { return };
    let mut r = rng("embedding");
    each_dtype!(embedding_case(b.gpu(), &mut r));
}

fn copy_rows_case<T: Float>(g: &Gpu, r: &mut StdRng) {
    let row = 8;
    let cache = to::<T>(&uniform(r, 10 * row, 1.0));
    let src = to::<T>(&uniform(r, 3 * row, 1.0));
    let got = gm::copy_rows(
        g,
        floats(&cache).as_floats(),
        row,
        4,
        floats(&src).as_floats(),
    )
    .unwrap();
    let mut want = cache.clone();
    model::copy_rows(&mut want, row, 4, &src);
    assert_eq!(got, floats(&want), "copy_rows {}", T::DTYPE);
    // Past the end: a typed error.
    let err = gm::copy_rows(
        g,
        floats(&cache).as_floats(),
        row,
        8,
        floats(&src).as_floats(),
    );
    assert!(matches!(err, Err(Error::Shape { .. })), "{err:?}");
}

#[test]
fn copy_rows_is_bit_exact() {
    let Some(b) = gpu() else { return };
    let mut r = rng("copy_rows");
    each_dtype!(copy_rows_case(b.gpu(), &mut r));
    // Half-precision rows of an odd length at an odd row: not 4-byte aligned, refused.
    let c = vec![f16::ZERO; 30];
    let s = vec![f16::ONE; 3];
    let err = gm::copy_rows(b.gpu(), Floats::F16(&c), 3, 1, Floats::F16(&s));
    assert!(matches!(err, Err(Error::InvalidArgument { .. })), "{err:?}");
}

// ---------------------------------------------------------------- RoPE

fn rope_case<T: Float>(g: &Gpu, r: &mut StdRng) {
    for layout in [RopeLayout::Halves, RopeLayout::Interleaved] {
        for (head_dim, rotary_dim, tokens, pos_start) in
            [(64, 64, 1, 39), (80, 64, 7, 5), (64, 32, 3, 0)]
        {
            let heads = 3;
            let x = to::<T>(&uniform(r, tokens * heads * head_dim, 3.0));
            let (cs, ss) = cos_sin_table(&inv_freq(rotary_dim, 500000.0, None), 0..40);
            let dims = RopeDims {
                tokens,
                heads,
                head_dim,
                rotary_dim,
                pos_start,
                layout,
            };
            let got = gm::rope(g, floats(&x).as_floats(), &dims, &cs, &ss).unwrap();
            let xw = wide(&x);
            let want = model::rope(
                &xw, heads, head_dim, rotary_dim, &cs, &ss, pos_start, layout,
            );
            let what = format!(
                "rope {} {layout:?} {head_dim}/{rotary_dim} tokens {tokens}",
                T::DTYPE
            );
            check_rel(&what, &got, &want, 2f64.powi(-23));
            let want_t = model::rope(&x, heads, head_dim, rotary_dim, &cs, &ss, pos_start, layout);
            check_narrowed(g, &what, &got, &want, &want_t);
            // Pass-through dims are copied bit for bit.
            for (i, (a, b)) in got.iter().zip(&xw).enumerate() {
                if i % head_dim >= rotary_dim {
                    assert_eq!(a.to_bits(), b.to_bits(), "{what}: element {i}");
                }
            }
        }
    }
}

#[test]
fn rope_matches_cpu() {
    let Some(b) = gpu() else { return };
    let mut r = rng("rope");
    each_dtype!(rope_case(b.gpu(), &mut r));
    // Too short a table, an odd rotary_dim: typed errors.
    let x = vec![0.0f32; 2 * 8];
    let (c, s) = cos_sin_table(&inv_freq(8, 1e4, None), 0..4);
    let dims = RopeDims {
        tokens: 2,
        heads: 1,
        head_dim: 8,
        rotary_dim: 8,
        pos_start: 3,
        layout: RopeLayout::Halves,
    };
    let err = gm::rope(b.gpu(), Floats::F32(&x), &dims, &c, &s).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    let dims = RopeDims {
        rotary_dim: 7,
        pos_start: 0,
        ..dims
    };
    let err = gm::rope(b.gpu(), Floats::F32(&x), &dims, &c, &s).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
}

// ---------------------------------------------------------------- element-wise

/// exp (WGSL allows 3 + 2|x| ulp) and the division (2.5 ulp) bound the GPU's element-wise error;
/// relative to max |y| over inputs of up to +-8 (+-100 for the overflow cases).
const ELEMENTWISE_TOL: f64 = 4e-6;

fn elementwise_case<T: Float>(g: &Gpu, r: &mut StdRng) {
    let dt = T::DTYPE;
    let mut a = uniform(r, 5000, 8.0);
    a.extend([
        0.0, -0.0, 88.0, -88.0, 89.0, -89.0, 100.0, -100.0, 1e-3, -1e-3,
    ]);
    let b = uniform(r, a.len(), 3.0);
    let (at, bt) = (to::<T>(&a), to::<T>(&b));
    let (aw, bw) = (wide(&at), wide(&bt));
    let (af, bf) = (floats(&at), floats(&bt));

    let got = gm::silu_mul(g, af.as_floats(), bf.as_floats()).unwrap();
    let want = model::silu_mul(&aw, &bw);
    check_rel(&format!("silu_mul {dt}"), &got, &want, ELEMENTWISE_TOL);
    check_narrowed(g, "silu_mul", &got, &want, &model::silu_mul(&at, &bt));

    let got = gm::add(g, af.as_floats(), bf.as_floats()).unwrap();
    let want = model::add(&aw, &bw);
    check_rel(&format!("add {dt}"), &got, &want, 0.0);
    check_narrowed(g, "add", &got, &want, &model::add(&at, &bt));

    for kind in [GeluKind::Tanh, GeluKind::Erf] {
        let got = gm::gelu(g, af.as_floats(), kind).unwrap();
        let want = model::gelu(&aw, kind);
        check_rel(&format!("gelu {kind:?} {dt}"), &got, &want, ELEMENTWISE_TOL);
        check_narrowed(g, "gelu", &got, &want, &model::gelu(&at, kind));
        // Where exp overflows the results are signed zeros, as on the CPU.
        for (i, &x) in aw.iter().enumerate() {
            if x <= -89.0 {
                assert_eq!(got[i].to_bits(), want[i].to_bits(), "gelu {kind:?} at {x}");
            }
        }
    }
}

#[test]
fn elementwise_ops_match_cpu() {
    let Some(b) = gpu() else { return };
    let mut r = rng("elementwise");
    each_dtype!(elementwise_case(b.gpu(), &mut r));
    let a = vec![1.0f32; 4];
    let h = vec![f16::ONE; 4];
    let err = gm::add(b.gpu(), Floats::F32(&a), Floats::F16(&h)).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    let err = gm::silu_mul(b.gpu(), Floats::F32(&a), Floats::F32(&a[..3])).unwrap_err();
    assert!(matches!(err, Error::Length { .. }), "{err}");
}

// ---------------------------------------------------------------- attention

/// Relative to max |y|: the GPU's exp, its tree sums and its online rescaling against the reference's
/// sequential sums with one global max; rounding errors of sums of n terms in two orders grow like
/// sqrt(n) eps (measured on lavapipe: 1e-6 at 1000 keys, 1e-5 at 32k keys).
fn attention_tol(kv_len: usize) -> f64 {
    4e-6 + 1e-6 * (kv_len as f64).sqrt()
}

#[allow(clippy::too_many_arguments)]
fn attention_case<T: Float>(
    g: &Gpu,
    r: &mut StdRng,
    n_heads: usize,
    n_kv: usize,
    hd: usize,
    nq: usize,
    kv_len: usize,
    pos_start: usize,
) {
    let capacity = kv_len + 2;
    let q = to::<T>(&uniform(r, nq * n_heads * hd, 2.0));
    let mut k = to::<T>(&uniform(r, capacity * n_kv * hd, 1.0));
    let mut v = to::<T>(&uniform(r, capacity * n_kv * hd, 1.0));
    // Rows past kv_len must never be read: NaN there would show.
    for x in k[kv_len * n_kv * hd..]
        .iter_mut()
        .chain(v[kv_len * n_kv * hd..].iter_mut())
    {
        *x = T::from_f32(f32::NAN);
    }
    let scale = 1.0 / (hd as f32).sqrt();
    let dims = AttentionDims {
        nq,
        n_heads,
        n_kv_heads: n_kv,
        head_dim: hd,
        kv_len,
        pos_start,
        scale,
    };
    let got = gm::attention(
        g,
        floats(&q).as_floats(),
        floats(&k).as_floats(),
        floats(&v).as_floats(),
        &dims,
    )
    .unwrap();
    let want = model::attention(
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
    let what = format!(
        "attention {} heads {n_heads}/{n_kv} hd {hd} nq {nq} kv_len {kv_len} pos {pos_start}",
        T::DTYPE
    );
    check_rel(&what, &got, &want, attention_tol(kv_len));
    let want_t = model::attention(&q, &k, &v, n_heads, n_kv, hd, kv_len, pos_start, scale);
    check_narrowed(g, &what, &got, &want, &want_t);
}

#[test]
fn attention_matches_cpu() {
    let Some(b) = gpu() else { return };
    let g = b.gpu();
    let mut r = rng("attention");
    for (n_heads, n_kv) in [(4, 4), (8, 2), (8, 1)] {
        // Decode at the last cache row; prefill of 7 rows after 5 cached ones.
        each_dtype!(attention_case(g, &mut r, n_heads, n_kv, 64, 1, 300, 299));
        each_dtype!(attention_case(g, &mut r, n_heads, n_kv, 128, 7, 12, 5));
    }
    // kv_len around the 256-key tiles, head_dim from 1 to the 256 maximum.
    for (kv_len, hd) in [(255, 32), (256, 16), (257, 256), (513, 1), (1000, 80)] {
        each_dtype!(attention_case(g, &mut r, 2, 1, hd, 1, kv_len, kv_len - 1));
    }
    // Prefill rows whose causal window crosses a tile boundary.
    each_dtype!(attention_case(g, &mut r, 4, 2, 64, 7, 260, 253));
}

#[test]
fn attention_long_context() {
    let Some(b) = gpu() else { return };
    let mut r = rng("attention_long");
    attention_case::<f16>(b.gpu(), &mut r, 2, 1, 64, 1, 32768 + 3, 32768 + 2);
}

#[test]
fn attention_rejects_bad_shapes() {
    let Some(b) = gpu() else { return };
    let g = b.gpu();
    let q = vec![0.0f32; 3 * 300];
    let kv = vec![0.0f32; 4 * 300];
    let dims = AttentionDims {
        nq: 1,
        n_heads: 3,
        n_kv_heads: 2,
        head_dim: 300,
        kv_len: 2,
        pos_start: 0,
        scale: 1.0,
    };
    for (d, what) in [
        (dims, "n_heads not a multiple of n_kv_heads"),
        (
            AttentionDims {
                n_kv_heads: 1,
                ..dims
            },
            "head_dim over 256",
        ),
    ] {
        let err =
            gm::attention(g, Floats::F32(&q), Floats::F32(&kv), Floats::F32(&kv), &d).unwrap_err();
        assert!(
            matches!(err, Error::InvalidArgument { .. }),
            "{what}: {err}"
        );
    }
    let dims = AttentionDims {
        n_heads: 3,
        n_kv_heads: 1,
        head_dim: 100,
        kv_len: 13,
        ..dims
    };
    let err = gm::attention(
        g,
        Floats::F32(&q[..300]),
        Floats::F32(&kv),
        Floats::F32(&kv),
        &dims,
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::Shape { .. }),
        "kv_len past the cache: {err}"
    );
}
