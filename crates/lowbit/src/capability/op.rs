//! The ops by name: the unit of capability checks and statistics.

use crate::format::FourBitType;
use crate::format::activation::GeluKind;
use crate::format::rope::RopeLayout;
use crate::tensor::DType;

/// The kernels, by name: the unit of capability checks and statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    QuantizeBlockwise,
    DequantizeBlockwise,
    Quantize4bit,
    Dequantize4bit,
    Gemv4bit,
    Matmul4bit,
    Int8VectorwiseQuant,
    Int8VectorwiseDequant,
    Int8LinearMatmul,
    Int8MmDequant,
    TernaryQuantize,
    TernaryActQuant,
    TernaryMatmul,
    Matmul,
    Softmax,
    RmsNorm,
    Embedding,
    Rope,
    SiluMul,
    Relu2Mul,
    Gelu,
    Add,
    Attention,
    Cast,
    CopyRows,
    /// LLM.int8()'s `Linear8bitLt` forward as one device op (the host API composes it from the int8 kinds).
    Linear8bit,
    /// A 4-bit linear with activations quantized to int8 blocks (`format::q8`): CPU decode's fast path.
    Matmul4bitQ8,
    /// A linear on a Q8 weight (`format::q8::Q8Weight`) with int8 activations.
    MatmulQ8,
    /// A window of columns (the parts of a fused projection's output).
    Narrow,
    /// A recorded step (`capability::step`) as a whole: replays, and steps that could not be recorded and
    /// ran op by op (counted as fallbacks).
    Step,
}

impl OpKind {
    /// The kernels' kinds (a device lists these as its ops; `Step` is not a kernel).
    pub const ALL: [OpKind; 29] = [
        OpKind::QuantizeBlockwise,
        OpKind::DequantizeBlockwise,
        OpKind::Quantize4bit,
        OpKind::Dequantize4bit,
        OpKind::Gemv4bit,
        OpKind::Matmul4bit,
        OpKind::Int8VectorwiseQuant,
        OpKind::Int8VectorwiseDequant,
        OpKind::Int8LinearMatmul,
        OpKind::Int8MmDequant,
        OpKind::TernaryQuantize,
        OpKind::TernaryActQuant,
        OpKind::TernaryMatmul,
        OpKind::Matmul,
        OpKind::Softmax,
        OpKind::RmsNorm,
        OpKind::Embedding,
        OpKind::Rope,
        OpKind::SiluMul,
        OpKind::Relu2Mul,
        OpKind::Gelu,
        OpKind::Add,
        OpKind::Attention,
        OpKind::Cast,
        OpKind::CopyRows,
        OpKind::Linear8bit,
        OpKind::Matmul4bitQ8,
        OpKind::MatmulQ8,
        OpKind::Narrow,
    ];

    pub fn name(self) -> &'static str {
        match self {
            OpKind::QuantizeBlockwise => "quantize_blockwise",
            OpKind::DequantizeBlockwise => "dequantize_blockwise",
            OpKind::Quantize4bit => "quantize_4bit",
            OpKind::Dequantize4bit => "dequantize_4bit",
            OpKind::Gemv4bit => "gemv_4bit",
            OpKind::Matmul4bit => "matmul_4bit",
            OpKind::Int8VectorwiseQuant => "int8_vectorwise_quant",
            OpKind::Int8VectorwiseDequant => "int8_vectorwise_dequant",
            OpKind::Int8LinearMatmul => "int8_linear_matmul",
            OpKind::Int8MmDequant => "int8_mm_dequant",
            OpKind::TernaryQuantize => "ternary_quantize",
            OpKind::TernaryActQuant => "ternary_act_quant",
            OpKind::TernaryMatmul => "ternary_matmul",
            OpKind::Matmul => "matmul",
            OpKind::Softmax => "softmax",
            OpKind::RmsNorm => "rms_norm",
            OpKind::Embedding => "embedding",
            OpKind::Rope => "rope",
            OpKind::SiluMul => "silu_mul",
            OpKind::Relu2Mul => "relu2_mul",
            OpKind::Gelu => "gelu",
            OpKind::Add => "add",
            OpKind::Attention => "attention",
            OpKind::Cast => "cast",
            OpKind::CopyRows => "copy_rows",
            OpKind::Linear8bit => "linear8bitlt",
            OpKind::Matmul4bitQ8 => "matmul_4bit_q8",
            OpKind::MatmulQ8 => "matmul_q8",
            OpKind::Narrow => "narrow",
            OpKind::Step => "step",
        }
    }
}

/// A device-tensor op with its parameters; its operands travel beside it, in the order each variant lists.
/// The op layer validates operands against it before any backend sees it, so backends trust both. Float
/// outputs are in the first operand's dtype (narrowed round-to-nearest-even), as on the host API.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// `y[m, n] = x[m, k] @ w[n, k]^T (+ bias[n])`. Operands: x, w[, bias].
    Linear { bias: bool },
    /// Fused NF4/FP4 linear. Operands: x `[m, cols]`, packed u8 `[ceil(rows*cols/2)]`, absmax f32
    /// `[ceil(rows*cols/blocksize)]` (double quantization already expanded)[, bias `[rows]`].
    Linear4bit {
        quant_type: FourBitType,
        blocksize: usize,
        rows: usize,
        cols: usize,
        bias: bool,
    },
    /// A 4-bit linear with each activation row quantized to int8 blocks of 64 and integer dot products
    /// (`format::q8`; not bitsandbytes' arithmetic). Operands: x `[m, cols]`, codes u8 and scales f32 in
    /// `format::q8::Q4Lanes`' layout[, bias `[rows]`]. Needs `cols % 64 == 0`.
    Linear4bitQ8 {
        quant_type: FourBitType,
        rows: usize,
        cols: usize,
        bias: bool,
    },
    /// A linear on a Q8 weight with int8 activations (`format::q8`). Operands: x `[m, cols]`, codes u8
    /// `[rows * cols]`, scales f32 `[rows * cols / 64]`[, bias `[rows]`].
    LinearQ8 {
        rows: usize,
        cols: usize,
        bias: bool,
    },
    /// BitNet b1.58 linear: per-token int8 activations, exact integer products, BitNet's rescale.
    /// Operands: x `[m, cols]`, packed u8 `[ceil(rows/4), cols]`[, bias `[rows]`].
    LinearTernary {
        weight_scale: f32,
        rows: usize,
        cols: usize,
        bias: bool,
    },
    /// LLM.int8() linear (bitsandbytes' `Linear8bitLt` forward): x rounded to f16; columns where some row has
    /// `|x| >= threshold` (threshold > 0) computed in float against the dequantized weight, the rest through
    /// int8 row quantization, the exact int8 GEMM and `int8_mm_dequant`. Output f16, as bitsandbytes'.
    /// Operands: x `[m, cols]`, weight i8 `[rows, cols]`, SCB f32 `[rows]`[, bias f16 `[rows]`].
    Linear8bit {
        threshold: f32,
        rows: usize,
        cols: usize,
        bias: bool,
    },
    /// Operands: x `[.., cols]`, weight `[cols]`.
    RmsNorm { eps: f32 },
    /// Over the last dimension. Operand: x.
    Softmax,
    /// Row gather. Operands: table `[vocab, dim]`, ids i32 `[n]` (each `< vocab`).
    Embedding,
    /// Rotary embedding of `x [tokens, heads, head_dim]`; token `t` is at position `pos_start + t`.
    /// Operands: x, cos and sin f32 `[positions, rotary_dim / 2]` (`format::rope` builds them).
    Rope {
        heads: usize,
        head_dim: usize,
        rotary_dim: usize,
        pos_start: usize,
        layout: RopeLayout,
    },
    /// `silu(gate) * up`. Operands: gate, up (same shape).
    SiluMul,
    /// `relu(gate)^2 * up` (BitNet's MLP). Operands: gate, up (same shape).
    Relu2Mul,
    /// GELU, tanh approximation or erf. Operand: x.
    Gelu { kind: GeluKind },
    /// `a + b` (same shape). Operands: a, b.
    Add,
    /// Causal attention of `q [nq, n_heads, head_dim]` over KV caches `[capacity, n_kv_heads, head_dim]`
    /// holding `kv_len` rows; query `i` is at position `pos_start + i` and sees rows `0..=pos_start + i`.
    /// Operands: q, k_cache, v_cache.
    Attention {
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
        kv_len: usize,
        pos_start: usize,
        scale: f32,
    },
    /// Float conversion (exact widening, round-to-nearest-even narrowing). Operand: x.
    Cast { to: DType },
    /// Columns `start .. start + len` of every row of `x [.., cols]`, as `[.., len]`: how a fused projection
    /// (Q, K and V, or gate and up, as one weight) hands out its parts. Operand: x.
    Narrow { start: usize, len: usize },
}

impl Op {
    /// Whether operand `i` is float data (f32, f16 or bf16 as the caller chose) rather than packed codes,
    /// scales or ids, whose dtypes the op layer fixes.
    pub fn is_float_operand(&self, i: usize) -> bool {
        match self {
            Op::Linear4bit { .. } | Op::Linear4bitQ8 { .. } | Op::LinearQ8 { .. } => {
                i != 1 && i != 2
            }
            Op::LinearTernary { .. } | Op::Embedding => i != 1,
            // x and the f16 bias; the int8 weight and its f32 SCB are fixed.
            Op::Linear8bit { .. } => i == 0 || i == 3,
            _ => true,
        }
    }

    pub fn kind(&self) -> OpKind {
        match self {
            Op::Linear { .. } => OpKind::Matmul,
            Op::Linear4bit { .. } => OpKind::Matmul4bit,
            Op::Linear4bitQ8 { .. } => OpKind::Matmul4bitQ8,
            Op::LinearQ8 { .. } => OpKind::MatmulQ8,
            Op::LinearTernary { .. } => OpKind::TernaryMatmul,
            Op::Linear8bit { .. } => OpKind::Linear8bit,
            Op::RmsNorm { .. } => OpKind::RmsNorm,
            Op::Softmax => OpKind::Softmax,
            Op::Embedding => OpKind::Embedding,
            Op::Rope { .. } => OpKind::Rope,
            Op::SiluMul => OpKind::SiluMul,
            Op::Relu2Mul => OpKind::Relu2Mul,
            Op::Gelu { .. } => OpKind::Gelu,
            Op::Add => OpKind::Add,
            Op::Attention { .. } => OpKind::Attention,
            Op::Cast { .. } => OpKind::Cast,
            Op::Narrow { .. } => OpKind::Narrow,
        }
    }
}
