//! The golden cases (vectors made by bitsandbytes' CUDA kernels and transformers' BitNet packing), checkable on
//! any device: quantization byte for byte, float outputs within the stated tolerances. `golden.rs` runs them on
//! the CPU (fast path and reference), `wgpu_golden.rs` and `cuda_golden.rs` on the GPUs.

use super::*;
use lowbit::Device;
use lowbit::format::codebook::{FP4_CODE, NF4_CODE};
use lowbit::format::{Absmax, FourBitType, dynamic_map};
use lowbit::metrics::max_rel_err as rel_err;
use lowbit::ops::{BitLinear, Linear8bitLt};
use lowbit::tensor::{DType, Tensor, TensorData};
use serde_json::Value;

/// Runs `case` on `dev` (a strict device under test, or none: nothing to run) and asserts that no op fell
/// back to the CPU, so a failing GPU kernel fails the case.
pub fn on_strict_device(dev: Option<Device>, case: impl Fn(&Device)) {
    if let Some(dev) = dev {
        let before: u64 = dev.stats().ops.values().map(|s| s.fallbacks).sum();
        case(&dev);
        let after: u64 = dev.stats().ops.values().map(|s| s.fallbacks).sum();
        assert_eq!(after, before, "a golden case fell back to the CPU");
    }
}

pub(crate) fn dtype_of(case: &Value) -> DType {
    DType::parse(case["dtype"].as_str().unwrap()).unwrap()
}

/// Checks every `fourbit` golden case on `dev`; `label` names the device in the summary lines.
pub fn fourbit(dev: &Device, label: &str) {
    let g = load_golden("fourbit");
    let mut tally = Tally::default();
    for case in &g.cases {
        let name = case["name"].as_str().unwrap();
        match case["op"].as_str().unwrap() {
            "code_4bit" => {
                let table: &[f32] = if case["quant_type"] == "nf4" {
                    &NF4_CODE
                } else {
                    &FP4_CODE
                };
                let ok = f32_bytes(table) == bytes(g.get(case, "code"));
                tally.add("code_4bit", name, ok, || "table differs".into());
            }
            "quantize_4bit" => {
                let qt: FourBitType = case["quant_type"].as_str().unwrap().parse().unwrap();
                let bs = case["blocksize"].as_u64().unwrap() as usize;
                let dq = case["double_quant"].as_bool().unwrap();
                let input = g.get(case, "input");
                assert_eq!(input.dtype(), dtype_of(case));
                let q = dev.quantize_4bit(input, qt, bs, dq).unwrap();
                let mut why = Vec::new();
                if q.packed != u8s(g.get(case, "packed")) {
                    why.push(format!(
                        "packed: {}",
                        first_diff(&q.packed, u8s(g.get(case, "packed")))
                    ));
                }
                match &q.state.absmax {
                    Absmax::Plain(a) => {
                        if f32_bytes(a) != bytes(g.get(case, "absmax")) {
                            why.push("absmax".into());
                        }
                    }
                    Absmax::Nested {
                        absmax_q,
                        nested_absmax,
                        nested_code,
                        offset,
                    } => {
                        if absmax_q != u8s(g.get(case, "absmax_q")) {
                            why.push(format!(
                                "absmax_q: {}",
                                first_diff(absmax_q, u8s(g.get(case, "absmax_q")))
                            ));
                        }
                        if f32_bytes(nested_absmax) != bytes(g.get(case, "nested_absmax")) {
                            why.push("nested_absmax".into());
                        }
                        if f32_bytes(nested_code) != bytes(g.get(case, "nested_code")) {
                            why.push("nested_code".into());
                        }
                        if f32_bytes(&[*offset]) != bytes(g.get(case, "offset")) {
                            why.push(format!(
                                "offset {offset} vs {:?}",
                                as_f32(g.get(case, "offset"))
                            ));
                        }
                    }
                }
                let deq = dev.dequantize_4bit(&q).unwrap();
                if bytes(&deq) != bytes(g.get(case, "dequant")) {
                    why.push(format!(
                        "dequant: {}",
                        first_diff(&bytes(&deq), &bytes(g.get(case, "dequant")))
                    ));
                }
                tally.add("quantize_4bit", name, why.is_empty(), || why.join("; "));
            }
            "matmul_4bit" => {
                let qt: FourBitType = case["quant_type"].as_str().unwrap().parse().unwrap();
                let bs = case["blocksize"].as_u64().unwrap() as usize;
                let w = g.get(case, "weight");
                let q = dev.quantize_4bit(w, qt, bs, false).unwrap();
                let mut why = Vec::new();
                if q.packed != u8s(g.get(case, "packed")) {
                    why.push("packed".to_string());
                }
                if let Absmax::Plain(a) = &q.state.absmax
                    && f32_bytes(a) != bytes(g.get(case, "absmax"))
                {
                    why.push("absmax".into());
                }
                let y = dev
                    .matmul_4bit(g.get(case, "x"), &q, Some(g.get(case, "bias")))
                    .unwrap();
                let want = as_f32(g.get(case, "y"));
                // The CUDA output's own error against float64 reaches 5.3e-3 (bf16), 7e-4 (f16), 3e-7 (f32).
                let tol = match dtype_of(case) {
                    DType::BF16 => 1.5e-2,
                    DType::F16 => 2e-3,
                    _ => 1e-5,
                };
                let err = rel_err(&as_f32(&y), &want);
                if err > tol {
                    why.push(format!("y rel err {err:.3e} > {tol:.1e}"));
                }
                tally.add("matmul_4bit", name, why.is_empty(), || why.join("; "));
            }
            other => panic!("unknown golden op {other}"),
        }
    }
    tally.finish(&format!("{label}fourbit"));
}

/// Checks every `blockwise` golden case on `dev`; `label` names the device in the summary lines.
pub fn blockwise(dev: &Device, label: &str) {
    let g = load_golden("blockwise");
    let mut tally = Tally::default();
    for case in &g.cases {
        let name = case["name"].as_str().unwrap();
        match case["op"].as_str().unwrap() {
            "create_dynamic_map" => {
                let signed = case["signed"].as_bool().unwrap();
                let ok = f32_bytes(&dynamic_map(signed).values) == bytes(g.get(case, "code"));
                tally.add("create_dynamic_map", name, ok, || "code differs".into());
            }
            "quantize_blockwise" => {
                let bs = case["blocksize"].as_u64().unwrap() as usize;
                let signed = case["signed"].as_bool().unwrap_or(true);
                let q = dev
                    .quantize_blockwise(g.get(case, "input"), bs, Some(dynamic_map(signed)))
                    .unwrap();
                let mut why = Vec::new();
                if q.codes != u8s(g.get(case, "q")) {
                    why.push(format!(
                        "q: {}",
                        first_diff(&q.codes, u8s(g.get(case, "q")))
                    ));
                }
                if f32_bytes(&q.absmax) != bytes(g.get(case, "absmax")) {
                    why.push("absmax".into());
                }
                let deq = dev.dequantize_blockwise(&q, None).unwrap();
                if bytes(&deq) != bytes(g.get(case, "dequant")) {
                    why.push("dequant".into());
                }
                tally.add("quantize_blockwise", name, why.is_empty(), || {
                    why.join("; ")
                });
            }
            other => panic!("unknown golden op {other}"),
        }
    }
    tally.finish(&format!("{label}blockwise"));
}

pub(crate) fn i8s(t: &Tensor) -> Vec<i8> {
    match t.data() {
        TensorData::I8(v) => v.clone(),
        _ => panic!("expected i8"),
    }
}

/// Checks every `int8` golden case on `dev`; `label` names the device in the summary lines.
pub fn int8(dev: &Device, label: &str) {
    let g = load_golden("int8");
    let mut tally = Tally::default();
    for case in &g.cases {
        let name = case["name"].as_str().unwrap();
        let mut why = Vec::new();
        let op = case["op"].as_str().unwrap();
        match op {
            "int8_vectorwise_quant" => {
                let t = case["threshold"].as_f64().unwrap() as f32;
                let r = dev.int8_vectorwise_quant(g.get(case, "A"), t).unwrap();
                if r.q != i8s(g.get(case, "q")) {
                    why.push("q".to_string());
                }
                if f32_bytes(&r.row_stats) != bytes(g.get(case, "row_stats")) {
                    why.push("row_stats".into());
                }
                if let Some(oc) = g.try_get(case, "outlier_cols") {
                    let want = match oc.data() {
                        TensorData::I64(v) => v.clone(),
                        _ => panic!("outlier_cols dtype"),
                    };
                    if r.outlier_cols.as_deref() != Some(&want[..]) {
                        why.push("outlier_cols".into());
                    }
                }
            }
            "int8_linear_matmul" => {
                let c = dev
                    .int8_linear_matmul(g.get(case, "A"), g.get(case, "B"))
                    .unwrap();
                if bytes(&c) != bytes(g.get(case, "C")) {
                    why.push("C".to_string());
                }
                let d = dev
                    .int8_mm_dequant(
                        &c,
                        &as_f32(g.get(case, "row_stats")),
                        &as_f32(g.get(case, "col_stats")),
                        Some(g.get(case, "bias")),
                    )
                    .unwrap();
                if bytes(&d) != bytes(g.get(case, "dequant")) {
                    why.push("dequant".into());
                }
            }
            "linear8bitlt" => {
                let t = case["threshold"].as_f64().unwrap() as f32;
                let layer = Linear8bitLt::from_weight(
                    dev,
                    g.get(case, "weight"),
                    Some(g.get(case, "bias")),
                    t,
                )
                .unwrap();
                if layer.weight != i8s(g.get(case, "weight_i8")) {
                    why.push("weight_i8".to_string());
                }
                let y = layer.forward(dev, g.get(case, "x")).unwrap();
                // CUDA's output differs from float64 by 3.4e-4 of max |y|; lowbit stays within 1e-3.
                let err = rel_err(&as_f32(&y), &as_f32(g.get(case, "y")));
                if err > 1e-3 {
                    why.push(format!("y rel err {err:.3e}"));
                }
            }
            other => panic!("unknown golden op {other}"),
        }
        tally.add(op, name, why.is_empty(), || why.join("; "));
    }
    tally.finish(&format!("{label}int8"));
}

/// Checks every `bitnet` golden case on `dev`; `label` names the device in the summary lines.
pub fn bitnet(dev: &Device, label: &str) {
    let g = load_golden("bitnet");
    let mut tally = Tally::default();
    for case in &g.cases {
        let name = case["name"].as_str().unwrap();
        let mut why = Vec::new();
        let w = dev.ternary_quantize(g.get(case, "weight")).unwrap();
        let want_scale = as_f32(g.get(case, "weight_scale"))[0];
        // weight_scale is a mean whose last bit depends on torch's threading (FORMATS.md §9): within 1 ulp.
        if (w.weight_scale.to_bits() as i64 - want_scale.to_bits() as i64).abs() > 1 {
            why.push(format!("weight_scale {} vs {want_scale}", w.weight_scale));
        }
        // Ternary values and packing are compared with the golden scale, so they are a pure format check.
        let exact = dev
            .backend()
            .ternary_quantize(
                g.get(case, "weight").floats("test").unwrap(),
                w.rows,
                w.cols,
                want_scale,
            )
            .unwrap();
        if exact != u8s(g.get(case, "packed")) {
            why.push("packed".into());
        }
        let tern = lowbit::format::ternary::unpack(&exact, w.rows, w.cols);
        if tern != i8s(g.get(case, "ternary")) {
            why.push("ternary".into());
        }
        let (xq, xs) = dev.ternary_act_quant(g.get(case, "x")).unwrap();
        if xq != i8s(g.get(case, "x_q")) {
            why.push("x_q".into());
        }
        if f32_bytes(&xs) != bytes(g.get(case, "x_scale")) {
            why.push("x_scale".into());
        }
        let layer = BitLinear {
            weight: lowbit::ops::TernaryWeight {
                packed: exact,
                weight_scale: want_scale,
                rows: w.rows,
                cols: w.cols,
            },
            bias: None,
        };
        let y = dev.bitlinear(g.get(case, "x"), &layer).unwrap();
        let err = rel_err(&as_f32(&y), &as_f32(g.get(case, "y")));
        if err > 1e-6 {
            why.push(format!("y rel err {err:.3e}"));
        }
        tally.add("bitnet", name, why.is_empty(), || why.join("; "));
    }
    tally.finish(&format!("{label}bitnet"));
}
