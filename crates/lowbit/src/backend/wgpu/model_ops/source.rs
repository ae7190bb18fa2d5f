//! WGSL text of the model-op kernels: the hand-written kernels plus generated input loaders per dtype and
//! the activation constants of `crate::format::activation` as exact hex literals.

use super::super::shaders::{Shader, repeat_lines, wgsl_f32};
use crate::format::activation::{
    ERF_CLAMP, ERF_SPLIT, ERF_TAYLOR, ERFC_FIT, FRAC_1_SQRT_2, FRAC_2_SQRT_PI, GELU_TANH_BETA,
    GELU_TANH_KAPPA,
};
use crate::tensor::DType;

const MODEL_COMMON: &str = include_str!("../shaders/model_common.wgsl");
const EMBEDDING: &str = include_str!("../shaders/embedding.wgsl");
const ROPE: &str = include_str!("../shaders/rope.wgsl");
const ELEMENTWISE: &str = include_str!("../shaders/model_elementwise.wgsl");
const ATTENTION: &str = include_str!("../shaders/attention.wgsl");
const ATTENTION_MERGE: &str = include_str!("../shaders/attention_merge.wgsl");
const ATTENTION_GROUPS: &str = include_str!("../shaders/attention_groups.wgsl");
const CAST: &str = include_str!("../shaders/cast.wgsl");

/// `bits_<name>(i)` (element i as exact f32 bits) and `load_<name>(i)` for the u32 array `array`.
fn loader(name: &str, array: &str, dtype: DType) -> String {
    let bits = match dtype {
        DType::F16 => format!("widen_f16(({array}[i >> 1u] >> ((i & 1u) * 16u)) & 0xffffu)"),
        DType::BF16 => format!("widen_bf16(({array}[i >> 1u] >> ((i & 1u) * 16u)) & 0xffffu)"),
        _ => format!("{array}[i]"),
    };
    format!(
        "fn bits_{name}(i: u32) -> u32 {{\n    return {bits};\n}}\n\
         fn load_{name}(i: u32) -> f32 {{\n    return bitcast<f32>(bits_{name}(i));\n}}\n"
    )
}

/// The attention kernel from its template: the one-pass kernel (`split == false`, one workgroup per
/// (query row, head) over all its keys, output acc / l) or the first pass of split-K attention: one
/// workgroup per (query row, head, key chunk of `p7` keys, a multiple of the 256-key tile) over its chunk,
/// in the one-pass kernel's float32 order, writing the unnormalised running max m, sum l of exp(s_j - m) and
/// per output dim the sum of exp(s_j - m) v_jd (`attention_merge.wgsl` combines the chunks). A chunk past a
/// row's causal end writes l = 0 (a chunk with a key has l >= 1: its max contributes exp(0)).
fn attention(split: bool) -> String {
    let (outputs, rows, key_range, store) = if split {
        (
            "@group(0) @binding(4) var<storage, read_write> part_ml: array<f32>;\n\
             @group(0) @binding(5) var<storage, read_write> part_acc: array<f32>;",
            "    let slot = wg_linear(wid, nwg);\n    let n_chunks = (p.p4 + p.p7 - 1u) / p.p7;\n    \
             if (slot >= p.p0 * n_heads * n_chunks) {\n        return;\n    }\n    \
             let row = slot / n_chunks;\n    let chunk = slot % n_chunks;",
            "    let k_begin = chunk * p.p7;\n    let k_end = min(k_begin + p.p7, n_keys);",
            "    if (lid < hd) {\n        part_acc[slot * hd + lid] = acc;\n    }\n    if (lid == 0u) {\n        \
             part_ml[slot * 2u] = m;\n        part_ml[slot * 2u + 1u] = l;\n    }",
        )
    } else {
        (
            "@group(0) @binding(4) var<storage, read_write> out: array<f32>;",
            "    let row = wg_linear(wid, nwg);\n    if (row >= p.p0 * n_heads) {\n        return;\n    }",
            "    let k_begin = 0u;\n    let k_end = n_keys;",
            "    if (lid < hd) {\n        out[q0 + lid] = select(0.0, acc / l, n_keys > 0u);\n    }",
        )
    };
    ATTENTION
        .replace("//OUTPUTS", outputs)
        .replace("//ROWS", rows)
        .replace("//KEY_RANGE", key_range)
        .replace("//STORE", store)
}

/// Query heads per KV head that `attention_groups.wgsl` is generated for (each a kernel of its own).
pub const MAX_GROUP: u32 = 8;

/// `load4_<name>(i)`: vec4 `i` (elements 4 i .. 4 i + 3) of the array `array`, whose elements are `vec4<u32>`
/// (f32) or `vec2<u32>` (two 16-bit values per word, the lower first), widened exactly.
fn loader4(name: &str, array: &str, dtype: DType) -> String {
    let body = match dtype {
        DType::F16 => format!("widen4_f16({array}[i])"),
        DType::BF16 => format!("widen4_bf16({array}[i])"),
        _ => format!("bitcast<vec4<f32>>({array}[i])"),
    };
    format!("fn load4_{name}(i: u32) -> vec4<f32> {{\n    return {body};\n}}\n")
}

/// The per-KV-head-group split-K kernel for `g` query heads per KV head (1..=`MAX_GROUP`), caches of `dtype`.
fn attention_groups(dtype: DType, g: u32) -> String {
    assert!((1..=MAX_GROUP).contains(&g));
    let per_head = |line: &str| repeat_lines(g, line);
    // vec4 outputs per lane: G * head_dim / 4 <= min(512, 64 G) over 128 lanes.
    let per_out = |line: &str| repeat_lines((64 * g).min(512).div_ceil(128), line);
    let vec = if matches!(dtype, DType::F16 | DType::BF16) {
        "vec2<u32>"
    } else {
        "vec4<u32>"
    };
    let consts = format!(
        "const G: u32 = {g}u;\nconst RED_LEN: u32 = {}u;\nconst TILE_LEN: u32 = {}u;\n",
        g * 128,
        g * 32
    );
    consts
        + &ATTENTION_GROUPS
            .replace("array<VEC>", &format!("array<{vec}>"))
            .replace("//PART_INIT\n", &per_head("        var d{i} = 0.0;\n"))
            .replace(
                "//PART_BODY\n",
                &per_head("                d{i} = d{i} + dot(qs[{i}u * hd4 + v], kv);\n"),
            )
            .replace("//PART_STORE\n", &per_head("        red[{i}u * WG + lid] = d{i};\n"))
            .replace("//ACC_INIT\n", &per_out("    var acc{i} = vec4<f32>(0.0);\n"))
            .replace(
                "//ACC_BODY\n",
                &per_out(
                    "        {\n            let o = lid + {i}u * WG;\n            if (o < G * hd4) {\n                \
                     let g = o / hd4;\n                let vb = t0 * row4 + koff4 + o % hd4;\n                \
                     var a = vec4<f32>(0.0);\n                for (var u = 0u; u < count; u = u + 1u) {\n                    \
                     a = a + pw[g * KT + u] * load4_v(vb + u * row4);\n                }\n                \
                     acc{i} = acc{i} * corr[g] + a;\n            }\n        }\n",
                ),
            )
            .replace(
                "//ACC_STORE\n",
                &per_out(
                    "    {\n        let o = lid + {i}u * WG;\n        if (o < G * hd4) {\n            \
                     part_acc[(slot0 + o / hd4 * n_chunks) * hd4 + o % hd4] = acc{i};\n        }\n    }\n",
                ),
            )
        + &loader4("q", "q_in", dtype)
        + &loader4("k", "k_in", dtype)
        + &loader4("v", "v_in", dtype)
}

/// `format::activation::erf` in WGSL, the same steps and constants.
fn erf() -> String {
    let horner = |coef: &[f32], var: &str| -> String {
        let last = coef.len() - 1;
        let mut s = format!("    var p = {};\n", wgsl_f32(coef[last]));
        for &c in coef[..last].iter().rev() {
            s += &format!("    p = p * {var} + {};\n", wgsl_f32(c));
        }
        s
    };
    format!(
        "const GELU_TANH_BETA: f32 = {};\nconst GELU_TANH_KAPPA: f32 = {};\nconst FRAC_1_SQRT_2: f32 = {};\n\
fn erf_small(x: f32) -> f32 {{\n    let s = x * x;\n{}    return (x + x * (p * s)) * {};\n}}\n\
fn erfc_large(z: f32) -> f32 {{\n    let t = 1.0 / (1.0 + 0.5 * z);\n{}    return t * exp(-z * z + p);\n}}\n\
fn erf(x: f32) -> f32 {{\n    let z = min(abs(x), {});\n    if (z < {}) {{\n        return erf_small(x);\n    }}\n\
    let r = 1.0 - erfc_large(z);\n    return select(r, -r, x < 0.0);\n}}\n",
        wgsl_f32(GELU_TANH_BETA),
        wgsl_f32(GELU_TANH_KAPPA),
        wgsl_f32(FRAC_1_SQRT_2),
        horner(&ERF_TAYLOR, "s"),
        wgsl_f32(FRAC_2_SQRT_PI),
        horner(&ERFC_FIT, "t"),
        wgsl_f32(ERF_CLAMP),
        wgsl_f32(ERF_SPLIT),
    )
}

/// The kernel-specific part of a model-op shader (after `common.wgsl`), or None for other shaders.
pub(crate) fn source(shader: &Shader) -> Option<String> {
    let mut s = String::from(MODEL_COMMON);
    match shader {
        Shader::Embedding(dt) => {
            s += EMBEDDING;
            s += &loader("table", "table", *dt);
        }
        Shader::Rope(dt) => {
            s += ROPE;
            s += &loader("x", "x", *dt);
        }
        Shader::ModelElementwise(dt) => {
            s += ELEMENTWISE;
            s += &loader("a", "a_in", *dt);
            s += &loader("b", "b_in", *dt);
            s += &erf();
        }
        Shader::Attention(dt) | Shader::AttentionSplit(dt) => {
            s += &attention(matches!(shader, Shader::AttentionSplit(_)));
            s += &loader("q", "q_in", *dt);
            s += &loader("k", "k_in", *dt);
            s += &loader("v", "v_in", *dt);
        }
        Shader::AttentionGroups(dt, g) => s += &attention_groups(*dt, *g),
        Shader::AttentionMerge => s += ATTENTION_MERGE,
        Shader::Cast => s += CAST,
        _ => return None,
    }
    Some(s)
}
