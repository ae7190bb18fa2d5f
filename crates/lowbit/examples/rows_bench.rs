//! Small batches through the quantized linear layers on any device: NF4 (4-bit), LLM.int8() and BitNet
//! ternary weights resident on the device, 1-32 activation rows, on the shapes the small-batch goals are
//! stated for. Each point queues `iters` calls back to back on device tensors (cycling through enough
//! weight copies to leave the GPU's L2 cache), then waits once: the time per call, and its ratio to one row.
//! Strict mode: a call that would fall back to the CPU is an error. Prints one JSON object per line.
//!
//! usage: cargo run --release -p lowbit --example rows_bench -- [DEVICE] [--quick] [--dtype f16|bf16|f32]

use lowbit::Device;
use lowbit::device_tensor::DeviceTensor;
use lowbit::ops::Linear8bitLt;
use lowbit::runtime::RecoveryPolicy;
use lowbit::tensor::DType;
use lowbit::{FourBitType, Result};
use std::time::Instant;

/// Weight bytes cycled through per point on GPUs: over twice the largest L2 cache (the H200's 60 MB).
const ROTATE_BYTES: usize = 160 << 20;
const ROWS: [usize; 6] = [1, 2, 4, 8, 16, 32];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let dtype = args
        .iter()
        .position(|a| a == "--dtype")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| DType::parse(s))
        .unwrap_or(DType::F16);
    let spec = args
        .iter()
        .find(|a| !a.starts_with("--") && DType::parse(a).is_none());
    let dev = match spec.map(String::as_str) {
        None | Some("auto") => Device::from_env()?,
        Some(s) => Device::open(s)?,
    }
    .with_policy(RecoveryPolicy {
        strict: true,
        ..RecoveryPolicy::default()
    });
    eprintln!("device {} ({}), activations {dtype}", dev.id(), dev.name());
    let host = dev.info().backend == "cpu";
    let shapes: &[(usize, usize)] = if quick {
        &[(1024, 1024)]
    } else {
        &[(4096, 4096), (4096, 14336), (14336, 4096)]
    };
    for &(out, inp) in shapes {
        let w = lowbit::synth::normal(vec![out, inp], 0.02, 7, DType::F16);
        let copies = |bytes: usize| {
            if host {
                1
            } else {
                ROTATE_BYTES.div_ceil(bytes).clamp(2, 16)
            }
        };
        let q4 = dev.quantize_4bit(&w, FourBitType::Nf4, 64, true)?;
        let n4 = copies(out * inp / 2);
        let w4: Vec<_> = (0..n4)
            .map(|_| dev.upload_4bit(&q4))
            .collect::<Result<_>>()?;
        let l8 = Linear8bitLt::from_weight(&dev, &w, None, Linear8bitLt::default_threshold())?;
        let n8 = copies(out * inp);
        let w8: Vec<_> = (0..n8)
            .map(|_| dev.upload_8bit(&l8))
            .collect::<Result<_>>()?;
        let tq = dev.ternary_quantize(&w)?;
        let nt = copies(out * inp / 4);
        let wt: Vec<_> = (0..nt)
            .map(|_| dev.upload_ternary(&tq))
            .collect::<Result<_>>()?;
        for (fmt, bytes) in [
            ("nf4", out * inp / 2),
            ("int8", out * inp),
            ("ternary", out * inp / 4),
        ] {
            let mut one_row = None;
            for rows in ROWS {
                let x = dev.to_device(&lowbit::synth::normal(vec![rows, inp], 1.0, 9, dtype))?;
                let run = |i: usize| -> Result<DeviceTensor> {
                    match fmt {
                        "nf4" => dev.linear_4bit(&x, &w4[i % n4], None),
                        "int8" => dev.linear_8bit(&x, &w8[i % n8], l8.threshold),
                        _ => dev.linear_ternary(&x, &wt[i % nt], None),
                    }
                };
                let t = time(&dev, host, |i| run(i).map(|_| ()))?;
                let base = *one_row.get_or_insert(t);
                println!(
                    "{{\"op\": \"linear_{fmt}\", \"device\": \"{}\", \"shape\": [{out}, {inp}], \"rows\": {rows}, \
                     \"dtype\": \"{dtype}\", \"mean_s\": {t:e}, \"vs_one_row\": {:.3}, \"weight_gbps\": {:.1}}}",
                    dev.id(),
                    t / base,
                    bytes as f64 / t / 1e9
                );
            }
        }
    }
    if let Some(s) = dev.stats().ops.values().find(|s| s.fallbacks > 0) {
        return Err(lowbit::Error::invalid(
            "rows_bench",
            format!("an op fell back to the CPU: {s:?}"),
        ));
    }
    Ok(())
}

/// Mean seconds per call over queued calls after a warm-up: about 0.3 s of work, at least 5 calls.
fn time(dev: &Device, host: bool, mut f: impl FnMut(usize) -> Result<()>) -> Result<f64> {
    for i in 0..3 {
        f(i)?;
    }
    dev.synchronize()?;
    let t0 = Instant::now();
    f(3)?;
    dev.synchronize()?;
    let once = t0.elapsed().as_secs_f64().max(1e-7);
    let iters = ((0.3 / once) as usize).clamp(5, if host { 200 } else { 2000 });
    let t0 = Instant::now();
    for i in 0..iters {
        f(i)?;
    }
    dev.synchronize()?;
    Ok(t0.elapsed().as_secs_f64() / iters as f64)
}
