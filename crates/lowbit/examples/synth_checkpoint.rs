//! Writes a synthetic Llama-3-8B-shaped bf16 checkpoint directory, sharded as transformers'
//! `save_pretrained` writes it (config.json, `model-0000i-of-0000n.safetensors` of at most `--shard-gb`,
//! `model.safetensors.index.json`), for measuring `lowbit quantize` (scripts/bench_quantize.sh).
//!
//! `cargo run --release --example synth_checkpoint -- OUT [--layers 32] [--shard-gb 5] [--seed 1]`
//! (32 layers: 8.0 B parameters, 16.1 GB). Values: Gaussian-like rows of varying scale, generated in
//! parallel tensor by tensor (memory stays at one tensor).

use half::bf16;
use lowbit::io::StDtype;
use lowbit::io::safetensors_write::{PlannedTensor, StreamingWriter, pt_metadata};
use rayon::prelude::*;
use std::path::PathBuf;

const HIDDEN: usize = 4096;
const INTERMEDIATE: usize = 14336;
const KV: usize = 1024;
const VOCAB: usize = 128256;

fn tensors(layers: usize) -> Vec<(String, Vec<usize>)> {
    let mut t = vec![("model.embed_tokens.weight".to_string(), vec![VOCAB, HIDDEN])];
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        for (n, s) in [
            ("input_layernorm.weight", vec![HIDDEN]),
            ("mlp.down_proj.weight", vec![HIDDEN, INTERMEDIATE]),
            ("mlp.gate_proj.weight", vec![INTERMEDIATE, HIDDEN]),
            ("mlp.up_proj.weight", vec![INTERMEDIATE, HIDDEN]),
            ("post_attention_layernorm.weight", vec![HIDDEN]),
            ("self_attn.k_proj.weight", vec![KV, HIDDEN]),
            ("self_attn.o_proj.weight", vec![HIDDEN, HIDDEN]),
            ("self_attn.q_proj.weight", vec![HIDDEN, HIDDEN]),
            ("self_attn.v_proj.weight", vec![KV, HIDDEN]),
        ] {
            t.push((format!("{p}.{n}"), s));
        }
    }
    t.push(("model.norm.weight".into(), vec![HIDDEN]));
    t.push(("lm_head.weight".into(), vec![VOCAB, HIDDEN]));
    t
}

/// bf16 bytes of `n` values: a splitmix64 stream per 64 Ki values (parallel, reproducible), each value a
/// sum of two uniforms (triangular, close enough to Gaussian for quantization) times a per-row scale.
fn values(n: usize, cols: usize, seed: u64) -> Vec<u8> {
    const PER: usize = 1 << 16;
    let mut out = vec![0u8; 2 * n];
    out.par_chunks_mut(2 * PER).enumerate().for_each(|(k, o)| {
        let mut s = seed ^ (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        for (i, b) in o.chunks_exact_mut(2).enumerate() {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let u = ((z >> 40) as f32 + (z & 0xFF_FFFF) as f32) / (1u64 << 24) as f32 - 1.0;
            let row = (k * PER + i) / cols.max(1);
            let scale = 0.01 + 0.02 * (row % 5) as f32;
            b.copy_from_slice(&bf16::from_f32(u * scale).to_le_bytes());
        }
    });
    out
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut out: Option<PathBuf> = None;
    let (mut layers, mut shard_gb, mut seed) = (32usize, 5.0f64, 1u64);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--layers" => layers = val()?.parse()?,
            "--shard-gb" => shard_gb = val()?.parse()?,
            "--seed" => seed = val()?.parse()?,
            _ if out.is_none() => out = Some(a.into()),
            _ => return Err(format!("unexpected argument {a}").into()),
        }
    }
    let out = out.ok_or("usage: synth_checkpoint OUT [--layers N] [--shard-gb G] [--seed S]")?;
    std::fs::create_dir_all(&out)?;
    let all = tensors(layers);
    // Greedy shards of at most `shard_gb`, in order, as transformers' shard_checkpoint does.
    let limit = (shard_gb * 1e9) as usize;
    let mut shards: Vec<Vec<(String, Vec<usize>)>> = vec![vec![]];
    let mut size = 0;
    for t in all {
        let b = 2 * t.1.iter().product::<usize>();
        if size + b > limit && !shards.last().unwrap().is_empty() {
            shards.push(vec![]);
            size = 0;
        }
        size += b;
        shards.last_mut().unwrap().push(t);
    }
    let n = shards.len();
    let mut map = serde_json::Map::new();
    let mut total = 0usize;
    for (i, shard) in shards.iter().enumerate() {
        let name = format!("model-{:05}-of-{n:05}.safetensors", i + 1);
        let planned = shard
            .iter()
            .map(|(t, s)| PlannedTensor::new(t, StDtype::BF16, s.clone()))
            .collect();
        let mut w = StreamingWriter::create(&out.join(&name), planned, vec![], pt_metadata())?;
        for (j, (t, s)) in shard.iter().enumerate() {
            let cols = *s.last().unwrap();
            let v = values(
                s.iter().product(),
                cols,
                seed ^ ((i * 1000 + j) as u64) << 20,
            );
            w.write(t, &v)?;
            map.insert(t.clone(), name.clone().into());
        }
        total += w.finish(vec![])? as usize;
        eprintln!("wrote {name}");
    }
    let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": map});
    std::fs::write(
        out.join("model.safetensors.index.json"),
        serde_json::to_string_pretty(&index)?,
    )?;
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": "bfloat16",
        "hidden_size": HIDDEN, "intermediate_size": INTERMEDIATE, "num_hidden_layers": layers,
        "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": VOCAB,
        "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": false,
    });
    std::fs::write(
        out.join("config.json"),
        serde_json::to_string_pretty(&config)?,
    )?;
    println!("{} bytes in {n} shard(s), {layers} layers", total);
    Ok(())
}
