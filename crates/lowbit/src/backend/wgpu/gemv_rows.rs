//! Multi-row 4-bit GEMV on the GPU: 2–32 activation rows through an NF4/FP4 weight, each weight word read and
//! decoded once per [`ROWS_PER_PASS`] activation rows (`shaders/gemv_4bit_rows.wgsl`), and the choice between
//! the batch-1 GEMV, this kernel and the tiled GEMM by row count ([`pick_linear_path`]).

use super::context::{Gpu, Recorder};
use super::kernels::{RowPiece, u32_len};
use super::shaders::{Shader, repeat_lines};
use crate::Result;
use crate::backend::Packed4bit;
use crate::tensor::Floats;

const TEMPLATE: &str = include_str!("shaders/gemv_4bit_rows.wgsl");

/// Which kernel a 4-bit linear layer runs on the GPU for a number of activation rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinearPath {
    /// The batch-1 GEMV.
    Gemv,
    /// The multi-row GEMV of this module.
    GemvRows,
    /// The tiled GEMM (64x64 output tiles).
    Gemm,
}

/// Activation rows one dispatch covers: their accumulators and reduction slots (256 threads x NB floats of
/// workgroup memory, 8 KiB at 8) stay within the WebGPU default workgroup-storage limit.
pub const ROWS_PER_PASS: usize = 8;

/// Largest row count that runs the multi-row GEMV. Each extra pass of [`ROWS_PER_PASS`] rows re-reads the
/// weight, while the GEMM reads it once per 64 rows; measured on lavapipe (docs/PERFORMANCE.md, 2026-12-02)
/// the multi-row kernel stays ahead through 32 rows at 4096x14336. Not yet measured on a discrete GPU.
pub const ROWS_MAX: usize = 32;

/// The kernel for `rows` activation rows of a `cols`-column weight with `blocksize`: the multi-row kernel
/// needs the vectorised GEMV's layout (whole 16-byte words of one block: cols % 32 == 0, blocksize >= 32).
pub fn pick_linear_path(rows: usize, cols: usize, blocksize: usize) -> LinearPath {
    let words = cols.is_multiple_of(32) && blocksize >= 32;
    match rows {
        1 => LinearPath::Gemv,
        r if (2..=ROWS_MAX).contains(&r) && words => LinearPath::GemvRows,
        // Also no rows at all: the GEMM returns the empty result.
        _ => LinearPath::Gemm,
    }
}

/// Threads per set of weight rows: 32 adjacent u32 loads, one 128-byte line of each weight row per step.
const TPR: u32 = 32;

/// The weight rows per thread the kernel is built for.
pub(crate) const RPT_VARIANTS: [u32; 3] = [1, 2, 4];

/// Weight rows per thread for a weight of `rows` rows and `nb` activation rows per dispatch: each activation
/// value a thread loads feeds this many weight rows, but a workgroup then covers 8 x RPT rows. Measured on an
/// H200 (docs/PERFORMANCE.md): 8 activation rows need 4 (their loads dominate); with fewer, a layer under 8192
/// rows runs faster with 2 (4096 rows at 4 per thread were 128 workgroups, one per SM: 2 rows of 4096x14336
/// took 127.5 us, at 2 per thread 73.6), and one under 2048 rows with 1.
pub(crate) fn rows_per_thread(rows: usize, nb: u32) -> u32 {
    match rows {
        _ if nb >= 8 => 4,
        r if r >= 8192 => 4,
        r if r >= 2048 => 2,
        _ => 1,
    }
}

/// WGSL of the multi-row kernel for `nb` activation rows per dispatch and `rpt` weight rows per thread.
pub(crate) fn source(nb: u32, rpt: u32) -> String {
    assert!((1..=ROWS_PER_PASS as u32).contains(&nb) && RPT_VARIANTS.contains(&rpt));
    let per_row = |line: &str| repeat_lines(rpt, line);
    let per_x = |line: &str| repeat_lines(nb, line);
    let wsetup = per_row("    let e{i} = min(row0 + {i}u, p.p0 - 1u) * cols;\n");
    let xsetup = per_x("    let xb{i} = min(p.p6 + {i}u, last_b) * (cols / 4u);\n");
    let accs: String = (0..nb)
        .map(|b| per_row(&format!("    var acc{b}_{{i}} = 0.0;\n")))
        .collect();
    let wload = per_row(
        "        let e{i}u = e{i} + u * 8u;\n        let wd{i} = packed[e{i}u / 8u - first];\n        let s{i} = absmax[e{i}u >> p.p2];\n        let wl{i} = dec_lo(wd{i});\n        let wh{i} = dec_hi(wd{i});\n",
    );
    let xbody: String = (0..nb)
        .map(|b| {
            format!("        {{\n            let xa = x[xb{b} + xi];\n            let xc = x[xb{b} + xi + 1u];\n")
                + &per_row(&format!(
                    "            acc{b}_{{i}} = acc{b}_{{i}} + s{{i}} * (dot(wl{{i}}, xa) + dot(wh{{i}}, xc));\n"
                ))
                + "        }\n"
        })
        .collect();
    let reduce: String = (0..rpt)
        .map(|r| {
            (0..nb)
                .map(|b| format!("    red[lid * NB + {b}u] = acc{b}_{r};\n"))
                .collect::<String>()
                + &format!("    reduce_store(lid, t, rs * TPR, row0 + {r}u);\n")
        })
        .collect();
    let consts = format!(
        "const TPR: u32 = {TPR}u;\nconst SETS: u32 = {}u;\nconst NB: u32 = {nb}u;\nconst RPT: u32 = {rpt}u;\nconst RED_LEN: u32 = {}u;\n",
        256 / TPR,
        256 * nb
    );
    consts
        + &TEMPLATE
            .replace("WROW_SETUP\n", &wsetup)
            .replace("XROW_SETUP\n", &(xsetup + &accs))
            .replace("WROW_LOAD\n", &wload)
            .replace("XROW_BODY\n", &xbody)
            .replace("WROW_REDUCE\n", &reduce)
}

/// Activation rows per dispatch for a batch: the smallest variant that holds it, at most [`ROWS_PER_PASS`].
pub(super) fn pass_rows(batch: usize) -> u32 {
    batch.clamp(1, ROWS_PER_PASS).next_power_of_two() as u32
}

/// Records the multi-row GEMV over weight rows `piece` for activation rows `b0..b0 + nb`; `bufs` binds packed
/// (the piece), absmax, table, x, bias and y at 1..=6 as for the batch-1 GEMV.
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode(
    gpu: &Gpu,
    enc: &mut Recorder,
    piece: RowPiece,
    rows: usize,
    cols: usize,
    blocksize: usize,
    batch: usize,
    b0: usize,
    has_bias: bool,
    bufs: &[(u32, &wgpu::Buffer)],
) -> Result<()> {
    let nb = pass_rows(batch - b0);
    let params = [
        piece.r1 as u32,
        cols as u32,
        blocksize.trailing_zeros(),
        rows as u32 | ((has_bias as u32) << 31),
        // Pieces start on whole rows of 32-nibble words, so on 16-byte boundaries.
        (piece.first_word / 4) as u32,
        piece.r0 as u32,
        b0 as u32,
        batch as u32,
    ];
    let rpt = rows_per_thread(rows, nb);
    let rows_per_group = (256 / TPR * rpt) as usize;
    gpu.encode(
        enc,
        &Shader::Gemv4bitRows(nb, rpt),
        params,
        bufs,
        Gpu::grid((piece.r1 - piece.r0).div_ceil(rows_per_group) as u32),
        None,
    )
}

/// `y[batch, rows] = x[batch, cols] @ dequant(W)^T (+ bias)` in f32; needs cols % 32 == 0 and blocksize >= 32.
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
    assert!(cols.is_multiple_of(32) && w.blocksize >= 32);
    // Also bounds rows below 2^31 (cols >= 32), as p3 shares the row count with the bias flag.
    u32_len(
        "matmul_4bit",
        (rows * cols).max(batch * cols).max(batch * rows) + 8,
    )?;
    super::kernels::check_binding(gpu, "matmul_4bit", (x.len() * 4).max(batch * rows * 4))?;
    let xbuf = gpu.upload(bytemuck::cast_slice(x));
    let abuf = gpu.upload(bytemuck::cast_slice(w.absmax));
    let tbuf = gpu.upload(bytemuck::cast_slice(w.quant_type.dequant_table()));
    let bbuf = match bias {
        Some(b) => gpu.upload(bytemuck::cast_slice(&b.to_f32_vec())),
        None => gpu.unused_binding().clone(),
    };
    let ybuf = gpu.output((batch * rows * 4) as u64);
    // Rows per piece so that a piece's packed bytes fit one binding (as the batch-1 GEMV).
    let max_words = (gpu.max_binding() as usize / 4).saturating_sub(2);
    let rows_per = (max_words * 8 / cols).clamp(1, rows);
    let pieces: Vec<(RowPiece, wgpu::Buffer)> = (0..rows)
        .step_by(rows_per)
        .map(|r0| {
            let r1 = (r0 + rows_per).min(rows);
            let (w0, w1) = (r0 * cols / 8, r1 * cols / 8);
            let piece = RowPiece {
                r0,
                r1,
                first_word: w0,
            };
            (piece, gpu.upload(&w.packed[w0 * 4..w1 * 4]))
        })
        .collect();
    gpu.run(|enc| {
        for (piece, pbuf) in &pieces {
            let bufs = [
                (1, pbuf),
                (2, &abuf),
                (3, &tbuf),
                (4, &xbuf),
                (5, &bbuf),
                (6, &ybuf),
            ];
            for b0 in (0..batch).step_by(ROWS_PER_PASS) {
                encode(
                    gpu,
                    enc,
                    *piece,
                    rows,
                    cols,
                    w.blocksize,
                    batch,
                    b0,
                    bias.is_some(),
                    &bufs,
                )?;
            }
        }
        Ok(())
    })?;
    gpu.read_f32(&ybuf, batch * rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crossover_picks_gemv_rows_for_aligned_weights() {
        assert_eq!(pick_linear_path(1, 4096, 64), LinearPath::Gemv);
        assert_eq!(pick_linear_path(0, 4096, 64), LinearPath::Gemm);
        for rows in 2..=ROWS_MAX {
            assert_eq!(pick_linear_path(rows, 4096, 64), LinearPath::GemvRows);
        }
        assert_eq!(pick_linear_path(ROWS_MAX + 1, 4096, 64), LinearPath::Gemm);
        // Columns or blocks that are not whole 16-byte words take the GEMM.
        assert_eq!(pick_linear_path(4, 4100, 64), LinearPath::Gemm);
        assert_eq!(pick_linear_path(4, 4096, 16), LinearPath::Gemm);
        assert_eq!(pass_rows(3), 4);
        assert_eq!(pass_rows(8), 8);
        assert_eq!(pass_rows(30), 8);
        assert_eq!(pass_rows(1), 1);
    }

    #[test]
    fn every_variant_is_generated() {
        for nb in [1u32, 2, 4, 8] {
            for rpt in RPT_VARIANTS {
                let s = source(nb, rpt);
                assert!(!s.contains("ROW_") && s.contains(&format!("acc{}_{}", nb - 1, rpt - 1)));
            }
        }
        assert_eq!(rows_per_thread(576, 2), 1);
        assert_eq!(rows_per_thread(4096, 4), 2);
        assert_eq!(rows_per_thread(14336, 1), 4);
        assert_eq!(rows_per_thread(576, 8), 4);
    }
}
