//! Property tests on random inputs (proptest draws a fresh seed every run): round-trip error bounds, fused
//! kernels against dequantize-then-multiply, float ops against float64 references, exact integer kernels.

use half::{bf16, f16};
use lowbit::Device;
use lowbit::format::codebook::{FP4_DEQUANT, NF4_CODE};
use lowbit::format::quant_state::QuantStateJson;
use lowbit::format::{Absmax, BLOCKSIZES_4BIT, BLOCKSIZES_8BIT, FourBitType, dynamic_map};
use lowbit::ops::{BitLinear, TernaryWeight};
use lowbit::tensor::{DType, FloatVec, Tensor, TensorData};
use proptest::prelude::*;

fn dtype_strategy() -> impl Strategy<Value = DType> {
    prop_oneof![Just(DType::F32), Just(DType::F16), Just(DType::BF16)]
}

/// Values spread over several magnitudes, with some exact zeros inside blocks (never all zeros).
fn values(n: std::ops::Range<usize>) -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(
        prop_oneof![8 => -4.0f32..4.0, 1 => -1000.0f32..1000.0, 1 => Just(0.0f32)],
        n,
    )
}

fn tensor(v: &[f32], dtype: DType) -> Tensor {
    Tensor::from_floats(vec![v.len()], FloatVec::from_f32(v.to_vec(), dtype)).unwrap()
}

/// The input as the kernels see it (after narrowing to `dtype`).
fn seen(v: &[f32], dtype: DType) -> Vec<f32> {
    tensor(v, dtype).floats("t").unwrap().to_f32_vec()
}

/// Half of the widest gap between neighbouring codes: the worst rounding of a nearest-code quantizer.
fn half_gap(code: &[f32]) -> f32 {
    let mut c = code.to_vec();
    c.sort_by(f32::total_cmp);
    c.windows(2).map(|w| w[1] - w[0]).fold(0.0, f32::max) / 2.0
}

/// Output rounding of a value in `dtype`.
fn out_ulp(y: f32, dtype: DType) -> f32 {
    match dtype {
        DType::BF16 => y.abs() * 2f32.powi(-8),
        DType::F16 => y.abs() * 2f32.powi(-11) + 6e-8,
        _ => y.abs() * 2f32.powi(-24),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn fourbit_round_trip_within_half_a_code_gap(
        v in values(1..3000), bs_i in 0..BLOCKSIZES_4BIT.len(), dtype in dtype_strategy(), fp4 in any::<bool>(),
        dq in any::<bool>(),
    ) {
        let dev = Device::cpu();
        let bs = BLOCKSIZES_4BIT[bs_i];
        let qt = if fp4 { FourBitType::Fp4 } else { FourBitType::Nf4 };
        let x = seen(&v, dtype);
        let q = dev.quantize_4bit(&tensor(&v, dtype), qt, bs, dq).unwrap();
        prop_assert_eq!(q.packed.len(), v.len().div_ceil(2));
        let y = dev.dequantize_4bit(&q).unwrap().floats("t").unwrap().to_f32_vec();
        // The block scale the dequantizer uses (A') and the true block absmax (A).
        let used = q.state.absmax.to_f32();
        let truth: Vec<f32> = x.chunks(bs).map(|c| c.iter().fold(0.0f32, |m, v| m.max(v.abs()))).collect();
        if let Absmax::Nested { nested_absmax, .. } = &q.state.absmax {
            // Double quant: |A' - A| is within half a dynamic-code gap of the nested block's scale.
            let hg8 = half_gap(&dynamic_map(true).values);
            for (j, (&a2, &a)) in used.iter().zip(&truth).enumerate() {
                let bound = nested_absmax[j / 256] * (hg8 + 1e-6) + a.abs() * 1e-6;
                prop_assert!((a2 - a).abs() <= bound, "block {} A'={} A={} bound={}", j, a2, a, bound);
            }
        }
        let table: &[f32] = if fp4 { &FP4_DEQUANT } else { &NF4_CODE };
        for (i, (&a, &b)) in x.iter().zip(&y).enumerate() {
            let (am, am_used) = (truth[i / bs], used[i / bs]);
            let bound = am * (half_gap(table) + 1e-5) + (am_used - am).abs() + out_ulp(b, dtype);
            prop_assert!((a - b).abs() <= bound, "i={} x={} y={} bound={}", i, a, b, bound);
        }
    }

    #[test]
    fn blockwise_round_trip_within_half_a_code_gap(
        v in values(1..5000), bs_i in 0..BLOCKSIZES_8BIT.len(), dtype in dtype_strategy(),
    ) {
        let dev = Device::cpu();
        let bs = BLOCKSIZES_8BIT[bs_i];
        let x = seen(&v, dtype);
        let q = dev.quantize_blockwise(&tensor(&v, dtype), bs, None).unwrap();
        let y = dev.dequantize_blockwise(&q, None).unwrap().floats("t").unwrap().to_f32_vec();
        let hg = half_gap(&dynamic_map(true).values);
        for (i, (&a, &b)) in x.iter().zip(&y).enumerate() {
            let bound = q.absmax[i / bs] * (hg + 1e-6) + out_ulp(b, dtype);
            prop_assert!((a - b).abs() <= bound, "i={} x={} y={}", i, a, b);
        }
    }

    #[test]
    fn fused_4bit_matches_dequantize_then_multiply(
        rows in 1usize..40, cols in 1usize..300, batch in 1usize..5, bs_i in 0..BLOCKSIZES_4BIT.len(),
        dtype in dtype_strategy(), fp4 in any::<bool>(), seed in any::<u64>(), with_bias in any::<bool>(),
    ) {
        let dev = Device::cpu();
        let qt = if fp4 { FourBitType::Fp4 } else { FourBitType::Nf4 };
        let w = lowbit::synth::normal(vec![rows, cols], 0.05, seed, dtype);
        let x = lowbit::synth::normal(vec![batch, cols], 1.0, seed ^ 1, dtype);
        let bias = lowbit::synth::normal(vec![rows], 0.1, seed ^ 2, dtype);
        let q = dev.quantize_4bit(&w, qt, BLOCKSIZES_4BIT[bs_i], false).unwrap();
        let y = dev.matmul_4bit(&x, &q, with_bias.then_some(&bias)).unwrap();
        prop_assert_eq!(y.shape(), &[batch, rows][..]);
        let y = y.floats("t").unwrap().to_f32_vec();
        let wd = dev.dequantize_4bit_as(&q, DType::F32).unwrap().floats("t").unwrap().to_f32_vec();
        let (xf, bf) = (x.floats("t").unwrap().to_f32_vec(), bias.floats("t").unwrap().to_f32_vec());
        for b in 0..batch {
            for r in 0..rows {
                let (mut exact, mut mag) = (0.0f64, 0.0f64);
                for k in 0..cols {
                    let p = xf[b * cols + k] as f64 * wd[r * cols + k] as f64;
                    exact += p;
                    mag += p.abs();
                }
                if with_bias { exact += bf[r] as f64; mag += (bf[r] as f64).abs(); }
                let got = y[b * rows + r];
                // f32 accumulation: |y - y64| <= 1e-5 * sum|x w|, plus the output dtype's rounding.
                let bound = 1e-5 * mag + out_ulp(exact as f32, dtype) as f64 + 1e-30;
                prop_assert!((got as f64 - exact).abs() <= bound, "b={} r={} got={} exact={}", b, r, got, exact);
            }
        }
    }

    #[test]
    fn dense_ops_match_float64(
        m in 1usize..6, n in 1usize..40, k in 1usize..300, seed in any::<u64>(), dtype in dtype_strategy(),
    ) {
        let dev = Device::cpu();
        let x = lowbit::synth::normal(vec![m, k], 1.0, seed, dtype);
        let w = lowbit::synth::normal(vec![n, k], 0.1, seed ^ 7, dtype);
        let (xf, wf) = (x.floats("t").unwrap().to_f32_vec(), w.floats("t").unwrap().to_f32_vec());
        let y = dev.matmul(&x, &w, None).unwrap().floats("t").unwrap().to_f32_vec();
        for i in 0..m {
            for j in 0..n {
                let (mut e, mut a) = (0.0f64, 0.0f64);
                for t in 0..k {
                    let p = xf[i * k + t] as f64 * wf[j * k + t] as f64;
                    e += p;
                    a += p.abs();
                }
                prop_assert!((y[i * n + j] as f64 - e).abs() <= 1e-5 * a + out_ulp(e as f32, dtype) as f64 + 1e-30);
            }
        }
        // softmax and RMSNorm per row against float64.
        let s = dev.softmax(&x).unwrap().floats("t").unwrap().to_f32_vec();
        let g = lowbit::synth::normal(vec![k], 1.0, seed ^ 9, DType::F32);
        let gf = g.floats("t").unwrap().to_f32_vec();
        let r = dev.rms_norm(&x, &g, 1e-6).unwrap().floats("t").unwrap().to_f32_vec();
        for i in 0..m {
            let row = &xf[i * k..(i + 1) * k];
            let max = row.iter().fold(f64::NEG_INFINITY, |a, &v| a.max(v as f64));
            let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
            let ms = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / k as f64;
            for t in 0..k {
                let e = (row[t] as f64 - max).exp() / sum;
                prop_assert!((s[i * k + t] as f64 - e).abs() <= 1e-6 * e + out_ulp(e as f32, dtype) as f64 + 1e-12);
                let e = row[t] as f64 / (ms + 1e-6).sqrt() * gf[t] as f64;
                prop_assert!((r[i * k + t] as f64 - e).abs() <= 1e-5 * e.abs() + out_ulp(e as f32, dtype) as f64 + 1e-12);
            }
        }
    }

    #[test]
    fn int8_kernels_are_exact(m in 1usize..8, n in 1usize..30, k in 1usize..200, seed in any::<u64>()) {
        let dev = Device::cpu();
        let mut rng = lowbit::synth::SplitMix64::new(seed);
        let a: Vec<i8> = (0..m * k).map(|_| rng.next_u64() as i8).collect();
        let b: Vec<i8> = (0..n * k).map(|_| rng.next_u64() as i8).collect();
        let at = Tensor::new(vec![m, k], a.clone()).unwrap();
        let bt = Tensor::new(vec![n, k], b.clone()).unwrap();
        let c = dev.int8_linear_matmul(&at, &bt).unwrap();
        let TensorData::I32(c) = c.into_parts().1 else { panic!("i32 expected") };
        for i in 0..m {
            for j in 0..n {
                let e: i64 = (0..k).map(|t| a[i * k + t] as i64 * b[j * k + t] as i64).sum();
                prop_assert_eq!(c[i * n + j] as i64, e);
            }
        }
    }

    #[test]
    fn int8_vectorwise_round_trip(rows in 1usize..8, cols in 1usize..200, seed in any::<u64>(), t in prop_oneof![Just(0.0f32), Just(2.0f32)]) {
        let dev = Device::cpu();
        let a = lowbit::synth::normal(vec![rows, cols], 1.0, seed, DType::F16);
        let af = a.floats("t").unwrap().to_f32_vec();
        let q = dev.int8_vectorwise_quant(&a, t).unwrap();
        let qt = Tensor::new(vec![rows, cols], q.q.clone()).unwrap();
        let y = dev.int8_vectorwise_dequant(&qt, &q.row_stats).unwrap().floats("t").unwrap().to_f32_vec();
        let outlier_cols = q.outlier_cols.clone().unwrap_or_default();
        for r in 0..rows {
            for c in 0..cols {
                let v = af[r * cols + c];
                let is_out = t > 0.0 && (v.abs() >= t || (rows > 1 && outlier_cols.contains(&(c as i64))));
                if is_out {
                    prop_assert_eq!(q.q[r * cols + c], 0);
                } else {
                    prop_assert!((v - y[r * cols + c]).abs() <= q.row_stats[r] / 127.0 * 0.5001 + 1e-6);
                }
            }
        }
    }

    #[test]
    fn ternary_pack_and_matmul_are_exact(rows in 1usize..33, cols in 1usize..100, batch in 1usize..4, seed in any::<u64>()) {
        let dev = Device::cpu();
        let w = lowbit::synth::normal(vec![rows, cols], 0.02, seed, DType::F32);
        let t = dev.ternary_quantize(&w).unwrap();
        let tern = lowbit::format::ternary::unpack(&t.packed, rows, cols);
        let wf = w.floats("t").unwrap().to_f32_vec();
        for (i, &tv) in tern.iter().enumerate() {
            prop_assert_eq!(tv, lowbit::format::ternary::ternarize(wf[i], t.weight_scale));
        }
        prop_assert_eq!(lowbit::format::ternary::pack(&tern, rows, cols), t.packed.clone());
        let x = lowbit::synth::normal(vec![batch, cols], 1.0, seed ^ 3, DType::F32);
        let (xq, xs) = dev.ternary_act_quant(&x).unwrap();
        let layer = BitLinear { weight: TernaryWeight { ..t.clone() }, bias: None };
        let y = dev.bitlinear(&x, &layer).unwrap().floats("t").unwrap().to_f32_vec();
        for b in 0..batch {
            for r in 0..rows {
                let acc: i64 = (0..cols).map(|k| xq[b * cols + k] as i64 * tern[r * cols + k] as i64).sum();
                let e = acc as f64 / (xs[b] as f64 * t.weight_scale as f64);
                prop_assert!((y[b * rows + r] as f64 - e).abs() <= 2e-7 * e.abs() + 1e-30);
            }
        }
    }

    #[test]
    fn quant_state_json_round_trips(v in values(1..2000), bs_i in 0..BLOCKSIZES_4BIT.len(), dq in any::<bool>()) {
        let dev = Device::cpu();
        let q = dev.quantize_4bit(&tensor(&v, DType::BF16), FourBitType::Nf4, BLOCKSIZES_4BIT[bs_i], dq).unwrap();
        let parsed = QuantStateJson::parse(q.state.to_json().as_bytes()).unwrap();
        prop_assert_eq!(parsed.blocksize, q.state.blocksize);
        prop_assert_eq!(parsed.dtype, DType::BF16);
        prop_assert_eq!(&parsed.shape, &q.state.shape);
        match &q.state.absmax {
            Absmax::Nested { offset, .. } => prop_assert_eq!(parsed.nested_offset.map(f32::to_bits), Some(offset.to_bits())),
            Absmax::Plain(_) => prop_assert_eq!(parsed.nested_offset, None),
        }
    }
}

#[test]
fn half_and_bf16_inputs_are_widened_exactly() {
    // The same values given as f32 and as f16/bf16 must quantize identically when they are representable.
    let dev = Device::cpu();
    let v: Vec<f32> = (0..1000)
        .map(|i| ((i * 37 % 201) as f32 - 100.0) / 8.0)
        .collect();
    let a = dev
        .quantize_4bit(&tensor(&v, DType::F32), FourBitType::Nf4, 64, false)
        .unwrap();
    let h = Tensor::from_floats(
        vec![1000],
        FloatVec::F16(v.iter().map(|&x| f16::from_f32(x)).collect()),
    )
    .unwrap();
    let b = Tensor::from_floats(
        vec![1000],
        FloatVec::BF16(v.iter().map(|&x| bf16::from_f32(x)).collect()),
    )
    .unwrap();
    assert_eq!(
        dev.quantize_4bit(&h, FourBitType::Nf4, 64, false)
            .unwrap()
            .packed,
        a.packed
    );
    assert_eq!(
        dev.quantize_4bit(&b, FourBitType::Nf4, 64, false)
            .unwrap()
            .packed,
        a.packed
    );
}
