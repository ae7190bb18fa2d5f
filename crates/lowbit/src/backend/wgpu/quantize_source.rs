//! Generated WGSL of the blockwise quantizers and dequantizers: the code encoders (an 8-bit codebook's
//! midpoint search, NF4/FP4 thresholds as exact hex floats), the items each thread quantizes per input dtype,
//! the code word layout and the per-row unrolling. `shaders::Shader::source` puts them together.

use super::shaders::wgsl_f32;
use crate::format::FourBitType;
use crate::format::codebook::{FP4_BITS_BY_RANK, FP4_THRESHOLDS, NF4_THRESHOLDS};
use crate::tensor::DType;

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

pub(super) fn word_layout(bits: u32) -> String {
    if bits == 8 {
        "const EPW: u32 = 4u;\nconst CODE_MASK: u32 = 0xffu;\nfn code_shift(j: u32) -> u32 {\n    return 8u * j;\n}\n".into()
    } else {
        // Element 2k is the high nibble of byte k.
        "const EPW: u32 = 8u;\nconst CODE_MASK: u32 = 0xfu;\nfn code_shift(j: u32) -> u32 {\n    return (j >> 1u) * 8u + 4u * (1u - (j & 1u));\n}\n".into()
    }
}

/// Repeats each region of `template` between a `//{ROWS` line and a `//}ROWS` line `count` times, with `{k}`
/// replaced by 0..count, so per-row values stay in named registers instead of an indexed private array.
pub(super) fn unroll_rows(template: &str, count: u32) -> String {
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
pub(super) fn encoder(enc: Encoding) -> String {
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
pub(super) fn quantize_items(dtype: DType, epw: u32) -> String {
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
