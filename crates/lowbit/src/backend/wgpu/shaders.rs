//! WGSL sources: hand-written kernels in `shaders/*.wgsl` plus small generated pieces (input widening per dtype,
//! code tables from `crate::format` written as exact hex floats). Each variant has a key; the pipeline cache
//! compiles a key once.

use crate::format::FourBitType;
use crate::format::codebook::{FP4_BITS_BY_RANK, FP4_THRESHOLDS, NF4_THRESHOLDS};
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
const COPY: &str = include_str!("shaders/copy.wgsl");
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
const TERNARY_GEMV_FAST: &str = include_str!("shaders/ternary_gemv_fast.wgsl");

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
    pub const CANDIDATES: [GemvShape; 6] = [
        GemvShape::new(32, 4),
        GemvShape::new(64, 4),
        GemvShape::new(64, 8),
        GemvShape::new(128, 2),
        GemvShape::new(128, 4),
        GemvShape::new(256, 1),
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
    let per_row = |line: &str| -> String {
        (0..rpt)
            .map(|i| line.replace("{i}", &i.to_string()))
            .collect()
    };
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
        "        {\n            let e = e{i} + c * 32u;\n            acc{i} = acc{i} + absmax[e >> p.p2] * dot32(packed[e / 32u - p.p4], x0, x1, x2, x3, x4, x5, x6, x7);\n        }\n",
    )
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

/// The rows of 256 items a quantize workgroup may cover (blocks of more than 256 items need rows >= their
/// item count / 256, so this bounds the block size at 1024 items: 4096 elements of 8-bit codes).
pub const QUANTIZE_ROWS: [u32; 3] = [1, 2, 4];

/// The vec4 stores per thread a dequantize kernel may make.
pub const DEQUANTIZE_VPT: [u32; 3] = [1, 2, 4];

/// What a blockwise quantizer writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// 8-bit codes against an uploaded codebook's midpoints.
    Code8,
    FourBit(FourBitType),
}

/// The dense GEMM flavours sharing `gemm.wgsl`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GemmKind {
    /// f32 activations times dequantized NF4/FP4 weights.
    FourBit,
    /// f32 activations times f32 weights.
    DenseF32,
    /// f16 activations and weights (raw bits, widened exactly on integers), f32 accumulation and output.
    DenseF16,
    /// The same through shader-f16 types, where the adapter has them (one conversion per load).
    DenseF16Native,
    /// f32 activations times an f16 weight kept in its dtype (two halves per word, widened exactly on
    /// integers as the cast kernel does): the f32 weight's products in its order, for half the bytes.
    DenseWeightF16,
    /// The same for a bf16 weight.
    DenseWeightBf16,
    /// i8 x i8 -> exact i32.
    Int8,
    /// i8 activations times 2-bit packed ternary weights -> exact i32.
    Ternary,
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

fn word_layout(bits: u32) -> String {
    if bits == 8 {
        "const EPW: u32 = 4u;\nconst CODE_MASK: u32 = 0xffu;\nfn code_shift(j: u32) -> u32 {\n    return 8u * j;\n}\n".into()
    } else {
        // Element 2k is the high nibble of byte k.
        "const EPW: u32 = 8u;\nconst CODE_MASK: u32 = 0xfu;\nfn code_shift(j: u32) -> u32 {\n    return (j >> 1u) * 8u + 4u * (1u - (j & 1u));\n}\n".into()
    }
}

/// Repeats each region of `template` between a `//{ROWS` line and a `//}ROWS` line `count` times, with `{k}`
/// replaced by 0..count, so per-row values stay in named registers instead of an indexed private array.
fn unroll_rows(template: &str, count: u32) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(a) = rest.find("//{ROWS\n") {
        out += &rest[..a];
        let body_start = a + "//{ROWS\n".len();
        let b = body_start
            + rest[body_start..]
                .find("//}ROWS\n")
                .expect("unterminated ROWS region");
        for k in 0..count {
            out += &rest[body_start..b].replace("{k}", &k.to_string());
        }
        rest = &rest[b + "//}ROWS\n".len()..];
    }
    out + rest
}

/// The quantize kernel's encoder: `encoder_init(lid)` (workgroup tables) and `encode4(s)`, the codes of four
/// scaled values.
fn encoder(enc: Encoding) -> String {
    match enc {
        Encoding::Code8 => "@group(0) @binding(5) var<storage, read> midpoints: array<f32>;\n\
// The bisection of [0, 255) with mid = (lo + hi) / 2 always takes 8 steps and visits a perfect binary tree\n\
// whose in-order sequence is the sorted midpoints; here it is stored level by level (node i has children 2i\n\
// and 2i + 1, level k at [2^(k-1), 2^k)), so the lanes of one step read nearby words (few bank conflicts).\n\
var<workgroup> tree: array<f32, 256>;\n\
fn encoder_init(lid: u32) {\n    // Node lid (level k, j-th of its level) is midpoint (2j + 1) * 2^(8-k) - 1; slot 0 is unused.\n    let k = 32u - countLeadingZeros(max(lid, 1u));\n    let j = max(lid, 1u) - (1u << (k - 1u));\n    tree[lid] = midpoints[((2u * j + 1u) << (8u - k)) - 1u];\n}\n\
// Nearest code: #{j : m_j < s} (the bisection's lo: one bit per step, 1 = went right); a value exactly on a\n\
// midpoint goes to the even index. m_lo is the node of the last left turn (lo < 255 iff there was one).\n\
fn encode4(s: vec4<f32>) -> vec4<u32> {\n    var i = vec4<u32>(1u);\n    var last_left = vec4<f32>(0.0);\n    for (var step = 0u; step < 8u; step = step + 1u) {\n        let m = vec4<f32>(tree[i.x], tree[i.y], tree[i.z], tree[i.w]);\n        let below = m < s;\n        last_left = select(m, last_left, below);\n        i = 2u * i + select(vec4<u32>(0u), vec4<u32>(1u), below);\n    }\n    let lo = i - vec4<u32>(256u);\n    let tie = (lo < vec4<u32>(255u)) & (last_left == s) & ((lo & vec4<u32>(1u)) == vec4<u32>(1u));\n    return select(lo, lo + vec4<u32>(1u), tie);\n}\n"
            .into(),
        Encoding::FourBit(FourBitType::Nf4) => {
            let mut s = String::from("fn encoder_init(lid: u32) {}\n// dQuantizeNF4: number of thresholds strictly below s.\nfn encode4(s: vec4<f32>) -> vec4<u32> {\n    var c = vec4<u32>(0u);\n");
            for t in NF4_THRESHOLDS {
                s += &format!(
                    "    c = c + select(vec4<u32>(0u), vec4<u32>(1u), vec4<f32>({}) < s);\n",
                    wgsl_f32(t)
                );
            }
            s + "    return c;\n}\n"
        }
        Encoding::FourBit(FourBitType::Fp4) => {
            let lut: u32 = FP4_BITS_BY_RANK
                .iter()
                .enumerate()
                .map(|(i, &b)| (b as u32) << (4 * i))
                .sum();
            let mut s = String::from("fn encoder_init(lid: u32) {}\n// dQuantizeFP4: magnitude rank by strict >, sign bit iff s < 0.\nfn encode4(s: vec4<f32>) -> vec4<u32> {\n    let a = abs(s);\n    var r = vec4<u32>(0u);\n");
            for t in FP4_THRESHOLDS {
                s += &format!(
                    "    r = r + select(vec4<u32>(0u), vec4<u32>(1u), a > vec4<f32>({}));\n",
                    wgsl_f32(t)
                );
            }
            s + &format!(
                "    return ((vec4<u32>(0x{lut:08x}u) >> (4u * r)) & vec4<u32>(7u)) | select(vec4<u32>(0u), vec4<u32>(8u), s < vec4<f32>(0.0));\n}}\n"
            )
        }
    }
}

/// The quantize kernel's input side for `dtype` and `epw` elements per item: `x` as 16-byte vectors (8-byte
/// for 4 half-precision elements), `Item` (epw / 4 vec4s of f32 bit patterns), `load_item(i, n)` (whole-vector
/// loads, or per element at the tail, elements past n reading as 0.0), `item_max` and `item_word`. The host
/// pads `x` to a multiple of 16 bytes.
fn quantize_items(dtype: DType, epw: u32) -> String {
    let quads = (epw / 4) as usize;
    let fields = ["a", "b"];
    let comps = ["x", "y", "z", "w"];
    let mut s = String::from("struct Item {\n");
    for f in &fields[..quads] {
        s += &format!("    {f}: vec4<u32>,\n");
    }
    s += "}\n";
    // The binding, whole-item loads and one element's bits.
    let (decl, whole, one) = match dtype {
        DType::F32 => (
            "array<vec4<u32>>",
            (0..quads)
                .map(|q| format!("x[{quads}u * i + {q}u]"))
                .collect::<Vec<_>>(),
            "x[e >> 2u][e & 3u]".to_string(),
        ),
        _ => {
            // Two 16-bit halves per word, widened exactly.
            s += match dtype {
                DType::F16 => {
                    "fn widen(h: u32) -> u32 {\n    return bitcast<u32>(f16_bits_to_f32(h));\n}\n"
                }
                _ => "fn widen(h: u32) -> u32 {\n    return h << 16u;\n}\n",
            };
            s += "fn widen4(p: u32, q: u32) -> vec4<u32> {\n    return vec4<u32>(widen(p & 0xffffu), widen(p >> 16u), widen(q & 0xffffu), widen(q >> 16u));\n}\n";
            let (decl, per_vec) = if quads == 2 {
                ("array<vec4<u32>>", 4)
            } else {
                ("array<vec2<u32>>", 2)
            };
            let whole = if quads == 2 {
                vec!["widen4(v.x, v.y)".into(), "widen4(v.z, v.w)".into()]
            } else {
                vec!["widen4(v.x, v.y)".into()]
            };
            (
                decl,
                whole,
                format!(
                    "widen((x[(e >> 1u) / {per_vec}u][(e >> 1u) % {per_vec}u] >> ((e & 1u) * 16u)) & 0xffffu)"
                ),
            )
        }
    };
    s += &format!("@group(0) @binding(1) var<storage, read> x: {decl};\n");
    s += &format!("fn load_x_bits(e: u32) -> u32 {{\n    return {one};\n}}\n");
    s +=
        "fn load_item(i: u32, n: u32) -> Item {\n    let e0 = i * EPW;\n    if (e0 + EPW <= n) {\n";
    if dtype != DType::F32 {
        s += "        let v = x[i];\n";
    }
    s += &format!("        return Item({});\n    }}\n", whole.join(", "));
    s += &format!(
        "    var it = Item({});\n",
        vec!["vec4<u32>(0u)"; quads].join(", ")
    );
    for (q, f) in fields[..quads].iter().enumerate() {
        for (c, comp) in comps.iter().enumerate() {
            let j = q * 4 + c;
            s += &format!(
                "    if (e0 + {j}u < n) {{\n        it.{f}.{comp} = load_x_bits(e0 + {j}u);\n    }}\n"
            );
        }
    }
    s += "    return it;\n}\n";
    let maxes: Vec<String> = fields[..quads]
        .iter()
        .map(|f| format!("quad_max(it.{f})"))
        .collect();
    let words: Vec<String> = fields[..quads]
        .iter()
        .enumerate()
        .map(|(q, f)| format!("pack_quad(encode_quad(it.{f}, r), {}u)", 4 * q))
        .collect();
    let max_expr = if quads == 2 {
        format!("max({}, {})", maxes[0], maxes[1])
    } else {
        maxes[0].clone()
    };
    s += &format!("fn item_max(it: Item) -> u32 {{\n    return {max_expr};\n}}\n");
    s += &format!(
        "fn item_word(it: Item, r: f32) -> u32 {{\n    return {};\n}}\n",
        words.join(" | ")
    );
    s
}

/// The output side of the GEMM: float kinds accumulate in f32 and add the optional bias; integer kinds
/// return exact i32 sums.
const GEMM_OUT_F32: &str = "alias ACC = f32;
@group(0) @binding(5) var<storage, read> bias: array<f32>;
@group(0) @binding(6) var<storage, read_write> y: array<f32>;
fn store(b: u32, r: u32, v: f32) {
    var bv = 0.0;
    if (p.p3 != 0u) {
        bv = bias[r];
    }
    y[b * p.p1 + r] = v + bv;
}
";
const GEMM_OUT_I32: &str = "alias ACC = i32;
@group(0) @binding(6) var<storage, read_write> y: array<i32>;
fn store(b: u32, r: u32, v: i32) {
    y[b * p.p1 + r] = v;
}
";

/// Loaders of f32 activations and a half-precision weight, element i being half i % 2 of word i / 2
/// (little-endian, as uploaded); `widen_*` come from model_common.wgsl.
const DENSE_WEIGHT_F16: &str = "@group(0) @binding(1) var<storage, read> a_in: array<f32>;
@group(0) @binding(2) var<storage, read> w_in: array<u32>;
fn load_a(b: u32, k: u32) -> f32 {
    return a_in[b * p.p2 + k];
}
fn load_w(r: u32, k: u32) -> f32 {
    let i = r * p.p2 + k;
    return bitcast<f32>(widen_f16((w_in[i >> 1u] >> ((i & 1u) * 16u)) & 0xffffu));
}
";
const DENSE_WEIGHT_BF16: &str = "@group(0) @binding(1) var<storage, read> a_in: array<f32>;
@group(0) @binding(2) var<storage, read> w_in: array<u32>;
fn load_a(b: u32, k: u32) -> f32 {
    return a_in[b * p.p2 + k];
}
fn load_w(r: u32, k: u32) -> f32 {
    let i = r * p.p2 + k;
    return bitcast<f32>(widen_bf16((w_in[i >> 1u] >> ((i & 1u) * 16u)) & 0xffffu));
}
";

/// The GEMM's output declarations plus its operand loaders `load_a(b, k)` and `load_w(r, k)`.
fn gemm_loaders(kind: GemmKind) -> String {
    let out = match kind {
        GemmKind::Int8 | GemmKind::Ternary => GEMM_OUT_I32,
        GemmKind::FourBit
        | GemmKind::DenseF32
        | GemmKind::DenseF16
        | GemmKind::DenseF16Native
        | GemmKind::DenseWeightF16
        | GemmKind::DenseWeightBf16 => GEMM_OUT_F32,
    };
    let operands = match kind {
        GemmKind::FourBit => {
            "@group(0) @binding(1) var<storage, read> a_in: array<f32>;\n\
@group(0) @binding(2) var<storage, read> w_packed: array<u32>;\n\
@group(0) @binding(3) var<storage, read> w_absmax: array<f32>;\n\
@group(0) @binding(4) var<storage, read> w_table: array<f32>;\n\
fn load_a(b: u32, k: u32) -> f32 {\n    return a_in[b * p.p2 + k];\n}\n\
fn load_w(r: u32, k: u32) -> f32 {\n    let i = r * p.p2 + k;\n    let j = i & 7u;\n    let nib = (w_packed[i >> 3u] >> ((j >> 1u) * 8u + 4u * (1u - (j & 1u)))) & 15u;\n    return ftz(w_table[nib] * w_absmax[i >> p.p4]);\n}\n"
        }
        GemmKind::DenseF32 => {
            "@group(0) @binding(1) var<storage, read> a_in: array<f32>;\n\
@group(0) @binding(2) var<storage, read> w_in: array<f32>;\n\
fn load_a(b: u32, k: u32) -> f32 {\n    return a_in[b * p.p2 + k];\n}\n\
fn load_w(r: u32, k: u32) -> f32 {\n    return w_in[r * p.p2 + k];\n}\n"
        }
        GemmKind::DenseF16 => {
            "@group(0) @binding(1) var<storage, read> a_in: array<u32>;\n\
@group(0) @binding(2) var<storage, read> w_in: array<u32>;\n\
fn half_at(word: u32, i: u32) -> f32 {\n    return f16_bits_to_f32((word >> ((i & 1u) * 16u)) & 0xffffu);\n}\n\
fn load_a(b: u32, k: u32) -> f32 {\n    let i = b * p.p2 + k;\n    return half_at(a_in[i >> 1u], i);\n}\n\
fn load_w(r: u32, k: u32) -> f32 {\n    let i = r * p.p2 + k;\n    return half_at(w_in[i >> 1u], i);\n}\n"
        }
        GemmKind::DenseF16Native => {
            "@group(0) @binding(1) var<storage, read> a_in: array<f16>;\n\
@group(0) @binding(2) var<storage, read> w_in: array<f16>;\n\
fn load_a(b: u32, k: u32) -> f32 {\n    return f32(a_in[b * p.p2 + k]);\n}\n\
fn load_w(r: u32, k: u32) -> f32 {\n    return f32(w_in[r * p.p2 + k]);\n}\n"
        }
        GemmKind::DenseWeightF16 => DENSE_WEIGHT_F16,
        GemmKind::DenseWeightBf16 => DENSE_WEIGHT_BF16,
        GemmKind::Int8 => {
            "@group(0) @binding(1) var<storage, read> a_in: array<u32>;\n\
@group(0) @binding(2) var<storage, read> w_in: array<u32>;\n\
fn byte_i8(word: u32, i: u32) -> i32 {\n    return i32(word << (24u - 8u * (i & 3u))) >> 24u;\n}\n\
fn load_a(b: u32, k: u32) -> i32 {\n    let i = b * p.p2 + k;\n    return byte_i8(a_in[i >> 2u], i);\n}\n\
fn load_w(r: u32, k: u32) -> i32 {\n    let i = r * p.p2 + k;\n    return byte_i8(w_in[i >> 2u], i);\n}\n"
        }
        GemmKind::Ternary => {
            "@group(0) @binding(1) var<storage, read> a_in: array<u32>;\n\
@group(0) @binding(2) var<storage, read> w_in: array<u32>;\n\
fn load_a(b: u32, k: u32) -> i32 {\n    let i = b * p.p2 + k;\n    return i32(a_in[i >> 2u] << (24u - 8u * (i & 3u))) >> 24u;\n}\n\
// Row r lives in packed row r % R, bits 2 * (r / R); pattern 00 is -1.\n\
fn load_w(r: u32, k: u32) -> i32 {\n    let rr = p.p4;\n    let i = (r % rr) * p.p2 + k;\n    let byte = (w_in[i >> 2u] >> (8u * (i & 3u))) & 0xffu;\n    return i32((byte >> (2u * (r / rr))) & 3u) - 1;\n}\n"
        }
    };
    format!("{out}{operands}")
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
    /// The multi-row 4-bit GEMV for this many activation rows per dispatch (`gemv_rows.rs`).
    Gemv4bitRows(u32),
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
    AttentionMerge,
    /// f32 <-> f16/bf16 on bit patterns, the direction in the params.
    Cast,
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
            Shader::RowsFloat => s += ROWS_FLOAT,
            Shader::Copy => s += COPY,
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
            Shader::TernaryGemvFast(shape) => s += &ternary_gemv_fast(*shape),
            Shader::Gemv4bitRows(nb) => s += &super::gemv_rows::source(*nb),
            Shader::Int8GemvRows(nb) => s += &super::int_gemv_rows::int8_source(*nb),
            Shader::TernaryGemvRows(nb) => s += &super::int_gemv_rows::ternary_source(*nb),
            Shader::SubgroupProbe => s += SUBGROUP_PROBE,
            Shader::Embedding(_)
            | Shader::Rope(_)
            | Shader::ModelElementwise(_)
            | Shader::Attention(_)
            | Shader::AttentionSplit(_)
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
        v.push(Shader::Copy);
        v.push(Shader::TernaryGemv);
        v.push(Shader::TernaryRescale);
        v.push(Shader::Int8OutlierList);
        v.push(Shader::Int8LinearOut);
        v.push(Shader::SubgroupProbe);
        for nb in [1, 2, 4, 8] {
            v.push(Shader::Gemv4bitRows(nb));
            v.push(Shader::Int8GemvRows(nb));
            v.push(Shader::TernaryGemvRows(nb));
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
