//! Times one Llama-3-8B decoder block (NF4, block size 64, double quantization) decoding one token over a
//! KV cache on a device, chained on the device, and reports the bytes it must move per token; then the
//! block's per-op split (each op kind repeated STEPS times chained on the device, scaled by how often it
//! occurs in a block) and the per-call cost of a tiny op (an add of 4096 floats) chained on the device
//! against the host-slice round trip (upload, op, read back each call).
//!
//! `cargo run --release --example decoder_block -- [DEVICE] [CONTEXT] [STEPS] [small] [TINY_CALLS]`
//! (defaults: auto, 2048, 20, full size, 1000). `small` gives a quarter-size block (quick runs on software
//! GPUs); `full` keeps Llama-3-8B's shapes.

use lowbit::nn::{BlockConfig, BlockOp, BlockWeights, DecoderBlock};
use lowbit::tensor::DType;
use lowbit::{Device, DeviceTensor, FourBitType};
use std::time::Instant;

fn main() -> lowbit::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dev = match args.first().map(String::as_str) {
        None | Some("auto") => Device::from_env()?,
        Some(spec) => Device::open(spec)?,
    };
    let context: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(2048);
    let steps: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(20);
    let warmup = 3;
    let mut cfg = BlockConfig::llama3_8b(context + warmup + steps);
    if args.get(3).map(String::as_str) == Some("small") {
        cfg.hidden /= 4;
        cfg.heads /= 4;
        cfg.kv_heads /= 4;
        cfg.intermediate /= 4;
    }
    println!("device {} ({}), block {cfg:?}", dev.id(), dev.name());
    let weights = BlockWeights::synthetic(&cfg, 7);
    let t0 = Instant::now();
    let mut block = DecoderBlock::new(&dev, cfg, &weights, FourBitType::Nf4)?;
    println!(
        "quantized and uploaded in {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    block.set_cached(context)?;
    let x = dev.to_device(&lowbit::synth::normal(
        vec![1, cfg.hidden],
        1.0,
        3,
        DType::F32,
    ))?;
    for _ in 0..warmup {
        block.forward(&dev, &x)?;
    }
    dev.synchronize()?;
    let bytes = block.bytes_per_token();
    let t = Instant::now();
    let mut y = x.clone();
    for _ in 0..steps {
        y = block.forward(&dev, &x)?;
    }
    dev.synchronize()?;
    let per = t.elapsed().as_secs_f64() / steps as f64;
    let out = dev.to_host(&y)?;
    let stats = dev.stats();
    let fallbacks: u64 = stats.ops.values().map(|s| s.fallbacks).sum();
    println!(
        "decode at context {context}: {:.1} us per block, {:.1} MB moved per token, {:.1} GB/s, {fallbacks} fallbacks, output[0] = {:?}",
        per * 1e6,
        bytes as f64 / 1e6,
        bytes as f64 / per / 1e9,
        match out.data() {
            lowbit::tensor::TensorData::Float(f) => f.to_f32_vec()[0],
            _ => f32::NAN,
        }
    );
    op_split(&dev, &block, steps, per)?;
    let tiny_calls: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(1000);
    tiny_op(&dev, tiny_calls)?;
    Ok(())
}

/// Each op kind of the block repeated `reps` times chained on the device (one wait at the end), scaled by how
/// often it occurs per block; the sum next to the measured block time shows what chaining hides or adds.
fn op_split(dev: &Device, block: &DecoderBlock, reps: usize, block_s: f64) -> lowbit::Result<()> {
    println!(
        "per-op split at context {} ({reps} chained calls each):",
        block.cached()
    );
    println!(
        "  {:<14} {:>12} {:>9} {:>13} {:>7}",
        "op", "us per call", "per block", "us per block", "share"
    );
    let mut rows = Vec::new();
    for kind in BlockOp::ALL {
        block.repeat_op(dev, kind, 2)?;
        dev.synchronize()?;
        let t = Instant::now();
        let per_block = block.repeat_op(dev, kind, reps)?;
        dev.synchronize()?;
        let call = t.elapsed().as_secs_f64() / reps as f64;
        rows.push((kind, call, per_block));
    }
    let total: f64 = rows.iter().map(|(_, call, n)| call * *n as f64).sum();
    for (kind, call, n) in &rows {
        let in_block = call * *n as f64;
        println!(
            "  {:<14} {:>12.1} {:>9} {:>13.1} {:>6.1}%",
            format!("{kind:?}"),
            call * 1e6,
            n,
            in_block * 1e6,
            100.0 * in_block / total
        );
    }
    println!(
        "  sum {:.1} us per block (the block itself: {:.1} us)",
        total * 1e6,
        block_s * 1e6
    );
    Ok(())
}

/// An add of 4096 f32 values, `calls` times: chained on the device with one read at the end, against the
/// host-slice round trip (upload both operands, add, read back) on every call.
fn tiny_op(dev: &Device, calls: usize) -> lowbit::Result<()> {
    let n = 4096;
    let a = lowbit::synth::normal(vec![n], 1.0, 5, DType::F32);
    let b = lowbit::synth::normal(vec![n], 1.0, 6, DType::F32);
    let db: DeviceTensor = dev.to_device(&b)?;
    let mut y = dev.to_device(&a)?;
    for _ in 0..10 {
        y = dev.add(&y, &db)?;
    }
    dev.to_host(&y)?;
    let t = Instant::now();
    for _ in 0..calls {
        y = dev.add(&y, &db)?;
    }
    dev.to_host(&y)?;
    let chained = t.elapsed().as_secs_f64() / calls as f64;
    let t = Instant::now();
    for _ in 0..calls {
        let s = dev.add(&dev.to_device(&a)?, &dev.to_device(&b)?)?;
        dev.to_host(&s)?;
    }
    let round_trip = t.elapsed().as_secs_f64() / calls as f64;
    println!(
        "tiny op (add of {n} f32), {calls} calls: {:.1} us per call chained on the device (one read at the end), {:.1} us per call uploading, adding and reading back each time",
        chained * 1e6,
        round_trip * 1e6
    );
    Ok(())
}
