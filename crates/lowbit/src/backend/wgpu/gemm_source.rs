//! Generated WGSL of the tiled GEMM's operand loaders and output stores, one flavour per [`GemmKind`]
//! (`shaders/gemm.wgsl` is the shared body).

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
pub(super) fn gemm_loaders(kind: GemmKind) -> String {
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
