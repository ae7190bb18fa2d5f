//! Causal attention with grouped KV heads over a KV cache.

use super::*;
use crate::backend::wgpu::context::Gpu;
use crate::backend::wgpu::kernels::{float_bytes, u32_len};
use crate::backend::wgpu::shaders::Shader;
use crate::tensor::{DType, Floats};
use crate::{Error, Result};

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
