//! LLM.int8(): the row-scale and row-quant kernels (shared with BitNet's activation quantizer), the int8
//! GEMM and the two dequantizations.

use super::*;
use crate::Result;
use crate::backend::Int8Rows;
use crate::backend::wgpu::context::{Gpu, Recorder};
use crate::backend::wgpu::shaders::Shader;
use crate::format::int8::{MM_DEQUANT_SCALE, mm_dequant_output};
use crate::format::ternary::EPS;
use crate::tensor::{DType, Floats};
use half::f16;

/// What the row-scale and row-quant kernels compute: LLM.int8() (mode 0, with an outlier threshold) or BitNet
/// activations (mode 1, threshold 0), over `rows` rows of `cols` values of `dtype`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RowSpec {
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    pub threshold: f32,
    pub mode: u32,
}

/// Records the row-scale kernel: absmax (as bits) and the quantization scale of each row.
pub(crate) fn encode_row_scales(
    gpu: &Gpu,
    enc: &mut Recorder,
    spec: RowSpec,
    x: &wgpu::Buffer,
    absmax: &wgpu::Buffer,
    scale: &wgpu::Buffer,
) -> Result<()> {
    let params = [
        spec.rows as u32,
        spec.cols as u32,
        spec.threshold.to_bits(),
        spec.mode,
        EPS.to_bits(),
        0,
        0,
        0,
    ];
    let bufs = [(1, x), (2, absmax), (3, scale), (9, gpu.rcp_delta())];
    let shader = Shader::RowScale(spec.dtype);
    gpu.encode(
        enc,
        &shader,
        params,
        &bufs,
        Gpu::grid(spec.rows as u32),
        None,
    )
}

/// Records the row-quant kernel writing `rows * cols` int8 values into `q`; `flags` marks outlier columns
/// (read only with a threshold).
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode_row_quant(
    gpu: &Gpu,
    enc: &mut Recorder,
    spec: RowSpec,
    x: &wgpu::Buffer,
    absmax: &wgpu::Buffer,
    scale: &wgpu::Buffer,
    flags: &wgpu::Buffer,
    q: &wgpu::Buffer,
) -> Result<()> {
    let n = spec.rows * spec.cols;
    let params = [
        spec.rows as u32,
        spec.cols as u32,
        spec.threshold.to_bits(),
        spec.mode,
        (spec.rows > 1) as u32,
        0,
        0,
        0,
    ];
    let bufs = [(1, x), (2, absmax), (3, scale), (4, flags), (5, q)];
    let shader = Shader::RowQuant(spec.dtype);
    gpu.encode(
        enc,
        &shader,
        params,
        &bufs,
        groups(n.div_ceil(4), 256),
        None,
    )
}

pub fn int8_vectorwise_quant(
    gpu: &Gpu,
    a: Floats,
    rows: usize,
    cols: usize,
    threshold: f32,
) -> Result<Int8Rows> {
    let n = rows * cols;
    if n == 0 {
        return Ok(Int8Rows {
            q: Vec::new(),
            row_stats: vec![0.0; rows],
            outlier_cols: (threshold > 0.0).then(Vec::new),
        });
    }
    u32_len("int8_vectorwise_quant", n)?;
    check_binding(gpu, "int8_vectorwise_quant", n * 4)?;
    let spec = RowSpec {
        dtype: a.dtype(),
        rows,
        cols,
        threshold,
        mode: 0,
    };
    let xbuf = gpu.upload(float_bytes(&a));
    let flags = gpu.output((cols * 4) as u64);
    let abuf = gpu.output((rows * 4) as u64);
    let sbuf = gpu.output((rows * 4) as u64);
    let qbuf = gpu.output(n as u64);
    gpu.run(|enc| {
        if threshold > 0.0 {
            let params = [rows as u32, cols as u32, threshold.to_bits(), 0, 0, 0, 0, 0];
            let bufs = [(1, &xbuf), (2, &flags)];
            let shader = Shader::ColOutliers(spec.dtype);
            gpu.encode(enc, &shader, params, &bufs, groups(cols, 256), None)?;
        }
        encode_row_scales(gpu, enc, spec, &xbuf, &abuf, &sbuf)?;
        encode_row_quant(gpu, enc, spec, &xbuf, &abuf, &sbuf, &flags, &qbuf)
    })?;
    let q = read_i8(gpu, &qbuf, n)?;
    let row_stats = gpu.read_f32(&abuf, rows)?;
    let outlier_cols = if threshold > 0.0 {
        let f: Vec<u32> = bytemuck::pod_collect_to_vec(&gpu.read(&flags, cols * 4)?);
        Some(
            crate::backend::outlier_columns(&f)
                .map(|c| c as i64)
                .collect(),
        )
    } else {
        None
    };
    Ok(Int8Rows {
        q,
        row_stats,
        outlier_cols,
    })
}

#[allow(clippy::too_many_arguments)]
pub(super) fn elementwise(
    gpu: &Gpu,
    src: &[u8],
    n: usize,
    cols: usize,
    op: u32,
    k: f32,
    row_stats: &[f32],
    col_stats: &[f32],
) -> Result<Vec<f32>> {
    u32_len("elementwise", n)?;
    check_binding(gpu, "elementwise", n * 4)?;
    let sbuf = gpu.upload(src);
    let rbuf = gpu.upload(f32_bytes(row_stats));
    let cbuf = gpu.upload(f32_bytes(col_stats));
    let obuf = gpu.output((n * 4) as u64);
    let params = [n as u32, cols.max(1) as u32, op, k.to_bits(), 0, 0, 0, 0];
    let bufs = [(1, &sbuf), (2, &rbuf), (3, &cbuf), (5, &obuf)];
    gpu.run(|enc| {
        gpu.encode(
            enc,
            &Shader::Elementwise,
            params,
            &bufs,
            groups(n, 256),
            None,
        )
    })?;
    gpu.read_f32(&obuf, n)
}

pub fn int8_vectorwise_dequant(
    gpu: &Gpu,
    q: &[i8],
    row_stats: &[f32],
    cols: usize,
) -> Result<Vec<f32>> {
    if q.is_empty() {
        return Ok(Vec::new());
    }
    const INV_127: f32 = 1.0 / 127.0;
    elementwise(
        gpu,
        i8_bytes(q),
        q.len(),
        cols,
        0,
        INV_127,
        row_stats,
        &[0.0],
    )
}

pub fn int8_linear_matmul(
    gpu: &Gpu,
    a: &[i8],
    b: &[i8],
    m: usize,
    n: usize,
    k: usize,
) -> Result<Vec<i32>> {
    if m == 0 || n == 0 {
        return Ok(vec![0; m * n]);
    }
    u32_len("int8_linear_matmul", (m * k).max(n * k).max(m * n))?;
    check_binding(gpu, "int8_linear_matmul", (m * k).max(n * k).max(m * n * 4))?;
    let abuf = gpu.upload(i8_bytes(a));
    let bbuf = gpu.upload(i8_bytes(b));
    let ybuf = gpu.output((m * n * 4) as u64);
    gpu.run(|enc| {
        crate::backend::wgpu::int_gemv_rows::encode_int8_matmul(
            gpu, enc, m, n, k, &abuf, &bbuf, &ybuf,
        )
    })?;
    Ok(bytemuck::pod_collect_to_vec(&gpu.read(&ybuf, m * n * 4)?))
}

pub fn int8_mm_dequant(
    gpu: &Gpu,
    c: &[i32],
    row_stats: &[f32],
    col_stats: &[f32],
    bias: Option<Floats>,
) -> Result<Vec<f16>> {
    if c.is_empty() {
        return Ok(Vec::new());
    }
    let n = col_stats.len().max(1);
    let t = elementwise(
        gpu,
        bytemuck::cast_slice(c),
        c.len(),
        n,
        1,
        0.0,
        row_stats,
        col_stats,
    )?;
    // CUDA's single-rounding fmaf, then RNE to f16, on the host: a Vulkan shader's fma may round twice.
    Ok(t.iter()
        .enumerate()
        .map(|(i, &t)| {
            let b = bias.map_or(0.0, |b| b.get_f32(i % n));
            mm_dequant_output(t, b)
        })
        .collect())
}

/// The buffers of the LLM.int8() output kernel (`int8_linear_out.wgsl`): i32 products `c [m, n]`, the
/// activations' row absmax `[m]`, the weight's SCB `[n]`, an optional f16 bias `[n]`, and for the outlier
/// columns the f16 activations `[m, k]`, the int8 weight `[n, k]` and the column list; f16 output `[m, n]`.
pub(crate) struct Int8OutBuffers<'a> {
    pub c: &'a wgpu::Buffer,
    pub row_stats: &'a wgpu::Buffer,
    pub scb: &'a wgpu::Buffer,
    pub bias: Option<&'a wgpu::Buffer>,
    pub x16: &'a wgpu::Buffer,
    pub weight: &'a wgpu::Buffer,
    pub list: &'a wgpu::Buffer,
    pub y: &'a wgpu::Buffer,
}

/// Records the LLM.int8() output kernel over `m x n` outputs: `int8_mm_dequant` with an exact fma, plus (with
/// `outliers`) the listed columns' float product, narrowed to f16.
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode_int8_linear_out(
    gpu: &Gpu,
    enc: &mut Recorder,
    m: usize,
    n: usize,
    k: usize,
    outliers: bool,
    b: &Int8OutBuffers,
) -> Result<()> {
    let params = [
        m as u32,
        n as u32,
        k as u32,
        u32::from(b.bias.is_some()),
        u32::from(outliers),
        MM_DEQUANT_SCALE.to_bits(),
        (1.0f32 / 127.0).to_bits(),
        0,
    ];
    let no_bias = gpu.unused_binding();
    let bufs = [
        (1, b.c),
        (2, b.row_stats),
        (3, b.scb),
        (4, b.bias.unwrap_or(no_bias)),
        (5, b.x16),
        (6, b.weight),
        (7, b.list),
        (8, b.y),
    ];
    let grid = groups((m * n).div_ceil(2), 256);
    gpu.encode(enc, &Shader::Int8LinearOut, params, &bufs, grid, None)
}

/// `int8_mm_dequant` entirely on the GPU (the output kernel without outliers) on host data: tests compare it
/// with the CPU's fused multiply-add on arbitrary bit patterns.
pub fn int8_mm_dequant_exact(
    gpu: &Gpu,
    c: &[i32],
    row_stats: &[f32],
    col_stats: &[f32],
    bias: Option<&[f16]>,
) -> Result<Vec<f16>> {
    let (m, n) = (row_stats.len(), col_stats.len());
    if c.len() != m * n || bias.is_some_and(|b| b.len() != n) {
        return Err(crate::Error::shape(
            "int8_mm_dequant",
            format!(
                "{} products for {m} x {n} stats (and a bias of {n})",
                c.len()
            ),
        ));
    }
    if c.is_empty() {
        return Ok(Vec::new());
    }
    u32_len("int8_mm_dequant", c.len())?;
    check_binding(gpu, "int8_mm_dequant", c.len() * 4)?;
    let cbuf = gpu.upload(bytemuck::cast_slice(c));
    let rbuf = gpu.upload(f32_bytes(row_stats));
    let sbuf = gpu.upload(f32_bytes(col_stats));
    let bbuf = bias.map(|b| gpu.upload(bytemuck::cast_slice(b)));
    let unused = gpu.unused_binding();
    let ybuf = gpu.output((c.len() * 2) as u64);
    let bufs = Int8OutBuffers {
        c: &cbuf,
        row_stats: &rbuf,
        scb: &sbuf,
        bias: bbuf.as_ref(),
        x16: unused,
        weight: unused,
        list: unused,
        y: &ybuf,
    };
    gpu.run(|enc| encode_int8_linear_out(gpu, enc, m, n, 0, false, &bufs))?;
    Ok(bytemuck::pod_collect_to_vec(&gpu.read(&ybuf, c.len() * 2)?))
}
