//! A causal language model's shape, read from a Hugging Face `config.json`. Every field the forward pass
//! depends on is checked here; an architecture or option lowbit does not run is a typed error naming the
//! field, never a silently different model.

use crate::format::rope::RopeScaling;
use crate::{Error, Result};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// Model families lowbit runs (transformers' `model_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    /// Llama 2/3 (incl. llama3 RoPE scaling), SmolLM, TinyLlama.
    Llama,
    /// Mistral (sliding-window attention is exact up to the window: the context is capped at it).
    Mistral,
    /// Qwen2 / Qwen2.5: biases on q, k and v.
    Qwen2,
    /// Qwen3: RMSNorm on each query and key head before RoPE.
    Qwen3,
    /// BitNet b1.58 (`BitNetForCausalLM`): ternary weights, sub-norms before o_proj and down_proj, ReLU².
    BitNet,
}

impl Architecture {
    pub const SUPPORTED: &'static str = "llama, mistral, qwen2, qwen3, bitnet";

    fn parse(model_type: &str) -> Option<Architecture> {
        Some(match model_type {
            "llama" => Architecture::Llama,
            "mistral" => Architecture::Mistral,
            "qwen2" => Architecture::Qwen2,
            "qwen3" => Architecture::Qwen3,
            "bitnet" => Architecture::BitNet,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Mistral => "mistral",
            Architecture::Qwen2 => "qwen2",
            Architecture::Qwen3 => "qwen3",
            Architecture::BitNet => "bitnet",
        }
    }
}

/// The MLP's activation (`hidden_act`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `silu(gate) * up` (Llama family).
    Silu,
    /// `relu(gate)^2 * up` (BitNet's `relu2`).
    Relu2,
}

/// How a BitNet checkpoint's `weight_scale` is meant (`quantization_config.linear_class`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TernaryScale {
    /// `bitlinear` (lowbit's layout): `y = (x_q T^T) / (s · weight_scale)`, the scale is `1 / mean|W|`.
    Divide,
    /// `autobitlinear` offline (microsoft/bitnet-b1.58-2B-4T): `y = (x T^T) · weight_scale`, the scale is
    /// `mean|W|`.
    Multiply,
}

/// Everything the forward pass needs from `config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    /// The longest context the model was trained for (capped at `sliding_window` where one applies).
    pub max_positions: usize,
    pub tie_word_embeddings: bool,
    /// Biases on q, k, v and o (`attention_bias`); Qwen2 has them on q, k, v only.
    pub attention_bias: bool,
    pub mlp_bias: bool,
    /// Per-head RMSNorm of queries and keys (Qwen3).
    pub qk_norm: bool,
    pub activation: Activation,
    /// LLM.int8()'s outlier threshold (`quantization_config.llm_int8_threshold`, default 6.0).
    pub int8_threshold: f32,
    /// BitNet checkpoints: how their stored ternary scales are meant.
    pub ternary_scale: Option<TernaryScale>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

/// Reads fields of one config object, naming the file and field in every error.
struct Fields<'a> {
    path: &'a Path,
    map: &'a Map<String, Value>,
}

impl Fields<'_> {
    fn err(&self, field: &str, detail: impl std::fmt::Display) -> Error {
        config_error(self.path, field, detail)
    }

    fn usize(&self, field: &str) -> Result<Option<usize>> {
        match self.map.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| self.err(field, format!("must be a non-negative integer, got {v}"))),
        }
    }

    fn required(&self, field: &str) -> Result<usize> {
        match self.usize(field)? {
            Some(0) => Err(self.err(field, "must be positive, got 0")),
            Some(n) => Ok(n),
            None => Err(self.err(field, "is missing")),
        }
    }

    fn f64(&self, field: &str) -> Result<Option<f64>> {
        match self.map.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .filter(|x| x.is_finite())
                .map(Some)
                .ok_or_else(|| self.err(field, format!("must be a finite number, got {v}"))),
        }
    }

    fn bool(&self, field: &str, default: bool) -> Result<bool> {
        match self.map.get(field) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(self.err(field, format!("must be true or false, got {v}"))),
        }
    }

    fn str(&self, field: &str) -> Result<Option<&str>> {
        match self.map.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.err(field, format!("must be a string, got {v}"))),
        }
    }

    /// A token id or a list of them (`eos_token_id` may be either).
    fn token_ids(&self, field: &str) -> Result<Vec<u32>> {
        let one = |v: &Value| {
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| self.err(field, format!("must be token ids, got {v}")))
        };
        match self.map.get(field) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(a)) => a.iter().map(one).collect(),
            Some(v) => Ok(vec![one(v)?]),
        }
    }
}

/// A typed error about one field of a config file.
pub fn config_error(path: &Path, field: &str, detail: impl std::fmt::Display) -> Error {
    Error::Checkpoint {
        path: PathBuf::from(path),
        detail: format!("field `{field}` {detail}"),
    }
}

impl ModelConfig {
    /// Reads `config.json` of a model directory.
    pub fn from_file(path: &Path) -> Result<ModelConfig> {
        let map = crate::io::model_dir::read_json_object(path)?;
        ModelConfig::from_json(path, &map)
    }

    /// Parses a config object; `path` names the file in errors.
    pub fn from_json(path: &Path, map: &Map<String, Value>) -> Result<ModelConfig> {
        let f = Fields { path, map };
        let model_type = f
            .str("model_type")?
            .ok_or_else(|| f.err("model_type", "is missing"))?;
        let architecture = Architecture::parse(model_type).ok_or_else(|| {
            f.err(
                "model_type",
                format!(
                    "{model_type:?} is not supported; supported: {}",
                    Architecture::SUPPORTED
                ),
            )
        })?;
        let hidden_size = f.required("hidden_size")?;
        let num_heads = f.required("num_attention_heads")?;
        let num_kv_heads = f.usize("num_key_value_heads")?.unwrap_or(num_heads);
        let head_dim = match f.usize("head_dim")? {
            Some(d) => d,
            None if hidden_size.is_multiple_of(num_heads) => hidden_size / num_heads,
            None => {
                return Err(f.err(
                    "num_attention_heads",
                    format!("{num_heads} does not divide hidden_size {hidden_size}"),
                ));
            }
        };
        if num_kv_heads == 0 || !num_heads.is_multiple_of(num_kv_heads) {
            return Err(f.err(
                "num_key_value_heads",
                format!("{num_kv_heads} must divide num_attention_heads {num_heads}"),
            ));
        }
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(f.err(
                "head_dim",
                format!("must be even and positive, got {head_dim}"),
            ));
        }
        if let Some(p) = f.f64("partial_rotary_factor")?
            && p != 1.0
        {
            return Err(f.err(
                "partial_rotary_factor",
                format!("{p} is not supported (only 1.0)"),
            ));
        }
        let activation = match (architecture, f.str("hidden_act")?.unwrap_or("silu")) {
            (Architecture::BitNet, "relu2") => Activation::Relu2,
            (a, "silu") if a != Architecture::BitNet => Activation::Silu,
            (_, other) => {
                return Err(f.err(
                    "hidden_act",
                    format!("{other:?} is not supported for {model_type}"),
                ));
            }
        };
        let (rope_theta, rope_scaling) = rope(&f)?;
        let mut max_positions = f.usize("max_position_embeddings")?.unwrap_or(4096);
        // Sliding-window attention equals full attention while the context fits the window.
        let sliding = match architecture {
            Architecture::Mistral => f.usize("sliding_window")?,
            Architecture::Qwen2 | Architecture::Qwen3 if f.bool("use_sliding_window", false)? => {
                f.usize("sliding_window")?
            }
            _ => None,
        };
        if let Some(w) = sliding {
            max_positions = max_positions.min(w);
        }
        let eps = f.f64("rms_norm_eps")?.unwrap_or(1e-6);
        if eps < 0.0 {
            return Err(f.err("rms_norm_eps", format!("must be >= 0, got {eps}")));
        }
        Ok(ModelConfig {
            architecture,
            vocab_size: f.required("vocab_size")?,
            hidden_size,
            intermediate_size: f.required("intermediate_size")?,
            num_layers: f.required("num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: eps as f32,
            rope_theta,
            rope_scaling,
            max_positions,
            tie_word_embeddings: f.bool("tie_word_embeddings", false)?,
            attention_bias: f.bool("attention_bias", architecture == Architecture::Qwen2)?,
            mlp_bias: f.bool("mlp_bias", false)?,
            qk_norm: architecture == Architecture::Qwen3,
            activation,
            ternary_scale: ternary_scale(&f, architecture)?,
            int8_threshold: int8_threshold(&f)?,
            bos_token_id: f.token_ids("bos_token_id")?.first().copied(),
            eos_token_ids: f.token_ids("eos_token_id")?,
        })
    }

    /// Query features (`heads * head_dim`).
    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }

    /// Key/value features (`kv_heads * head_dim`).
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
}

/// `quantization_config.llm_int8_threshold` where one is given, else bitsandbytes' default.
fn int8_threshold(f: &Fields) -> Result<f32> {
    let Some(Value::Object(q)) = f.map.get("quantization_config") else {
        return Ok(6.0);
    };
    let q = Fields {
        path: f.path,
        map: q,
    };
    Ok(q.f64("llm_int8_threshold")?.unwrap_or(6.0) as f32)
}

/// A BitNet `quantization_config`: packed offline weights, either linear class; no in-layer RMSNorm.
fn ternary_scale(f: &Fields, arch: Architecture) -> Result<Option<TernaryScale>> {
    let Some(Value::Object(q)) = f.map.get("quantization_config") else {
        return Ok(None);
    };
    let q = Fields {
        path: f.path,
        map: q,
    };
    if q.str("quant_method")? != Some("bitnet") {
        return Ok(None);
    }
    if arch != Architecture::BitNet {
        return Err(f.err(
            "quantization_config.quant_method",
            format!("\"bitnet\" on a {} model", arch.name()),
        ));
    }
    if q.bool("use_rms_norm", false)? {
        return Err(f.err("quantization_config.use_rms_norm", "true is not supported"));
    }
    let mode = q.str("quantization_mode")?.unwrap_or("offline");
    if mode != "offline" {
        return Err(f.err(
            "quantization_config.quantization_mode",
            format!("{mode:?} is not supported: load float weights with --format ternary instead"),
        ));
    }
    Ok(Some(match q.str("linear_class")?.unwrap_or("bitlinear") {
        "bitlinear" => TernaryScale::Divide,
        "autobitlinear" => TernaryScale::Multiply,
        other => {
            return Err(f.err(
                "quantization_config.linear_class",
                format!("{other:?} is not supported; supported: bitlinear, autobitlinear"),
            ));
        }
    }))
}

/// `rope_theta` and the scaling rule: transformers 5 writes them in `rope_parameters`, earlier versions as
/// `rope_theta` and `rope_scaling`.
fn rope(f: &Fields) -> Result<(f64, Option<RopeScaling>)> {
    let (params, field) = match f.map.get("rope_parameters") {
        Some(Value::Object(p)) => (Some(p), "rope_parameters"),
        Some(Value::Null) | None => match f.map.get("rope_scaling") {
            Some(Value::Object(p)) => (Some(p), "rope_scaling"),
            Some(Value::Null) | None => (None, "rope_scaling"),
            Some(v) => return Err(f.err("rope_scaling", format!("must be an object, got {v}"))),
        },
        Some(v) => return Err(f.err("rope_parameters", format!("must be an object, got {v}"))),
    };
    let inner = params.map(|map| Fields { path: f.path, map });
    let theta = match inner
        .as_ref()
        .map(|p| p.f64("rope_theta"))
        .transpose()?
        .flatten()
    {
        Some(t) => t,
        None => f.f64("rope_theta")?.unwrap_or(10000.0),
    };
    if theta <= 0.0 {
        return Err(f.err("rope_theta", format!("must be positive, got {theta}")));
    }
    let Some(p) = inner else {
        return Ok((theta, None));
    };
    let rope_type = match p.str("rope_type")? {
        Some(t) => t,
        None => p.str("type")?.unwrap_or("default"),
    };
    let scaling = match rope_type {
        "default" => None,
        "llama3" => {
            let num = |k: &str| {
                p.f64(k)?
                    .ok_or_else(|| f.err(&format!("{field}.{k}"), "is missing"))
            };
            let original = p
                .usize("original_max_position_embeddings")?
                .ok_or_else(|| {
                    f.err(
                        &format!("{field}.original_max_position_embeddings"),
                        "is missing",
                    )
                })?;
            Some(RopeScaling::Llama3 {
                factor: num("factor")?,
                low_freq_factor: num("low_freq_factor")?,
                high_freq_factor: num("high_freq_factor")?,
                original_max_position_embeddings: original,
            })
        }
        other => {
            return Err(f.err(
                &format!("{field}.rope_type"),
                format!("{other:?} is not supported; supported: default, llama3"),
            ));
        }
    };
    Ok((theta, scaling))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<ModelConfig> {
        ModelConfig::from_json(Path::new("config.json"), v.as_object().unwrap())
    }

    fn llama() -> Value {
        json!({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
               "intermediate_size": 128, "num_hidden_layers": 2, "vocab_size": 100, "rms_norm_eps": 1e-5,
               "rope_theta": 500000.0, "eos_token_id": [1, 2]})
    }

    #[test]
    fn reads_a_llama_config() {
        let c = parse(llama()).unwrap();
        assert_eq!(
            (c.head_dim, c.num_kv_heads, c.q_dim(), c.kv_dim()),
            (16, 2, 64, 32)
        );
        assert_eq!(c.rope_theta, 500000.0);
        assert_eq!(c.eos_token_ids, vec![1, 2]);
        assert!(!c.attention_bias && !c.qk_norm && c.rope_scaling.is_none());
    }

    #[test]
    fn reads_transformers_5_rope_parameters() {
        let mut v = llama();
        v["rope_parameters"] = json!({"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        let c = parse(v).unwrap();
        assert_eq!(c.rope_theta, 10000.0);
        assert!(
            matches!(c.rope_scaling, Some(RopeScaling::Llama3 { factor, .. }) if factor == 8.0)
        );
    }

    #[test]
    fn unsupported_options_name_their_field() {
        let cases = [
            ("model_type", json!("gpt2")),
            ("rope_scaling", json!({"rope_type": "yarn", "factor": 4.0})),
            ("hidden_act", json!("gelu")),
            ("num_key_value_heads", json!(3)),
            ("partial_rotary_factor", json!(0.5)),
        ];
        for (field, value) in cases {
            let mut v = llama();
            v[field] = value;
            let e = parse(v).unwrap_err().to_string();
            assert!(e.contains(&format!("`{field}")), "{field}: {e}");
        }
        let mut v = llama();
        v.as_object_mut().unwrap().remove("hidden_size");
        assert!(
            parse(v)
                .unwrap_err()
                .to_string()
                .contains("`hidden_size` is missing")
        );
    }

    #[test]
    fn sliding_window_caps_the_context() {
        let mut v = llama();
        v["model_type"] = json!("mistral");
        v["max_position_embeddings"] = json!(32768);
        v["sliding_window"] = json!(4096);
        assert_eq!(parse(v).unwrap().max_positions, 4096);
    }
}
