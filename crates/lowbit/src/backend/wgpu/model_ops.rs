//! Host side of the model-op kernels (embedding, RoPE, SwiGLU/GELU, add, attention, dtype casts, KV-cache row
//! writes, column windows): one `encode_*` per kernel that checks every length against the buffers it binds (the shaders run
//! without injected bounds checks) and records the dispatch, plus a host convenience per op (upload, run,
//! read back) that also validates the values only the host sees (token ids).
//!
//! Inputs are bound as raw bits (f32 words, or f16/bf16 halves packed two per u32 word) and widened exactly
//! in the shader; outputs are f32. `encode_cast` narrows f32 to f16/bf16 with the CPU's exact bits.
//!
//! One file per op family; the checks and helpers they share live here.

mod attention;
mod cast;
mod copy_rows;
mod elementwise;
mod embedding;
mod narrow;
mod rope;
mod source;
pub(crate) use source::MAX_GROUP;

pub use attention::attention;
pub(crate) use attention::encode_attention;
pub use attention::split_chunk as attention_split_chunk;
pub use attention::{AttentionPlan, plan as attention_plan};
pub use cast::cast;
pub(crate) use cast::encode_cast;
pub use copy_rows::copy_rows;
pub(crate) use copy_rows::encode_copy_words;
pub use elementwise::{add, gelu, silu_mul};
pub(crate) use elementwise::{encode_add, encode_gelu, encode_relu2_mul, encode_silu_mul};
pub use embedding::embedding;
pub(crate) use embedding::encode_embedding;
pub(crate) use narrow::encode_narrow;
pub(crate) use rope::encode_rope;
pub use rope::rope;
pub(crate) use source::source;

use super::context::{Gpu, Recorder};
use super::kernels::{check_binding, u32_len};
use crate::format::rope::RopeLayout;
use crate::tensor::DType;
use crate::{Error, Result};

/// Largest head_dim the attention kernel takes (one output dim per lane of a 256-lane workgroup).
pub const MAX_HEAD_DIM: usize = 256;

/// Shape of a RoPE call: `x` is `[tokens, heads, head_dim]`; the first `rotary_dim` (even, <= head_dim)
/// elements of each head rotate; token `t` uses table row `pos_start + t`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RopeDims {
    pub tokens: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub rotary_dim: usize,
    pub pos_start: usize,
    pub layout: RopeLayout,
}

/// Shape of an attention call: `q` is `[nq, n_heads, head_dim]`, the caches hold at least `kv_len` rows of
/// `[n_kv_heads, head_dim]`; query row `i` sits at position `pos_start + i` (causal).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionDims {
    pub nq: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub kv_len: usize,
    pub pos_start: usize,
    pub scale: f32,
}

fn float_dtype(op: &'static str, dt: DType) -> Result<()> {
    if dt.is_float() {
        Ok(())
    } else {
        Err(Error::DType {
            op,
            got: dt.to_string(),
            expected: "f32, f16, bf16",
        })
    }
}

/// `a * b` or a typed error (a product past usize cannot be a real tensor).
fn mul(op: &'static str, a: usize, b: usize) -> Result<usize> {
    a.checked_mul(b)
        .ok_or_else(|| Error::shape(op, format!("{a} x {b} elements overflow")))
}

/// A kernel operand: a buffer and the element its tensor starts at (a window of a larger tensor).
pub(crate) type Operand<'a> = (&'a wgpu::Buffer, usize);

/// Checks that `buf` holds `n` elements of `dt` (the u32 index range and one binding included).
fn check_buf(
    gpu: &Gpu,
    op: &'static str,
    what: &'static str,
    buf: &wgpu::Buffer,
    n: usize,
    dt: DType,
) -> Result<()> {
    u32_len(op, n)?;
    let bytes = mul(op, n, dt.size_in_bytes())?;
    if buf.size() < bytes as u64 {
        return Err(Error::shape(
            op,
            format!("{what} buffer has {} bytes, needs {bytes}", buf.size()),
        ));
    }
    check_binding(gpu, op, bytes)
}

fn elementwise_grid(n: usize) -> (u32, u32, u32) {
    Gpu::grid(n.div_ceil(256) as u32)
}

fn u32_params(v: &[u32]) -> [u32; 8] {
    let mut p = [0u32; 8];
    p[..v.len()].copy_from_slice(v);
    p
}

// ---------------------------------------------------------------- host conveniences

fn same_len(op: &'static str, what: &'static str, got: usize, expected: usize) -> Result<()> {
    if got == expected {
        Ok(())
    } else {
        Err(Error::Length {
            op,
            what,
            got,
            expected,
        })
    }
}

fn same_dtype(op: &'static str, a: DType, b: DType) -> Result<()> {
    if a == b {
        Ok(())
    } else {
        Err(Error::invalid(op, format!("inputs mix dtypes {a} and {b}")))
    }
}

/// Runs `record` on an f32 output buffer of `n` elements and reads it back.
fn run_f32(
    gpu: &Gpu,
    n: usize,
    record: impl FnOnce(&mut Recorder, &wgpu::Buffer) -> Result<()>,
) -> Result<Vec<f32>> {
    let out = gpu.output((n as u64) * 4);
    gpu.run(|enc| record(enc, &out))?;
    gpu.read_f32(&out, n)
}
