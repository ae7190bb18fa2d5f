//! LLM.int8() and BitNet b1.58 (kernels/int8.cu).

use super::{
    Arg, Bias, Buf, Cuda, CudaStorage, INV_127, LIN_WARPS, THREADS, bias_dt, bias_ptr, blocks, dt,
    opt, p, u32_of,
};
use crate::Result;
use crate::format::int8::MM_DEQUANT_SCALE;
use crate::tensor::DType;

/// Longest activation row `ternary_linear_r1` quantizes into a block's shared memory: one byte a column,
/// plus about 1 KiB of its own, within the 64 KiB every GPU from Turing on lets a block have (the runtime
/// raises the kernel's limit past the default 48 KiB). Wider than any released model's layers (Llama 3's
/// largest is 53,248); a longer row is quantized first, then multiplied.
const TERNARY_R1_MAX_COLS: usize = 60 * 1024;

/// A packed ternary weight on the device: 2-bit codes of four output rows per byte, `[rows.div_ceil(4), cols]`.
#[derive(Clone, Copy)]
pub struct TernaryWeight<'a> {
    pub packed: &'a CudaStorage,
    pub weight_scale: f32,
    pub rows: usize,
    pub cols: usize,
}

/// Warps per packed row for `ternary_linear_r1` (a power of two, at most 32): enough that one block per
/// multiprocessor covers the packed rows with its 32 warps (fewer rows than warps: each row split wider),
/// but no more than the row's 16-byte words give every lane one.
fn ternary_split(multiprocessors: usize, packed_rows: usize, cols: usize) -> usize {
    let wide = (multiprocessors * 32)
        .div_ceil(packed_rows.max(1))
        .next_power_of_two();
    let spans = (cols / 16 / 32).max(1);
    wide.min(1 << spans.ilog2()).clamp(1, 32)
}

/// Activation rows per pass of the dp4a kernels (`DP4A_ROWS` in kernels/int8.cu; `ternary_matmul` too).
const DP4A_ROWS: usize = 8;
/// Up to this many activation rows the int8 product runs as a dp4a GEMV (each pass reads the weight once)
/// where cuBLAS is absent; past it, the shared-memory tile GEMM.
const DP4A_MAX_ROWS: usize = 16;
/// From this many activation rows on, the int8 product is cuBLAS's where cuBLAS is present. H200, us, dp4a
/// GEMV against cuBLAS at 1 / 2 / 4 / 8 / 16 rows (docs/PERFORMANCE.md): 4096x4096 7.0 / 7.5 / 10.3 / 16.4 /
/// 29.4 against 7.7 / 14.7 / 13.7 / 11.8 / 14.6; 4096x14336 21.6 / 31.9 / 52.9 / 93.9 / 169.2 against 21.7 /
/// 29.5 / 27.1 / 26.8 / 21.4.
const INT8_BLAS_MIN_ROWS: usize = 4;

impl Cuda {
    /// Column outlier flags (u32 per column) of `a [rows, cols]`.
    pub fn int8_col_outliers_dev(
        &self,
        a: &CudaStorage,
        dtype: DType,
        rows: usize,
        cols: usize,
        threshold: f32,
    ) -> Result<Buf> {
        const OP: &str = "int8_vectorwise_quant";
        let flags = self.alloc(OP, cols * 4)?;
        self.launch(
            "int8_col_outliers",
            (u32_of(OP, cols.div_ceil(THREADS as usize))?, 1),
            THREADS,
            &[
                p(a),
                dt(dtype),
                Arg::U32(u32_of(OP, rows)?),
                Arg::U32(u32_of(OP, cols)?),
                Arg::F32(threshold),
                p(&flags),
            ],
        )?;
        Ok(flags)
    }

    /// int8 rows and row_stats; `zero_cols`: flags of columns zeroed in every row.
    pub fn int8_row_quant_dev(
        &self,
        a: &CudaStorage,
        dtype: DType,
        rows: usize,
        cols: usize,
        threshold: f32,
        zero_cols: Option<&Buf>,
    ) -> Result<(Buf, Buf)> {
        const OP: &str = "int8_vectorwise_quant";
        let q = self.alloc(OP, rows * cols)?;
        let stats = self.alloc(OP, rows * 4)?;
        self.launch(
            "int8_row_quant",
            (u32_of(OP, rows)?, 1),
            THREADS,
            &[
                p(a),
                dt(dtype),
                Arg::U32(u32_of(OP, cols)?),
                Arg::F32(threshold),
                opt(zero_cols),
                p(&q),
                p(&stats),
            ],
        )?;
        Ok((q, stats))
    }

    pub fn int8_dequant_dev(
        &self,
        q: &CudaStorage,
        row_stats: &CudaStorage,
        n: usize,
        cols: usize,
    ) -> Result<Buf> {
        let out = self.alloc("int8_vectorwise_dequant", n * 4)?;
        self.launch(
            "int8_dequant",
            (blocks(n), 1),
            THREADS,
            &[
                p(q),
                p(row_stats),
                Arg::U32(u32_of("int8_vectorwise_dequant", cols.max(1))?),
                Arg::U64(n as u64),
                Arg::F32(INV_127),
                p(&out),
            ],
        )?;
        Ok(out)
    }

    /// Exact `a[m, k] @ b[n, k]^T` in i32.
    pub fn int8_gemm_dev(
        &self,
        a: &CudaStorage,
        b: &CudaStorage,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<Buf> {
        const OP: &str = "int8_linear_matmul";
        let c = self.alloc(OP, m * n * 4)?;
        let aligned = [a.addr(), b.addr(), c.addr()]
            .iter()
            .all(|p| p.is_multiple_of(16));
        if let Some(blas) = self.blas()
            && m >= INT8_BLAS_MIN_ROWS
            && k.is_multiple_of(4)
            && n.is_multiple_of(4)
            && aligned
        {
            // Batches: cuBLAS's integer tensor-core product (the same exact i32 sums).
            blas.gemm_i8_nt(self, a.addr(), b.addr(), c.addr(), m, n, k)?;
            return Ok(c);
        }
        // Few rows: a warp per weight row, 16 bytes per lane step (k % 16 == 0); otherwise 32x32 tiles.
        let (name, grid, block) = if k.is_multiple_of(16) && self.int8_few_rows(m) {
            let grid = (n.div_ceil(LIN_WARPS), m.div_ceil(DP4A_ROWS));
            ("int8_gemv_dp4a", grid, 32 * LIN_WARPS as u32)
        } else {
            ("int8_gemm", (n.div_ceil(32), m.div_ceil(32)), THREADS)
        };
        self.launch(
            name,
            (u32_of(OP, grid.0)?, u32_of(OP, grid.1)?),
            block,
            &[
                p(a),
                p(b),
                Arg::U32(u32_of(OP, m)?),
                Arg::U32(u32_of(OP, n)?),
                Arg::U32(u32_of(OP, k)?),
                p(&c),
            ],
        )?;
        Ok(c)
    }

    /// bitsandbytes' `int8_mm_dequant` to f16; `bias` f32 or none.
    pub fn int8_mm_dequant_dev(
        &self,
        c: &CudaStorage,
        row_stats: &CudaStorage,
        col_stats: &CudaStorage,
        bias: Option<&Buf>,
        m: usize,
        n: usize,
    ) -> Result<Buf> {
        const OP: &str = "int8_mm_dequant";
        let total = m * n;
        let out = self.alloc(OP, total * 2)?;
        self.launch(
            "int8_mm_dequant",
            (blocks(total), 1),
            THREADS,
            &[
                p(c),
                p(row_stats),
                p(col_stats),
                opt(bias),
                Arg::U32(u32_of(OP, n.max(1))?),
                Arg::U64(total as u64),
                Arg::F32(MM_DEQUANT_SCALE),
                p(&out),
            ],
        )?;
        Ok(out)
    }

    /// Linear8bitLt's outlier term for `m <= DP4A_MAX_ROWS` rows added to `y` (f16 `[m, n]`) in place, the
    /// outlier columns listed on the device from `flags`: no host round trip.
    #[allow(clippy::too_many_arguments)]
    pub fn int8_outliers_few_rows_dev(
        &self,
        y: &CudaStorage,
        x16: &CudaStorage,
        w: &CudaStorage,
        scb: &CudaStorage,
        flags: &CudaStorage,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<()> {
        const OP: &str = "linear8bitlt";
        let list = self.alloc(OP, k * 4)?;
        let count = self.alloc(OP, 4)?;
        self.launch(
            "int8_outlier_list",
            (1, 1),
            1024,
            &[p(flags), Arg::U32(u32_of(OP, k)?), p(&list), p(&count)],
        )?;
        self.launch(
            "int8_outlier_gemv",
            (u32_of(OP, n.div_ceil(LIN_WARPS))?, 1),
            32 * LIN_WARPS as u32,
            &[
                p(x16),
                p(w),
                p(scb),
                p(&list),
                p(&count),
                Arg::U32(u32_of(OP, m)?),
                Arg::U32(u32_of(OP, n)?),
                Arg::U32(u32_of(OP, k)?),
                Arg::F32(INV_127),
                p(y),
            ],
        )
    }

    /// Whether `m` activation rows take the few-row int8 kernels.
    pub fn int8_few_rows(&self, m: usize) -> bool {
        m <= DP4A_MAX_ROWS
    }

    /// Gathers the outlier columns' operands of Linear8bitLt: x16[:, cols] `[m, nc]` and
    /// f16(W[:, cols] * SCB / 127) `[n, nc]`.
    #[allow(clippy::too_many_arguments)]
    pub fn int8_outlier_operands_dev(
        &self,
        x16: &CudaStorage,
        w: &CudaStorage,
        scb: &CudaStorage,
        cols: &CudaStorage,
        nc: usize,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<(Buf, Buf)> {
        const OP: &str = "linear8bitlt";
        let xs = self.alloc(OP, m * nc * 2)?;
        let ws = self.alloc(OP, n * nc * 2)?;
        self.launch(
            "int8_outlier_operands",
            (blocks((m + n) * nc), 1),
            THREADS,
            &[
                p(x16),
                p(w),
                p(scb),
                p(cols),
                Arg::U32(u32_of(OP, nc)?),
                Arg::U32(u32_of(OP, m)?),
                Arg::U32(u32_of(OP, n)?),
                Arg::U32(u32_of(OP, k)?),
                Arg::F32(INV_127),
                p(&xs),
                p(&ws),
            ],
        )?;
        Ok((xs, ws))
    }

    /// `y = f16(y + extra)` in place (both f16, `n` values).
    pub fn add_f16_dev(&self, y: &CudaStorage, extra: &CudaStorage, n: usize) -> Result<()> {
        self.launch(
            "add_f16",
            (blocks(n), 1),
            THREADS,
            &[p(y), p(extra), Arg::U64(n as u64)],
        )
    }

    // ---- BitNet b1.58 ----

    pub fn ternary_quantize_dev(
        &self,
        w: &CudaStorage,
        dtype: DType,
        rows: usize,
        cols: usize,
        scale: f32,
    ) -> Result<Buf> {
        const OP: &str = "ternary_quantize";
        let n = rows.div_ceil(4) * cols;
        let packed = self.alloc(OP, n)?;
        self.launch(
            "ternary_quantize",
            (u32_of(OP, n.div_ceil(THREADS as usize))?, 1),
            THREADS,
            &[
                p(w),
                dt(dtype),
                Arg::U32(u32_of(OP, rows)?),
                Arg::U32(u32_of(OP, cols)?),
                Arg::F32(scale),
                p(&packed),
            ],
        )?;
        Ok(packed)
    }

    pub fn ternary_act_quant_dev(
        &self,
        x: &CudaStorage,
        dtype: DType,
        rows: usize,
        cols: usize,
    ) -> Result<(Buf, Buf)> {
        const OP: &str = "ternary_act_quant";
        let q = self.alloc(OP, rows * cols)?;
        let scales = self.alloc(OP, rows * 4)?;
        // A block per row, 1024 threads: one row is the whole launch at batch 1.
        self.launch(
            "ternary_act_quant",
            (u32_of(OP, rows)?, 1),
            1024,
            &[
                p(x),
                dt(dtype),
                Arg::U32(u32_of(OP, cols)?),
                Arg::F32(crate::format::ternary::EPS),
                p(&q),
                p(&scales),
            ],
        )?;
        Ok((q, scales))
    }

    /// The product of quantized activations `xq [batch, cols]` (scales `x_scale`) and `w`, f32 out.
    pub fn ternary_matmul_dev(
        &self,
        xq: &CudaStorage,
        x_scale: &CudaStorage,
        batch: usize,
        w: TernaryWeight,
        bias: Option<Bias>,
    ) -> Result<Buf> {
        const OP: &str = "ternary_matmul";
        if let Some(y) = self.ternary_matmul_blas(xq, x_scale, batch, w, bias)? {
            return Ok(y);
        }
        let TernaryWeight {
            packed,
            weight_scale,
            rows,
            cols,
        } = w;
        let y = self.alloc(OP, batch * rows * 4)?;
        // 16 columns per lane step where rows of packed bytes and activations are 16-byte aligned. (One
        // activation row, a decode step, takes `ternary_linear_r1_dev` where it applies.)
        let packed_rows = rows.div_ceil(4);
        let (name, blocks) = if cols.is_multiple_of(16) {
            ("ternary_matmul_dp4a", packed_rows.div_ceil(LIN_WARPS))
        } else {
            ("ternary_matmul", rows.div_ceil(LIN_WARPS))
        };
        self.launch(
            name,
            (u32_of(OP, blocks)?, u32_of(OP, batch.div_ceil(DP4A_ROWS))?),
            32 * LIN_WARPS as u32,
            &[
                p(xq),
                p(x_scale),
                Arg::U32(u32_of(OP, batch)?),
                p(packed),
                Arg::F32(weight_scale),
                Arg::U32(u32_of(OP, rows)?),
                Arg::U32(u32_of(OP, cols)?),
                bias_ptr(bias),
                bias_dt(bias),
                p(&y),
            ],
        )?;
        Ok(y)
    }

    /// A one-row ternary linear layer in one kernel (`ternary_linear_r1`: the activation row quantized in
    /// shared memory by each block, then the product), `y` in `out` dtype; `None` where it does not apply
    /// (more than one row, columns not a multiple of 16, a packed weight or activation row not 16-byte
    /// aligned, or a row longer than a block's shared memory holds). The bits are those of
    /// `ternary_act_quant_dev` followed by `ternary_matmul_dev`.
    pub fn ternary_linear_r1_dev(
        &self,
        x: &CudaStorage,
        dtype: DType,
        batch: usize,
        w: TernaryWeight,
        bias: Option<Bias>,
        out: DType,
    ) -> Result<Option<Buf>> {
        const OP: &str = "linear_ternary";
        let TernaryWeight {
            packed,
            weight_scale,
            rows,
            cols,
        } = w;
        if batch != 1
            || !cols.is_multiple_of(16)
            || cols > TERNARY_R1_MAX_COLS
            || !packed.addr().is_multiple_of(16)
            || !x.addr().is_multiple_of(16)
        {
            return Ok(None);
        }
        let packed_rows = rows.div_ceil(4);
        let split = ternary_split(self.multiprocessors as usize, packed_rows, cols);
        let groups = 32 / split;
        let grid = (self.multiprocessors as usize).min(packed_rows.div_ceil(groups));
        let y = self.alloc(OP, rows * out.size_in_bytes())?;
        self.launch_shared(
            "ternary_linear_r1",
            (u32_of(OP, grid)?, 1),
            1024,
            u32_of(OP, cols)?,
            &[
                p(x),
                dt(dtype),
                Arg::U32(u32_of(OP, cols)?),
                Arg::F32(crate::format::ternary::EPS),
                p(packed),
                Arg::F32(weight_scale),
                Arg::U32(u32_of(OP, rows)?),
                Arg::U32(split as u32),
                bias_ptr(bias),
                bias_dt(bias),
                p(&y),
                dt(out),
            ],
        )?;
        Ok(Some(y))
    }

    /// A prompt's ternary product through cuBLAS's int8 tensor-core GEMM (exact i32 sums, so the bits of
    /// the dp4a kernels): the packed weight unpacked to int8 for the call, the product, then the scaling.
    /// `None` where it does not apply: fewer rows than the warp-per-row kernels serve, no cuBLAS, shapes or
    /// addresses it declines (rows and columns multiples of 4, 16-byte aligned operands).
    fn ternary_matmul_blas(
        &self,
        xq: &CudaStorage,
        x_scale: &CudaStorage,
        batch: usize,
        w: TernaryWeight,
        bias: Option<Bias>,
    ) -> Result<Option<Buf>> {
        let TernaryWeight {
            packed,
            weight_scale,
            rows,
            cols,
        } = w;
        const OP: &str = "ternary_matmul";
        let Some(blas) = self.blas() else {
            return Ok(None);
        };
        let applies = batch > super::ROWS_MAX
            && rows.is_multiple_of(4)
            && cols.is_multiple_of(16)
            && [xq.addr(), packed.addr()]
                .iter()
                .all(|a| a.is_multiple_of(16));
        if !applies {
            return Ok(None);
        }
        let w = self.alloc(OP, rows * cols)?;
        self.launch(
            "ternary_unpack_i8",
            (blocks(rows * cols / 4), 1),
            THREADS,
            &[
                p(packed),
                Arg::U32(u32_of(OP, rows)?),
                Arg::U32(u32_of(OP, cols)?),
                p(&w),
            ],
        )?;
        let acc = self.alloc(OP, batch * rows * 4)?;
        blas.gemm_i8_nt(self, xq.addr(), w.addr(), acc.addr(), batch, rows, cols)?;
        let y = self.alloc(OP, batch * rows * 4)?;
        self.launch(
            "ternary_finish",
            (blocks(batch * rows), 1),
            THREADS,
            &[
                p(&acc),
                p(x_scale),
                Arg::U32(u32_of(OP, batch)?),
                Arg::F32(weight_scale),
                Arg::U32(u32_of(OP, rows)?),
                bias_ptr(bias),
                bias_dt(bias),
                p(&y),
            ],
        )?;
        Ok(Some(y))
    }
}
