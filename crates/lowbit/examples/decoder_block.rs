//! Times one Llama-3-8B decoder block (NF4, block size 64, double quantization) decoding one token over a
//! KV cache on a device, chained on the device, and reports the bytes it must move per token.
//!
//! `cargo run --release --example decoder_block -- [DEVICE] [CONTEXT] [STEPS]` (defaults: auto, 2048, 20).
//! Pass `small` as a fourth argument for a quarter-size block (quick runs on software GPUs).

use lowbit::nn::{BlockConfig, BlockWeights, DecoderBlock};
use lowbit::tensor::DType;
use lowbit::{Device, FourBitType};
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
    Ok(())
}
