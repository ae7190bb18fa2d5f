//! One conformance suite for every backend: each device-tensor op on each device (the CPU, the CPU reference
//! backend, and the test GPU where there is one) against the host API on the CPU reference and against
//! float64, on fresh random inputs (the seed is printed; `LOWBIT_SEED` replays). Devices run in strict mode
//! and every test asserts that nothing fell back to the CPU, so a failing kernel cannot hide behind the
//! recovery policy.

mod common;
mod cuda_common;
#[cfg(feature = "wgpu")]
mod wgpu_common;

use lowbit::backend::cpu::{CpuBackend, ReferenceBackend};
use lowbit::runtime::RecoveryPolicy;
use lowbit::tensor::{DType, FloatVec, Tensor, TensorData};
use lowbit::{Device, DeviceTensor, FourBitType};
use std::sync::Arc;

/// The tests of this file run one at a time: they share the GPU, whose submission and read counters some of
/// them assert, and the per-device statistics.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn seed(test: &str) -> u64 {
    let seed = std::env::var("LOWBIT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    println!("{test}: seed {seed} (LOWBIT_SEED={seed} replays)");
    seed
}

fn strict() -> RecoveryPolicy {
    RecoveryPolicy {
        strict: true,
        ..RecoveryPolicy::default()
    }
}

/// Every device under test, strict.
fn devices() -> Vec<Device> {
    let cpus = [
        Device::from_backend(Arc::new(CpuBackend)).with_policy(strict()),
        Device::from_backend(Arc::new(ReferenceBackend)).with_policy(strict()),
    ];
    cpus.into_iter()
        .chain(gpu_device())
        .chain(cuda_common::cuda_device())
        .collect()
}

/// The test GPU as a strict device, where there is one.
fn gpu_device() -> Option<Device> {
    #[cfg(feature = "wgpu")]
    {
        wgpu_common::gpu_device()
    }
    #[cfg(not(feature = "wgpu"))]
    {
        None
    }
}

/// The device's fallback count over all ops (must stay 0 in strict mode).
fn fallbacks(dev: &Device) -> u64 {
    dev.stats().ops.values().map(|s| s.fallbacks).sum()
}

fn f32s(t: &Tensor) -> Vec<f32> {
    match t.data() {
        TensorData::Float(f) => f.to_f32_vec(),
        _ => panic!("not a float tensor"),
    }
}

fn rand(shape: Vec<usize>, scale: f32, seed: u64, dtype: DType) -> Tensor {
    lowbit::synth::normal(shape, scale, seed, dtype)
}

/// `|a - b| <= tol * (1 + |b|)` elementwise, with a message naming the first offender.
fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}: element {i}: got {g}, want {w} (tol {tol})"
        );
    }
}

fn up(dev: &Device, t: &Tensor) -> DeviceTensor {
    dev.to_device(t).unwrap()
}

#[test]
fn linear_matches_float64_on_every_device() {
    let _serial = serial();
    let s = seed("linear");
    let (m, n, k) = (5, 37, 67);
    let x = rand(vec![m, k], 1.0, s, DType::F32);
    let w = rand(vec![n, k], 0.1, s + 1, DType::F32);
    let b = rand(vec![n], 0.5, s + 2, DType::F32);
    let (xv, wv, bv) = (f32s(&x), f32s(&w), f32s(&b));
    let want: Vec<f32> = (0..m * n)
        .map(|i| {
            let (r, c) = (i / n, i % n);
            let acc: f64 = (0..k)
                .map(|j| xv[r * k + j] as f64 * wv[c * k + j] as f64)
                .sum();
            (acc + bv[c] as f64) as f32
        })
        .collect();
    for dev in devices() {
        let y = dev
            .linear(&up(&dev, &x), &up(&dev, &w), Some(&up(&dev, &b)))
            .unwrap();
        assert_eq!(y.shape(), [m, n]);
        assert_eq!(y.device_id(), dev.id());
        let y = dev.to_host(&y).unwrap();
        assert_close(&format!("linear on {}", dev.id()), &f32s(&y), &want, 1e-5);
        assert_eq!(fallbacks(&dev), 0, "{}", dev.id());
    }
}

/// A weight kept in f16/bf16 (as models keep their checkpoint's dtype) times f32 activations, and half
/// activations times the other half dtype: within the float bounds of float64 on the widened weight, and bit
/// for bit the same device's result on the weight widened to f32 first (widening is exact; the kernels read
/// the half weight in the f32 weight's order). Batch 1, a few rows, and more rows than one GEMM tile, the
/// CUDA backend's row kernels and its cuBLAS threshold; ragged shapes (k 67), and k 68 (wgpu's one-row GEMV
/// reads whole vec4s); with and without bias.
#[test]
fn linear_with_half_precision_weights_matches_float64_and_the_widened_weight() {
    let _serial = serial();
    let s = seed("linear_half_weight");
    let n = 37;
    let pairs = [
        (DType::F32, DType::BF16),
        (DType::F32, DType::F16),
        (DType::BF16, DType::F16),
        (DType::F16, DType::BF16),
    ];
    for (case, (xd, wd)) in pairs.into_iter().enumerate() {
        for (i, (m, k)) in [(1usize, 67usize), (1, 68), (3, 67), (70, 67)]
            .into_iter()
            .enumerate()
        {
            let seed = s + 10 * (4 * case + i) as u64;
            let x = rand(vec![m, k], 1.0, seed, xd);
            let w = rand(vec![n, k], 0.1, seed + 1, wd);
            let w32 = Tensor::f32(vec![n, k], f32s(&w)).unwrap();
            let with_bias = (case + i) % 2 == 0;
            let b = rand(vec![n], 0.5, seed + 2, DType::F32);
            let (xv, wv, bv) = (f32s(&x), f32s(&w), f32s(&b));
            let want: Vec<f32> = (0..m * n)
                .map(|e| {
                    let (r, c) = (e / n, e % n);
                    let acc: f64 = (0..k)
                        .map(|j| xv[r * k + j] as f64 * wv[c * k + j] as f64)
                        .sum();
                    (acc + if with_bias { bv[c] as f64 } else { 0.0 }) as f32
                })
                .collect();
            // f32 output: accumulation order; half output: one rounding to x's dtype.
            let tol = if xd == DType::F32 { 1e-5 } else { 1e-2 };
            for dev in devices() {
                let what = format!("{xd} x {wd} w, m {m}, bias {with_bias} on {}", dev.id());
                let bias = with_bias.then(|| up(&dev, &b));
                let xt = up(&dev, &x);
                let y = dev.linear(&xt, &up(&dev, &w), bias.as_ref()).unwrap();
                assert_eq!((y.shape(), y.dtype()), (&[m, n][..], xd), "{what}");
                let y = dev.to_host(&y).unwrap();
                assert_close(&what, &f32s(&y), &want, tol);
                let y32 = dev.linear(&xt, &up(&dev, &w32), bias.as_ref()).unwrap();
                let y32 = dev.to_host(&y32).unwrap();
                assert_eq!(
                    y.data().as_bytes(),
                    y32.data().as_bytes(),
                    "{what}: differs from the f32-widened weight"
                );
                assert_eq!(fallbacks(&dev), 0, "{what}");
            }
        }
    }
}

#[test]
fn linear_4bit_matches_the_host_reference_on_every_device() {
    let _serial = serial();
    let s = seed("linear_4bit");
    let reference = Device::from_backend(Arc::new(ReferenceBackend));
    // 256 columns take the GPUs' word kernels; 72 (not a multiple of 32, blocks straddling rows) their
    // element-wise ones. 40 rows reach the batched paths (a GEMM, or cuBLAS where present).
    for ((rows, cols), (qt, dq)) in [(48, 256), (40, 72)].into_iter().flat_map(|shape| {
        [
            (shape, (FourBitType::Nf4, true)),
            (shape, (FourBitType::Fp4, false)),
        ]
    }) {
        let w = rand(vec![rows, cols], 0.05, s + cols as u64, DType::F32);
        let q = reference.quantize_4bit(&w, qt, 64, dq).unwrap();
        let bias = rand(vec![rows], 0.5, s + 3, DType::F32);
        // Every row count 1-32 (each backend's GEMV / multi-row / GEMM crossovers) on the first shape, then
        // past them.
        let batches: Vec<usize> = if cols == 256 && qt == FourBitType::Nf4 {
            (1..=32).chain([40]).collect()
        } else {
            vec![1, 3, 11, 40]
        };
        for batch in batches {
            let x = rand(vec![batch, cols], 1.0, s + batch as u64, DType::F32);
            let want = f32s(&reference.matmul_4bit(&x, &q, Some(&bias)).unwrap());
            for dev in devices() {
                let dw = dev.upload_4bit(&q).unwrap();
                let y = dev
                    .linear_4bit(&up(&dev, &x), &dw, Some(&up(&dev, &bias)))
                    .unwrap();
                assert_eq!(y.shape(), [batch, rows]);
                let got = f32s(&dev.to_host(&y).unwrap());
                assert_close(
                    &format!("{qt:?} {rows}x{cols} batch {batch} on {}", dev.id()),
                    &got,
                    &want,
                    2e-5,
                );
                assert_eq!(fallbacks(&dev), 0, "{}", dev.id());
            }
        }
    }
}

/// 4-bit linears under f16/bf16 activations (models' `--activations f16|bf16`) against float64 on the
/// dequantized weight, at every row count 1-32 (CUDA's tensor-core kernel takes 8-row tiles) and past it.
/// Each 64-column block of the weight is scaled by its own factor (1-4x), so a block read with another
/// block's absmax is off by far more than the bound. Shapes (for the tensor-core kernel's 64-column chunks,
/// two per group): two groups, rows not a multiple of 16 with blocksize 128, more groups than one pass of a
/// block's warps, a chunk left over after the groups, and columns not a multiple of 64 (the row kernels).
/// Bound, per output: each weight may be formed in x's dtype
/// (table value, absmax and their product each rounded: 3u, with unit roundoff u = 2^-11 for f16, 2^-8 for
/// bf16; bitsandbytes rounds each dequantized weight to its compute dtype too) and the f32 sum may lose
/// k * 2^-22 (tensor cores' accumulation), both relative to sum |x_j w_j|, plus the output's rounding, u|y|.
#[test]
fn linear_4bit_with_half_activations_matches_float64_on_every_device() {
    let _serial = serial();
    let s = seed("linear_4bit_half");
    let reference = Device::from_backend(Arc::new(ReferenceBackend));
    let shapes = [
        (48, 256, 64, FourBitType::Nf4, true),
        (37, 640, 128, FourBitType::Fp4, false),
        (24, 2688, 64, FourBitType::Nf4, false),
        (16, 192, 64, FourBitType::Fp4, true),
        (19, 72, 64, FourBitType::Nf4, true),
        // More 16-row tiles than CUDA's persistent tensor-core grid (two blocks per multiprocessor on an
        // H200's 132), so a block takes a second tile, with several pipeline stages per warp and a partial
        // last stage; rows long enough for the `b1s` form (2-8 rows, activations a stage ahead).
        (4500, 16640, 64, FourBitType::Nf4, true),
    ];
    for (case, (rows, cols, blocksize, qt, dq)) in shapes.into_iter().enumerate() {
        let w = rand(vec![rows, cols], 0.05, s + 100 * case as u64, DType::F32);
        let scaled: Vec<f32> = f32s(&w)
            .iter()
            .enumerate()
            .map(|(i, v)| v * (1 + (i % cols) / 64 % 4) as f32)
            .collect();
        let w = Tensor::f32(vec![rows, cols], scaled).unwrap();
        let q = reference.quantize_4bit(&w, qt, blocksize, dq).unwrap();
        let wd = f32s(&reference.dequantize_4bit(&q).unwrap());
        let bias = rand(vec![rows], 0.5, s + 100 * case as u64 + 1, DType::F32);
        let bv = f32s(&bias);
        let batches: Vec<usize> = match case {
            0 => (1..=32).chain([40]).collect(),
            5 => vec![1, 2, 5, 8, 9],
            _ => vec![1, 2, 7, 9, 17, 32, 33],
        };
        for batch in batches {
            for (d, dtype) in [DType::F16, DType::BF16].into_iter().enumerate() {
                let x = rand(vec![batch, cols], 1.0, s + (10 * batch + d) as u64, dtype);
                let xv = f32s(&x);
                let with_bias = batch % 2 == 1;
                let u = if dtype == DType::F16 {
                    2f64.powi(-11)
                } else {
                    2f64.powi(-8)
                };
                // (y, bound) per output.
                let want: Vec<(f64, f64)> = (0..batch * rows)
                    .map(|e| {
                        let (r, c) = (e / rows, e % rows);
                        let terms =
                            (0..cols).map(|j| xv[r * cols + j] as f64 * wd[c * cols + j] as f64);
                        let l1: f64 = terms.clone().map(f64::abs).sum();
                        let y = terms.sum::<f64>() + if with_bias { bv[c] as f64 } else { 0.0 };
                        let bound =
                            (3.0 * u + cols as f64 * 2f64.powi(-22)) * l1 + u * y.abs() + 1e-6;
                        (y, bound)
                    })
                    .collect();
                for dev in devices() {
                    let what = format!(
                        "{qt:?} {rows}x{cols}/{blocksize} batch {batch} {dtype} on {}",
                        dev.id()
                    );
                    let dw = dev.upload_4bit(&q).unwrap();
                    let b = with_bias.then(|| up(&dev, &bias));
                    let y = dev.linear_4bit(&up(&dev, &x), &dw, b.as_ref()).unwrap();
                    assert_eq!(
                        (y.shape(), y.dtype()),
                        (&[batch, rows][..], dtype),
                        "{what}"
                    );
                    let got = f32s(&dev.to_host(&y).unwrap());
                    for (i, (g, (w, bound))) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (*g as f64 - w).abs() <= *bound,
                            "{what}: element {i}: got {g}, want {w} (bound {bound})"
                        );
                    }
                    // CUDA's tensor-core kernel (1-32 rows of whole 64-column chunks) sums each output in an
                    // order that depends on k only, so the last row alone gives the bits it has in the batch
                    // (a batch of up to 32 rows split by the runtime gives the same numbers).
                    if dev.id().starts_with("cuda") && (2..=32).contains(&batch) && cols % 64 == 0 {
                        let es = dtype.size_in_bytes();
                        let last = &x.data().as_bytes()[(batch - 1) * cols * es..];
                        let one = Tensor::new(vec![1, cols], TensorData::from_bytes(dtype, last))
                            .unwrap();
                        let y1 = dev.linear_4bit(&up(&dev, &one), &dw, b.as_ref()).unwrap();
                        assert_eq!(
                            bits(&f32s(&dev.to_host(&y1).unwrap())),
                            bits(&got[(batch - 1) * rows..]),
                            "{what}: the last row alone"
                        );
                    }
                    if matches!(batch, 1 | 2 | 17 | 33) {
                        // A bias (or a residual riding in its slot) in x's dtype is read as stored: the
                        // bits of the same values widened to f32 first.
                        let narrow = rand(vec![rows], 0.5, s + (7 * batch + d) as u64, dtype);
                        let wide = Tensor::f32(vec![rows], f32s(&narrow)).unwrap();
                        let run = |bias: &Tensor| {
                            let b = up(&dev, bias);
                            let y = dev.linear_4bit(&up(&dev, &x), &dw, Some(&b)).unwrap();
                            bits(&f32s(&dev.to_host(&y).unwrap()))
                        };
                        assert_eq!(run(&narrow), run(&wide), "{what}: a {dtype} bias");
                    }
                    assert_eq!(fallbacks(&dev), 0, "{what}");
                }
            }
        }
    }
}

/// Int8 activations (`format::q8`, the CPU's opt-in path): both CPU backends give identical bits (VNNI and
/// portable kernels; one row takes the GEMV, several the batched kernel, partial tiles included), within the
/// 8-bit quantization's bound of the float product; GPUs refuse the ops (unsupported, no fallback in strict
/// mode) and say so.
#[test]
fn int8_activation_linears_agree_on_the_cpus_and_gpus_refuse_them() {
    use lowbit::format::q8::Q8Weight;
    let _serial = serial();
    let s = seed("int8_activations");
    let reference = Device::from_backend(Arc::new(ReferenceBackend));
    let (rows, cols) = (40, 320);
    let w = rand(vec![rows, cols], 0.05, s, DType::F32);
    let q = reference
        .quantize_4bit(&w, FourBitType::Nf4, 64, true)
        .unwrap();
    let wq8 = Q8Weight::quantize(&f32s(&w), rows, cols);
    let bias = rand(vec![rows], 0.5, s + 1, DType::F32);
    for batch in [1, 3, 9] {
        let x = rand(vec![batch, cols], 1.0, s + 2 + batch as u64, DType::F32);
        let float = f32s(&reference.matmul_4bit(&x, &q, Some(&bias)).unwrap());
        let dense = f32s(&reference.matmul(&x, &w, Some(&bias)).unwrap());
        let mut first: Option<(Vec<f32>, Vec<f32>)> = None;
        for dev in devices() {
            let dw = dev.upload_4bit(&q).unwrap();
            // The lanes repack reads the weight back from the device: a GPU holds it but refuses the op.
            let dw = dev.upload_4bit_lanes(&dw).unwrap();
            let dq = dev.upload_q8(&wq8).unwrap();
            let (xd, bd) = (up(&dev, &x), up(&dev, &bias));
            let (y4, y8) = (
                dev.linear_4bit_q8(&xd, &dw, Some(&bd)),
                dev.linear_q8(&xd, &dq, Some(&bd)),
            );
            if dev.backend().kind() != lowbit::backend::BackendKind::Cpu {
                for e in [y4.err(), y8.err()] {
                    let e =
                        e.unwrap_or_else(|| panic!("{} ran an int8-activation linear", dev.id()));
                    assert!(e.to_string().contains("CPU"), "{}: {e}", dev.id());
                }
                assert_eq!(fallbacks(&dev), 0, "{}", dev.id());
                continue;
            }
            let y4 = f32s(&dev.to_host(&y4.unwrap()).unwrap());
            let y8 = f32s(&dev.to_host(&y8.unwrap()).unwrap());
            // 8-bit activations and weights: within 3% of the largest output of the float product.
            for (what, got, want) in [("4-bit", &y4, &float), ("Q8", &y8, &dense)] {
                let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let d = got
                    .iter()
                    .zip(want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f32::max);
                assert!(
                    d <= 0.03 * scale,
                    "{what} batch {batch} on {}: {d} vs {scale}",
                    dev.id()
                );
            }
            match &first {
                None => first = Some((y4, y8)),
                Some((a, b)) => {
                    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&y4), bits(a), "4-bit on {}", dev.id());
                    assert_eq!(bits(&y8), bits(b), "Q8 on {}", dev.id());
                }
            }
            assert_eq!(fallbacks(&dev), 0, "{}", dev.id());
        }
    }
}

#[test]
fn linear_ternary_is_bit_identical_on_every_device() {
    let _serial = serial();
    let s = seed("linear_ternary");
    let reference = Device::from_backend(Arc::new(ReferenceBackend));
    // Columns a multiple of 16 (the GPUs' 16-column kernels) at every row count 1-32, and not; rows of
    // more 16-byte words than a warp's unrolled step covers (32 lanes x 4), with a ragged last step.
    let cases = (1..=32usize)
        .map(|batch| (21, 96, batch, batch % 3, false))
        .chain([(19, 72, 11, 0, false), (19, 72, 11, 2, false)])
        .chain([
            (37, 4112, 1, 0, false),
            (37, 4112, 3, 1, false),
            (9, 2064, 9, 2, false),
        ])
        // One row with a bias (CUDA: the one-kernel layer): each dtype; a row longer than the registers of
        // a 1024-thread block hold (read twice); more packed rows than one wave of the grid's warp groups.
        .chain([
            (37, 4112, 1, 0, true),
            (21, 96, 1, 1, true),
            (22, 2064, 1, 2, true),
            (5, 20_000, 1, 1, true),
            (9, 33_040, 1, 0, true),
            (17_001, 96, 1, 2, true),
            // Longer than the one-kernel layer takes (CUDA: quantization, then the product).
            (5, 196_624, 1, 1, true),
        ])
        // Prompts: more than 32 rows (CUDA: cuBLAS's int8 product where rows % 4 == 0), with a bias.
        .chain([
            (40, 96, 33, 0, true),
            (44, 2064, 70, 1, true),
            (36, 4112, 65, 2, true),
            (21, 96, 40, 0, true),
        ]);
    for (rows, cols, batch, dtype, with_bias) in cases {
        let dtype = [DType::F32, DType::F16, DType::BF16][dtype];
        let w = rand(vec![rows, cols], 0.05, s + rows as u64, DType::F32);
        let tw = reference.ternary_quantize(&w).unwrap();
        let x = rand(vec![batch, cols], 1.0, s + 1, dtype);
        // The bias in x's dtype (widened exactly, then one f32 addition).
        let bias = with_bias.then(|| rand(vec![rows], 0.5, s + 2, dtype));
        let layer = lowbit::ops::BitLinear {
            weight: tw.clone(),
            bias: bias.as_ref().map(f32s),
        };
        let want = f32s(&reference.bitlinear(&x, &layer).unwrap());
        let want = FloatVec::from_f32(want, dtype).to_f32_vec();
        for dev in devices() {
            let dw = dev.upload_ternary(&tw).unwrap();
            let db = bias.as_ref().map(|b| up(&dev, b));
            let y = dev.linear_ternary(&up(&dev, &x), &dw, db.as_ref()).unwrap();
            assert_eq!(y.dtype(), dtype);
            let got = f32s(&dev.to_host(&y).unwrap());
            assert_eq!(got.len(), want.len());
            let differ = got
                .iter()
                .zip(&want)
                .position(|(a, b)| a.to_bits() != b.to_bits());
            if let Some(i) = differ {
                panic!(
                    "{rows}x{cols}, {batch} rows of {dtype} on {}: output {i} is {} against {}",
                    dev.id(),
                    got[i],
                    want[i]
                );
            }
            assert_eq!(fallbacks(&dev), 0, "{}", dev.id());
        }
    }
}

/// LLM.int8() as one device op against the host layer on the CPU reference, for 1..=32 rows, every float
/// input dtype, with and without outlier columns and bias. Without outliers every device gives the reference's
/// bits; with them, the outlier columns' float product may round differently (CPU SIMD or GPU summation), so
/// those are held to two f16 units in the last place, and each CPU device to its own host forward's bits.
#[test]
fn linear_8bit_matches_the_host_layer_on_every_device() {
    let _serial = serial();
    let s = seed("linear_8bit");
    let (out, k) = (40, 96);
    let reference = Device::from_backend(Arc::new(ReferenceBackend));
    let w = rand(vec![out, k], 0.05, s, DType::F32);
    let bias = rand(vec![out], 0.5, s + 1, DType::F32);
    let layer = |bias: Option<&Tensor>, threshold: f32| {
        lowbit::ops::Linear8bitLt::from_weight(&reference, &w, bias, threshold).unwrap()
    };
    for dev in devices() {
        let with_bias = dev.upload_8bit(&layer(Some(&bias), 0.0)).unwrap();
        let without = dev.upload_8bit(&layer(None, 0.0)).unwrap();
        for rows in 1..=32usize {
            let has_bias = rows % 2 == 1;
            let dw = if has_bias { &with_bias } else { &without };
            for dtype in [DType::F32, DType::F16, DType::BF16] {
                // N(0, 1) inputs: a threshold of 2.5 flags a few columns, more as rows grow.
                for threshold in [0.0f32, 2.5] {
                    let what = format!("{rows} rows {dtype} threshold {threshold} on {}", dev.id());
                    let x = rand(vec![rows, k], 1.0, s + 7 * rows as u64, dtype);
                    let host = layer(has_bias.then_some(&bias), threshold);
                    let want = f32s(&host.forward(&reference, &x).unwrap());
                    let y = dev.linear_8bit(&up(&dev, &x), dw, threshold).unwrap();
                    assert_eq!(y.shape(), [rows, out], "{what}");
                    assert_eq!(y.dtype(), DType::F16, "{what}");
                    let got = f32s(&dev.to_host(&y).unwrap());
                    let outliers = reference
                        .int8_vectorwise_quant(
                            &lowbit::ops::device::host_floats(vec![rows, k], f32s(&x), DType::F16)
                                .unwrap(),
                            threshold,
                        )
                        .unwrap()
                        .outlier_cols
                        .is_some_and(|c| !c.is_empty());
                    if outliers {
                        assert_close(&what, &got, &want, 2e-3);
                    } else {
                        assert_eq!(bits(&got), bits(&want), "{what}: bit-identical");
                    }
                    // GPUs sum the outlier columns in their own order; without outliers every device
                    // gives the reference's bits, checked above.
                    if dev.info().backend == "cpu" {
                        let own = f32s(&host.forward(&dev, &x).unwrap());
                        assert_eq!(bits(&got), bits(&own), "{what}: the host layer's bits");
                    }
                }
            }
        }
        assert_eq!(fallbacks(&dev), 0, "{}", dev.id());
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn norms_match_float64_on_every_device() {
    let _serial = serial();
    let s = seed("norms");
    // Rows of whole vec4s (the vectorized RMSNorm: fewer than one unrolled step per thread, and more than
    // one) and rows that are not (the scalar kernel).
    for (i, (rows, cols)) in [(6, 300), (3, 4100), (2, 301)].into_iter().enumerate() {
        let s = s + 2 * i as u64;
        let x = rand(vec![rows, cols], 2.0, s, DType::F32);
        let w = rand(vec![cols], 1.0, s + 1, DType::F32);
        let (xv, wv) = (f32s(&x), f32s(&w));
        let eps = 1e-6f32;
        let mut rms = vec![0f32; rows * cols];
        let mut soft = vec![0f32; rows * cols];
        for r in 0..rows {
            let row = &xv[r * cols..(r + 1) * cols];
            let ms: f64 = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / cols as f64;
            let inv = 1.0 / (ms + eps as f64).sqrt();
            let mx = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
            let z: f64 = row.iter().map(|&v| (v as f64 - mx).exp()).sum();
            for c in 0..cols {
                rms[r * cols + c] = (row[c] as f64 * inv * wv[c] as f64) as f32;
                soft[r * cols + c] = ((row[c] as f64 - mx).exp() / z) as f32;
            }
        }
        for dev in devices() {
            let dx = up(&dev, &x);
            let y = dev.rms_norm_on(&dx, &up(&dev, &w), eps).unwrap();
            assert_close(
                &format!("rms_norm [{rows}, {cols}] on {}", dev.id()),
                &f32s(&dev.to_host(&y).unwrap()),
                &rms,
                2e-6,
            );
            let y = dev.softmax_on(&dx).unwrap();
            assert_close(
                &format!("softmax [{rows}, {cols}] on {}", dev.id()),
                &f32s(&dev.to_host(&y).unwrap()),
                &soft,
                2e-6,
            );
            assert_eq!(fallbacks(&dev), 0, "{}", dev.id());
        }
    }
}

#[test]
fn copy_rows_appends_in_place_on_every_device() {
    let _serial = serial();
    let s = seed("copy_rows");
    let cache = rand(vec![8, 2, 4], 1.0, s, DType::F32);
    let new = rand(vec![3, 2, 4], 1.0, s + 1, DType::F32);
    let mut want = f32s(&cache);
    want[2 * 8..5 * 8].copy_from_slice(&f32s(&new));
    for dev in devices() {
        let dc = up(&dev, &cache);
        dev.copy_rows(&dc, 2, &up(&dev, &new)).unwrap();
        assert_eq!(f32s(&dev.to_host(&dc).unwrap()), want, "{}", dev.id());
        let err = dev.copy_rows(&dc, 6, &up(&dev, &new)).unwrap_err();
        assert!(err.to_string().contains("cannot write"), "{err}");
    }
}

/// A KV append of keys and values together (one launch on CUDA) writes both caches' rows and nothing else,
/// in each dtype, with rows of a size that is not a multiple of 4 bytes; bad pairs are typed errors.
#[test]
fn copy_kv_rows_appends_keys_and_values_on_every_device() {
    let _serial = serial();
    let s = seed("copy_kv_rows");
    for (dtype, width) in [(DType::F32, 4), (DType::F16, 3), (DType::BF16, 8)] {
        let k_cache = rand(vec![9, 2, width], 1.0, s, dtype);
        let v_cache = rand(vec![9, 2, width], 1.0, s + 1, dtype);
        let (k, v) = (
            rand(vec![2, 2, width], 1.0, s + 2, dtype),
            rand(vec![2, 2, width], 1.0, s + 3, dtype),
        );
        let row = 2 * width;
        let mut want_k = f32s(&k_cache);
        want_k[3 * row..5 * row].copy_from_slice(&f32s(&k));
        let mut want_v = f32s(&v_cache);
        want_v[3 * row..5 * row].copy_from_slice(&f32s(&v));
        for dev in devices() {
            let (dk, dv) = (up(&dev, &k_cache), up(&dev, &v_cache));
            dev.copy_kv_rows(&dk, &dv, 3, &up(&dev, &k), &up(&dev, &v))
                .unwrap();
            let what = format!("{dtype} on {}", dev.id());
            assert_eq!(f32s(&dev.to_host(&dk).unwrap()), want_k, "keys, {what}");
            assert_eq!(f32s(&dev.to_host(&dv).unwrap()), want_v, "values, {what}");
            let err = dev
                .copy_kv_rows(&dk, &dv, 8, &up(&dev, &k), &up(&dev, &v))
                .unwrap_err();
            assert!(err.to_string().contains("cannot write"), "{err}");
            let err = dev
                .copy_kv_rows(&dk, &dk, 0, &up(&dev, &k), &up(&dev, &v))
                .unwrap_err();
            assert!(err.to_string().contains("share storage"), "{err}");
            assert_eq!(fallbacks(&dev), 0, "{what}");
        }
    }
}

/// Column windows (how a fused projection's output is split) give x's own bits on every device, one row (a
/// view of x's memory where the device makes one) or several; a window feeds the next ops like any tensor.
#[test]
fn narrow_takes_column_windows_on_every_device() {
    let _serial = serial();
    let s = seed("narrow");
    let cols = 24;
    for (case, dtype) in [DType::F32, DType::F16, DType::BF16]
        .into_iter()
        .enumerate()
    {
        for rows in [1usize, 5] {
            let x = rand(vec![rows, cols], 1.0, s + (10 * case + rows) as u64, dtype);
            let es = dtype.size_in_bytes();
            let xb = x.data().as_bytes();
            for dev in devices() {
                let dx = up(&dev, &x);
                for (start, len) in [(0, 10), (10, 8), (18, 6)] {
                    let y = dev.to_host(&dev.narrow(&dx, start, len).unwrap()).unwrap();
                    let want: Vec<u8> = (0..rows)
                        .flat_map(|r| {
                            xb[(r * cols + start) * es..(r * cols + start + len) * es].to_vec()
                        })
                        .collect();
                    assert_eq!(
                        y.shape(),
                        [rows, len],
                        "{dtype} {rows} rows on {}",
                        dev.id()
                    );
                    assert_eq!(
                        y.data().as_bytes(),
                        &want[..],
                        "{dtype} {rows} rows, columns {start}..+{len} on {}",
                        dev.id()
                    );
                }
                assert_eq!(fallbacks(&dev), 0, "{}", dev.id());
            }
        }
    }
    // A decode step's use: windows of one row added and appended to a cache.
    let x = rand(vec![1, 16], 1.0, s + 99, DType::F32);
    let xv = f32s(&x);
    let sum: Vec<f32> = (0..8).map(|i| xv[i] + xv[8 + i]).collect();
    for dev in devices() {
        let dx = up(&dev, &x);
        let (a, b) = (
            dev.narrow(&dx, 0, 8).unwrap(),
            dev.narrow(&dx, 8, 8).unwrap(),
        );
        let y = dev.add(&a, &b).unwrap();
        assert_eq!(
            bits(&f32s(&dev.to_host(&y).unwrap())),
            bits(&sum),
            "{}",
            dev.id()
        );
        let cache = up(&dev, &Tensor::f32(vec![3, 8], vec![0.0; 24]).unwrap());
        dev.copy_rows(&cache, 2, &b).unwrap();
        let c = f32s(&dev.to_host(&cache).unwrap());
        assert_eq!(bits(&c[16..]), bits(&xv[8..]), "{}", dev.id());
        let err = dev.narrow(&dx, 10, 8).unwrap_err();
        assert!(err.to_string().contains("window"), "{err}");
        assert_eq!(fallbacks(&dev), 0, "{}", dev.id());
    }
    // A window of a window that outlives both tensors it looks into, in each dtype, fed to the element-wise
    // ops (which read windows in place on the GPU) and to RMSNorm (which gets a copy there), against the CPU.
    let cpu = Device::from_backend(Arc::new(ReferenceBackend)).with_policy(strict());
    for (case, dtype) in [DType::F32, DType::F16, DType::BF16]
        .into_iter()
        .enumerate()
    {
        let x = rand(vec![1, 32], 1.0, s + 200 + case as u64, dtype);
        let norm = rand(vec![8], 1.0, s + 300 + case as u64, dtype);
        let run = |dev: &Device| {
            let inner = {
                let dx = up(dev, &x);
                let wide = dev.narrow(&dx, 12, 20).unwrap();
                dev.narrow(&wide, 6, 8).unwrap()
            };
            let first = dev.narrow(&up(dev, &x), 0, 8).unwrap();
            let outs = [
                inner.clone(),
                dev.silu_mul(&first, &inner).unwrap(),
                dev.silu_mul(&inner, &first).unwrap(),
                dev.add(&inner, &inner).unwrap(),
                dev.rms_norm_on(&inner, &up(dev, &norm), 1e-5).unwrap(),
            ];
            outs.map(|t| dev.to_host(&t).unwrap())
        };
        let want = run(&cpu);
        assert_eq!(
            want[0].data().as_bytes(),
            &x.data().as_bytes()[18 * dtype.size_in_bytes()..26 * dtype.size_in_bytes()],
            "{dtype}: columns 18..26"
        );
        // The model ops' bounds (f32 within float32 rounding, halves within a unit of their last place);
        // the window itself and the add are exact.
        let tol = match dtype {
            DType::F32 => 2e-6,
            DType::F16 => 1e-3,
            _ => 8e-3,
        };
        for dev in devices() {
            let got = run(&dev);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                let what = format!("window case {i}, {dtype} on {}", dev.id());
                assert_eq!(g.shape(), w.shape(), "{what}");
                if i == 0 || i == 3 {
                    assert_eq!(g, w, "{what}");
                } else {
                    assert_close(&what, &f32s(g), &f32s(w), tol);
                }
            }
            assert_eq!(fallbacks(&dev), 0, "{}", dev.id());
        }
    }
}

/// A cast to the operand's own dtype (f32 to f32) shares the operand's memory; it must keep that memory
/// when the operand is dropped and later ops take buffers of the same size.
#[test]
fn a_cast_to_its_own_dtype_outlives_its_operand() {
    let _serial = serial();
    let s = seed("cast_outlives");
    let x = rand(vec![1, 256], 1.0, s, DType::F32);
    let other = rand(vec![1, 256], 1.0, s + 1, DType::F32);
    for dev in devices() {
        let y = {
            let dx = up(&dev, &x);
            dev.cast(&dx, DType::F32).unwrap()
        };
        let o = up(&dev, &other);
        let sums: Vec<DeviceTensor> = (0..4).map(|_| dev.add(&o, &o).unwrap()).collect();
        assert_eq!(dev.to_host(&y).unwrap(), x, "{}", dev.id());
        drop(sums);
        assert_eq!(fallbacks(&dev), 0, "{}", dev.id());
    }
}

#[cfg(feature = "wgpu")]
#[test]
fn a_chain_stays_on_the_gpu_and_reads_back_once() {
    let _serial = serial();
    let Some(g) = wgpu_common::gpu() else {
        return;
    };
    let s = seed("chain");
    let dev = Device::from_backend(Arc::new(g.clone())).with_policy(strict());
    let (rows, cols) = (64, 128);
    let w = rand(vec![rows, cols], 0.05, s, DType::F32);
    let q = dev.quantize_4bit(&w, FourBitType::Nf4, 64, true).unwrap();
    let norm_w = rand(vec![cols], 1.0, s + 1, DType::F32);
    let x = rand(vec![2, cols], 1.0, s + 2, DType::F32);
    let dw = dev.upload_4bit(&q).unwrap();
    let dn = up(&dev, &norm_w);
    let dx = up(&dev, &x);
    let (subs0, reads0) = g.gpu().counters();
    let h = dev.rms_norm_on(&dx, &dn, 1e-5).unwrap();
    let y = dev.linear_4bit(&h, &dw, None).unwrap();
    let p = dev.softmax_on(&y).unwrap();
    let (subs1, reads1) = g.gpu().counters();
    assert_eq!(reads1 - reads0, 0, "no host read before to_host");
    assert_eq!(
        subs1 - subs0,
        0,
        "the ops are queued in one command buffer, not submitted one by one"
    );
    let got = f32s(&dev.to_host(&p).unwrap());
    let (subs2, reads2) = g.gpu().counters();
    assert_eq!(reads2 - reads1, 1, "one read for the result");
    assert_eq!(
        subs2 - subs1,
        1,
        "the whole chain is one command buffer, submitted at the read"
    );
    // The same chain through the host API on the CPU.
    let cpu = Device::cpu();
    let want = cpu
        .softmax(
            &cpu.matmul_4bit(&cpu.rms_norm(&x, &norm_w, 1e-5).unwrap(), &q, None)
                .unwrap(),
        )
        .unwrap();
    assert_close("chain", &got, &f32s(&want), 1e-5);
    assert_eq!(fallbacks(&dev), 0);
}

#[test]
fn bad_operands_are_typed_errors() {
    let _serial = serial();
    let s = seed("errors");
    let cpu = Device::cpu();
    let x = up(&cpu, &rand(vec![2, 16], 1.0, s, DType::F32));
    let w = up(&cpu, &rand(vec![8, 15], 1.0, s + 1, DType::F32));
    let e = cpu.linear(&x, &w, None).unwrap_err().to_string();
    assert!(e.contains("w must be [n, 16]"), "{e}");
    let ids = up(&cpu, &Tensor::vector(vec![0i32, 1]));
    let e = cpu.add(&x, &ids).unwrap_err().to_string();
    assert!(e.contains("one shape and dtype"), "{e}");
    // A tensor of another device is refused before any kernel runs.
    let reference = Device::from_backend(Arc::new(ReferenceBackend));
    let other = up(&reference, &rand(vec![2, 16], 1.0, s, DType::F32));
    let e = cpu.add(&x, &other).unwrap_err();
    assert!(
        matches!(e, lowbit::Error::WrongDevice { .. }),
        "{e}: expected a wrong-device error"
    );
    // Storage shorter than the shape claims cannot be built.
    let e = DeviceTensor::new(vec![1 << 40, 1 << 30], DType::F32, x.storage().clone())
        .unwrap_err()
        .to_string();
    assert!(e.contains("needs") || e.contains("overflows"), "{e}");
    let e = x.reshape(vec![3, 11]).unwrap_err().to_string();
    assert!(e.contains("cannot view"), "{e}");
}

#[cfg(feature = "wgpu")]
fn small_block() -> lowbit::nn::BlockConfig {
    lowbit::nn::BlockConfig {
        hidden: 256,
        heads: 4,
        kv_heads: 2,
        head_dim: 64,
        intermediate: 512,
        rope_theta: 10000.0,
        rms_eps: 1e-5,
        max_positions: 16,
    }
}

#[cfg(feature = "wgpu")]
/// The small NF4 decoder block with one set of synthetic weights (from `seed`) on the CPU and on the test GPU,
/// both devices strict.
fn block_on_cpu_and_gpu(
    g: &lowbit::backend::wgpu::WgpuBackend,
    seed: u64,
) -> (
    Device,
    Device,
    lowbit::nn::DecoderBlock,
    lowbit::nn::DecoderBlock,
) {
    let cfg = small_block();
    let weights = lowbit::nn::BlockWeights::synthetic(&cfg, seed);
    let cpu = Device::from_backend(Arc::new(CpuBackend)).with_policy(strict());
    let gpu = Device::from_backend(Arc::new(g.clone())).with_policy(strict());
    let on_cpu = lowbit::nn::DecoderBlock::new(&cpu, cfg, &weights, FourBitType::Nf4).unwrap();
    let on_gpu = lowbit::nn::DecoderBlock::new(&gpu, cfg, &weights, FourBitType::Nf4).unwrap();
    (cpu, gpu, on_cpu, on_gpu)
}

#[cfg(feature = "wgpu")]
#[test]
fn a_decoder_block_on_the_gpu_equals_the_cpu_and_stays_there() {
    let _serial = serial();
    let Some(g) = wgpu_common::gpu() else {
        return;
    };
    let s = seed("decoder_block");
    let (cpu, gpu, mut on_cpu, mut on_gpu) = block_on_cpu_and_gpu(&g, s);
    let hidden = small_block().hidden;
    // Prefill 5 tokens in one block call, then decode 3 single tokens.
    for (step, tokens) in [5usize, 1, 1, 1].into_iter().enumerate() {
        let x = rand(vec![tokens, hidden], 1.0, s + 10 + step as u64, DType::F32);
        let want = cpu
            .to_host(&on_cpu.forward(&cpu, &up(&cpu, &x)).unwrap())
            .unwrap();
        let dx = up(&gpu, &x);
        let (subs0, reads0) = g.gpu().counters();
        let y = on_gpu.forward(&gpu, &dx).unwrap();
        let (subs1, reads1) = g.gpu().counters();
        assert_eq!(
            reads1 - reads0,
            0,
            "step {step}: the block reads nothing back"
        );
        // The block's 17 ops (norm, q, k, v, 2 rope, 2 cache writes, attention, o, add, norm, gate, up,
        // silu*up, down, add) are recorded into one pending command buffer: nothing is submitted until the
        // read below.
        assert_eq!(
            subs1 - subs0,
            0,
            "step {step}: submissions during the block"
        );
        let got = gpu.to_host(&y).unwrap();
        assert_close(
            &format!("block step {step}"),
            &f32s(&got),
            &f32s(&want),
            2e-4,
        );
    }
    assert_eq!(on_gpu.cached(), 8);
    assert_eq!(fallbacks(&gpu), 0);
    assert_eq!(fallbacks(&cpu), 0);
}

#[cfg(feature = "wgpu")]
#[test]
fn a_steady_decode_loop_creates_no_gpu_buffers_and_matches_the_cpu() {
    let _serial = serial();
    let Some(g) = wgpu_common::gpu() else {
        return;
    };
    let s = seed("decode_no_alloc");
    let (cpu, gpu, mut on_cpu, mut on_gpu) = block_on_cpu_and_gpu(&g, s);
    let hidden = small_block().hidden;
    // A 4-token prefill, then single-token decode steps up to the cache's 16 rows. Each step uploads its
    // token, runs the block and reads the result, as a decode loop does. Warm-up: the prefill's and the first
    // decode step's shapes, and a second upload buffer (an upload reuses only a buffer released before the
    // last submission).
    const WARM_UP: usize = 3;
    let (mut created_after_warm_up, mut bind_groups_after_warm_up) = (0, 0);
    for step in 0..13 {
        let tokens = if step == 0 { 4 } else { 1 };
        let x = rand(vec![tokens, hidden], 1.0, s + 10 + step as u64, DType::F32);
        let want = cpu
            .to_host(&on_cpu.forward(&cpu, &up(&cpu, &x)).unwrap())
            .unwrap();
        let (created0, groups0) = (g.gpu().buffers_created(), g.gpu().bind_groups_made());
        let got = {
            let dx = up(&gpu, &x);
            let y = on_gpu.forward(&gpu, &dx).unwrap();
            gpu.to_host(&y).unwrap()
        };
        let created = g.gpu().buffers_created() - created0;
        let groups = g.gpu().bind_groups_made() - groups0;
        println!("step {step}: {created} buffers and {groups} bind groups created");
        if step >= WARM_UP {
            created_after_warm_up += created;
            bind_groups_after_warm_up += groups;
        }
        assert_close(
            &format!("block step {step}"),
            &f32s(&got),
            &f32s(&want),
            2e-4,
        );
    }
    assert_eq!(on_gpu.cached(), 16);
    assert_eq!(
        created_after_warm_up, 0,
        "buffers created after the warm-up steps"
    );
    assert_eq!(
        bind_groups_after_warm_up, 0,
        "bind groups created after the warm-up steps"
    );
    assert_eq!(fallbacks(&gpu), 0);
    assert_eq!(g.gpu().uncaptured_errors(), 0);
}

#[cfg(feature = "wgpu")]
#[test]
fn bind_groups_are_made_once_and_dropped_before_a_weight_upload() {
    let _serial = serial();
    let Some(g) = wgpu_common::gpu() else {
        return;
    };
    let s = seed("bind_groups");
    let gpu = Device::from_backend(Arc::new(g.clone())).with_policy(strict());
    let cpu = Device::cpu();
    let [a, b] = [0, 1].map(|i| rand(vec![1000], 1.0, s + i, DType::F32));
    let want = f32s(
        &cpu.to_host(&cpu.add(&up(&cpu, &a), &up(&cpu, &b)).unwrap())
            .unwrap(),
    );
    let (da, db) = (up(&gpu, &a), up(&gpu, &b));
    let add = || f32s(&gpu.to_host(&gpu.add(&da, &db).unwrap()).unwrap());
    assert_eq!(add(), want, "first add");
    let made = g.gpu().bind_groups_made();
    for i in 0..3 {
        assert_eq!(add(), want, "add {i} with a cached bind group");
    }
    assert_eq!(
        g.gpu().bind_groups_made(),
        made,
        "the same op on the same buffers made a bind group again"
    );
    // A weight-sized upload (a model being loaded) drops the cached groups: the next add makes its own.
    drop(g.gpu().upload(&vec![0u8; 1 << 20]));
    assert_eq!(add(), want, "add after the upload");
    assert_eq!(g.gpu().bind_groups_made(), made + 1);
    assert_eq!(fallbacks(&gpu), 0);
}

#[cfg(feature = "wgpu")]
#[test]
fn a_pooled_buffer_is_not_overwritten_before_its_last_reader_runs() {
    let _serial = serial();
    let Some(g) = wgpu_common::gpu() else {
        return;
    };
    let s = seed("pool_hazards");
    let gpu = Device::from_backend(Arc::new(g.clone())).with_policy(strict());
    let cpu = Device::cpu();
    let n = 3000;
    let [a, b, c] = [0, 1, 2].map(|i| rand(vec![n], 1.0, s + i, DType::F32));
    // Warm the pool with buffers of this size class, so the hazards below are reuses, not fresh buffers.
    drop((up(&gpu, &a), up(&gpu, &b), up(&gpu, &c)));
    gpu.synchronize().unwrap();
    let (subs0, _) = g.gpu().counters();
    // 1. An upload after its predecessor's release, both before any submission: the queued add must still
    //    read `a`, not `b` (a queue write lands ahead of the pending command buffer).
    let da = up(&gpu, &a);
    let sum = gpu.add(&da, &da).unwrap();
    drop(da);
    let db = up(&gpu, &b);
    // 2. An op output taking the buffer of a tensor whose reader is still pending: the new write is
    //    recorded after the read.
    let t = gpu.add(&sum, &db).unwrap();
    drop(sum);
    let dc = up(&gpu, &c);
    let u = gpu.add(&dc, &dc).unwrap();
    let (subs1, _) = g.gpu().counters();
    assert_eq!(subs1, subs0, "all of it queued in one command buffer");
    let want_t = cpu
        .add(
            &cpu.add(&up(&cpu, &a), &up(&cpu, &a)).unwrap(),
            &up(&cpu, &b),
        )
        .unwrap();
    let want_u = cpu.add(&up(&cpu, &c), &up(&cpu, &c)).unwrap();
    assert_eq!(
        gpu.to_host(&t).unwrap(),
        cpu.to_host(&want_t).unwrap(),
        "a + a + b"
    );
    assert_eq!(
        gpu.to_host(&u).unwrap(),
        cpu.to_host(&want_u).unwrap(),
        "c + c"
    );
    assert!(
        g.gpu().pooled_buffers() > 0,
        "the pool holds the released buffers"
    );
    assert_eq!(fallbacks(&gpu), 0);
}

#[test]
fn model_ops_match_the_cpu_on_every_device_and_dtype() {
    let _serial = serial();
    use lowbit::format::activation::GeluKind;
    use lowbit::format::rope::{RopeLayout, cos_sin_table, inv_freq};
    let s = seed("model_ops");
    let cpu = Device::from_backend(Arc::new(ReferenceBackend)).with_policy(strict());
    let (tokens, heads, kv_heads, hd) = (3usize, 4usize, 2usize, 16usize);
    let freqs = inv_freq(hd, 10000.0, None);
    let (cos, sin) = cos_sin_table(&freqs, 0..32);
    let cos = Tensor::f32(vec![32, hd / 2], cos).unwrap();
    let sin = Tensor::f32(vec![32, hd / 2], sin).unwrap();
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        // Bounds: f32 kernels agree within float32 rounding; narrowed results within one unit of the
        // narrow type's last place.
        let tol = match dtype {
            DType::F32 => 2e-6,
            DType::F16 => 1e-3,
            _ => 8e-3,
        };
        let a = rand(vec![tokens, heads, hd], 1.0, s, dtype);
        let b = rand(vec![tokens, heads, hd], 1.0, s + 1, dtype);
        let kc = rand(vec![8, kv_heads, hd], 1.0, s + 2, dtype);
        let vc = rand(vec![8, kv_heads, hd], 1.0, s + 3, dtype);
        let table = rand(vec![50, 24], 1.0, s + 4, dtype);
        let ids = [3u32, 49, 0, 7];
        type Run<'a> = dyn Fn(&Device) -> DeviceTensor + 'a;
        let cases: Vec<(&str, Box<Run<'_>>)> = vec![
            (
                "add",
                Box::new(|d: &Device| d.add(&up(d, &a), &up(d, &b)).unwrap()),
            ),
            (
                "silu_mul",
                Box::new(|d: &Device| d.silu_mul(&up(d, &a), &up(d, &b)).unwrap()),
            ),
            (
                "relu2_mul",
                Box::new(|d: &Device| d.relu2_mul(&up(d, &a), &up(d, &b)).unwrap()),
            ),
            (
                "gelu tanh",
                Box::new(|d: &Device| d.gelu(&up(d, &a), GeluKind::Tanh).unwrap()),
            ),
            (
                "gelu erf",
                Box::new(|d: &Device| d.gelu(&up(d, &a), GeluKind::Erf).unwrap()),
            ),
            (
                "rope halves",
                Box::new(|d: &Device| {
                    d.rope(
                        &up(d, &a),
                        &up(d, &cos),
                        &up(d, &sin),
                        5,
                        hd,
                        RopeLayout::Halves,
                    )
                    .unwrap()
                }),
            ),
            (
                "rope interleaved",
                Box::new(|d: &Device| {
                    d.rope(
                        &up(d, &a),
                        &up(d, &cos),
                        &up(d, &sin),
                        2,
                        hd,
                        RopeLayout::Interleaved,
                    )
                    .unwrap()
                }),
            ),
            (
                "attention",
                Box::new(|d: &Device| {
                    d.attention(&up(d, &a), &up(d, &kc), &up(d, &vc), 6, None)
                        .unwrap()
                }),
            ),
            (
                "embedding",
                Box::new(|d: &Device| d.embedding(&up(d, &table), &ids).unwrap()),
            ),
            (
                "cast",
                Box::new(|d: &Device| {
                    let x = d.cast(&up(d, &a), DType::F32).unwrap();
                    d.cast(&x, dtype).unwrap()
                }),
            ),
        ];
        for (name, run) in &cases {
            let want = cpu.to_host(&run(&cpu)).unwrap();
            for dev in devices() {
                let y = run(&dev);
                assert_eq!(y.dtype(), dtype, "{name} {dtype} on {}", dev.id());
                let got = dev.to_host(&y).unwrap();
                assert_eq!(got.shape(), want.shape());
                assert_close(
                    &format!("{name} {dtype} on {}", dev.id()),
                    &f32s(&got),
                    &f32s(&want),
                    tol,
                );
                if matches!(*name, "embedding" | "cast" | "add") {
                    assert_eq!(got, want, "{name} {dtype} on {}: exact", dev.id());
                }
                assert_eq!(fallbacks(&dev), 0, "{}", dev.id());
            }
        }
    }
}

#[test]
fn split_k_decode_attention_matches_the_cpu_on_every_device_and_dtype() {
    let _serial = serial();
    let s = seed("split_k_attention");
    let cpu = Device::from_backend(Arc::new(ReferenceBackend)).with_policy(strict());
    // (query rows, heads, kv heads, head_dim, kv_len): each splits the keys into chunks on the GPU, with a
    // ragged last chunk. Per KV-head group (the grouped kernel): 2, 4, 1, 2, 7 and 8 query heads per KV
    // head, head sizes 16-256, the causal mask leaving early rows without keys in the last chunk (nq 3 at
    // 513 keys, nq 64 at 2100), one chunk of 5 keys. Per head (the split kernel): 16 and 12 query heads per
    // KV head, a head size not a multiple of 16.
    let cases = [
        ((1usize, 4usize, 2usize, 64usize, 700usize), "grouped"),
        ((3, 4, 1, 32, 513), "grouped"),
        ((2, 6, 3, 128, 1500), "grouped"),
        ((1, 2, 2, 16, 2085), "grouped"),
        ((64, 8, 4, 16, 2100), "grouped"),
        ((1, 28, 4, 128, 451), "grouped"),
        ((1, 16, 2, 256, 300), "grouped"),
        ((1, 8, 2, 64, 5), "grouped"),
        ((1, 16, 1, 64, 800), "per head"),
        ((3, 12, 1, 48, 900), "per head"),
        ((2, 4, 2, 20, 600), "per head"),
    ];
    for (ci, &((nq, heads, kv_heads, hd, kv_len), kind)) in cases.iter().enumerate() {
        #[cfg(feature = "wgpu")]
        {
            use lowbit::backend::wgpu::model_ops::{AttentionDims, AttentionPlan, attention_plan};
            let dims = AttentionDims {
                nq,
                n_heads: heads,
                n_kv_heads: kv_heads,
                head_dim: hd,
                kv_len,
                pos_start: kv_len - nq,
                scale: 1.0,
            };
            let plan = attention_plan(&dims);
            let (chunk, planned) = match plan {
                AttentionPlan::Groups { chunk, .. } => (chunk, "grouped"),
                AttentionPlan::Split { chunk } => (chunk, "per head"),
                AttentionPlan::OnePass => (0, "one pass"),
            };
            let ragged = chunk > 0 && !kv_len.is_multiple_of(chunk);
            assert!(
                planned == kind && ragged,
                "case {ci}: the wgpu backend splits {kv_len} keys {kind}, the last chunk ragged ({plan:?})"
            );
        }
        #[cfg(not(feature = "wgpu"))]
        let _ = kind;
        attention_matches_the_cpu(
            &cpu,
            s + 100 * ci as u64,
            ci,
            (nq, heads, kv_heads, hd, kv_len),
        );
    }
}

#[test]
fn prompt_attention_matches_the_cpu_on_every_device_and_dtype() {
    let _serial = serial();
    let s = seed("prompt_attention");
    let cpu = Device::from_backend(Arc::new(ReferenceBackend)).with_policy(strict());
    // (query rows, heads, kv heads, head_dim, kv_len) with query rows x heads past the split kernel's range:
    // a whole prompt; a prompt after cached positions with a ragged last query tile; head sizes that leave
    // lanes without a column (20, 80); one that is not a multiple of 4 (the one-block-per-row kernel).
    let cases = [
        (40usize, 32usize, 8usize, 128usize, 40usize),
        (150, 8, 2, 64, 170),
        (70, 16, 16, 20, 70),
        (33, 32, 4, 80, 100),
        (40, 32, 8, 6, 45),
    ];
    for (ci, &case) in cases.iter().enumerate() {
        attention_matches_the_cpu(&cpu, s + 100 * ci as u64, ci, case);
    }
}

/// Causal attention of `nq` query rows after `kv_len - nq` cached positions, each dtype, on every device
/// against the CPU reference.
fn attention_matches_the_cpu(
    cpu: &Device,
    seed: u64,
    ci: usize,
    (nq, heads, kv_heads, hd, kv_len): (usize, usize, usize, usize, usize),
) {
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        // f32: the documented attention bound (4e-6 + 1e-6 sqrt(kv_len)); narrowed results within one
        // unit of the narrow type's last place.
        let tol = match dtype {
            DType::F32 => 4e-6 + 1e-6 * (kv_len as f32).sqrt(),
            DType::F16 => 1e-3,
            _ => 8e-3,
        };
        let q = rand(vec![nq, heads, hd], 1.0, seed, dtype);
        let kc = rand(vec![kv_len, kv_heads, hd], 1.0, seed + 1, dtype);
        let vc = rand(vec![kv_len, kv_heads, hd], 1.0, seed + 2, dtype);
        let run = |d: &Device| {
            d.attention(&up(d, &q), &up(d, &kc), &up(d, &vc), kv_len, None)
                .unwrap()
        };
        let want = cpu.to_host(&run(cpu)).unwrap();
        for dev in devices() {
            let got = dev.to_host(&run(&dev)).unwrap();
            assert_eq!(got.dtype(), dtype);
            assert_close(
                &format!("attention case {ci} {dtype} on {}", dev.id()),
                &f32s(&got),
                &f32s(&want),
                tol,
            );
            assert_eq!(fallbacks(&dev), 0, "{}", dev.id());
        }
    }
}

#[test]
fn ternary_quantization_gives_one_answer_on_every_device() {
    let _serial = serial();
    let s = seed("ternary_quantize");
    // The shape at which a GPU-computed weight_scale once differed by 2 ulp: the scale is computed once, on
    // the host, for every backend.
    let w = rand(vec![300, 520], 0.05, s, DType::F32);
    let want = Device::from_backend(Arc::new(ReferenceBackend))
        .ternary_quantize(&w)
        .unwrap();
    for dev in devices() {
        let got = dev.ternary_quantize(&w).unwrap();
        assert_eq!(
            got.weight_scale.to_bits(),
            want.weight_scale.to_bits(),
            "weight_scale on {}",
            dev.id()
        );
        assert!(got.packed == want.packed, "packed bytes on {}", dev.id());
        assert_eq!(fallbacks(&dev), 0, "{}", dev.id());
    }
}

/// Values for the quantizers: blocks of very different magnitudes, exact small ratios (the ties f16/bf16
/// data produce), whole zero blocks, blocks of nothing but zeros and NaNs, and NaN, infinities, signed zeros
/// and subnormals sprinkled in.
fn quantizer_input(n: usize, blocksize: usize, seed: u64, dtype: DType) -> Tensor {
    let mut r = lowbit::synth::SplitMix64::new(seed);
    let mut below = move |k: u64| (r.next_u64() % k) as i64;
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        let len = blocksize.min(n - v.len());
        let kind = below(10);
        let scale = 10f32.powi(below(8) as i32 - 4);
        for _ in 0..len {
            v.push(match kind {
                0 => 0.0,
                1 => [0.0, f32::NAN][below(2) as usize],
                2 => (below(49) - 24) as f32 / 24.0 * scale,
                3 if below(50) == 0 => f32::from_bits(below(0x7f_ffff) as u32 + 1),
                _ => (below(1 << 24) as f32 / (1 << 23) as f32 - 1.0) * scale,
            });
        }
        if kind >= 7 {
            let at = v.len() - 1 - below(len as u64) as usize;
            v[at] = common::SPECIAL_F32[below(6) as usize];
        }
    }
    Tensor::from_floats(vec![n], FloatVec::from_f32(v, dtype)).unwrap()
}

/// NF4 and FP4 codes of values at and around every decision threshold and every edge of the CUDA
/// quantizer's 1/16-wide NF4 cells (kernels/quant.cu), on every device, byte for byte against the CPU
/// reference. Each 64-value block holds 1.0, so its absmax is 1 and the scaled values are the values
/// themselves (within the hardware reciprocal of 1): the floats nearest a threshold or a cell edge are
/// quantized as written, where a cell table off by one would give the neighbouring code.
#[test]
fn fourbit_codes_at_every_threshold_and_cell_edge_match_the_reference() {
    use lowbit::format::codebook::{FP4_THRESHOLDS, NF4_THRESHOLDS};
    let _serial = serial();
    let reference = Device::from_backend(Arc::new(ReferenceBackend));
    let mut points: Vec<f32> = NF4_THRESHOLDS.to_vec();
    points.extend(FP4_THRESHOLDS.iter().flat_map(|&t| [t, -t]));
    points.extend((0..=32).map(|k| k as f32 / 16.0 - 1.0));
    let mut values = Vec::new();
    for p in points {
        for ulps in -8i32..=8 {
            let v = f32::from_bits((p.to_bits() as i32 + ulps) as u32);
            // Stepping the bits of 0.0 down gives NaNs: take the other side's value negated instead.
            let v = if p == 0.0 {
                (ulps as f32) * f32::from_bits(1 << 23)
            } else {
                v
            };
            if v.is_finite() && v.abs() <= 1.0 {
                values.push(v);
            }
        }
    }
    let mut x = Vec::new();
    for chunk in values.chunks(63) {
        x.push(1.0f32);
        x.extend_from_slice(chunk);
        x.resize(x.len().next_multiple_of(64), 0.5);
    }
    let n = x.len();
    let x = Tensor::from_floats(vec![n], FloatVec::from_f32(x, DType::F32)).unwrap();
    for qt in [FourBitType::Nf4, FourBitType::Fp4] {
        let want = reference.quantize_4bit(&x, qt, 64, false).unwrap();
        for dev in devices() {
            let got = dev.quantize_4bit(&x, qt, 64, false).unwrap();
            assert!(
                got.packed == want.packed,
                "{qt:?} on {}: codes at thresholds and cell edges differ from the reference",
                dev.id()
            );
        }
    }
}

/// The quantizers and dequantizers on every device, byte for byte against the CPU reference: every block
/// size, f32/f16/bf16 input, lengths with a partial last block that are and are not multiples of 8 (CUDA's
/// vector kernels and its scalar ones), and the special values of [`quantizer_input`] (a dequantized NaN may
/// be any NaN).
#[test]
fn quantizers_are_byte_identical_to_the_reference_on_every_device() {
    use lowbit::format::blocksize::{BLOCKSIZES_4BIT, BLOCKSIZES_8BIT};
    let _serial = serial();
    let s = seed("quantizers");
    let reference = Device::from_backend(Arc::new(ReferenceBackend));
    let devs = devices();
    // Dequantized values bit for bit, any NaN as one (a GPU writes its own NaN for 0 * inf).
    let bytes = |t: &Tensor| -> Vec<u32> {
        f32s(t)
            .iter()
            .map(|v| {
                if v.is_nan() {
                    f32::NAN.to_bits()
                } else {
                    v.to_bits()
                }
            })
            .collect()
    };
    let lengths = |case: usize, bs: usize| [3 * bs, 2 * bs + 8 * (1 + case), bs + 13];
    for (case, &bs) in BLOCKSIZES_4BIT.iter().enumerate() {
        for (d, dtype) in [DType::F32, DType::F16, DType::BF16]
            .into_iter()
            .enumerate()
        {
            for (i, n) in lengths(case, bs).into_iter().enumerate() {
                let x = quantizer_input(n, bs, s + (100 * case + 10 * d + i) as u64, dtype);
                for qt in [FourBitType::Nf4, FourBitType::Fp4] {
                    let want = reference.quantize_4bit(&x, qt, bs, false).unwrap();
                    let absmax = want.state.absmax.to_f32();
                    let wd = bytes(&reference.dequantize_4bit(&want).unwrap());
                    let wd32 = bytes(&reference.dequantize_4bit_as(&want, DType::F32).unwrap());
                    for dev in &devs {
                        let what = format!("{qt:?} {dtype} bs {bs} n {n} on {}", dev.id());
                        let got = dev.quantize_4bit(&x, qt, bs, false).unwrap();
                        assert!(got.packed == want.packed, "{what}: packed bytes");
                        assert_eq!(
                            bits(&got.state.absmax.to_f32()),
                            bits(&absmax),
                            "{what}: absmax"
                        );
                        let d = dev.dequantize_4bit(&want).unwrap();
                        assert!(bytes(&d) == wd, "{what}: dequantized");
                        let d32 = dev.dequantize_4bit_as(&want, DType::F32).unwrap();
                        assert!(bytes(&d32) == wd32, "{what}: dequantized to f32");
                    }
                }
            }
        }
    }
    for (case, &bs) in BLOCKSIZES_8BIT.iter().enumerate() {
        for (d, dtype) in [DType::F32, DType::F16, DType::BF16]
            .into_iter()
            .enumerate()
        {
            for (i, n) in lengths(case, bs).into_iter().enumerate() {
                let x = quantizer_input(n, bs, s + (5000 + 100 * case + 10 * d + i) as u64, dtype);
                for signed in [true, false] {
                    let code = lowbit::format::dynamic_map(signed);
                    let want = reference.quantize_blockwise(&x, bs, Some(code)).unwrap();
                    let wd = bytes(&reference.dequantize_blockwise(&want, None).unwrap());
                    for dev in &devs {
                        let what = format!(
                            "8-bit signed {signed} {dtype} bs {bs} n {n} on {}",
                            dev.id()
                        );
                        let got = dev.quantize_blockwise(&x, bs, Some(code)).unwrap();
                        assert!(got.codes == want.codes, "{what}: codes");
                        assert_eq!(bits(&got.absmax), bits(&want.absmax), "{what}: absmax");
                        let d = dev.dequantize_blockwise(&want, None).unwrap();
                        assert!(bytes(&d) == wd, "{what}: dequantized");
                    }
                }
            }
        }
    }
    for dev in &devs {
        assert_eq!(fallbacks(dev), 0, "{}", dev.id());
    }
}
