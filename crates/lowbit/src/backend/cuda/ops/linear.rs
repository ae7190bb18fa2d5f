//! Linear layers: the warp-per-row 4-bit and dense kernels, the tiled GEMMs, and cuBLAS for batches
//! (kernels/linear.cu, kernels/linear_mma.cu, blas.rs).

use super::{
    Arg, Bias, Buf, Cuda, CudaStorage, LIN_WARPS, LinearRoute, ROWS_MAX, THREADS, Weight4, bias_dt,
    bias_ptr, blocks, dt, linear_route, p, suffix, u32_of,
};
use crate::Result;
use crate::tensor::DType;

/// The pair table at the start of a 4-bit word kernel's dynamic shared memory (`LIN4_TABLE_BYTES`).
const TABLE_BYTES: usize = 256 * 16 * 8;
/// Warps per block of the tensor-core 4-bit kernel (`MMA_WARPS`), and its pair table (`MMA_TABLE_BYTES`).
const MMA_WARPS: u32 = 8;
const MMA_TABLE_BYTES: u32 = 256 * 32 * 4;
/// Dynamic shared memory of the tensor-core kernel (kernels/linear_mma.cu, `PIPE_*`): the pair table, then
/// per warp 3 stages of 16 rows x 128 bytes of weights, 16 x 4 absmax values and (one activation row, `x1`)
/// 256 activations, then the warps' sums of `nb` tiles.
fn pipe_shared_bytes(nb: usize, x1: bool) -> u32 {
    let stage = 16 * 128 + 16 * 4 * 4 + if x1 { 512 } else { 0 };
    MMA_TABLE_BYTES + MMA_WARPS * (3 * stage + nb as u32 * 4 * 32 * 4)
}
/// Resident blocks per multiprocessor of the tensor-core kernel (`__launch_bounds__(256, 2)`): its grid.
const PIPE_BLOCKS_PER_SM: u32 = 2;
/// Activation rows up to which f16/bf16 4-bit linears take the tensor-core kernel: 32 rows are four
/// 8-row tiles of one weight read (above, dequantize + cuBLAS where present). One row takes it too: 7.6 /
/// 15.2 / 16.9 / 47.0 us at 4096x4096 / 4096x14336 / 14336x4096 / 8192x28672 against the word kernel's 9.9 /
/// 22.9 / 19.1 / 55.1 (f16, weights from memory, H200, one run: docs/PERFORMANCE.md).
const MMA_ROWS_MAX: usize = 32;
/// Columns from which 2-8 activation rows take the tensor-core kernel's `b1s` form (activations loaded a
/// pipeline stage ahead): 2 / 4 / 8 rows of 8192x28672 in 55.0 / 59.3 / 67.2 us against 67.1 / 74.2 / 79.9
/// (one chunk ahead), but 3-12% slower at 4,096 and 14,336 columns (H200, docs/PERFORMANCE.md).
const STAGE_AHEAD_MIN_COLS: usize = 16384;
/// Whether `LOWBIT_CUDA_NO_MMA` (set and not "0") turns the tensor-core 4-bit kernel off (read once).
fn mma_disabled() -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OFF.get_or_init(|| {
        std::env::var("LOWBIT_CUDA_NO_MMA").is_ok_and(|v| !v.is_empty() && v != "0")
    })
}

/// Largest activation row a one-row word kernel stages whole (the `_s` kernels, kernels/linear.cu).
const WHOLE_ROW_MAX: usize = 72 * 1024;

/// The 4-bit word kernel's name suffix and dynamic shared memory for `r` activation rows per pass of `cols`
/// columns: one row that fits in [`WHOLE_ROW_MAX`] staged whole (one 144-byte slot per 32 f32 columns, 80
/// for halves); otherwise f32 activations staged in two buffers of `r` rows of 1024 columns (36-float slots
/// per lane), halves read directly. kernels/linear.cu computes the same (`LIN4_*`).
fn words_kernel(r: usize, cols: usize, dtype: DType) -> (&'static str, u32) {
    let slot = if dtype == DType::F32 { 144 } else { 80 };
    let whole = cols / 32 * slot;
    if r == 1 && whole <= WHOLE_ROW_MAX {
        return ("_s", (TABLE_BYTES + whole) as u32);
    }
    let staged = if dtype == DType::F32 {
        2 * r * 32 * 36 * 4
    } else {
        0
    };
    ("", (TABLE_BYTES + staged) as u32)
}

impl Cuda {
    /// `x[m, k] @ w[n, k]^T (+ bias)` through cuBLAS (f32 accumulation), written in `out` after the bias;
    /// `None` without cuBLAS.
    #[allow(clippy::too_many_arguments)]
    fn blas_linear(
        &self,
        x: &CudaStorage,
        w: &CudaStorage,
        dtype: DType,
        bias: Option<Bias>,
        m: usize,
        n: usize,
        k: usize,
        out: DType,
    ) -> Result<Option<Buf>> {
        let Some(blas) = self.blas() else {
            return Ok(None);
        };
        let total = m * n;
        if bias.is_none() && (out == DType::F32 || out == dtype) {
            // cuBLAS rounds its f32 sums to `out` itself: no f32 temporary, no finishing pass.
            let y = self.alloc("matmul", total * out.size_in_bytes())?;
            blas.gemm_nt(self, x.addr(), w.addr(), dtype, y.addr(), (m, n, k), out)?;
            return Ok(Some(y));
        }
        let y32 = self.alloc("matmul", total * 4)?;
        let dims = (m, n, k);
        blas.gemm_nt(
            self,
            x.addr(),
            w.addr(),
            dtype,
            y32.addr(),
            dims,
            DType::F32,
        )?;
        let y = self.alloc("matmul", total * out.size_in_bytes())?;
        self.launch(
            "bias_finish",
            (blocks(total), 1),
            THREADS,
            &[
                p(&y32),
                bias_ptr(bias),
                bias_dt(bias),
                Arg::U32(u32_of("matmul", n.max(1))?),
                Arg::U64(total as u64),
                p(&y),
                dt(out),
            ],
        )?;
        Ok(Some(y))
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
        bias: Option<Bias>,
        out: DType,
    ) -> Result<Buf> {
        const OP: &str = "matmul_4bit";
        // The tensor-core kernel where it applies (it reads the weight once for up to 32 rows), before
        // the cuBLAS route for batches.
        let mma = self.mma_tiles(x, dtype, m, w);
        let route = linear_route(m, self.blas().is_some());
        if mma.is_none() && route == LinearRoute::Blas {
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
            bias_ptr(bias),
            bias_dt(bias),
            p(&y),
            dt(out),
        ];
        if let Some(nb) = mma {
            // Persistent blocks, about two per multiprocessor, each taking every grid.0-th 16-row tile.
            let tiles = u32_of(OP, w.rows.div_ceil(16))?;
            let row_tiles = u32_of(OP, m.div_ceil(8 * nb))?;
            let resident = (PIPE_BLOCKS_PER_SM * self.multiprocessors).div_ceil(row_tiles);
            let grid = (tiles.min(resident), row_tiles);
            // One activation row is staged with the weights (`x1`); more are read from L2.
            let x1 = m == 1;
            let variant = if x1 {
                "x1".into()
            } else if nb == 1 && w.cols >= STAGE_AHEAD_MIN_COLS {
                "b1s".into()
            } else {
                format!("b{nb}")
            };
            let name = format!("linear_4bit_pipe_{}_{variant}", suffix(dtype));
            let shared = pipe_shared_bytes(nb, x1);
            self.launch_shared(&name, grid, 32 * MMA_WARPS, shared, &common)?;
        } else if m <= ROWS_MAX {
            let r = Self::rows_per_pass(m);
            let words = w.cols.is_multiple_of(32) && w.blocksize >= 32;
            // Weight rows per warp in the word kernel: 4 shares each activation load among more rows, 2
            // keeps enough warps in flight on a smaller layer.
            let nr = if w.rows >= 8192 { 4 } else { 2 };
            let (name, rows_per_block, shared) = if words {
                let (tail, shared) = words_kernel(r, w.cols, dtype);
                (
                    format!("linear_4bit_words_{}_r{r}_w{nr}{tail}", suffix(dtype)),
                    LIN_WARPS * nr,
                    shared,
                )
            } else {
                (
                    format!("linear_4bit_any_{}_r{r}", suffix(dtype)),
                    LIN_WARPS,
                    0,
                )
            };
            let grid = (
                u32_of(OP, w.rows.div_ceil(rows_per_block))?,
                u32_of(OP, m.div_ceil(r))?,
            );
            self.launch_shared(&name, grid, 32 * LIN_WARPS as u32, shared, &common)?;
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

    /// Activation tiles of 8 rows (1, 2 or 4) per pass of the tensor-core 4-bit kernel
    /// (`linear_4bit_pipe_*`, kernels/linear_mma.cu), or `None` where it does not apply. It needs f16/bf16
    /// activations, 1 to [`MMA_ROWS_MAX`] rows, rows of whole 64-column chunks, 16-byte aligned activations
    /// and weights (16-byte copies), a power-of-two blocksize of at least 64 (each chunk in one block), chunk
    /// indices that fit 32 bits, and `mma.sync` with bf16 and `cp.async` (compute capability 8.0 and later).
    /// `LOWBIT_CUDA_NO_MMA=1` turns it off (the warp-per-row kernels then serve every row count: for
    /// comparing the two in one benchmark run).
    fn mma_tiles(&self, x: &CudaStorage, dtype: DType, m: usize, w: &Weight4) -> Option<usize> {
        let fits = matches!(dtype, DType::F16 | DType::BF16)
            && (1..=MMA_ROWS_MAX).contains(&m)
            && w.cols.is_multiple_of(64)
            && w.blocksize >= 64
            && w.blocksize.is_power_of_two()
            && u32::try_from(w.rows * w.cols / 64).is_ok()
            && x.addr().is_multiple_of(16)
            && w.packed.addr().is_multiple_of(16)
            && self.capability >= (8, 0)
            && !mma_disabled();
        fits.then(|| m.div_ceil(8).next_power_of_two())
    }

    /// `y[m, n] = x[m, k] @ w[n, k]^T + bias`, x and w of one dtype, accumulated in f32 and written in `out`.
    #[allow(clippy::too_many_arguments)]
    pub fn linear_dev(
        &self,
        x: &CudaStorage,
        w: &CudaStorage,
        dtype: DType,
        bias: Option<Bias>,
        m: usize,
        n: usize,
        k: usize,
        out: DType,
    ) -> Result<Buf> {
        const OP: &str = "matmul";
        let route = linear_route(m, self.blas().is_some());
        if route == LinearRoute::Blas
            && let Some(y) = self.blas_linear(x, w, dtype, bias, m, n, k, out)?
        {
            return Ok(y);
        }
        if m <= ROWS_MAX {
            let name = format!("linear_rows_{}_r{}", suffix(dtype), Self::rows_per_pass(m));
            return self.linear_rows(&name, x, w, bias, m, n, k, out);
        }
        let y = self.alloc(OP, m * n * out.size_in_bytes())?;
        let (nn, kk) = (u32_of(OP, n)?, u32_of(OP, k)?);
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
                bias_ptr(bias),
                bias_dt(bias),
                p(&y),
                dt(out),
            ],
        )?;
        Ok(y)
    }

    /// `y[m, n] = x[m, k] @ w[n, k]^T + bias` with w of another float dtype than x: a weight kept in f16/bf16
    /// is read as stored by the warp-per-row kernel for few rows (widened in registers: no copy); for many
    /// rows, and for an f32 weight with half activations, both operands are widened to f32 temporaries
    /// (exact) for the f32 product (cuBLAS where present). Either way the bits of the f32-widened weight.
    #[allow(clippy::too_many_arguments)]
    pub fn linear_mixed_dev(
        &self,
        x: &Buf,
        dtype: DType,
        w: &Buf,
        w_dtype: DType,
        bias: Option<Bias>,
        (m, n, k): (usize, usize, usize),
        out: DType,
    ) -> Result<Buf> {
        let blas_route = linear_route(m, self.blas().is_some()) == LinearRoute::Blas;
        if m <= ROWS_MAX && !blas_route && matches!(w_dtype, DType::F16 | DType::BF16) {
            let name = format!(
                "linear_rows_{}_r{}_w{}",
                suffix(dtype),
                Self::rows_per_pass(m),
                suffix(w_dtype)
            );
            return self.linear_rows(&name, x, w, bias, m, n, k, out);
        }
        let xf = self.as_f32(x, dtype, m * k)?;
        let wf = self.as_f32(w, w_dtype, n * k)?;
        self.linear_dev(&xf, &wf, DType::F32, bias, m, n, k, out)
    }

    /// Launches the warp-per-row dense kernel `name` (`linear_rows_*`, kernels/linear.cu) for up to
    /// [`ROWS_MAX`] activation rows.
    #[allow(clippy::too_many_arguments)]
    fn linear_rows(
        &self,
        name: &str,
        x: &CudaStorage,
        w: &CudaStorage,
        bias: Option<Bias>,
        m: usize,
        n: usize,
        k: usize,
        out: DType,
    ) -> Result<Buf> {
        const OP: &str = "matmul";
        let y = self.alloc(OP, m * n * out.size_in_bytes())?;
        let grid = (
            u32_of(OP, n.div_ceil(LIN_WARPS))?,
            u32_of(OP, m.div_ceil(Self::rows_per_pass(m)))?,
        );
        self.launch(
            name,
            grid,
            32 * LIN_WARPS as u32,
            &[
                p(x),
                Arg::U64(m as u64),
                p(w),
                Arg::U32(u32_of(OP, n)?),
                Arg::U32(u32_of(OP, k)?),
                bias_ptr(bias),
                bias_dt(bias),
                p(&y),
                dt(out),
            ],
        )?;
        Ok(y)
    }
}
