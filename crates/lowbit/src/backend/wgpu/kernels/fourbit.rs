//! The fused NF4/FP4 linear kernels: the GEMV (batch 1, row pieces within one binding) and the 4-bit GEMM.

use super::*;
use crate::Result;
use crate::backend::Packed4bit;
use crate::backend::wgpu::context::{Gpu, Recorder};
use crate::backend::wgpu::shaders::{GemmKind, GemvShape, Shader};
use crate::tensor::Floats;

/// Rows `r0..r1` of a weight whose bound packed buffer starts at u32 word `first_word` of the whole weight.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RowPiece {
    pub r0: usize,
    pub r1: usize,
    pub first_word: usize,
}

/// The 4-bit GEMV kernel for a weight of `cols` columns: the vectorised one when rows are whole 4-byte words
/// of one block (cols % 8 == 0, blocksize >= 8), else the general one.
pub(crate) fn gemv_4bit_shader(
    gpu: &Gpu,
    rows: usize,
    cols: usize,
    blocksize: usize,
    force: Option<GemvShape>,
) -> Shader {
    if cols > 0 && cols.is_multiple_of(8) && blocksize >= 8 {
        Shader::Gemv4bitFast(force.unwrap_or_else(|| gemv_4bit_split(gpu, rows)))
    } else {
        Shader::Gemv4bit
    }
}

/// The NF4/FP4 GEMV work split for `rows` rows: more threads per row than rows per thread, as the kernel reads
/// 4-byte weight words. Measured on an H200 (docs/PERFORMANCE.md): 128 threads x 8 rows is best from 8192 rows
/// up, 256 x 4 below (within 7% of the best at each of the four LLM shapes, and the fastest decoder block).
/// Subgroup reductions where the adapter's subgroups fit a row set.
pub(crate) fn gemv_4bit_split(gpu: &Gpu, rows: usize) -> GemvShape {
    let shape = if rows >= 8192 {
        GemvShape::new(128, 8)
    } else {
        GemvShape::new(256, 4)
    };
    with_subgroups(gpu, shape)
}

#[allow(clippy::too_many_arguments)]
/// Records one dispatch of the 4-bit GEMV over `piece`; `bufs` binds packed (the piece), absmax, table, x, bias
/// and y at 1..=6.
pub(crate) fn encode_gemv_4bit(
    gpu: &Gpu,
    enc: &mut Recorder,
    piece: RowPiece,
    cols: usize,
    blocksize: usize,
    has_bias: u32,
    bufs: &[(u32, &wgpu::Buffer)],
    force: Option<GemvShape>,
    timestamps: Option<wgpu::ComputePassTimestampWrites<'_>>,
) -> Result<()> {
    let shader = gemv_4bit_shader(gpu, piece.r1 - piece.r0, cols, blocksize, force);
    let (first, per_group) = match shader {
        Shader::Gemv4bitFast(shape) => (piece.first_word, shape.rows_per_group()),
        _ => (piece.first_word, 4),
    };
    let params = [
        piece.r1 as u32,
        cols as u32,
        blocksize.trailing_zeros(),
        has_bias,
        first as u32,
        piece.r0 as u32,
        0,
        0,
    ];
    gpu.encode(
        enc,
        &shader,
        params,
        bufs,
        groups(piece.r1 - piece.r0, per_group),
        timestamps,
    )
}

/// `y = W x (+ bias)`; `force` pins the work split of the vectorised kernel (tests and benchmarks).
pub fn gemv_4bit(
    gpu: &Gpu,
    x: &[f32],
    w: &Packed4bit,
    bias: Option<Floats>,
    force: Option<GemvShape>,
) -> Result<Vec<f32>> {
    let (rows, cols) = (w.rows, w.cols);
    if rows == 0 {
        return Ok(Vec::new());
    }
    u32_len("gemv_4bit", rows * cols + 8)?;
    let xbuf = gpu.upload(f32_bytes(x));
    let abuf = gpu.upload(f32_bytes(w.absmax));
    let tbuf = gpu.upload(f32_bytes(w.quant_type.dequant_table()));
    let (bbuf, has_bias) = bias_buffer(gpu, bias);
    let ybuf = gpu.output((rows * 4) as u64);
    // Rows per piece so that a piece's packed bytes fit one binding.
    let max_words = (gpu.max_binding() as usize / 4).saturating_sub(2);
    let rows_per = (max_words * 8 / cols.max(1)).clamp(1, rows);
    let mut pieces = Vec::new();
    for r0 in (0..rows).step_by(rows_per) {
        let r1 = (r0 + rows_per).min(rows);
        let w0 = r0 * cols / 8;
        let w1 = (r1 * cols).div_ceil(8);
        let bytes = &w.packed[w0 * 4..(w1 * 4).min(w.packed.len())];
        pieces.push((r0, r1, w0, gpu.upload(bytes)));
    }
    gpu.run(|enc| {
        for (r0, r1, w0, pbuf) in &pieces {
            let bufs = [
                (1, pbuf),
                (2, &abuf),
                (3, &tbuf),
                (4, &xbuf),
                (5, &bbuf),
                (6, &ybuf),
            ];
            let piece = RowPiece {
                r0: *r0,
                r1: *r1,
                first_word: *w0,
            };
            encode_gemv_4bit(
                gpu,
                enc,
                piece,
                cols,
                w.blocksize,
                has_bias,
                &bufs,
                force,
                None,
            )?;
        }
        Ok(())
    })?;
    gpu.read_f32(&ybuf, rows)
}

pub fn matmul_4bit(
    gpu: &Gpu,
    x: &[f32],
    batch: usize,
    w: &Packed4bit,
    bias: Option<Floats>,
) -> Result<Vec<f32>> {
    let (rows, cols) = (w.rows, w.cols);
    if rows == 0 || batch == 0 {
        return Ok(vec![0.0; rows * batch]);
    }
    u32_len("matmul_4bit", (rows * cols).max(batch * cols) + 8)?;
    check_binding(
        gpu,
        "matmul_4bit",
        w.packed.len().max(x.len() * 4).max(batch * rows * 4),
    )?;
    let xbuf = gpu.upload(f32_bytes(x));
    let pbuf = gpu.upload(w.packed);
    let abuf = gpu.upload(f32_bytes(w.absmax));
    let tbuf = gpu.upload(f32_bytes(w.quant_type.dequant_table()));
    let (bbuf, has_bias) = bias_buffer(gpu, bias);
    let ybuf = gpu.output((batch * rows * 4) as u64);
    let bufs = [
        (1, &xbuf),
        (2, &pbuf),
        (3, &abuf),
        (4, &tbuf),
        (5, &bbuf),
        (6, &ybuf),
    ];
    let log2_bs = w.blocksize.trailing_zeros();
    gpu.run(|enc| {
        encode_gemm(
            gpu,
            enc,
            GemmKind::FourBit,
            batch,
            rows,
            cols,
            has_bias,
            log2_bs,
            &bufs,
        )
    })?;
    gpu.read_f32(&ybuf, batch * rows)
}
