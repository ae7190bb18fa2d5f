//! BitNet b1.58: weight quantization, activation quantization, the exact integer GEMV/GEMM and the
//! bit-exact rescale.

use super::*;
use crate::Result;
use crate::backend::PackedTernary;
use crate::backend::wgpu::context::{Gpu, Recorder};
use crate::backend::wgpu::int_gemv_rows;
use crate::backend::wgpu::shaders::{GemmKind, GemvShape, Shader};
use crate::format::ternary::{packed_rows, rescale};
use crate::tensor::{DType, Floats};

/// The ternary GEMV work split: its inner loop is a few integer dot products per 16 bytes, so it is bound by
/// memory; 128 threads x 2 packed rows was within a few percent of the best split at every measured shape.
pub(crate) fn ternary_gemv_split(gpu: &Gpu) -> GemvShape {
    with_subgroups(gpu, GemvShape::new(128, 2))
}

/// Records BitNet's activation quantization of `rows x cols` values of `dtype` in `x`: int8 values into `q`
/// (`rows * cols` bytes) and one float32 scale per row into `scale`, exactly as the CPU computes them.
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode_ternary_act_quant(
    gpu: &Gpu,
    enc: &mut Recorder,
    dtype: DType,
    rows: usize,
    cols: usize,
    x: &wgpu::Buffer,
    q: &wgpu::Buffer,
    scale: &wgpu::Buffer,
) -> Result<()> {
    let spec = RowSpec {
        dtype,
        rows,
        cols,
        threshold: 0.0,
        mode: 1,
    };
    // A pooled temporary, written in full by the row scales and given back once recorded (pool.rs says why
    // that is safe); BitNet's mode never reads the outlier flags.
    let absmax = gpu.pooled((rows * 4) as u64)?;
    encode_row_scales(gpu, enc, spec, x, &absmax, scale)?;
    let quant = encode_row_quant(gpu, enc, spec, x, &absmax, scale, gpu.unused_binding(), q);
    gpu.recycle(absmax);
    quant
}

pub fn ternary_quantize(
    gpu: &Gpu,
    w: Floats,
    rows: usize,
    cols: usize,
    weight_scale: f32,
) -> Result<Vec<u8>> {
    let r_rows = packed_rows(rows);
    let nbytes = r_rows * cols;
    if nbytes == 0 {
        return Ok(Vec::new());
    }
    u32_len("ternary_quantize", rows * cols)?;
    check_binding(gpu, "ternary_quantize", w.len() * w.dtype().size_in_bytes())?;
    let xbuf = gpu.upload(float_bytes(&w));
    let pbuf = gpu.output(nbytes as u64);
    let params = [
        rows as u32,
        cols as u32,
        r_rows as u32,
        weight_scale.to_bits(),
        0,
        0,
        0,
        0,
    ];
    let bufs = [(1, &xbuf), (2, &pbuf)];
    let shader = Shader::TernaryQuantize(w.dtype());
    gpu.run(|enc| {
        gpu.encode(
            enc,
            &shader,
            params,
            &bufs,
            groups(nbytes.div_ceil(4), 256),
            None,
        )
    })?;
    gpu.read(&pbuf, nbytes)
}

pub fn ternary_act_quant(
    gpu: &Gpu,
    x: Floats,
    rows: usize,
    cols: usize,
) -> Result<(Vec<i8>, Vec<f32>)> {
    if rows * cols == 0 {
        let s = vec![crate::format::ternary::activation_scale(0.0); rows];
        return Ok((Vec::new(), s));
    }
    u32_len("ternary_act_quant", rows * cols)?;
    check_binding(gpu, "ternary_act_quant", rows * cols * 4)?;
    let xbuf = gpu.upload(float_bytes(&x));
    let qbuf = gpu.output((rows * cols) as u64);
    let sbuf = gpu.output((rows * 4) as u64);
    gpu.run(|enc| encode_ternary_act_quant(gpu, enc, x.dtype(), rows, cols, &xbuf, &qbuf, &sbuf))?;
    Ok((
        read_i8(gpu, &qbuf, rows * cols)?,
        gpu.read_f32(&sbuf, rows)?,
    ))
}

/// The ternary GEMV kernel and grid for `r_rows` packed rows of `cols` bytes (cols % 4 == 0): the vectorised
/// one when rows are whole 16-byte words.
pub(crate) fn ternary_gemv_kernel(
    gpu: &Gpu,
    r_rows: usize,
    cols: usize,
    force: Option<GemvShape>,
) -> (Shader, (u32, u32, u32)) {
    if cols.is_multiple_of(16) {
        let shape = force.unwrap_or_else(|| ternary_gemv_split(gpu));
        (
            Shader::TernaryGemvFast(shape),
            groups(r_rows, shape.rows_per_group()),
        )
    } else {
        (Shader::TernaryGemv, Gpu::grid(r_rows as u32))
    }
}

/// Records BitNet's exact integer product `acc[b, o] = sum_k xq[b, k] * w[o, k]` (`[batch, rows]` i32): the GEMV
/// kernels at batch 1 when cols % 4 == 0 (`force` pins the vectorised one's work split), the multi-row GEMV
/// for 2-32 rows of whole 16-byte words, else the ternary GEMM.
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode_ternary_matmul(
    gpu: &Gpu,
    enc: &mut Recorder,
    batch: usize,
    rows: usize,
    cols: usize,
    xq: &wgpu::Buffer,
    w: &wgpu::Buffer,
    acc: &wgpu::Buffer,
    force: Option<GemvShape>,
) -> Result<()> {
    let r_rows = packed_rows(rows);
    if batch == 1 && cols.is_multiple_of(4) {
        let params = [rows as u32, cols as u32, r_rows as u32, 0, 0, 0, 0, 0];
        let bufs = [(1, xq), (2, w), (3, acc)];
        let (shader, grid) = ternary_gemv_kernel(gpu, r_rows, cols, force);
        gpu.encode(enc, &shader, params, &bufs, grid, None)
    } else if int_gemv_rows::ternary_takes_gemv_rows(batch, cols) {
        int_gemv_rows::encode_ternary_rows(gpu, enc, batch, rows, r_rows, cols, xq, w, acc)
    } else {
        let bufs = [(1, xq), (2, w), (6, acc)];
        let kind = GemmKind::Ternary;
        encode_gemm(gpu, enc, kind, batch, rows, cols, 0, r_rows as u32, &bufs)
    }
}

/// Records BitNet's final scaling `y[b, o] = f32(acc[b, o]) / (x_scale[b] * weight_scale)` (`[batch, rows]`),
/// bit-exact with the CPU: conversion, product and quotient are correctly rounded on integer bit patterns
/// (`ternary_rescale.wgsl`), since WGSL's own division is not; then `+ bias[o]` (f32 `[rows]`), rounded
/// the same way. NaN results are a canonical quiet NaN.
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode_ternary_rescale(
    gpu: &Gpu,
    enc: &mut Recorder,
    batch: usize,
    rows: usize,
    weight_scale: f32,
    acc: &wgpu::Buffer,
    x_scale: &wgpu::Buffer,
    bias: Option<&wgpu::Buffer>,
    y: &wgpu::Buffer,
) -> Result<()> {
    let n = u32_len("ternary_rescale", batch * rows)?;
    let params = [
        n,
        rows as u32,
        weight_scale.to_bits(),
        bias.is_some() as u32,
        0,
        0,
        0,
        0,
    ];
    // Without a bias the binding still needs a buffer: the scales (read-only, never read as a bias).
    let bufs = [(1, acc), (2, x_scale), (3, y), (4, bias.unwrap_or(x_scale))];
    let grid = groups(batch * rows, 256);
    gpu.encode(enc, &Shader::TernaryRescale, params, &bufs, grid, None)
}

/// The GPU's exact BitNet scaling on host data (tests compare it with the CPU's division on any bit patterns).
pub fn ternary_rescale(
    gpu: &Gpu,
    acc: &[i32],
    x_scale: &[f32],
    weight_scale: f32,
    rows: usize,
) -> Result<Vec<f32>> {
    let batch = x_scale.len();
    if acc.len() != batch * rows {
        return Err(crate::Error::shape(
            "ternary_rescale",
            format!(
                "{} accumulators for {batch} scales x {rows} rows",
                acc.len()
            ),
        ));
    }
    if acc.is_empty() {
        return Ok(Vec::new());
    }
    check_binding(gpu, "ternary_rescale", acc.len() * 4)?;
    let abuf = gpu.upload(bytemuck::cast_slice(acc));
    let sbuf = gpu.upload(f32_bytes(x_scale));
    let ybuf = gpu.output((acc.len() * 4) as u64);
    gpu.run(|enc| {
        encode_ternary_rescale(
            gpu,
            enc,
            batch,
            rows,
            weight_scale,
            &abuf,
            &sbuf,
            None,
            &ybuf,
        )
    })?;
    gpu.read_f32(&ybuf, acc.len())
}

/// `force` pins the work split of the vectorised batch-1 kernel (tests and benchmarks).
pub fn ternary_matmul(
    gpu: &Gpu,
    xq: &[i8],
    x_scale: &[f32],
    batch: usize,
    w: &PackedTernary,
    bias: Option<Floats>,
    force: Option<GemvShape>,
) -> Result<Vec<f32>> {
    let (rows, cols) = (w.rows, w.cols);
    if rows == 0 || batch == 0 {
        return Ok(vec![0.0; rows * batch]);
    }
    u32_len(
        "ternary_matmul",
        (batch * cols).max(w.packed.len()).max(batch * rows),
    )?;
    check_binding(gpu, "ternary_matmul", w.packed.len().max(batch * rows * 4))?;
    let abuf = gpu.upload(i8_bytes(xq));
    let wbuf = gpu.upload(w.packed);
    let ybuf = gpu.output((batch * rows * 4) as u64);
    gpu.run(|enc| encode_ternary_matmul(gpu, enc, batch, rows, cols, &abuf, &wbuf, &ybuf, force))?;
    let acc: Vec<i32> = bytemuck::pod_collect_to_vec(&gpu.read(&ybuf, batch * rows * 4)?);
    // The true float32 division of host callers stays on the host, where it is exact for free (the resident
    // path uses `encode_ternary_rescale` instead).
    Ok(acc
        .iter()
        .enumerate()
        .map(|(i, &a)| {
            let (b, o) = (i / rows, i % rows);
            rescale(a, x_scale[b], w.weight_scale) + bias.map_or(0.0, |bb| bb.get_f32(o))
        })
        .collect())
}
