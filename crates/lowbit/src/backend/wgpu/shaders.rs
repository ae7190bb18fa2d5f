//! WGSL sources: hand-written kernels in `shaders/*.wgsl` plus small generated pieces (input widening per dtype,
//! code tables from `crate::format` written as exact hex floats). Each variant has a key; the pipeline cache
//! compiles a key once.

pub use super::gemm_source::GemmKind;
use super::gemm_source::gemm_loaders;
pub use super::quantize_source::{DEQUANTIZE_VPT, Encoding, QUANTIZE_ROWS};
use super::quantize_source::{encoder, quantize_items, unroll_rows, word_layout};
use crate::format::FourBitType;
use crate::tensor::DType;

const COMMON: &str = include_str!("shaders/common.wgsl");
const RCP_TABLE: &str = include_str!("shaders/rcp_table.wgsl");
const QUANTIZE: &str = include_str!("shaders/quantize.wgsl");
const DEQUANTIZE: &str = include_str!("shaders/dequantize.wgsl");
const GEMV_4BIT: &str = include_str!("shaders/gemv_4bit.wgsl");
const GEMM: &str = include_str!("shaders/gemm.wgsl");
const ROW_SCALE: &str = include_str!("shaders/row_scale.wgsl");
const ROW_QUANT: &str = include_str!("shaders/row_quant.wgsl");
const COL_OUTLIERS: &str = include_str!("shaders/col_outliers.wgsl");
const ELEMENTWISE: &str = include_str!("shaders/elementwise.wgsl");
const TERNARY_QUANTIZE: &str = include_str!("shaders/ternary_quantize.wgsl");
const ROWS_FLOAT: &str = include_str!("shaders/rows_float.wgsl");
const RMS_NORM_VEC4: &str = include_str!("shaders/rms_norm_vec4.wgsl");
const ROW_REDUCE: &str = include_str!("shaders/row_reduce.wgsl");
const COPY: &str = include_str!("shaders/copy.wgsl");
const NARROW: &str = include_str!("shaders/narrow.wgsl");
const TERNARY_GEMV: &str = include_str!("shaders/ternary_gemv.wgsl");
const TERNARY_RESCALE: &str = include_str!("shaders/ternary_rescale.wgsl");
const FLOAT_BITS: &str = include_str!("shaders/float_bits.wgsl");
const MODEL_COMMON: &str = include_str!("shaders/model_common.wgsl");
const INT8_OUTLIER_LIST: &str = include_str!("shaders/int8_outlier_list.wgsl");
const INT8_LINEAR_OUT: &str = include_str!("shaders/int8_linear_out.wgsl");
const SUBGROUP_PROBE: &str = "@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> lanes: array<u32>;
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) sg_id: u32,
        @builtin(subgroup_size) sg_size: u32) {
    lanes[lid + p.p0] = (sg_size << 16u) | sg_id;
}
";
const GEMV_4BIT_FAST: &str = include_str!("shaders/gemv_4bit_fast.wgsl");
const GEMV_DENSE: &str = include_str!("shaders/gemv_dense.wgsl");
const TERNARY_GEMV_FAST: &str = include_str!("shaders/ternary_gemv_fast.wgsl");

/// The dense GEMV's work split (portable reduction; `kernels::dense` adds subgroups where they fit).
pub const GEMV_DENSE_SHAPE: GemvShape = GemvShape::new(128, 4);

/// How a GEMV kernel splits work: `tpr` threads share a set of `rpt` rows (both powers of two, tpr * rpt <= 256
/// rows per workgroup), and the threads of a set sum their partials through subgroup operations (`subgroup`)
/// or through workgroup memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GemvShape {
    pub tpr: u32,
    pub rpt: u32,
    pub subgroup: bool,
}

/// Fills a GEMV template: the work split, `rpt` accumulators of type `acc_ty` with `body` (where `{i}` names the
/// row index) and the cross-thread reduction leaving this thread's row `t` in `total`.
impl GemvShape {
    /// The work splits the benchmarks compare (portable reduction; each also exists with subgroups).
    pub const CANDIDATES: [GemvShape; 8] = [
        GemvShape::new(32, 4),
        GemvShape::new(64, 4),
        GemvShape::new(64, 8),
        GemvShape::new(128, 2),
        GemvShape::new(128, 4),
        GemvShape::new(128, 8),
        GemvShape::new(256, 1),
        GemvShape::new(256, 4),
    ];

    pub const fn new(tpr: u32, rpt: u32) -> GemvShape {
        GemvShape {
            tpr,
            rpt,
            subgroup: false,
        }
    }

    /// Rows one workgroup covers.
    pub fn rows_per_group(&self) -> usize {
        (256 / self.tpr * self.rpt) as usize
    }
}

fn gemv_template(
    template: &str,
    shape: GemvShape,
    acc_ty: &str,
    setup: &str,
    body: &str,
) -> String {
    let GemvShape { tpr, rpt, subgroup } = shape;
    assert!(tpr.is_power_of_two() && rpt.is_power_of_two() && tpr <= 256 && rpt <= tpr);
    let zero = format!("{acc_ty}(0)");
    let per_row = |line: &str| repeat_lines(rpt, line);
    let reduce = if subgroup {
        // Lanes are numbered linearly within the workgroup (probed when the device opens), and TPR is a
        // multiple of the subgroup size, so a subgroup never spans two sets.
        [
            "    let sg = lid / sg_size;\n".to_string(),
            per_row("    let s{i} = subgroupAdd(acc{i});\n"),
            "    if (sg_id == 0u) {\n".into(),
            per_row("        red[sg * RPT + {i}u] = s{i};\n"),
            "    }\n    workgroupBarrier();\n".into(),
            format!("    var total = {zero};\n"),
            "    if (t < RPT) {\n        let per_set = TPR / sg_size;\n".into(),
            "        for (var j = 0u; j < per_set; j = j + 1u) {\n".into(),
            "            total = total + red[(rs * per_set + j) * RPT + t];\n        }\n    }\n"
                .into(),
        ]
        .concat()
    } else {
        [
            per_row("    red[lid * RPT + {i}u] = acc{i};\n"),
            "    workgroupBarrier();\n".into(),
            "    for (var off = TPR / 2u; off > 0u; off = off >> 1u) {\n        if (t < off) {\n".into(),
            per_row(
                "            red[lid * RPT + {i}u] = red[lid * RPT + {i}u] + red[(lid + off) * RPT + {i}u];\n",
            ),
            "        }\n        workgroupBarrier();\n    }\n".into(),
            format!("    var total = {zero};\n"),
            "    if (t < RPT) {\n        total = red[rs * TPR * RPT + t];\n    }\n".into(),
        ]
        .concat()
    };
    let builtins = if subgroup {
        "@builtin(subgroup_invocation_id) sg_id: u32,\n    @builtin(subgroup_size) sg_size: u32,"
    } else {
        ""
    };
    let consts = format!(
        "const TPR: u32 = {tpr}u;\nconst RPT: u32 = {rpt}u;\nconst SETS: u32 = {}u;\nconst RED_LEN: u32 = {}u;\n",
        256 / tpr,
        256 * rpt
    );
    consts
        + &template
            .replace("SUBGROUP_BUILTINS", builtins)
            .replace("ROW_SETUP\n", &per_row(setup))
            .replace("ROW_BODY\n", &per_row(body))
            .replace("REDUCE\n", &reduce)
}

fn gemv_4bit_fast(shape: GemvShape) -> String {
    gemv_template(
        GEMV_4BIT_FAST,
        shape,
        "f32",
        "    let e{i} = min(row0 + {i}u, last) * cols;\n    var acc{i} = 0.0;\n",
        "        {\n            let e = e{i} + c * 8u;\n            acc{i} = acc{i} + absmax[e >> p.p2] * dot8(packed[e / 8u - p.p4], x0, x1);\n        }\n",
    )
}

/// The one-row dense GEMV for a weight of `kind` (`DenseF32`, `DenseWeightF16` or `DenseWeightBf16`).
fn gemv_dense(kind: GemmKind, shape: GemvShape) -> String {
    // The halves' widening comes from model_common.wgsl (appended by `source`).
    let (wvec, load) = match kind {
        GemmKind::DenseWeightF16 => ("vec2<u32>", "widen4_f16(w_in[i])"),
        GemmKind::DenseWeightBf16 => ("vec2<u32>", "widen4_bf16(w_in[i])"),
        _ => ("vec4<f32>", "w_in[i]"),
    };
    let load = format!("fn load_w4(i: u32) -> vec4<f32> {{\n    return {load};\n}}\n");
    gemv_template(
        &GEMV_DENSE.replace("array<WVEC>", &format!("array<{wvec}>")),
        shape,
        "f32",
        "    let e{i} = min(row0 + {i}u, last) * k4;\n    var acc{i} = 0.0;\n",
        "        {\n            let w = load_w4(e{i} + c);\n            \
         acc{i} = acc{i} + ((x0.x * w.x + x0.y * w.y) + (x0.z * w.z + x0.w * w.w));\n        }\n",
    ) + &load
}

fn ternary_gemv_fast(shape: GemvShape) -> String {
    gemv_template(
        TERNARY_GEMV_FAST,
        shape,
        "vec4<i32>",
        "    let b{i} = min(pr0 + {i}u, last) * chunks;\n    var acc{i} = vec4<i32>(0);\n",
        "        acc{i} = acc{i} + dot16(w[b{i} + c], xv) - xs;\n",
    )
}

/// `line` written `n` times, `{i}` replaced by 0..n: the per-row lines of the generated kernels.
pub(super) fn repeat_lines(n: u32, line: &str) -> String {
    (0..n)
        .map(|i| line.replace("{i}", &i.to_string()))
        .collect()
}

/// A WGSL float literal that denotes `v` exactly (hex float), so no decimal parsing is involved.
pub fn wgsl_f32(v: f32) -> String {
    let bits = v.to_bits();
    let sign = if bits >> 31 == 1 { "-" } else { "" };
    let exp = ((bits >> 23) & 0xff) as i32;
    let man = bits & 0x7f_ffff;
    assert!(exp != 0xff, "non-finite constant");
    if exp == 0 {
        assert!(man == 0, "subnormal constant");
        return format!("{sign}0.0f");
    }
    format!("{sign}0x1.{:06x}p{}f", man << 1, exp - 127)
}

fn load_x(dtype: DType) -> &'static str {
    match dtype {
        DType::F16 => {
            "fn load_x_bits(i: u32) -> u32 {\n    return bitcast<u32>(f16_bits_to_f32((x[i >> 1u] >> ((i & 1u) * 16u)) & 0xffffu));\n}\n"
        }
        DType::BF16 => {
            "fn load_x_bits(i: u32) -> u32 {\n    return ((x[i >> 1u] >> ((i & 1u) * 16u)) & 0xffffu) << 16u;\n}\n"
        }
        _ => "fn load_x_bits(i: u32) -> u32 {\n    return x[i];\n}\n",
    }
}

/// One compiled variant: a cache key and its full WGSL text.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Shader {
    /// Input dtype, encoding and R, the rows of 256 items (output words) each workgroup covers.
    Quantize(DType, Encoding, u32),
    /// Code width and vec4 stores per thread.
    Dequantize {
        bits: u32,
        vpt: u32,
    },
    Gemv4bit,
    Gemm(GemmKind),
    RowScale(DType),
    RowQuant(DType),
    ColOutliers(DType),
    Elementwise,
    TernaryQuantize(DType),
    RowsFloat,
    /// RMSNorm over rows of a multiple of 4 elements, read as vec4.
    RmsNormVec4,
    Copy,
    TernaryGemv,
    /// BitNet's exact `f32(acc) / (x_scale * weight_scale)` on integer bit patterns.
    TernaryRescale,
    /// LLM.int8(): the flagged outlier columns as an ascending list (one workgroup).
    Int8OutlierList,
    /// LLM.int8(): int8_mm_dequant with an exact fma, plus the outlier columns' float product, to f16.
    Int8LinearOut,
    Gemv4bitFast(GemvShape),
    TernaryGemvFast(GemvShape),
    /// The multi-row 4-bit GEMV for this many activation rows per dispatch and weight rows per thread
    /// (`gemv_rows.rs`).
    Gemv4bitRows(u32, u32),
    /// The one-row dense GEMV for a weight of this kind (f32, or f16/bf16 read as stored) and work split.
    GemvDense(GemmKind, GemvShape),
    /// The multi-row int8 and ternary GEMVs for this many activation rows per dispatch (`int_gemv_rows.rs`).
    Int8GemvRows(u32),
    TernaryGemvRows(u32),
    /// Reports each lane's subgroup index and size (the capability probe run when a device opens).
    SubgroupProbe,
    /// Model ops (`model_ops.rs`), inputs of the given dtype.
    Embedding(DType),
    Rope(DType),
    ModelElementwise(DType),
    Attention(DType),
    /// Split-K decode attention: partial softmax per key chunk, then the merge of the chunks.
    AttentionSplit(DType),
    /// Split-K attention for a few query rows, one workgroup per KV-head group and key chunk: caches of the
    /// dtype, this many query heads per KV head.
    AttentionGroups(DType, u32),
    AttentionMerge,
    /// f32 <-> f16/bf16 on bit patterns, the direction in the params.
    Cast,
    /// A window of columns of every row, as 32-bit words.
    Narrow,
}

impl Shader {
    pub fn key(&self) -> String {
        format!("{self:?}")
    }

    /// Whether the shader uses subgroup operations (the adapter must have them).
    pub fn needs_subgroups(&self) -> bool {
        matches!(
            self,
            Shader::SubgroupProbe
                | Shader::Gemv4bitFast(GemvShape { subgroup: true, .. })
                | Shader::TernaryGemvFast(GemvShape { subgroup: true, .. })
                | Shader::GemvDense(_, GemvShape { subgroup: true, .. })
        )
    }

    /// Whether the shader uses shader-f16 types (the adapter must have them).
    pub fn needs_f16(&self) -> bool {
        matches!(self, Shader::Gemm(GemmKind::DenseF16Native))
    }

    pub fn source(&self) -> String {
        // An `enable` directive must precede every declaration.
        let mut s = if self.needs_f16() {
            String::from("enable f16;\n")
        } else {
            String::new()
        };
        s += COMMON;
        match self {
            Shader::Quantize(dt, enc, rows) => {
                let bits = if *enc == Encoding::Code8 { 8 } else { 4 };
                s += &format!("const R: u32 = {rows}u;\n");
                s += RCP_TABLE;
                s += &unroll_rows(QUANTIZE, *rows);
                s += &quantize_items(*dt, 32 / bits);
                s += &word_layout(bits);
                s += &encoder(*enc);
            }
            Shader::Dequantize { bits, vpt } => {
                s += &format!(
                    "const VPT: u32 = {vpt}u;\nconst TABLE_LEN: u32 = {}u;\n",
                    1u32 << bits
                );
                s += &unroll_rows(DEQUANTIZE, *vpt);
                s += &word_layout(*bits);
            }
            Shader::Gemv4bit => s += GEMV_4BIT,
            Shader::Gemm(kind) => {
                s += GEMM;
                s += &gemm_loaders(*kind);
                if matches!(kind, GemmKind::DenseWeightF16 | GemmKind::DenseWeightBf16) {
                    s += MODEL_COMMON;
                }
            }
            Shader::RowScale(dt) => {
                s += RCP_TABLE;
                s += ROW_SCALE;
                s += load_x(*dt);
            }
            Shader::RowQuant(dt) => {
                s += ROW_QUANT;
                s += load_x(*dt);
            }
            Shader::ColOutliers(dt) => {
                s += COL_OUTLIERS;
                s += load_x(*dt);
            }
            Shader::Elementwise => s += ELEMENTWISE,
            Shader::TernaryQuantize(dt) => {
                s += TERNARY_QUANTIZE;
                s += load_x(*dt);
            }
            Shader::RowsFloat => {
                s += ROW_REDUCE;
                s += ROWS_FLOAT;
            }
            Shader::RmsNormVec4 => {
                s += ROW_REDUCE;
                s += RMS_NORM_VEC4;
            }
            Shader::Copy => s += COPY,
            Shader::Narrow => s += NARROW,
            Shader::TernaryGemv => s += TERNARY_GEMV,
            Shader::TernaryRescale => {
                s += FLOAT_BITS;
                s += TERNARY_RESCALE;
            }
            Shader::Int8OutlierList => s += INT8_OUTLIER_LIST,
            Shader::Int8LinearOut => {
                s += FLOAT_BITS;
                s += MODEL_COMMON;
                s += INT8_LINEAR_OUT;
            }
            Shader::Gemv4bitFast(shape) => s += &gemv_4bit_fast(*shape),
            Shader::GemvDense(kind, shape) => {
                s += &gemv_dense(*kind, *shape);
                if matches!(kind, GemmKind::DenseWeightF16 | GemmKind::DenseWeightBf16) {
                    s += MODEL_COMMON;
                }
            }
            Shader::TernaryGemvFast(shape) => s += &ternary_gemv_fast(*shape),
            Shader::Gemv4bitRows(nb, rpt) => s += &super::gemv_rows::source(*nb, *rpt),
            Shader::Int8GemvRows(nb) => s += &super::int_gemv_rows::int8_source(*nb),
            Shader::TernaryGemvRows(nb) => s += &super::int_gemv_rows::ternary_source(*nb),
            Shader::SubgroupProbe => s += SUBGROUP_PROBE,
            Shader::Embedding(_)
            | Shader::Rope(_)
            | Shader::ModelElementwise(_)
            | Shader::Attention(_)
            | Shader::AttentionSplit(_)
            | Shader::AttentionGroups(..)
            | Shader::AttentionMerge
            | Shader::Cast => {
                s += &super::model_ops::source(self).expect("a model-op shader");
            }
        }
        s
    }

    /// Every variant the backend can compile (for validation and Metal translation tests).
    pub fn all() -> Vec<Shader> {
        let dtypes = [DType::F32, DType::F16, DType::BF16];
        let mut v = Vec::new();
        for dt in dtypes {
            for enc in [
                Encoding::Code8,
                Encoding::FourBit(FourBitType::Nf4),
                Encoding::FourBit(FourBitType::Fp4),
            ] {
                for rows in QUANTIZE_ROWS {
                    v.push(Shader::Quantize(dt, enc, rows));
                }
            }
            v.push(Shader::RowScale(dt));
            v.push(Shader::RowQuant(dt));
            v.push(Shader::ColOutliers(dt));
            v.push(Shader::TernaryQuantize(dt));
            v.push(Shader::Embedding(dt));
            v.push(Shader::Rope(dt));
            v.push(Shader::ModelElementwise(dt));
            v.push(Shader::Attention(dt));
            v.push(Shader::AttentionSplit(dt));
            for g in 1..=super::model_ops::MAX_GROUP {
                v.push(Shader::AttentionGroups(dt, g));
            }
        }
        v.push(Shader::AttentionMerge);
        v.push(Shader::Cast);
        for bits in [8, 4] {
            for vpt in DEQUANTIZE_VPT {
                v.push(Shader::Dequantize { bits, vpt });
            }
        }
        v.push(Shader::Gemv4bit);
        for k in [
            GemmKind::FourBit,
            GemmKind::DenseF32,
            GemmKind::DenseF16,
            GemmKind::DenseF16Native,
            GemmKind::DenseWeightF16,
            GemmKind::DenseWeightBf16,
            GemmKind::Int8,
            GemmKind::Ternary,
        ] {
            v.push(Shader::Gemm(k));
        }
        v.push(Shader::Elementwise);
        v.push(Shader::RowsFloat);
        v.push(Shader::RmsNormVec4);
        v.push(Shader::Copy);
        v.push(Shader::Narrow);
        v.push(Shader::TernaryGemv);
        v.push(Shader::TernaryRescale);
        v.push(Shader::Int8OutlierList);
        v.push(Shader::Int8LinearOut);
        v.push(Shader::SubgroupProbe);
        for nb in [1, 2, 4, 8] {
            for rpt in super::gemv_rows::RPT_VARIANTS {
                v.push(Shader::Gemv4bitRows(nb, rpt));
            }
            v.push(Shader::Int8GemvRows(nb));
            v.push(Shader::TernaryGemvRows(nb));
        }
        for kind in [
            GemmKind::DenseF32,
            GemmKind::DenseWeightF16,
            GemmKind::DenseWeightBf16,
        ] {
            v.push(Shader::GemvDense(kind, GEMV_DENSE_SHAPE));
        }
        for shape in GemvShape::CANDIDATES {
            v.push(Shader::Gemv4bitFast(shape));
            v.push(Shader::TernaryGemvFast(shape));
            let sg = GemvShape {
                subgroup: true,
                ..shape
            };
            v.push(Shader::Gemv4bitFast(sg));
            v.push(Shader::TernaryGemvFast(sg));
        }
        v
    }
}

/// Every shader variant as (key, WGSL source).
pub fn all_sources() -> Vec<(String, String)> {
    Shader::all()
        .into_iter()
        .map(|s| (s.key(), s.source()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::wgsl_f32;

    #[test]
    fn hex_literals_are_exact() {
        assert_eq!(wgsl_f32(1.0), "0x1.000000p0f");
        assert_eq!(wgsl_f32(-0.5), "-0x1.000000p-1f");
        assert_eq!(wgsl_f32(0.0), "0.0f");
        assert_eq!(wgsl_f32(1.5), "0x1.800000p0f");
    }
}
