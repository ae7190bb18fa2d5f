//! The fast CPU kernels against the reference (the spec), on fresh random inputs every run: bytes identical
//! for quantizers, exact for integer kernels, float kernels within `1e-5·Σ|x·w|` plus output rounding.
//! Every check runs both on the detected instruction set and on the portable path.

mod common;

use half::{bf16, f16};
use lowbit::backend::cpu::fast::{self, Isa};
use lowbit::backend::cpu::{CpuBackend, ReferenceBackend};
use lowbit::backend::{Backend, Packed4bit, PackedTernary};
use lowbit::format::codebook::{FP4_THRESHOLDS, NF4_THRESHOLDS, dynamic_map};
use lowbit::format::ternary::pack;
use lowbit::format::{FourBitType, rcp_approx};
use lowbit::tensor::{DType, FloatVec, Floats};
use proptest::prelude::*;

const REF: ReferenceBackend = ReferenceBackend;

/// SplitMix64: a tiny seeded generator, so proptest's fresh seeds drive the data.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn i8(&mut self) -> i8 {
        self.next() as i8
    }
}

/// Random values at varied scales; with `specials`, also NaN, ±inf, ±0, subnormals, exact code values and
/// whole zero blocks.
fn values(rng: &mut Rng, n: usize, specials: bool) -> Vec<f32> {
    let scale = [1e-3f32, 1.0, 37.0][rng.below(3)];
    let mut v: Vec<f32> = (0..n).map(|_| rng.unit() * scale).collect();
    if specials && n > 0 {
        for _ in 0..(n / 50).max(1) {
            let i = rng.below(n);
            v[i] = [
                f32::NAN,
                f32::INFINITY,
                f32::NEG_INFINITY,
                0.0,
                -0.0,
                1e-40,
                -1e-39,
                0.5,
                -1.0,
                f32::MIN_POSITIVE,
            ][rng.below(10)];
        }
        if n > 64 && rng.below(2) == 0 {
            let s = rng.below(n - 64);
            v[s..s + 64].fill(0.0);
        }
    }
    v
}

/// Puts `1.0` at the start of every other block (so `rcp(absmax) = 1` when the rest is smaller) and `exact`
/// values elsewhere: values landing exactly on thresholds / midpoints test the tie rules.
fn plant(rng: &mut Rng, x: &mut [f32], bs: usize, exact: &[f32]) {
    for b in (0..x.len().div_ceil(bs)).step_by(2) {
        x[b * bs] = 1.0;
    }
    for _ in 0..x.len() / 10 {
        let i = rng.below(x.len());
        if !i.is_multiple_of(bs) {
            x[i] = exact[rng.below(exact.len())] * if rng.below(2) == 0 { 1.0 } else { -1.0 };
        }
    }
}

fn as_dtype(v: &[f32], d: DType) -> FloatVec {
    FloatVec::from_f32(v.to_vec(), d)
}

const FLOATS: [DType; 3] = [DType::F32, DType::F16, DType::BF16];
fn isas() -> Vec<Isa> {
    Isa::available()
}

fn bits(v: &FloatVec) -> Vec<u8> {
    v.to_le_bytes()
}

/// Output rounding of a value of magnitude `a` in dtype `d` (half an ulp, plus the subnormal step). For f32
/// this is the rounding of the final `dot + bias`, which dominates when the bias outweighs the dot product.
fn rounding(a: f32, d: DType) -> f32 {
    match d {
        DType::F16 => a * 2f32.powi(-11) + 6e-8,
        DType::BF16 => a * 2f32.powi(-8) + 1e-38,
        _ => a * 2f32.powi(-24),
    }
}

/// `|y - ref| <= 1e-5·Σ|x·w| + rounding` per output, with `sabs[i] = Σ|x·w|` in f64.
fn assert_close(y: &FloatVec, r: &FloatVec, sabs: &[f64], d: DType, what: &str) {
    let (y, r) = (y.to_f32_vec(), r.to_f32_vec());
    assert_eq!(y.len(), r.len(), "{what}: length");
    for i in 0..y.len() {
        let tol = 1e-5 * sabs[i] as f32 + 2.0 * rounding(r[i].abs(), d) + 1e-30;
        // Equal values pass outright: both may have overflowed an f16 output to the same infinity.
        assert!(
            y[i] == r[i] || (y[i] - r[i]).abs() <= tol,
            "{what}: output {i}: fast {} vs reference {} (tolerance {tol})",
            y[i],
            r[i]
        );
    }
}

fn quant_type(rng: &mut Rng) -> FourBitType {
    [FourBitType::Nf4, FourBitType::Fp4][rng.below(2)]
}

/// A random 4-bit weight `[rows, cols]` quantized by the reference.
struct Weight4 {
    packed: Vec<u8>,
    absmax: Vec<f32>,
    qt: FourBitType,
    bs: usize,
    dense: Vec<f32>,
}

fn weight4(rng: &mut Rng, rows: usize, cols: usize) -> Weight4 {
    let qt = quant_type(rng);
    let bs = [32, 64, 128, 256][rng.below(4)];
    let w = values(rng, rows * cols, false);
    let q = REF.quantize_4bit(Floats::F32(&w), qt, bs).unwrap();
    let dense = REF
        .dequantize_4bit(&q.codes, &q.absmax, qt, bs, rows * cols, DType::F32)
        .unwrap()
        .to_f32_vec();
    Weight4 {
        packed: q.codes,
        absmax: q.absmax,
        qt,
        bs,
        dense,
    }
}

fn abs_dots(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f64> {
    let mut s = vec![0.0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            s[i * n + j] = (0..k)
                .map(|t| (x[i * k + t] as f64 * w[j * k + t] as f64).abs())
                .sum();
        }
    }
    s
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn quantize_4bit_bytes_match(seed in any::<u64>(), n in 1usize..3000) {
        let mut rng = Rng(seed);
        let x = values(&mut rng, n, true);
        let qt = quant_type(&mut rng);
        let bs = [32, 64, 128, 256, 512, 4096][rng.below(6)];
        let mut x = x;
        let exact: Vec<f32> = NF4_THRESHOLDS.iter().chain(&FP4_THRESHOLDS).copied().collect();
        plant(&mut rng, &mut x, bs, &exact);
        for d in FLOATS {
            let xd = as_dtype(&x, d);
            let r = REF.quantize_4bit(xd.as_floats(), qt, bs).unwrap();
            for isa in isas() {
                let f = lowbit::with_floats!(xd.as_floats(), s => fast::quantize::quantize_4bit(s, qt, bs, isa));
                prop_assert_eq!(&f.codes, &r.codes, "{:?} {} {:?} bs {}", isa, qt, d, bs);
                let fb: Vec<u32> = f.absmax.iter().map(|v| v.to_bits()).collect();
                let rb: Vec<u32> = r.absmax.iter().map(|v| v.to_bits()).collect();
                prop_assert_eq!(fb, rb);
            }
            let f = CpuBackend.quantize_4bit(xd.as_floats(), qt, bs).unwrap();
            prop_assert_eq!(f, r);
        }
    }

    /// Int8 activations (`format::q8`): the VNNI kernels, the portable ones and the definitions give the
    /// same bits (the integer sums are exact; the float steps are the same operations in the same order):
    /// Q8 weights one row at a time, 4-bit weights in the lanes layout for one row and for three.
    #[test]
    fn int8_activation_gemvs_match_their_definition(seed in any::<u64>(), rows in 1usize..80, blocks in 1usize..12) {
        use lowbit::format::q8::{self, Q8Activations, Q8Weight};
        let mut rng = Rng(seed);
        let cols = 64 * blocks;
        let x = values(&mut rng, cols, true);
        let bias = values(&mut rng, rows, false);
        let mut w = weight4(&mut rng, rows, cols);
        if w.bs == 32 {
            w.bs = 64;
            w.absmax.truncate((rows * cols).div_ceil(64));
        }
        let lanes = q8::Q4Lanes::from_4bit(&w.packed, &w.absmax, w.qt, w.bs, rows, cols);
        let view = fast::q4_lanes::LanesView { packed: &lanes.packed, scales: &lanes.scales, quant_type: w.qt, rows, cols };
        let table = q8::codebook_u8(w.qt.dequant_table());
        let mut x3 = x.clone();
        x3.extend(values(&mut rng, 2 * cols, true));
        let want4: Vec<f32> = x3.chunks_exact(cols).flat_map(|xr| {
            let a = Q8Activations::quantize(xr);
            let xs = q8::fourbit_xscales(&a);
            (0..rows).map(|r| {
                let code = |e: usize| table[lowbit::format::fourbit::nibble(&w.packed, r * cols + e) as usize];
                q8::dot_blocks_reference(code, |b| w.absmax[(r * cols + 64 * b) / w.bs] * xs[b], &a) + bias[r]
            }).collect::<Vec<f32>>()
        }).collect();
        let qx = Q8Activations::quantize(&x);
        let dense = Q8Weight::quantize(&w.dense, rows, cols);
        let want_q8: Vec<f32> = (0..rows).map(|r| {
            let c = &dense.codes[r * cols..(r + 1) * cols];
            let code = |e: usize| c[q8::position(e)];
            q8::dot_reference(code, |b| dense.scales[r * blocks + b] * qx.scale[b], &qx) + bias[r]
        }).collect();
        let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(u, v)| u.to_bits() == v.to_bits() || (u.is_nan() && v.is_nan()));
        for vnni in [false, fast::q8::has_vnni()] {
            let got = fast::q4_lanes::linear(&x, 1, view, Some(&bias), vnni);
            prop_assert!(same(&got, &want4[..rows]), "4-bit {} bs {} vnni {}", w.qt, w.bs, vnni);
            let got = fast::q4_lanes::linear(&x3, 3, view, Some(&bias), vnni);
            prop_assert!(same(&got, &want4), "4-bit, 3 rows, {} bs {} vnni {}", w.qt, w.bs, vnni);
            let got = fast::q8::gemv_q8(&x, &dense.codes, &dense.scales, rows, cols, Some(&bias), vnni);
            prop_assert!(same(&got, &want_q8), "q8 vnni {}", vnni);
        }
    }

    #[test]
    fn dequantize_4bit_bits_match(seed in any::<u64>(), n in 1usize..3000) {
        let mut rng = Rng(seed);
        let qt = quant_type(&mut rng);
        let bs = [32, 64, 128, 256][rng.below(4)];
        let packed: Vec<u8> = (0..n.div_ceil(2)).map(|_| rng.next() as u8).collect();
        let mut absmax = values(&mut rng, n.div_ceil(bs), false);
        // Tiny scales exercise the FTZ of the products.
        absmax[0] = 1e-38;
        for d in FLOATS {
            let r = REF.dequantize_4bit(&packed, &absmax, qt, bs, n, d).unwrap();
            for isa in isas() {
                let f = fast::quantize::dequantize_4bit(&packed, &absmax, qt, bs, n, d, isa);
                prop_assert_eq!(bits(&f), bits(&r), "{:?} {} {:?}", isa, qt, d);
            }
        }
    }

    #[test]
    fn blockwise_8bit_matches(seed in any::<u64>(), n in 1usize..3000) {
        let mut rng = Rng(seed);
        let code = dynamic_map(rng.below(2) == 0);
        let bs = [64, 128, 256, 4096][rng.below(4)];
        let mut x = values(&mut rng, n, true);
        plant(&mut rng, &mut x, bs, &code.midpoints);
        for d in FLOATS {
            let xd = as_dtype(&x, d);
            let r = REF.quantize_blockwise(xd.as_floats(), code, bs).unwrap();
            for isa in isas() {
                let f = lowbit::with_floats!(xd.as_floats(), s => fast::quantize::quantize_blockwise(s, code, bs, isa));
                prop_assert_eq!(&f, &r, "{:?} {:?}", isa, d);
            }
            let o = REF.dequantize_blockwise(&r.codes, &r.absmax, code, bs, d).unwrap();
            let f = CpuBackend.dequantize_blockwise(&r.codes, &r.absmax, code, bs, d).unwrap();
            prop_assert_eq!(bits(&f), bits(&o));
        }
    }

    #[test]
    fn gemv_4bit_close(seed in any::<u64>(), rows in 1usize..40, cols_units in 1usize..40, odd in any::<bool>()) {
        let mut rng = Rng(seed);
        // Multiples of 32 and 16 reach the SIMD row kernels, the rest the portable one.
        let cols = cols_units * 16 + if odd { rng.below(16) } else { 0 };
        let w = weight4(&mut rng, rows, cols);
        let x = values(&mut rng, cols, false);
        let bias = values(&mut rng, rows, false);
        let sabs = abs_dots(&x, &w.dense, 1, rows, cols);
        let pw = Packed4bit { packed: &w.packed, absmax: &w.absmax, quant_type: w.qt, blocksize: w.bs, rows, cols };
        for d in FLOATS {
            let xd = as_dtype(&x, d);
            let bd = as_dtype(&bias, d);
            let b = (rng.below(2) == 0).then(|| bd.as_floats());
            let r = REF.gemv_4bit(xd.as_floats(), pw, b).unwrap();
            for isa in isas() {
                let f = fast::gemv4::gemv(xd.as_floats(), pw, b, isa);
                assert_close(&f, &r, &sabs, d, &format!("gemv {isa:?} {d:?} {rows}x{cols} bs {}", w.bs));
            }
        }
    }

    #[test]
    fn matmul_4bit_and_dense_close(seed in any::<u64>(), batch in 2usize..15, rows in 1usize..40, cols in 1usize..300) {
        let mut rng = Rng(seed);
        let w = weight4(&mut rng, rows, cols);
        let x = values(&mut rng, batch * cols, false);
        let bias = values(&mut rng, rows, false);
        let sabs = abs_dots(&x, &w.dense, batch, rows, cols);
        let pw = Packed4bit { packed: &w.packed, absmax: &w.absmax, quant_type: w.qt, blocksize: w.bs, rows, cols };
        for d in FLOATS {
            let xd = as_dtype(&x, d);
            let bd = as_dtype(&bias, d);
            let b = (rng.below(2) == 0).then(|| bd.as_floats());
            let r = REF.matmul_4bit(xd.as_floats(), batch, pw, b).unwrap();
            let wd = as_dtype(&w.dense, d);
            let sabs_d = abs_dots(&x, &wd.to_f32_vec(), batch, rows, cols);
            let rd = REF.matmul(xd.as_floats(), wd.as_floats(), b, batch, rows, cols).unwrap();
            for isa in isas() {
                let f = fast::gemm::matmul_4bit(xd.as_floats(), batch, pw, b, isa);
                assert_close(&f, &r, &sabs, d, &format!("matmul_4bit {isa:?} {d:?}"));
                let f = fast::gemm::matmul(xd.as_floats(), wd.as_floats(), b, batch, rows, cols, isa);
                assert_close(&f, &rd, &sabs_d, d, &format!("matmul {isa:?} {d:?}"));
            }
        }
    }

    #[test]
    fn ternary_matmul_exact(seed in any::<u64>(), batch in 1usize..5, rows in 1usize..30, cols in 1usize..200) {
        let mut rng = Rng(seed);
        let t: Vec<i8> = (0..rows * cols).map(|_| rng.below(3) as i8 - 1).collect();
        let packed = pack(&t, rows, cols);
        let xq: Vec<i8> = (0..batch * cols).map(|_| rng.i8()).collect();
        let x_scale: Vec<f32> = (0..batch).map(|_| rng.unit().abs() * 100.0 + 0.5).collect();
        let bias = values(&mut rng, rows, false);
        let w = PackedTernary { packed: &packed, weight_scale: 1.0 + rng.unit().abs(), rows, cols };
        let b = (rng.below(2) == 0).then_some(Floats::F32(&bias));
        let r = REF.ternary_matmul(&xq, &x_scale, batch, w, b).unwrap();
        for isa in isas() {
            let f = fast::ternary::matmul(&xq, &x_scale, batch, w, b, isa);
            let fb: Vec<u32> = f.iter().map(|v| v.to_bits()).collect();
            let rb: Vec<u32> = r.iter().map(|v| v.to_bits()).collect();
            prop_assert_eq!(fb, rb, "{:?}", isa);
        }
    }

    #[test]
    fn int8_linear_matmul_exact(seed in any::<u64>(), m in 1usize..12, n in 1usize..30, k in 1usize..300) {
        let mut rng = Rng(seed);
        // Extremes included: -128 · -128 pairs overflow i16 pair sums in naive kernels.
        let draw = |rng: &mut Rng| if rng.below(8) == 0 { -128 } else { rng.i8() };
        let a: Vec<i8> = (0..m * k).map(|_| draw(&mut rng)).collect();
        let b: Vec<i8> = (0..n * k).map(|_| draw(&mut rng)).collect();
        let r = REF.int8_linear_matmul(&a, &b, m, n, k).unwrap();
        for isa in isas() {
            prop_assert_eq!(&fast::int8::linear_matmul(&a, &b, m, n, k, isa), &r, "{:?}", isa);
        }
    }
}

#[test]
fn detected_isa_is_reported() {
    let isa = CpuBackend::isa();
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        assert!(isa.has_avx2());
    }
    let _ = (isa, rcp_approx(1.0), bf16::ONE, f16::ONE);
}

#[test]
fn int8_all_minus_128_is_exact() {
    let k = 64;
    let a = vec![-128i8; k];
    let c = fast::int8::linear_matmul(&a, &a, 1, 1, k, fast::isa());
    assert_eq!(c, vec![128 * 128 * k as i32]);
}

/// Split invariance: for every row count 1-32, each row of the multi-row 4-bit GEMV is byte for byte the
/// batch-1 GEMV of that row alone, on every instruction set, so the runtime may split a batch anywhere; the
/// backend's choice of kernel by row count likewise. Block sizes 32-4096 (blocks crossing weight rows), and
/// columns for every kernel path: multiples of 32 (AVX-512), odd multiples of 16 (AVX2), others (portable),
/// and more than one 512-column slice.
#[test]
fn gemv4_rows_match_the_gemv_row_by_row_bit_for_bit() {
    let mut rng = Rng(common::seed("gemv4_rows_bits"));
    for batch in 1..=32usize {
        let qt = [FourBitType::Nf4, FourBitType::Fp4][batch % 2];
        let bs = [32, 64, 128, 4096][rng.below(4)];
        let d = FLOATS[rng.below(3)];
        let (rows, cols) = match batch % 4 {
            // Several rayon tasks (at least 256 KiB of weight each) and several column slices.
            0 if batch % 8 == 0 => (300 + rng.below(40), 4096),
            0 => (1 + rng.below(24), 32 * (1 + rng.below(40))),
            1 => (1 + rng.below(24), 16 * (2 * rng.below(40) + 1)),
            2 => (1 + rng.below(24), 1 + rng.below(700)),
            _ => (
                1 + rng.below(24),
                32 * (17 + rng.below(30)) + 16 * rng.below(2),
            ),
        };
        let w = values(&mut rng, rows * cols, false);
        let q = REF.quantize_4bit(Floats::F32(&w), qt, bs).unwrap();
        let dense = REF
            .dequantize_4bit(&q.codes, &q.absmax, qt, bs, rows * cols, DType::F32)
            .unwrap()
            .to_f32_vec();
        let pw = Packed4bit {
            packed: &q.codes,
            absmax: &q.absmax,
            quant_type: qt,
            blocksize: bs,
            rows,
            cols,
        };
        let x = values(&mut rng, batch * cols, false);
        let bias = values(&mut rng, rows, false);
        let (xd, bd) = (as_dtype(&x, d), as_dtype(&bias, d));
        let b = (rng.below(2) == 0).then(|| bd.as_floats());
        let what = format!("{qt} {d:?} batch {batch} {rows}x{cols} bs {bs}");
        let xrow = |i: usize| xd.as_floats().slice(i * cols..(i + 1) * cols);
        let by_rows = |f: &dyn Fn(Floats) -> FloatVec| {
            (0..batch)
                .flat_map(|i| bits(&f(xrow(i))))
                .collect::<Vec<u8>>()
        };
        for isa in isas() {
            let want = by_rows(&|xi| fast::gemv4::gemv(xi, pw, b, isa));
            let got = fast::gemv_rows::matmul_4bit(xd.as_floats(), batch, pw, b, isa);
            assert_eq!(bits(&got), want, "{what} {isa:?}");
        }
        let want = by_rows(&|xi| CpuBackend.matmul_4bit(xi, 1, pw, b).unwrap());
        let got = CpuBackend
            .matmul_4bit(xd.as_floats(), batch, pw, b)
            .unwrap();
        if fast::gemv_rows::pick_linear_path(fast::gemv_rows::WeightKind::FourBit, batch)
            != fast::gemv_rows::LinearPath::Gemm
        {
            assert_eq!(bits(&got), want, "{what} backend");
        }
        let r = REF.matmul_4bit(xd.as_floats(), batch, pw, b).unwrap();
        let sabs = abs_dots(&x, &dense, batch, rows, cols);
        assert_close(&got, &r, &sabs, d, &format!("{what} backend"));
    }
}

/// The multi-row GEMV kernels (4-bit, int8, ternary) for every row count 1-32 against the reference, on every
/// instruction set, and the backend's choice of kernel by row count likewise. Shapes cover column slices
/// (> 1024 columns), partial weight-row tiles, several rayon tasks, and columns the SIMD kernels cannot take.
#[test]
fn gemv_rows_match_reference_for_every_row_count() {
    let mut rng = Rng(common::seed("gemv_rows"));
    for batch in 1..=32usize {
        let d = FLOATS[batch % 3];
        let (rows, cols) = match rng.below(3) {
            // Several rayon tasks (at least 256 KiB of weight each).
            _ if batch % 8 == 0 => (300 + rng.below(40), 4096),
            0 => (1 + rng.below(40), 16 * (1 + rng.below(40)) + rng.below(16)),
            1 => (1 + rng.below(20), 16 * (60 + rng.below(100))),
            _ => (1 + rng.below(40), 1 + rng.below(300)),
        };
        let w = weight4(&mut rng, rows, cols);
        let x = values(&mut rng, batch * cols, false);
        let bias = values(&mut rng, rows, false);
        let sabs = abs_dots(&x, &w.dense, batch, rows, cols);
        let pw = Packed4bit {
            packed: &w.packed,
            absmax: &w.absmax,
            quant_type: w.qt,
            blocksize: w.bs,
            rows,
            cols,
        };
        let xd = as_dtype(&x, d);
        let bd = as_dtype(&bias, d);
        let b = (rng.below(2) == 0).then(|| bd.as_floats());
        let what = format!(
            "4-bit {} {d:?} batch {batch} {rows}x{cols} bs {}",
            w.qt, w.bs
        );
        let r = REF.matmul_4bit(xd.as_floats(), batch, pw, b).unwrap();
        for isa in isas() {
            let f = fast::gemv_rows::matmul_4bit(xd.as_floats(), batch, pw, b, isa);
            assert_close(&f, &r, &sabs, d, &format!("{what} {isa:?}"));
        }
        let f = CpuBackend
            .matmul_4bit(xd.as_floats(), batch, pw, b)
            .unwrap();
        assert_close(&f, &r, &sabs, d, &format!("{what} backend"));

        // int8: extremes included (-128 · -128 pairs).
        let draw = |rng: &mut Rng| if rng.below(8) == 0 { -128 } else { rng.i8() };
        let a: Vec<i8> = (0..batch * cols).map(|_| draw(&mut rng)).collect();
        let wb: Vec<i8> = (0..rows * cols).map(|_| draw(&mut rng)).collect();
        let r = REF.int8_linear_matmul(&a, &wb, batch, rows, cols).unwrap();
        for isa in isas() {
            let f = fast::gemv_rows::int8_linear_matmul(&a, &wb, batch, rows, cols, isa);
            assert_eq!(f, r, "int8 batch {batch} {rows}x{cols} {isa:?}");
        }
        let f = CpuBackend
            .int8_linear_matmul(&a, &wb, batch, rows, cols)
            .unwrap();
        assert_eq!(f, r, "int8 batch {batch} {rows}x{cols} backend");

        let t: Vec<i8> = (0..rows * cols).map(|_| rng.below(3) as i8 - 1).collect();
        let packed = pack(&t, rows, cols);
        let x_scale: Vec<f32> = (0..batch).map(|_| rng.unit().abs() * 100.0 + 0.5).collect();
        let pt = PackedTernary {
            packed: &packed,
            weight_scale: 1.0 + rng.unit().abs(),
            rows,
            cols,
        };
        let tb = (rng.below(2) == 0).then_some(Floats::F32(&bias));
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let r = REF.ternary_matmul(&a, &x_scale, batch, pt, tb).unwrap();
        for isa in isas() {
            let f = fast::gemv_rows::ternary_matmul(&a, &x_scale, batch, pt, tb, isa);
            assert_eq!(
                bits(&f),
                bits(&r),
                "ternary batch {batch} {rows}x{cols} {isa:?}"
            );
        }
        let f = CpuBackend
            .ternary_matmul(&a, &x_scale, batch, pt, tb)
            .unwrap();
        assert_eq!(
            bits(&f),
            bits(&r),
            "ternary batch {batch} {rows}x{cols} backend"
        );
    }
}

/// Widening f16/bf16 to f32 on every instruction set gives `half`'s bits for every one of the 65536 bit
/// patterns (NaNs quieted with their payload), at every offset of a SIMD group (spans start at 0..=16).
#[test]
fn widen_span_matches_half_for_every_bit_pattern() {
    let all: Vec<u16> = (0..=u16::MAX).collect();
    let as_bf16: Vec<bf16> = all.iter().map(|&b| bf16::from_bits(b)).collect();
    let as_f16: Vec<f16> = all.iter().map(|&b| f16::from_bits(b)).collect();
    for isa in isas() {
        for start in 0..=16usize {
            let len = all.len() - start;
            let mut out = vec![0.0f32; len];
            fast::widen::widen_span(Floats::BF16(&as_bf16), start, &mut out, isa);
            for (t, o) in out.iter().enumerate() {
                let want = as_bf16[start + t].to_f32().to_bits();
                assert_eq!(o.to_bits(), want, "bf16 {:#06x} {isa:?}", start + t);
            }
            fast::widen::widen_span(Floats::F16(&as_f16), start, &mut out, isa);
            for (t, o) in out.iter().enumerate() {
                let want = as_f16[start + t].to_f32().to_bits();
                assert_eq!(o.to_bits(), want, "f16 {:#06x} {isa:?}", start + t);
            }
        }
    }
}

/// The dense GEMM on an f16/bf16 weight (widened slice by slice as it is packed) gives bit for bit what it
/// gives on the same weight widened to f32 first, on every instruction set, for x in every float dtype, with
/// and without bias; batch 1 and several rows, ragged row and column tails (not multiples of the 16-wide
/// panels or SIMD groups), and more than one 256-deep slice.
#[test]
fn dense_matmul_half_weight_equals_its_f32_widening_bit_for_bit() {
    let mut rng = Rng(common::seed("dense_half_weight"));
    for case in 0..24usize {
        let m = [1, 1, 2, 3, 7, 12, 13, 33][case % 8];
        let n = 1 + rng.below(70);
        let k = [
            1 + rng.below(40),
            16 * (1 + rng.below(20)) + rng.below(16),
            513 + rng.below(300),
        ][case % 3];
        let wd = [DType::F16, DType::BF16][case % 2];
        let xd = FLOATS[rng.below(3)];
        let w = as_dtype(&values(&mut rng, n * k, case % 5 == 4), wd);
        let w32 = w.to_f32_vec();
        let x = as_dtype(&values(&mut rng, m * k, false), xd);
        let bias = as_dtype(&values(&mut rng, n, false), FLOATS[rng.below(3)]);
        let b = (case % 4 < 2).then(|| bias.as_floats());
        for isa in isas() {
            let got = fast::gemm::matmul(x.as_floats(), w.as_floats(), b, m, n, k, isa);
            let want = fast::gemm::matmul(x.as_floats(), Floats::F32(&w32), b, m, n, k, isa);
            assert_eq!(
                bits(&got),
                bits(&want),
                "{wd:?} w, {xd:?} x, {m}x{n}x{k} bias {} {isa:?}",
                b.is_some()
            );
        }
        // The backend's entry point (what Op::Linear runs) takes the same path.
        let got = CpuBackend
            .matmul(x.as_floats(), w.as_floats(), b, m, n, k)
            .unwrap();
        let want = CpuBackend
            .matmul(x.as_floats(), Floats::F32(&w32), b, m, n, k)
            .unwrap();
        assert_eq!(bits(&got), bits(&want), "{wd:?} w backend {m}x{n}x{k}");
    }
}
