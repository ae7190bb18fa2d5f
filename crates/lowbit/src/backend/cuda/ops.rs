//! The kernels behind the backend's ops, on device allocations: each function queues its launches on the
//! stream and returns the output allocation without waiting. Shapes were validated by the op layer.

use super::context::{Arg, Cuda};
use super::storage::{CudaStorage, dtype_code};
use crate::Result;
use crate::format::FourBitType;
use crate::format::activation::{FRAC_1_SQRT_2, GELU_TANH_BETA, GELU_TANH_KAPPA, GeluKind};
use crate::format::int8::MM_DEQUANT_SCALE;
use crate::format::rope::RopeLayout;
use crate::tensor::DType;
use std::sync::Arc;

pub type Buf = Arc<CudaStorage>;

/// `1 / 127` in f32, as the CPU reference writes it.
const INV_127: f32 = 1.0 / 127.0;

/// Threads per block of the row and elementwise kernels.
const THREADS: u32 = 256;
/// Warps (weight rows) per block of the linear kernels (`LIN_WARPS` in kernels/linear.cu).
const LIN_WARPS: usize = 8;
/// Activation rows up to which the linear layers run the warp-per-row kernels; above, the tiled GEMM.
pub const ROWS_MAX: usize = 32;
/// From this many activation rows on, a linear layer is one cuBLAS product (a 4-bit weight dequantized
/// first, as bitsandbytes does) where cuBLAS is present. Up to 8 rows the warp-per-row kernel reads the
/// weight once; measured on an H200 (2026-12-02, docs/PERFORMANCE.md) it beats bitsandbytes' dequantize +
/// cuBLAS route there, while two passes (16 rows) cost more than one dequantization.
pub const BLAS_MIN_ROWS: usize = 9;

fn p(b: &CudaStorage) -> Arg {
    Arg::Ptr(b.addr())
}
fn opt(b: Option<&Buf>) -> Arg {
    Arg::Ptr(b.map_or(0, |b| b.addr()))
}
fn dt(d: DType) -> Arg {
    Arg::I32(dtype_code(d))
}
fn suffix(d: DType) -> &'static str {
    match d {
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        _ => "f32",
    }
}
/// Blocks for a grid-stride loop over `n` items.
fn blocks(n: usize) -> u32 {
    n.div_ceil(THREADS as usize).clamp(1, 1 << 20) as u32
}
fn u32_of(op: &'static str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| crate::Error::InvalidArgument {
        op,
        detail: format!("dimension {v} exceeds the CUDA kernels' 32-bit index range"),
    })
}
fn fourbit_index(t: FourBitType) -> usize {
    match t {
        FourBitType::Nf4 => 0,
        FourBitType::Fp4 => 1,
    }
}

/// A 4-bit weight on the device (absmax already expanded to f32).
pub struct Weight4<'a> {
    pub packed: &'a CudaStorage,
    pub absmax: &'a CudaStorage,
    pub quant_type: FourBitType,
    pub blocksize: usize,
    pub rows: usize,
    pub cols: usize,
}

impl Cuda {
    /// 8-bit blockwise codes and f32 absmax of `n` values of `x`.
    pub fn quantize_blockwise_dev(
        &self,
        x: &CudaStorage,
        dtype: DType,
        n: usize,
        blocksize: usize,
        midpoints: &CudaStorage,
    ) -> Result<(Buf, Buf)> {
        let nb = n.div_ceil(blocksize);
        let (codes, absmax) = (
            self.alloc("quantize_blockwise", n)?,
            self.alloc("quantize_blockwise", nb * 4)?,
        );
        let threads = (blocksize as u32).clamp(32, THREADS);
        self.launch(
            &format!("quantize_blockwise_{}", suffix(dtype)),
            (u32_of("quantize_blockwise", nb)?, 1),
            threads,
            &[
                p(x),
                Arg::U64(n as u64),
                Arg::U32(blocksize as u32),
                p(midpoints),
                p(&codes),
                p(&absmax),
            ],
        )?;
        Ok((codes, absmax))
    }

    /// Packed NF4/FP4 nibbles and f32 absmax of `n` values of `x`.
    pub fn quantize_4bit_dev(
        &self,
        x: &CudaStorage,
        dtype: DType,
        n: usize,
        quant_type: FourBitType,
        blocksize: usize,
    ) -> Result<(Buf, Buf)> {
        let nb = n.div_ceil(blocksize);
        let packed = self.alloc("quantize_4bit", n.div_ceil(2))?;
        let absmax = self.alloc("quantize_4bit", nb * 4)?;
        let threads = (blocksize as u32 / 2).clamp(32, THREADS);
        let q = fourbit_index(quant_type);
        self.launch(
            &format!("quantize_4bit_{}", suffix(dtype)),
            (u32_of("quantize_4bit", nb)?, 1),
            threads,
            &[
                p(x),
                Arg::U64(n as u64),
                Arg::U32(blocksize as u32),
                Arg::I32(q as i32),
                Arg::Ptr(self.addr(&self.tables.thresholds[q])),
                Arg::Ptr(self.addr(&self.tables.fp4_bits)),
                p(&packed),
                p(&absmax),
            ],
        )?;
        Ok((packed, absmax))
    }

    /// `n` f32 values `table[code] * absmax[i / blocksize]` (`bits` 8: one code per byte; 4: nibbles).
    #[allow(clippy::too_many_arguments)]
    pub fn dequantize_dev(
        &self,
        q: &CudaStorage,
        absmax: &CudaStorage,
        table: u64,
        bits: u32,
        n: usize,
        blocksize: usize,
        out_dtype: DType,
    ) -> Result<Buf> {
        let out = self.alloc("dequantize", n * out_dtype.size_in_bytes())?;
        if bits == 4 && n.is_multiple_of(8) && blocksize.is_multiple_of(8) {
            let n8 = n / 8;
            self.launch(
                "dequantize_4bit_x8",
                (blocks(n8), 1),
                THREADS,
                &[
                    p(q),
                    p(absmax),
                    Arg::Ptr(table),
                    Arg::U64(n8 as u64),
                    Arg::U32(blocksize as u32),
                    p(&out),
                    dt(out_dtype),
                ],
            )?;
            return Ok(out);
        }
        self.launch(
            "dequantize",
            (blocks(n), 1),
            THREADS,
            &[
                p(q),
                p(absmax),
                Arg::Ptr(table),
                Arg::U32(bits),
                Arg::U64(n as u64),
                Arg::U32(blocksize as u32),
                p(&out),
                dt(out_dtype),
            ],
        )?;
        Ok(out)
    }

    /// `x[m, k] @ w[n, k]^T (+ bias)` through cuBLAS (f32 accumulation), written in `out` after the bias;
    /// `None` without cuBLAS.
    #[allow(clippy::too_many_arguments)]
    fn blas_linear(
        &self,
        x: &CudaStorage,
        w: &CudaStorage,
        dtype: DType,
        bias: Option<&Buf>,
        m: usize,
        n: usize,
        k: usize,
        out: DType,
    ) -> Result<Option<Buf>> {
        let Some(blas) = self.blas() else {
            return Ok(None);
        };
        let y32 = self.alloc("matmul", m * n * 4)?;
        blas.gemm_nt(self, x.addr(), w.addr(), dtype, y32.addr(), m, n, k)?;
        let total = m * n;
        let y = self.alloc("matmul", total * out.size_in_bytes())?;
        self.launch(
            "bias_finish",
            (blocks(total), 1),
            THREADS,
            &[
                p(&y32),
                opt(bias),
                Arg::U32(u32_of("matmul", n.max(1))?),
                Arg::U64(total as u64),
                p(&y),
                dt(out),
            ],
        )?;
        Ok(Some(y))
    }

    pub fn fourbit_table(&self, t: FourBitType) -> u64 {
        self.addr(&self.tables.dequant[fourbit_index(t)])
    }

    /// Rows per pass of the warp-per-row kernels for `m` activation rows.
    fn rows_per_pass(m: usize) -> usize {
        match m {
            0 | 1 => 1,
            2 => 2,
            3 | 4 => 4,
            _ => 8,
        }
    }

    /// `y[m, rows] = x[m, cols] @ dequant(W)^T + bias`, accumulated in f32 and written in `out`.
    pub fn linear_4bit_dev(
        &self,
        x: &CudaStorage,
        dtype: DType,
        m: usize,
        w: &Weight4,
        bias: Option<&Buf>,
        out: DType,
    ) -> Result<Buf> {
        const OP: &str = "matmul_4bit";
        if m >= BLAS_MIN_ROWS && self.blas().is_some() {
            // bitsandbytes' route for batches: the weight dequantized in x's dtype, then one product.
            let table = self.fourbit_table(w.quant_type);
            let n_w = w.rows * w.cols;
            let wd = self.dequantize_dev(w.packed, w.absmax, table, 4, n_w, w.blocksize, dtype)?;
            if let Some(y) = self.blas_linear(x, &wd, dtype, bias, m, w.rows, w.cols, out)? {
                return Ok(y);
            }
        }
        let y = self.alloc(OP, m * w.rows * out.size_in_bytes())?;
        let (n, k) = (u32_of(OP, w.rows)?, u32_of(OP, w.cols)?);
        let table = Arg::Ptr(self.fourbit_table(w.quant_type));
        let common = [
            p(x),
            Arg::U64(m as u64),
            p(w.packed),
            p(w.absmax),
            table,
            Arg::U32(n),
            Arg::U32(k),
            Arg::U32(w.blocksize as u32),
            opt(bias),
            p(&y),
            dt(out),
        ];
        if m <= ROWS_MAX {
            let r = Self::rows_per_pass(m);
            let words = w.cols.is_multiple_of(32) && w.blocksize >= 32;
            // Weight rows per warp in the word kernel: 4 shares each activation load among more rows, 2
            // keeps enough warps in flight on a smaller layer.
            let nr = if w.rows >= 8192 { 4 } else { 2 };
            let (name, rows_per_block) = if words {
                (
                    format!("linear_4bit_words_{}_r{r}_w{nr}", suffix(dtype)),
                    LIN_WARPS * nr,
                )
            } else {
                (format!("linear_4bit_any_{}_r{r}", suffix(dtype)), LIN_WARPS)
            };
            let grid = (
                u32_of(OP, w.rows.div_ceil(rows_per_block))?,
                u32_of(OP, m.div_ceil(r))?,
            );
            self.launch(&name, grid, 32 * LIN_WARPS as u32, &common)?;
        } else {
            let grid = (
                u32_of(OP, w.rows.div_ceil(64))?,
                u32_of(OP, m.div_ceil(64))?,
            );
            self.launch(
                &format!("gemm_4bit_{}", suffix(dtype)),
                grid,
                THREADS,
                &common,
            )?;
        }
        Ok(y)
    }

    /// `y[m, n] = x[m, k] @ w[n, k]^T + bias`, x and w of one dtype, accumulated in f32 and written in `out`.
    #[allow(clippy::too_many_arguments)]
    pub fn linear_dev(
        &self,
        x: &CudaStorage,
        w: &CudaStorage,
        dtype: DType,
        bias: Option<&Buf>,
        m: usize,
        n: usize,
        k: usize,
        out: DType,
    ) -> Result<Buf> {
        const OP: &str = "matmul";
        if m >= BLAS_MIN_ROWS
            && let Some(y) = self.blas_linear(x, w, dtype, bias, m, n, k, out)?
        {
            return Ok(y);
        }
        let y = self.alloc(OP, m * n * out.size_in_bytes())?;
        let (nn, kk) = (u32_of(OP, n)?, u32_of(OP, k)?);
        if m <= ROWS_MAX {
            let r = Self::rows_per_pass(m);
            let grid = (
                u32_of(OP, n.div_ceil(LIN_WARPS))?,
                u32_of(OP, m.div_ceil(r))?,
            );
            self.launch(
                &format!("linear_rows_{}_r{r}", suffix(dtype)),
                grid,
                32 * LIN_WARPS as u32,
                &[
                    p(x),
                    Arg::U64(m as u64),
                    p(w),
                    Arg::U32(nn),
                    Arg::U32(kk),
                    opt(bias),
                    p(&y),
                    dt(out),
                ],
            )?;
        } else {
            let grid = (u32_of(OP, n.div_ceil(64))?, u32_of(OP, m.div_ceil(64))?);
            self.launch(
                &format!("gemm_dense_{}", suffix(dtype)),
                grid,
                THREADS,
                &[
                    p(x),
                    Arg::U64(m as u64),
                    p(w),
                    Arg::U32(nn),
                    Arg::U32(kk),
                    opt(bias),
                    p(&y),
                    dt(out),
                ],
            )?;
        }
        Ok(y)
    }

    /// `n` values of `x` converted from `from` to `to` (exact widening, round-to-nearest-even narrowing).
    pub fn cast_dev(&self, x: &CudaStorage, from: DType, n: usize, to: DType) -> Result<Buf> {
        let y = self.alloc("cast", n * to.size_in_bytes())?;
        self.launch(
            "cast",
            (blocks(n), 1),
            THREADS,
            &[p(x), dt(from), Arg::U64(n as u64), p(&y), dt(to)],
        )?;
        Ok(y)
    }

    /// `x` as f32: itself, or widened by the cast kernel.
    pub fn as_f32(&self, x: &Buf, from: DType, n: usize) -> Result<Buf> {
        if from == DType::F32 {
            Ok(x.clone())
        } else {
            self.cast_dev(x, from, n, DType::F32)
        }
    }

    // ---- LLM.int8() ----

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
        self.launch(
            "int8_gemm",
            (u32_of(OP, n.div_ceil(32))?, u32_of(OP, m.div_ceil(32))?),
            THREADS,
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
        self.launch(
            "ternary_act_quant",
            (u32_of(OP, rows)?, 1),
            THREADS,
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

    #[allow(clippy::too_many_arguments)]
    pub fn ternary_matmul_dev(
        &self,
        xq: &CudaStorage,
        x_scale: &CudaStorage,
        batch: usize,
        packed: &CudaStorage,
        weight_scale: f32,
        rows: usize,
        cols: usize,
        bias: Option<&Buf>,
    ) -> Result<Buf> {
        const OP: &str = "ternary_matmul";
        let y = self.alloc(OP, batch * rows * 4)?;
        self.launch(
            "ternary_matmul",
            (
                u32_of(OP, rows.div_ceil(LIN_WARPS))?,
                u32_of(OP, batch.div_ceil(8))?,
            ),
            32 * LIN_WARPS as u32,
            &[
                p(xq),
                p(x_scale),
                Arg::U32(u32_of(OP, batch)?),
                p(packed),
                Arg::F32(weight_scale),
                Arg::U32(u32_of(OP, rows)?),
                Arg::U32(u32_of(OP, cols)?),
                opt(bias),
                p(&y),
            ],
        )?;
        Ok(y)
    }

    // ---- Model ops (outputs in the input's dtype) ----

    /// op 0: a + b, 1: silu(a) * b, 2: relu(a)^2 * b.
    pub fn binary_dev(
        &self,
        a: &CudaStorage,
        b: &CudaStorage,
        dtype: DType,
        n: usize,
        op: i32,
    ) -> Result<Buf> {
        let y = self.alloc("elementwise", n * dtype.size_in_bytes())?;
        self.launch(
            "binary",
            (blocks(n), 1),
            THREADS,
            &[
                p(a),
                p(b),
                dt(dtype),
                Arg::U64(n as u64),
                Arg::I32(op),
                p(&y),
            ],
        )?;
        Ok(y)
    }

    pub fn gelu_dev(&self, x: &CudaStorage, dtype: DType, n: usize, kind: GeluKind) -> Result<Buf> {
        let y = self.alloc("gelu", n * dtype.size_in_bytes())?;
        let k = match kind {
            GeluKind::Tanh => 0,
            GeluKind::Erf => 1,
        };
        self.launch(
            "gelu",
            (blocks(n), 1),
            THREADS,
            &[
                p(x),
                dt(dtype),
                Arg::U64(n as u64),
                Arg::I32(k),
                Arg::F32(GELU_TANH_BETA),
                Arg::F32(GELU_TANH_KAPPA),
                Arg::F32(FRAC_1_SQRT_2),
                p(&y),
            ],
        )?;
        Ok(y)
    }

    /// `out_dtype` = x's dtype for the model ops; f32 for the host API.
    #[allow(clippy::too_many_arguments)]
    pub fn rms_norm_dev(
        &self,
        x: &CudaStorage,
        dtype: DType,
        w: &CudaStorage,
        wdtype: DType,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<Buf> {
        const OP: &str = "rms_norm";
        let y = self.alloc(OP, rows * cols * dtype.size_in_bytes())?;
        self.launch(
            "rms_norm",
            (u32_of(OP, rows)?, 1),
            THREADS,
            &[
                p(x),
                dt(dtype),
                p(w),
                dt(wdtype),
                Arg::U32(u32_of(OP, cols)?),
                Arg::F32(eps),
                p(&y),
            ],
        )?;
        Ok(y)
    }

    pub fn softmax_dev(
        &self,
        x: &CudaStorage,
        dtype: DType,
        rows: usize,
        cols: usize,
    ) -> Result<Buf> {
        const OP: &str = "softmax";
        let y = self.alloc(OP, rows * cols * dtype.size_in_bytes())?;
        self.launch(
            "softmax",
            (u32_of(OP, rows)?, 1),
            THREADS,
            &[p(x), dt(dtype), Arg::U32(u32_of(OP, cols)?), p(&y)],
        )?;
        Ok(y)
    }

    pub fn embedding_dev(
        &self,
        table: &CudaStorage,
        ids: &CudaStorage,
        n: usize,
        row_bytes: usize,
    ) -> Result<Buf> {
        const OP: &str = "embedding";
        let y = self.alloc(OP, n * row_bytes)?;
        self.launch(
            "embedding",
            (blocks(n * row_bytes), 1),
            THREADS,
            &[
                p(table),
                p(ids),
                Arg::U32(u32_of(OP, n)?),
                Arg::U64(row_bytes as u64),
                p(&y),
            ],
        )?;
        Ok(y)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn rope_dev(
        &self,
        x: &CudaStorage,
        dtype: DType,
        dims: [usize; 5],
        layout: RopeLayout,
        cos: &CudaStorage,
        sin: &CudaStorage,
    ) -> Result<Buf> {
        const OP: &str = "rope";
        let [tokens, heads, head_dim, rot, pos_start] = dims;
        let n = tokens * heads * head_dim;
        let y = self.alloc(OP, n * dtype.size_in_bytes())?;
        let interleaved = matches!(layout, RopeLayout::Interleaved) as i32;
        self.launch(
            "rope",
            (blocks(n), 1),
            THREADS,
            &[
                p(x),
                dt(dtype),
                Arg::U32(u32_of(OP, tokens)?),
                Arg::U32(u32_of(OP, heads)?),
                Arg::U32(u32_of(OP, head_dim)?),
                Arg::U32(u32_of(OP, rot)?),
                Arg::U32(u32_of(OP, pos_start)?),
                Arg::I32(interleaved),
                p(cos),
                p(sin),
                p(&y),
            ],
        )?;
        Ok(y)
    }

    /// dims: nq, n_heads, n_kv_heads, head_dim, kv_len, pos_start.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_dev(
        &self,
        q: &CudaStorage,
        k: &CudaStorage,
        v: &CudaStorage,
        dtype: DType,
        dims: [usize; 6],
        scale: f32,
    ) -> Result<Buf> {
        const OP: &str = "attention";
        let [nq, n_heads, n_kv_heads, head_dim, kv_len, pos_start] = dims;
        let rows = nq * n_heads;
        let y = self.alloc(OP, rows * head_dim * dtype.size_in_bytes())?;
        let scratch = self.alloc(OP, rows * kv_len.max(1) * 4)?;
        self.launch(
            "attention",
            (u32_of(OP, rows)?, 1),
            128,
            &[
                p(q),
                p(k),
                p(v),
                dt(dtype),
                Arg::U32(u32_of(OP, n_heads)?),
                Arg::U32(u32_of(OP, n_kv_heads)?),
                Arg::U32(u32_of(OP, head_dim)?),
                Arg::U32(u32_of(OP, kv_len)?),
                Arg::U32(u32_of(OP, pos_start)?),
                Arg::F32(scale),
                p(&scratch),
                p(&y),
            ],
        )?;
        Ok(y)
    }
}
