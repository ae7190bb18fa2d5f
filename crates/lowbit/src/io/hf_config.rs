//! The `quantization_config` entry of config.json, exactly as transformers writes it for a model it
//! quantized itself: `BitsAndBytesConfig.to_dict()` (every attribute, `_load_in_4bit`/`_load_in_8bit` and the
//! `load_in_*` properties, dtypes as names) and `BitNetQuantConfig.to_dict()`; keys sorted as
//! `json.dumps(sort_keys=True)` prints them.

use super::layout::{QuantFormat, QuantSpec};
use crate::tensor::DType;
use serde_json::{Value, json};

/// `quantization_config` for `spec`. `skip_modules`: None when transformers' defaults select the same
/// modules lowbit quantized (it then writes `null` too); otherwise the modules left unquantized, so that
/// transformers does not replace them on load.
pub fn quantization_config(
    spec: &QuantSpec,
    compute_dtype: DType,
    skip_modules: Option<Vec<String>>,
) -> Value {
    match spec.format {
        QuantFormat::FourBit(t) => bnb(
            true,
            t.name(),
            spec.double_quant,
            compute_dtype,
            skip_modules,
        ),
        QuantFormat::Int8 => bnb(false, "fp4", false, DType::F32, skip_modules),
        QuantFormat::Ternary => json!({
            "linear_class": "bitlinear",
            "modules_to_not_convert": skip_modules,
            "quant_method": "bitnet",
            "quantization_mode": "offline",
            "rms_norm_eps": 1e-6,
            "use_rms_norm": false,
        }),
    }
}

fn bnb(
    four: bool,
    quant_type: &str,
    double: bool,
    compute: DType,
    skip: Option<Vec<String>>,
) -> Value {
    json!({
        "_load_in_4bit": four,
        "_load_in_8bit": !four,
        "bnb_4bit_compute_dtype": compute.torch_name(),
        "bnb_4bit_quant_storage": "uint8",
        "bnb_4bit_quant_type": quant_type,
        "bnb_4bit_use_double_quant": double,
        "llm_int8_enable_fp32_cpu_offload": false,
        "llm_int8_has_fp16_weight": false,
        "llm_int8_skip_modules": skip,
        "llm_int8_threshold": 6.0,
        "load_in_4bit": four,
        "load_in_8bit": !four,
        "quant_method": "bitsandbytes",
    })
}
