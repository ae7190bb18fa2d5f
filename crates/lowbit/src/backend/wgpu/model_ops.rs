//! Host side of the model-op kernels (embedding, RoPE, SwiGLU/GELU, add, attention, dtype casts, KV-cache row
//! writes): one `encode_*` per kernel that checks every length against the buffers it binds (the shaders run
//! without injected bounds checks) and records the dispatch, plus a host convenience per op (upload, run,
//! read back) that also validates the values only the host sees (token ids).
//!
//! Inputs are bound as raw bits (f32 words, or f16/bf16 halves packed two per u32 word) and widened exactly
//! in the shader; outputs are f32. `encode_cast` narrows f32 to f16/bf16 with the CPU's exact bits.

mod source;

pub(crate) use source::source;

use super::context::Gpu;
use super::kernels::{check_binding, float_bytes, u32_len};
use super::shaders::Shader;
use crate::format::activation::GeluKind;
use crate::format::rope::RopeLayout;
use crate::tensor::{DType, FloatVec, Floats};
use crate::{Error, Result};
use half::{bf16, f16};

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

/// `out[t, :] = table[ids[t], :]` as f32 (exact). `table` holds `[vocab, dim]` of `dtype`, `ids` `n_ids`
/// u32; an id >= vocab yields a zero row (validate ids where they are known, as [`embedding`] does).
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode_embedding(
    gpu: &Gpu,
    enc: &mut wgpu::CommandEncoder,
    dtype: DType,
    vocab: usize,
    dim: usize,
    n_ids: usize,
    table: &wgpu::Buffer,
    ids: &wgpu::Buffer,
    out: &wgpu::Buffer,
) -> Result<()> {
    const OP: &str = "embedding";
    float_dtype(OP, dtype)?;
    let total = mul(OP, n_ids, dim)?;
    check_buf(gpu, OP, "table", table, mul(OP, vocab, dim)?, dtype)?;
    check_buf(gpu, OP, "ids", ids, n_ids, DType::I32)?;
    check_buf(gpu, OP, "output", out, total, DType::F32)?;
    if total == 0 {
        return Ok(());
    }
    let params = u32_params(&[total as u32, dim as u32, u32_len(OP, vocab)?]);
    let bufs = [(1, table), (2, ids), (3, out)];
    gpu.encode(
        enc,
        &Shader::Embedding(dtype),
        params,
        &bufs,
        elementwise_grid(total),
        None,
    )
}

/// RoPE of `x` (`dims`, `dtype`) with the f32 tables `cos`, `sin` (`[n_pos, rotary_dim / 2]`, n_pos >=
/// pos_start + tokens) into f32 `out`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode_rope(
    gpu: &Gpu,
    enc: &mut wgpu::CommandEncoder,
    dtype: DType,
    dims: &RopeDims,
    x: &wgpu::Buffer,
    cos: &wgpu::Buffer,
    sin: &wgpu::Buffer,
    out: &wgpu::Buffer,
) -> Result<()> {
    const OP: &str = "rope";
    float_dtype(OP, dtype)?;
    let RopeDims {
        tokens,
        heads,
        head_dim,
        rotary_dim,
        pos_start,
        layout,
    } = *dims;
    if !rotary_dim.is_multiple_of(2) || rotary_dim > head_dim {
        return Err(Error::invalid(
            OP,
            format!("rotary_dim {rotary_dim} must be even and at most head_dim {head_dim}"),
        ));
    }
    let n = mul(OP, mul(OP, tokens, heads)?, head_dim)?;
    let rows = pos_start
        .checked_add(tokens)
        .ok_or_else(|| Error::shape(OP, "pos_start + tokens overflows"))?;
    let table = mul(OP, rows, rotary_dim / 2)?;
    check_buf(gpu, OP, "x", x, n, dtype)?;
    check_buf(gpu, OP, "cos table", cos, table, DType::F32)?;
    check_buf(gpu, OP, "sin table", sin, table, DType::F32)?;
    check_buf(gpu, OP, "output", out, n, DType::F32)?;
    if n == 0 {
        return Ok(());
    }
    let params = u32_params(&[
        n as u32,
        heads as u32,
        head_dim as u32,
        rotary_dim as u32,
        pos_start as u32,
        (layout == RopeLayout::Interleaved) as u32,
    ]);
    let bufs = [(1, x), (2, cos), (3, sin), (4, out)];
    gpu.encode(
        enc,
        &Shader::Rope(dtype),
        params,
        &bufs,
        elementwise_grid(n),
        None,
    )
}

#[allow(clippy::too_many_arguments)]
fn encode_elementwise(
    gpu: &Gpu,
    enc: &mut wgpu::CommandEncoder,
    op_name: &'static str,
    op: u32,
    dtype: DType,
    n: usize,
    a: &wgpu::Buffer,
    b: &wgpu::Buffer,
    out: &wgpu::Buffer,
) -> Result<()> {
    float_dtype(op_name, dtype)?;
    check_buf(gpu, op_name, "a", a, n, dtype)?;
    check_buf(gpu, op_name, "b", b, n, dtype)?;
    check_buf(gpu, op_name, "output", out, n, DType::F32)?;
    if n == 0 {
        return Ok(());
    }
    let bufs = [(1, a), (2, b), (3, out)];
    let params = u32_params(&[n as u32, op]);
    gpu.encode(
        enc,
        &Shader::ModelElementwise(dtype),
        params,
        &bufs,
        elementwise_grid(n),
        None,
    )
}

/// `silu(gate) * up` over `n` elements of `dtype` into f32 `out`.
pub(crate) fn encode_silu_mul(
    gpu: &Gpu,
    enc: &mut wgpu::CommandEncoder,
    dtype: DType,
    n: usize,
    gate: &wgpu::Buffer,
    up: &wgpu::Buffer,
    out: &wgpu::Buffer,
) -> Result<()> {
    encode_elementwise(gpu, enc, "silu_mul", 0, dtype, n, gate, up, out)
}

/// `relu(gate)^2 * up` over `n` elements of `dtype` into f32 `out`.
pub(crate) fn encode_relu2_mul(
    gpu: &Gpu,
    enc: &mut wgpu::CommandEncoder,
    dtype: DType,
    n: usize,
    gate: &wgpu::Buffer,
    up: &wgpu::Buffer,
    out: &wgpu::Buffer,
) -> Result<()> {
    encode_elementwise(gpu, enc, "relu2_mul", 4, dtype, n, gate, up, out)
}

/// GELU over `n` elements of `dtype` into f32 `out`.
pub(crate) fn encode_gelu(
    gpu: &Gpu,
    enc: &mut wgpu::CommandEncoder,
    dtype: DType,
    n: usize,
    kind: GeluKind,
    x: &wgpu::Buffer,
    out: &wgpu::Buffer,
) -> Result<()> {
    let op = match kind {
        GeluKind::Tanh => 1,
        GeluKind::Erf => 2,
    };
    // The kernel declares a second input; GELU binds x there too (read-only, never loaded).
    encode_elementwise(gpu, enc, "gelu", op, dtype, n, x, x, out)
}

/// `a + b` over `n` elements of `dtype` into f32 `out`.
pub(crate) fn encode_add(
    gpu: &Gpu,
    enc: &mut wgpu::CommandEncoder,
    dtype: DType,
    n: usize,
    a: &wgpu::Buffer,
    b: &wgpu::Buffer,
    out: &wgpu::Buffer,
) -> Result<()> {
    encode_elementwise(gpu, enc, "add", 3, dtype, n, a, b, out)
}

fn check_attention(dims: &AttentionDims) -> Result<()> {
    const OP: &str = "attention";
    let AttentionDims {
        n_heads,
        n_kv_heads,
        head_dim,
        ..
    } = *dims;
    if n_kv_heads == 0 || !n_heads.is_multiple_of(n_kv_heads) {
        return Err(Error::invalid(
            OP,
            format!("n_heads {n_heads} must be a positive multiple of n_kv_heads {n_kv_heads}"),
        ));
    }
    if head_dim == 0 || head_dim > MAX_HEAD_DIM {
        return Err(Error::invalid(
            OP,
            format!("head_dim {head_dim} must be in 1..={MAX_HEAD_DIM}"),
        ));
    }
    if !dims.scale.is_finite() {
        return Err(Error::invalid(
            OP,
            format!("scale {} is not finite", dims.scale),
        ));
    }
    Ok(())
}

/// Causal GQA attention of `q` over the first `kv_len` rows of the caches `k`, `v` (all `dtype`) into f32
/// `out` (`[nq, n_heads, head_dim]`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode_attention(
    gpu: &Gpu,
    enc: &mut wgpu::CommandEncoder,
    dtype: DType,
    dims: &AttentionDims,
    q: &wgpu::Buffer,
    k: &wgpu::Buffer,
    v: &wgpu::Buffer,
    out: &wgpu::Buffer,
) -> Result<()> {
    const OP: &str = "attention";
    float_dtype(OP, dtype)?;
    check_attention(dims)?;
    let rows = mul(OP, dims.nq, dims.n_heads)?;
    let nq_elems = mul(OP, rows, dims.head_dim)?;
    let kv_elems = mul(OP, dims.kv_len, mul(OP, dims.n_kv_heads, dims.head_dim)?)?;
    check_buf(gpu, OP, "q", q, nq_elems, dtype)?;
    check_buf(gpu, OP, "k cache", k, kv_elems, dtype)?;
    check_buf(gpu, OP, "v cache", v, kv_elems, dtype)?;
    check_buf(gpu, OP, "output", out, nq_elems, DType::F32)?;
    // The kernel forms pos_start + i + 1 in u32.
    u32_len(OP, dims.pos_start.saturating_add(dims.nq).saturating_add(1))?;
    if nq_elems == 0 {
        return Ok(());
    }
    let params = u32_params(&[
        dims.nq as u32,
        dims.n_heads as u32,
        dims.n_kv_heads as u32,
        dims.head_dim as u32,
        dims.kv_len as u32,
        dims.pos_start as u32,
        dims.scale.to_bits(),
    ]);
    let bufs = [(1, q), (2, k), (3, v), (4, out)];
    gpu.encode(
        enc,
        &Shader::Attention(dtype),
        params,
        &bufs,
        Gpu::grid(rows as u32),
        None,
    )
}

/// Converts `n` elements from `from` to `to`: f32 -> f16/bf16 (round to nearest even, NaN/inf/subnormals as
/// `half::f16::from_f32` / `half::bf16::from_f32`, two halves per output word) or f16/bf16 -> f32 (exact,
/// NaNs quieted as `half` does).
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode_cast(
    gpu: &Gpu,
    enc: &mut wgpu::CommandEncoder,
    from: DType,
    to: DType,
    n: usize,
    src: &wgpu::Buffer,
    dst: &wgpu::Buffer,
) -> Result<()> {
    const OP: &str = "cast";
    let (mode, threads) = match (from, to) {
        (DType::F32, DType::F16) => (0, n.div_ceil(2)),
        (DType::F32, DType::BF16) => (1, n.div_ceil(2)),
        (DType::F16, DType::F32) => (2, n),
        (DType::BF16, DType::F32) => (3, n),
        _ => {
            return Err(Error::invalid(
                OP,
                format!(
                    "{from} -> {to}; supported: f32 -> f16, f32 -> bf16, f16 -> f32, bf16 -> f32"
                ),
            ));
        }
    };
    check_buf(gpu, OP, "source", src, n, from)?;
    check_buf(gpu, OP, "destination", dst, n, to)?;
    if n == 0 {
        return Ok(());
    }
    let params = u32_params(&[n as u32, mode]);
    let bufs = [(1, src), (2, dst)];
    gpu.encode(
        enc,
        &Shader::Cast,
        params,
        &bufs,
        elementwise_grid(threads),
        None,
    )
}

/// Copies `n_rows` rows of `row_len` elements of `dtype` from the start of `src` into `dst` at row `dst_row`
/// (a KV-cache append), as a buffer copy. Offsets and sizes must be multiples of 4 bytes (for f16/bf16:
/// an even number of elements per row, or rows written in even counts).
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode_copy_rows(
    enc: &mut wgpu::CommandEncoder,
    dtype: DType,
    row_len: usize,
    dst_row: usize,
    n_rows: usize,
    src: &wgpu::Buffer,
    dst: &wgpu::Buffer,
) -> Result<()> {
    const OP: &str = "copy_rows";
    let row_bytes = mul(OP, row_len, dtype.size_in_bytes())?;
    let offset = mul(OP, dst_row, row_bytes)? as u64;
    let size = mul(OP, n_rows, row_bytes)? as u64;
    if !offset.is_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT)
        || !size.is_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT)
    {
        return Err(Error::invalid(
            OP,
            format!("byte offset {offset} and size {size} must be multiples of 4"),
        ));
    }
    if src.size() < size || offset.checked_add(size).is_none_or(|end| end > dst.size()) {
        return Err(Error::shape(
            OP,
            format!(
                "{size} bytes at offset {offset}: source has {} bytes, destination {}",
                src.size(),
                dst.size()
            ),
        ));
    }
    if size > 0 {
        enc.copy_buffer_to_buffer(src, 0, dst, offset, size);
    }
    Ok(())
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
    record: impl FnOnce(&mut wgpu::CommandEncoder, &wgpu::Buffer) -> Result<()>,
) -> Result<Vec<f32>> {
    let out = gpu.output((n as u64) * 4);
    gpu.run(|enc| record(enc, &out))?;
    gpu.read_f32(&out, n)
}

/// Rows of `table` (`[vocab, dim]`) for `ids`, as f32. Every id must be below vocab.
pub fn embedding(gpu: &Gpu, table: Floats, dim: usize, ids: &[u32]) -> Result<Vec<f32>> {
    const OP: &str = "embedding";
    if dim == 0 || !table.len().is_multiple_of(dim) {
        return Err(Error::shape(
            OP,
            format!("table of {} elements is not [vocab, {dim}]", table.len()),
        ));
    }
    let vocab = table.len() / dim;
    if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
        return Err(Error::invalid(
            OP,
            format!("token id {bad} >= vocab {vocab}"),
        ));
    }
    let tbuf = gpu.upload(float_bytes(&table));
    let ibuf = gpu.upload(bytemuck::cast_slice(ids));
    let n = mul(OP, ids.len(), dim)?;
    run_f32(gpu, n, |enc, out| {
        encode_embedding(
            gpu,
            enc,
            table.dtype(),
            vocab,
            dim,
            ids.len(),
            &tbuf,
            &ibuf,
            out,
        )
    })
}

/// RoPE of `x` (`[dims.tokens, dims.heads, dims.head_dim]`) with the shared f32 tables, as f32.
pub fn rope(gpu: &Gpu, x: Floats, dims: &RopeDims, cos: &[f32], sin: &[f32]) -> Result<Vec<f32>> {
    const OP: &str = "rope";
    let n = mul(OP, mul(OP, dims.tokens, dims.heads)?, dims.head_dim)?;
    same_len(OP, "x", x.len(), n)?;
    same_len(OP, "sin table", sin.len(), cos.len())?;
    let xbuf = gpu.upload(float_bytes(&x));
    let cbuf = gpu.upload(bytemuck::cast_slice(cos));
    let sbuf = gpu.upload(bytemuck::cast_slice(sin));
    run_f32(gpu, n, |enc, out| {
        encode_rope(gpu, enc, x.dtype(), dims, &xbuf, &cbuf, &sbuf, out)
    })
}

fn binary(
    gpu: &Gpu,
    op: &'static str,
    a: Floats,
    b: Floats,
    encode: fn(
        &Gpu,
        &mut wgpu::CommandEncoder,
        DType,
        usize,
        &wgpu::Buffer,
        &wgpu::Buffer,
        &wgpu::Buffer,
    ) -> Result<()>,
) -> Result<Vec<f32>> {
    same_dtype(op, a.dtype(), b.dtype())?;
    same_len(op, "second input", b.len(), a.len())?;
    let abuf = gpu.upload(float_bytes(&a));
    let bbuf = gpu.upload(float_bytes(&b));
    run_f32(gpu, a.len(), |enc, out| {
        encode(gpu, enc, a.dtype(), a.len(), &abuf, &bbuf, out)
    })
}

/// `silu(gate) * up`, as f32.
pub fn silu_mul(gpu: &Gpu, gate: Floats, up: Floats) -> Result<Vec<f32>> {
    binary(gpu, "silu_mul", gate, up, encode_silu_mul)
}

/// `a + b`, as f32.
pub fn add(gpu: &Gpu, a: Floats, b: Floats) -> Result<Vec<f32>> {
    binary(gpu, "add", a, b, encode_add)
}

/// GELU of `x`, as f32.
pub fn gelu(gpu: &Gpu, x: Floats, kind: GeluKind) -> Result<Vec<f32>> {
    let xbuf = gpu.upload(float_bytes(&x));
    run_f32(gpu, x.len(), |enc, out| {
        encode_gelu(gpu, enc, x.dtype(), x.len(), kind, &xbuf, out)
    })
}

/// Causal GQA attention (`dims`) of `q` over the caches `k`, `v` (whole cache buffers, at least `kv_len`
/// rows), as f32 `[nq, n_heads, head_dim]`.
pub fn attention(
    gpu: &Gpu,
    q: Floats,
    k: Floats,
    v: Floats,
    dims: &AttentionDims,
) -> Result<Vec<f32>> {
    const OP: &str = "attention";
    same_dtype(OP, q.dtype(), k.dtype())?;
    same_dtype(OP, q.dtype(), v.dtype())?;
    check_attention(dims)?;
    let n = mul(OP, mul(OP, dims.nq, dims.n_heads)?, dims.head_dim)?;
    same_len(OP, "q", q.len(), n)?;
    same_len(OP, "v cache", v.len(), k.len())?;
    let kv_row = dims.n_kv_heads * dims.head_dim;
    if !k.len().is_multiple_of(kv_row) || k.len() / kv_row < dims.kv_len {
        return Err(Error::shape(
            OP,
            format!(
                "k cache of {} elements does not hold kv_len {} rows of {kv_row}",
                k.len(),
                dims.kv_len
            ),
        ));
    }
    let qbuf = gpu.upload(float_bytes(&q));
    let kbuf = gpu.upload(float_bytes(&k));
    let vbuf = gpu.upload(float_bytes(&v));
    run_f32(gpu, n, |enc, out| {
        encode_attention(gpu, enc, q.dtype(), dims, &qbuf, &kbuf, &vbuf, out)
    })
}

/// `x` converted to `to` on the GPU (see [`encode_cast`] for the pairs and the rounding).
pub fn cast(gpu: &Gpu, x: Floats, to: DType) -> Result<FloatVec> {
    let n = x.len();
    let src = gpu.upload(float_bytes(&x));
    let dst = gpu.output(mul("cast", n, to.size_in_bytes())? as u64);
    gpu.run(|enc| encode_cast(gpu, enc, x.dtype(), to, n, &src, &dst))?;
    let bytes = gpu.read(&dst, n * to.size_in_bytes())?;
    Ok(match to {
        DType::F16 => FloatVec::F16(bytemuck::pod_collect_to_vec::<u8, f16>(&bytes)),
        DType::BF16 => FloatVec::BF16(bytemuck::pod_collect_to_vec::<u8, bf16>(&bytes)),
        _ => FloatVec::F32(bytemuck::pod_collect_to_vec(&bytes)),
    })
}

/// `dst` (a cache of rows of `row_len`) with `src`'s rows written from row `dst_row` on, through a GPU
/// buffer copy.
pub fn copy_rows(
    gpu: &Gpu,
    dst: Floats,
    row_len: usize,
    dst_row: usize,
    src: Floats,
) -> Result<FloatVec> {
    const OP: &str = "copy_rows";
    same_dtype(OP, dst.dtype(), src.dtype())?;
    if row_len == 0 || !src.len().is_multiple_of(row_len) {
        return Err(Error::shape(
            OP,
            format!(
                "source of {} elements is not whole rows of {row_len}",
                src.len()
            ),
        ));
    }
    let dt = dst.dtype();
    let dbuf = gpu.upload(float_bytes(&dst));
    let sbuf = gpu.upload(float_bytes(&src));
    let rows_end = dst_row
        .checked_add(src.len() / row_len)
        .ok_or_else(|| Error::shape(OP, "dst_row + rows overflows"))?;
    let end = mul(OP, rows_end, row_len)?;
    if end > dst.len() {
        return Err(Error::shape(
            OP,
            format!(
                "rows end at element {end}, the destination has {}",
                dst.len()
            ),
        ));
    }
    gpu.run(|enc| encode_copy_rows(enc, dt, row_len, dst_row, src.len() / row_len, &sbuf, &dbuf))?;
    let bytes = gpu.read(&dbuf, dst.len() * dt.size_in_bytes())?;
    Ok(match dt {
        DType::F16 => FloatVec::F16(bytemuck::pod_collect_to_vec::<u8, f16>(&bytes)),
        DType::BF16 => FloatVec::BF16(bytemuck::pod_collect_to_vec::<u8, bf16>(&bytes)),
        _ => FloatVec::F32(bytemuck::pod_collect_to_vec(&bytes)),
    })
}
