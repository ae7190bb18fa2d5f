//! Times the CUDA backend's 4-bit linear layers on device-resident tensors (no host copies inside the timed
//! region), on the shapes `scripts/bench_bnb_cuda.py` times bitsandbytes on, with the same method: `iters`
//! ops queued back to back, cycling through enough weight copies to exceed the L2 cache (or one copy for
//! the L2-resident case), then one synchronisation; the time per op is the total over `iters`. Prints one
//! JSON object per line.
//!
//! usage: cargo run --release -p lowbit --example cuda_bench [-- --quick] [--one-row] [--shape OUTxIN]
//! [--host-cost] [--kernels] [--mma] (`--host-cost`: only where the host time of one small op goes, layer by
//! layer; `--kernels`: only the quantizers, dequantizers, int8 products and ternary GEMVs, on device
//! allocations; `--mma`: only f16 batches of 2-16 rows, the tensor-core kernel's)

use lowbit::backend::cuda::CudaBackend;
use lowbit::runtime::RecoveryPolicy;
use lowbit::tensor::DType;
use lowbit::{Device, FourBitType};
use std::sync::Arc;
use std::time::Instant;

/// Bytes of weights cycled through when timing from device memory: over twice the H200's 60 MB L2.
const ROTATE_BYTES: usize = 160 << 20;

fn main() -> lowbit::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    // One activation row only (the GEMV shapes), for comparing kernel variants.
    let one_row = std::env::args().any(|a| a == "--one-row");
    let backend = CudaBackend::open(0)?;
    if std::env::args().any(|a| a == "--host-cost") {
        for (what, us) in backend.host_costs(5000)? {
            emit(&[
                ("op", "\"host_cost\"".into()),
                ("what", format!("{what:?}")),
                ("us", format!("{us:.2}")),
            ]);
        }
        return Ok(());
    }
    let backend = Arc::new(backend);
    let dev = Device::from_backend(backend.clone()).with_policy(RecoveryPolicy {
        strict: true,
        ..RecoveryPolicy::default()
    });
    eprintln!("device: {} ({})", dev.id(), dev.name());
    copy_bandwidth(&dev)?;
    // One shape only (profiling one kernel).
    let only: Option<(usize, usize)> = std::env::args()
        .skip_while(|a| a != "--shape")
        .nth(1)
        .and_then(|s| {
            let (o, i) = s.split_once('x')?;
            Some((o.parse().ok()?, i.parse().ok()?))
        });
    let all = [(4096, 4096), (4096, 14336), (14336, 4096), (8192, 28672)];
    let shapes: &[(usize, usize)] = match (only.as_ref(), quick) {
        (Some(s), _) => std::slice::from_ref(s),
        (None, true) => &all[..1],
        (None, false) => &all,
    };
    if std::env::args().any(|a| a == "--kernels") {
        return kernels(&dev, &backend, shapes);
    }
    if std::env::args().any(|a| a == "--mma") {
        for &(out, inp) in shapes {
            for batch in [2, 4, 8, 16] {
                linear_4bit(&dev, out, inp, DType::F16, batch, true)?;
            }
        }
        return Ok(());
    }
    for &(out, inp) in shapes {
        for dtype in [DType::F16, DType::BF16] {
            let batches: &[usize] = if one_row { &[1] } else { &[1, 2, 4, 8, 16] };
            for &batch in batches {
                linear_4bit(&dev, out, inp, dtype, batch, true)?;
            }
        }
        linear_4bit(&dev, out, inp, DType::F16, 1, false)?;
        // The activations of a model's decode step (f32).
        linear_4bit(&dev, out, inp, DType::F32, 1, true)?;
    }
    if one_row {
        return Ok(());
    }
    for &(out, inp) in &shapes[..shapes.len().min(2)] {
        linear_4bit(&dev, out, inp, DType::F16, 512, false)?;
    }
    // A Llama-3 output head kept in bf16 under f32 activations (one decode step's largest read).
    output_head(&dev, 128256, 4096)?;
    assert_no_fallbacks(&dev);
    Ok(())
}

fn emit(fields: &[(&str, String)]) {
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("\"{k}\": {v}"))
        .collect();
    println!("{{{}}}", body.join(", "));
}

/// Device-to-device copy of 256 MB (bytes read + written per second).
fn copy_bandwidth(dev: &Device) -> lowbit::Result<()> {
    let n = 64 << 20;
    let src = dev.to_device(&lowbit::synth::normal(vec![n], 1.0, 1, DType::F32))?;
    let dst = dev.to_device(&lowbit::synth::normal(vec![n], 1.0, 2, DType::F32))?;
    let t = time(dev, 20, |_| dev.copy_rows(&dst, 0, &src).map(|_| ()))?;
    emit(&[
        ("op", "\"copy\"".into()),
        ("impl", "\"lowbit-cuda\"".into()),
        ("shape", format!("[{n}]")),
        ("mean_s", format!("{t:e}")),
        ("gbps", format!("{:.1}", 2.0 * n as f64 * 4.0 / t / 1e9)),
    ]);
    Ok(())
}

/// Mean seconds per call of `f(i)` over `iters` queued calls, after a warm-up.
fn time(
    dev: &Device,
    iters: usize,
    mut f: impl FnMut(usize) -> lowbit::Result<()>,
) -> lowbit::Result<f64> {
    for i in 0..3 {
        f(i)?;
    }
    dev.synchronize()?;
    let t0 = Instant::now();
    for i in 0..iters {
        f(i)?;
    }
    dev.synchronize()?;
    Ok(t0.elapsed().as_secs_f64() / iters as f64)
}

fn linear_4bit(
    dev: &Device,
    out: usize,
    inp: usize,
    dtype: DType,
    batch: usize,
    rotate: bool,
) -> lowbit::Result<()> {
    let w = lowbit::synth::normal(vec![out, inp], 0.02, 7, DType::F16);
    let q = dev.quantize_4bit(&w, FourBitType::Nf4, 64, false)?;
    let wbytes = q.packed.len() + q.state.numel().div_ceil(64) * 4;
    let copies = if rotate {
        ROTATE_BYTES.div_ceil(wbytes).clamp(2, 16)
    } else {
        1
    };
    let weights: Vec<_> = (0..copies)
        .map(|_| dev.upload_4bit(&q))
        .collect::<lowbit::Result<_>>()?;
    let x = dev.to_device(&lowbit::synth::normal(vec![batch, inp], 1.0, 9, dtype))?;
    let iters = if batch >= 512 { 20 } else { 200 };
    let t = time(dev, iters, |i| {
        dev.linear_4bit(&x, &weights[i % copies], None).map(|_| ())
    })?;
    let bytes = wbytes + (batch * (inp + out)) * 2;
    emit(&[
        (
            "op",
            format!(
                "\"{}\"",
                if batch == 1 {
                    "gemv_4bit"
                } else {
                    "matmul_4bit"
                }
            ),
        ),
        ("impl", "\"lowbit-cuda\"".into()),
        ("shape", format!("[{out}, {inp}]")),
        ("batch", batch.to_string()),
        ("dtype", format!("\"{dtype}\"")),
        (
            "weights_from",
            format!("\"{}\"", if rotate { "rotated" } else { "one_copy" }),
        ),
        ("mean_s", format!("{t:e}")),
        ("gbps", format!("{:.1}", bytes as f64 / t / 1e9)),
        (
            "tflops",
            format!("{:.2}", 2.0 * (batch * out * inp) as f64 / t / 1e12),
        ),
    ]);
    Ok(())
}

/// One f32 activation row times a bf16 weight `[out, inp]` (read as stored, widened in registers).
fn output_head(dev: &Device, out: usize, inp: usize) -> lowbit::Result<()> {
    let w = dev.to_device(&lowbit::synth::normal(vec![out, inp], 0.02, 7, DType::BF16))?;
    let x = dev.to_device(&lowbit::synth::normal(vec![1, inp], 1.0, 9, DType::F32))?;
    let iters = 50;
    let t = time(dev, iters, |_| dev.linear(&x, &w, None).map(|_| ()))?;
    let bytes = out * inp * 2 + inp * 4 + out * 4;
    emit(&[
        ("op", "\"linear_bf16_weight\"".into()),
        ("impl", "\"lowbit-cuda\"".into()),
        ("shape", format!("[{out}, {inp}]")),
        ("batch", "1".into()),
        ("dtype", "\"f32\"".into()),
        ("weights_from", "\"one_copy\"".into()),
        ("mean_s", format!("{t:e}")),
        ("gbps", format!("{:.1}", bytes as f64 / t / 1e9)),
    ]);
    Ok(())
}

/// The quantizers, dequantizers and int8 products on device allocations (GPU time from CUDA events), then
/// the ternary GEMV at the GEMV shapes, weights rotated past L2.
fn kernels(dev: &Device, backend: &CudaBackend, shapes: &[(usize, usize)]) -> lowbit::Result<()> {
    let n = 64 << 20;
    for k in backend.kernel_costs(n, 20)? {
        emit(&[
            ("op", format!("\"{}\"", k.op)),
            ("impl", "\"lowbit-cuda\"".into()),
            ("detail", format!("\"{}\"", k.detail)),
            ("shape", format!("[{n}]")),
            ("mean_s", format!("{:e}", k.seconds)),
            ("gbps", format!("{:.1}", k.bytes as f64 / k.seconds / 1e9)),
        ]);
    }
    for &(out, inp) in shapes {
        let w = lowbit::synth::normal(vec![out, inp], 0.02, 7, DType::F16);
        let q = dev.ternary_quantize(&w)?;
        let wbytes = q.packed.len();
        let copies = ROTATE_BYTES.div_ceil(wbytes).clamp(2, 16);
        let weights: Vec<_> = (0..copies)
            .map(|_| dev.upload_ternary(&q))
            .collect::<lowbit::Result<_>>()?;
        for dtype in [DType::F32, DType::F16] {
            let x = dev.to_device(&lowbit::synth::normal(vec![1, inp], 1.0, 9, dtype))?;
            let t = time(dev, 200, |i| {
                dev.linear_ternary(&x, &weights[i % copies], None)
                    .map(|_| ())
            })?;
            let bytes = wbytes + (inp + out) * dtype.size_in_bytes();
            emit(&[
                ("op", "\"ternary_gemv\"".into()),
                ("impl", "\"lowbit-cuda\"".into()),
                ("shape", format!("[{out}, {inp}]")),
                ("batch", "1".into()),
                ("dtype", format!("\"{dtype}\"")),
                ("weights_from", "\"rotated\"".into()),
                ("mean_s", format!("{t:e}")),
                ("gbps", format!("{:.1}", bytes as f64 / t / 1e9)),
            ]);
        }
    }
    assert_no_fallbacks(dev);
    Ok(())
}

/// The benchmark's device is strict; this also checks that no op was routed to the CPU.
fn assert_no_fallbacks(dev: &Device) {
    if let Some(s) = dev.stats().ops.values().find(|s| s.fallbacks > 0) {
        panic!("an op fell back to the CPU: {s:?}");
    }
}
