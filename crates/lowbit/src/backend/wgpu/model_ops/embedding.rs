//! Row gather of token embeddings.

use super::*;
use crate::backend::wgpu::context::{Gpu, Recorder};
use crate::backend::wgpu::kernels::{float_bytes, u32_len};
use crate::backend::wgpu::shaders::Shader;
use crate::tensor::{DType, Floats};
use crate::{Error, Result};

/// `out[t, :] = table[ids[t], :]` as f32 (exact). `table` holds `[vocab, dim]` of `dtype`, `ids` `n_ids`
/// u32; an id >= vocab yields a zero row (validate ids where they are known, as [`embedding`] does).
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode_embedding(
    gpu: &Gpu,
    enc: &mut Recorder,
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
