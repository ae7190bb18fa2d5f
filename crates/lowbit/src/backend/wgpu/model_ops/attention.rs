//! Causal attention with grouped KV heads over a KV cache.

use super::*;
use crate::backend::wgpu::context::{Gpu, Recorder};
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
    enc: &mut Recorder,
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
    match plan(dims) {
        AttentionPlan::OnePass => {
            let bufs = [(1, q), (2, k), (3, v), (4, out)];
            let grid = Gpu::grid(rows as u32);
            gpu.encode(enc, &Shader::Attention(dtype), params, &bufs, grid, None)
        }
        AttentionPlan::Split { chunk } => {
            let split = Shader::AttentionSplit(dtype);
            encode_split(gpu, enc, split, rows, dims, params, chunk, [q, k, v, out])
        }
        AttentionPlan::Groups { chunk, group } => {
            let split = Shader::AttentionGroups(dtype, group as u32);
            let groups = mul(OP, dims.nq, dims.n_kv_heads)?;
            encode_split(gpu, enc, split, groups, dims, params, chunk, [q, k, v, out])
        }
    }
}

/// Which attention kernels run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionPlan {
    /// One workgroup per (query row, head) over all its keys (`attention.wgsl`): a prompt's many rows.
    OnePass,
    /// Split-K per (query row, head, chunk of `chunk` keys), then the merge.
    Split { chunk: usize },
    /// Split-K per (query row, KV head, chunk of `chunk` keys), the `group` query heads of a KV head sharing
    /// each key and value load (`attention_groups.wgsl`), then the merge.
    Groups { chunk: usize, group: usize },
}

/// Keys per tile of the grouped kernel (its chunks are whole tiles).
const GROUP_TILE: usize = 32;

/// Workgroups the grouped kernel aims at (a few per compute unit on large GPUs: 128 lanes each).
const GROUP_TARGET: usize = 512;

/// The kernels for `dims`: split-K when the rows alone (query rows x heads) give few workgroups, as when
/// decoding a token; per KV-head group where the grouped kernel's shape limits allow (head_dim a multiple of
/// 16, at most `MAX_GROUP` query heads per KV head: their queries, at most 8 x 256 floats, fit its
/// workgroup memory), else per head.
pub fn plan(dims: &AttentionDims) -> AttentionPlan {
    let rows = dims.nq.saturating_mul(dims.n_heads);
    let group = dims.n_heads / dims.n_kv_heads.max(1);
    let grouped = dims.head_dim.is_multiple_of(16) && (1..=MAX_GROUP as usize).contains(&group);
    if grouped && rows > 0 && rows < SPLIT_TARGET_GROUPS / 4 && dims.kv_len > 0 {
        let slots = dims.nq * dims.n_kv_heads;
        let want = GROUP_TARGET.div_ceil(slots).clamp(1, MAX_CHUNKS);
        let chunk = dims.kv_len.div_ceil(want).next_multiple_of(GROUP_TILE);
        return AttentionPlan::Groups { chunk, group };
    }
    match split_chunk(dims) {
        Some(chunk) => AttentionPlan::Split { chunk },
        None => AttentionPlan::OnePass,
    }
}

/// Keys per 256-lane tile of the attention kernels.
const TILE: usize = 256;

/// Workgroups the split path aims at (a few per compute unit on large GPUs).
const SPLIT_TARGET_GROUPS: usize = 4096;

/// Most chunks one row is split into (the merge walks them serially per output dim).
const MAX_CHUNKS: usize = 256;

/// Keys per chunk for split-K attention, or `None` for the one-pass kernel: used when the rows alone
/// (query rows x heads) give few workgroups and the keys span more than one tile, as when decoding a token
/// over a long cache; chunks are whole tiles, enough of them that rows x chunks nears
/// `SPLIT_TARGET_GROUPS`.
pub fn split_chunk(dims: &AttentionDims) -> Option<usize> {
    let rows = dims.nq.saturating_mul(dims.n_heads);
    let tiles = dims.kv_len.div_ceil(TILE);
    if rows == 0 || rows >= SPLIT_TARGET_GROUPS / 4 || tiles < 2 {
        return None;
    }
    let want = (SPLIT_TARGET_GROUPS / rows).clamp(2, MAX_CHUNKS);
    let chunk = tiles.div_ceil(want) * TILE;
    (dims.kv_len.div_ceil(chunk) >= 2).then_some(chunk)
}

/// Records the two passes of split-K attention: `split` with `per_chunk` workgroups per key chunk writes the
/// partials of every (row, chunk) into pooled scratch, then the merge writes `out`. The scratch goes back to
/// the pool once recorded (later users are recorded after).
#[allow(clippy::too_many_arguments)]
fn encode_split(
    gpu: &Gpu,
    enc: &mut Recorder,
    split: Shader,
    per_chunk: usize,
    dims: &AttentionDims,
    mut params: [u32; 8],
    chunk: usize,
    [q, k, v, out]: [&wgpu::Buffer; 4],
) -> Result<()> {
    const OP: &str = "attention";
    let rows = dims.nq * dims.n_heads;
    let chunks = dims.kv_len.div_ceil(chunk);
    let slots = mul(OP, rows, chunks)?;
    let groups = mul(OP, per_chunk, chunks)?;
    let acc_len = mul(OP, slots, dims.head_dim)?;
    u32_len(OP, acc_len.max(slots * 2))?;
    check_binding(gpu, OP, acc_len * 4)?;
    let part_ml = gpu.pooled((slots * 2 * 4) as u64)?;
    let part_acc = gpu.pooled((acc_len * 4) as u64)?;
    params[7] = chunk as u32;
    let bufs = [(1, q), (2, k), (3, v), (4, &part_ml), (5, &part_acc)];
    gpu.encode(enc, &split, params, &bufs, Gpu::grid(groups as u32), None)?;
    let merge = u32_params(&[rows as u32, dims.head_dim as u32, chunks as u32]);
    let bufs = [(1, &part_ml), (2, &part_acc), (3, out)];
    let grid = elementwise_grid(rows * dims.head_dim);
    gpu.encode(enc, &Shader::AttentionMerge, merge, &bufs, grid, None)?;
    gpu.recycle(part_ml);
    gpu.recycle(part_acc);
    Ok(())
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
