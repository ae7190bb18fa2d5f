//! Synthetic Llama-shaped checkpoints with fresh random weights for the checkpoint tests.
#![allow(dead_code)]

use half::f16;
use lowbit::io::StDtype;
use lowbit::io::safetensors_write::{PlannedTensor, pt_metadata, write_all};
use std::path::Path;

/// xorshift64* seeded from the clock: fresh inputs every run (the seed is printed for reproduction).
pub struct Rng(u64);
impl Rng {
    pub fn fresh() -> Rng {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1;
        eprintln!("seed {seed}");
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    /// Roughly normal values (sum of uniforms), scale `s`.
    pub fn normal(&mut self, s: f32) -> f32 {
        let u: f32 = (0..4)
            .map(|_| (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32)
            .sum();
        (u - 2.0) * s * 1.7
    }
    pub fn f16s(&mut self, n: usize, s: f32) -> Vec<f16> {
        (0..n).map(|_| f16::from_f32(self.normal(s))).collect()
    }
}

pub const H: usize = 64;
pub const I: usize = 128;
pub const V: usize = 96;

/// Tensors of a 2-layer Llama (f16), in name order.
pub fn llama_tensors(rng: &mut Rng, layers: usize) -> Vec<(String, Vec<usize>, Vec<f16>)> {
    let mut t = vec![("model.embed_tokens.weight".to_string(), vec![V, H])];
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        for (n, s) in [
            ("self_attn.q_proj.weight", vec![H, H]),
            ("self_attn.k_proj.weight", vec![H / 2, H]),
            ("self_attn.v_proj.weight", vec![H / 2, H]),
            ("self_attn.o_proj.weight", vec![H, H]),
            ("mlp.gate_proj.weight", vec![I, H]),
            ("mlp.up_proj.weight", vec![I, H]),
            ("mlp.down_proj.weight", vec![H, I]),
            ("input_layernorm.weight", vec![H]),
            ("post_attention_layernorm.weight", vec![H]),
            ("self_attn.q_proj.bias", vec![H]),
        ] {
            t.push((format!("{p}.{n}"), s));
        }
    }
    t.push(("model.norm.weight".into(), vec![H]));
    t.push(("lm_head.weight".into(), vec![V, H]));
    t.into_iter()
        .map(|(n, s)| {
            let len = s.iter().product();
            let v = rng.f16s(len, 0.05);
            (n, s, v)
        })
        .collect()
}

pub fn write_tensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<f16>)]) {
    let t: Vec<_> = tensors
        .iter()
        .map(|(n, s, v)| {
            (
                PlannedTensor::new(n, StDtype::F16, s.clone()),
                bytemuck::cast_slice::<f16, u8>(v).to_vec(),
            )
        })
        .collect();
    write_all(path, &t, pt_metadata()).unwrap();
}

pub const CONFIG: &str = r#"{"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "model_type": "llama", "torch_dtype": "float16"}"#;

/// A model directory with one file, or `shards` shards and an index.
pub fn make_model_dir(dir: &Path, tensors: &[(String, Vec<usize>, Vec<f16>)], shards: usize) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), CONFIG).unwrap();
    std::fs::write(dir.join("tokenizer.json"), "{\"version\": \"1.0\"}").unwrap();
    if shards <= 1 {
        write_tensors(&dir.join("model.safetensors"), tensors);
        return;
    }
    let per = tensors.len().div_ceil(shards);
    let mut map = serde_json::Map::new();
    for (i, chunk) in tensors.chunks(per).enumerate() {
        let name = format!("model-{:05}-of-{:05}.safetensors", i + 1, shards);
        write_tensors(&dir.join(&name), chunk);
        for (n, _, _) in chunk {
            map.insert(n.clone(), name.clone().into());
        }
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
}
