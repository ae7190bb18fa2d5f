//! PEFT LoRA adapters as they are published: `adapter_config.json` and `adapter_model.safetensors`.

use super::config::config_error;
use crate::io::model_dir::read_json_object;
use crate::io::safetensors_read::SafetensorsFile;
use crate::nn::lora::LoraWeights;
use crate::tensor::Tensor;
use crate::{Error, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const ADAPTER_CONFIG: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

/// A LoRA adapter's weights, by the base model's module name (`model.layers.0.self_attn.q_proj`).
pub struct PeftAdapter {
    pub dir: PathBuf,
    pub modules: BTreeMap<String, LoraWeights>,
}

impl PeftAdapter {
    /// Reads an adapter directory. DoRA, trained biases and other options lowbit does not run are errors.
    pub fn open(dir: &Path) -> Result<PeftAdapter> {
        let cfg_path = dir.join(ADAPTER_CONFIG);
        let cfg = read_json_object(&cfg_path)?;
        let err = |field: &str, detail: String| config_error(&cfg_path, field, detail);
        match cfg.get("peft_type").and_then(Value::as_str) {
            Some("LORA") | None => {}
            Some(other) => {
                return Err(err(
                    "peft_type",
                    format!("{other:?} is not supported (only LORA)"),
                ));
            }
        }
        if cfg.get("use_dora").and_then(Value::as_bool) == Some(true) {
            return Err(err("use_dora", "true is not supported (DoRA)".into()));
        }
        match cfg.get("bias").and_then(Value::as_str) {
            Some("none") | None => {}
            Some(other) => {
                return Err(err(
                    "bias",
                    format!("{other:?} is not supported (only \"none\")"),
                ));
            }
        }
        let num = |field: &str| -> Result<Option<f64>> {
            match cfg.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_f64()
                    .filter(|x| x.is_finite() && *x > 0.0)
                    .map(Some)
                    .ok_or_else(|| err(field, format!("must be a positive number, got {v}"))),
            }
        };
        let r_default = num("r")?.unwrap_or(8.0);
        let alpha_default = num("lora_alpha")?.unwrap_or(8.0);
        let rslora = cfg
            .get("use_rslora")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let fan_in_fan_out = cfg
            .get("fan_in_fan_out")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let patterns = |field: &str| -> Result<Vec<(String, f64)>> {
            match cfg.get(field) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::Object(m)) => m
                    .iter()
                    .map(|(k, v)| {
                        v.as_f64()
                            .filter(|x| *x > 0.0)
                            .map(|x| (k.clone(), x))
                            .ok_or_else(|| {
                                err(field, format!("{k:?} must be a positive number, got {v}"))
                            })
                    })
                    .collect(),
                Some(v) => Err(err(field, format!("must be an object, got {v}"))),
            }
        };
        let rank_pattern = patterns("rank_pattern")?;
        let alpha_pattern = patterns("alpha_pattern")?;

        let weights_path = dir.join(ADAPTER_WEIGHTS);
        if !weights_path.is_file() {
            return Err(Error::Checkpoint {
                path: dir.to_path_buf(),
                detail: format!(
                    "no {ADAPTER_WEIGHTS} (a PEFT adapter directory has {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS})"
                ),
            });
        }
        let file = SafetensorsFile::open(&weights_path)?;
        let mut modules = BTreeMap::new();
        for t in file.tensors() {
            let Some(module) = t.name.strip_suffix(".lora_A.weight") else {
                if t.name.ends_with(".lora_B.weight") {
                    continue;
                }
                return Err(Error::Checkpoint {
                    path: weights_path.clone(),
                    detail: format!(
                        "tensor {:?} is not a LoRA A/B matrix (modules_to_save and embedding adapters are not supported)",
                        t.name
                    ),
                });
            };
            let b_name = format!("{module}.lora_B.weight");
            let mut a = file.tensor(t)?;
            let mut b = file.tensor(file.require(&b_name)?)?;
            if fan_in_fan_out {
                a = transpose(&a)?;
                b = transpose(&b)?;
            }
            let base = base_module_name(module);
            let r = pattern_value(&rank_pattern, &base).unwrap_or(r_default);
            let alpha = pattern_value(&alpha_pattern, &base).unwrap_or(alpha_default);
            let stored_r = a.shape().first().copied().unwrap_or(0) as f64;
            if stored_r != r {
                return Err(Error::Checkpoint {
                    path: weights_path.clone(),
                    detail: format!(
                        "{module}: lora_A has rank {stored_r} but the config says r = {r}"
                    ),
                });
            }
            let scale = if rslora { alpha / r.sqrt() } else { alpha / r } as f32;
            modules.insert(base, LoraWeights { a, b, scale });
        }
        if modules.is_empty() {
            return Err(Error::Checkpoint {
                path: weights_path,
                detail: "no lora_A / lora_B tensors".into(),
            });
        }
        Ok(PeftAdapter {
            dir: dir.to_path_buf(),
            modules,
        })
    }
}

/// PEFT saves `base_model.model.<module>`; the base model's own names drop that prefix.
fn base_module_name(saved: &str) -> String {
    saved
        .strip_prefix("base_model.model.")
        .unwrap_or(saved)
        .to_string()
}

/// PEFT's rule: a pattern key matches a module whose name is the key or ends with `.key`.
fn pattern_value(patterns: &[(String, f64)], module: &str) -> Option<f64> {
    patterns
        .iter()
        .find(|(k, _)| module == k || module.ends_with(&format!(".{k}")))
        .map(|(_, v)| *v)
}

fn transpose(t: &Tensor) -> Result<Tensor> {
    let (r, c) = match t.shape() {
        [r, c] => (*r, *c),
        s => {
            return Err(Error::shape(
                "lora",
                format!("expected a matrix, got {s:?}"),
            ));
        }
    };
    let v = t.floats("lora")?.to_f32_vec();
    let mut out = vec![0f32; r * c];
    for i in 0..r {
        for j in 0..c {
            out[j * r + i] = v[i * c + j];
        }
    }
    Tensor::f32(vec![c, r], out)
}
