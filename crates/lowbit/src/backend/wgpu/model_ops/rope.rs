//! Rotary position embedding, halves and interleaved layouts.

use super::*;
use crate::backend::wgpu::context::{Gpu, Recorder};
use crate::backend::wgpu::kernels::float_bytes;
use crate::backend::wgpu::shaders::Shader;
use crate::format::rope::RopeLayout;
use crate::tensor::{DType, Floats};
use crate::{Error, Result};

/// RoPE of `x` (`dims`, `dtype`) with the f32 tables `cos`, `sin` (`[n_pos, rotary_dim / 2]`, n_pos >=
/// pos_start + tokens) into f32 `out`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode_rope(
    gpu: &Gpu,
    enc: &mut Recorder,
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
