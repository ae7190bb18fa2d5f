//! Device-resident tensors: a buffer plus shape and dtype, so weights and activations stay on the GPU between
//! ops and a layer runs without host round trips (only [`WgpuBackend::download`] reads back).
//!
//! Every resident op records its dispatches through the same `kernels::encode_*` function as its host-slice
//! twin. Because the shaders run without injected bounds checks, each op checks shapes and dtypes (typed
//! [`Error::Shape`] errors), that every buffer holds what its shape claims, and that every operand fits one
//! storage binding (the out-of-memory error of the host path) before it records anything.

use super::WgpuBackend;
use super::gemv_rows::{self, LinearPath};
use super::kernels::{self, RowPiece, check_binding, u32_len};
use super::shaders::GemmKind;
use super::weights::{GpuPacked4bit, GpuPackedTernary};
use crate::tensor::DType;
use crate::{Error, Result};

/// A tensor living in GPU memory. Float data is stored as its raw bits (f32, or u16 for f16/bf16).
pub struct GpuTensor {
    pub buffer: wgpu::Buffer,
    pub shape: Vec<usize>,
    pub dtype: DType,
}

impl GpuTensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn size_in_bytes(&self) -> usize {
        self.numel() * self.dtype.size_in_bytes()
    }

    /// The byte size the shape claims, `None` on overflow.
    fn checked_bytes(&self) -> Option<usize> {
        self.shape
            .iter()
            .try_fold(self.dtype.size_in_bytes(), |a, &d| a.checked_mul(d))
    }

    /// `[rows, cols]` of a matrix, a vector `[cols]` counting as one row; the buffer must hold the bytes the
    /// shape claims (the fields are public and the kernels trust them).
    fn rows_cols(&self, op: &'static str, name: &str, dtypes: &[DType]) -> Result<(usize, usize)> {
        let rc = match self.shape[..] {
            [c] => Some((1, c)),
            [r, c] => Some((r, c)),
            _ => None,
        };
        let (Some(rc), true) = (rc, dtypes.contains(&self.dtype)) else {
            return Err(Error::shape(
                op,
                format!(
                    "{name} must be {dtypes:?} [rows, cols] or [cols], got {} {:?}",
                    self.dtype, self.shape
                ),
            ));
        };
        match self.checked_bytes() {
            Some(b) if b as u64 <= self.buffer.size() => Ok(rc),
            _ => Err(Error::shape(
                op,
                format!(
                    "{name}'s buffer holds {} bytes, less than its shape {:?} of {} needs",
                    self.buffer.size(),
                    self.shape,
                    self.dtype
                ),
            )),
        }
    }

    /// The same buffer viewed as `[rows, last dim]` (the resident kernels take matrices and vectors).
    pub(crate) fn into_matrix(self) -> GpuTensor {
        let (r, c) = crate::tensor::split_last_dim(&self.shape);
        GpuTensor {
            shape: vec![r, c],
            ..self
        }
    }

    /// The same buffer under `shape` (same element count).
    pub(crate) fn with_shape(self, shape: Vec<usize>) -> GpuTensor {
        debug_assert_eq!(shape.iter().product::<usize>(), self.numel());
        GpuTensor { shape, ..self }
    }

    /// The output shape of a row-wise op on this tensor: `[rows, n]`, or `[n]` when this is a vector.
    fn out_shape(&self, rows: usize, n: usize) -> Vec<usize> {
        if self.shape.len() == 1 {
            vec![n]
        } else {
            vec![rows, n]
        }
    }
}

impl WgpuBackend {
    /// Copies host bytes (little-endian, `dtype` elements) to a new device tensor.
    pub fn upload_raw(&self, bytes: &[u8], shape: Vec<usize>, dtype: DType) -> GpuTensor {
        GpuTensor {
            buffer: self.gpu().upload(bytes),
            shape,
            dtype,
        }
    }

    /// An uninitialised device tensor.
    pub fn empty(&self, shape: Vec<usize>, dtype: DType) -> GpuTensor {
        let bytes: usize = shape.iter().product::<usize>() * dtype.size_in_bytes();
        GpuTensor {
            buffer: self.gpu().output(bytes as u64),
            shape,
            dtype,
        }
    }

    /// Copies a device tensor back to host bytes.
    pub fn download(&self, t: &GpuTensor) -> Result<Vec<u8>> {
        self.gpu().read(&t.buffer, t.size_in_bytes())
    }

    /// An output tensor whose buffer holds `capacity` (>= the shape's) elements, checked against the kernels'
    /// u32 indexing and one storage binding before it is taken from the pool. Its contents are left over from
    /// earlier use: the kernel must write every element (or the caller clears it, `clear`).
    fn output(
        &self,
        op: &'static str,
        shape: Vec<usize>,
        dtype: DType,
        capacity: usize,
    ) -> Result<GpuTensor> {
        u32_len(op, capacity)?;
        let bytes = capacity * dtype.size_in_bytes();
        check_binding(self.gpu(), op, bytes)?;
        Ok(GpuTensor {
            buffer: self.gpu().pooled(bytes as u64)?,
            shape,
            dtype,
        })
    }

    /// Records zero-filling `buf` (an output no kernel writes, as when there is nothing to sum).
    fn clear(&self, buf: &wgpu::Buffer) -> Result<()> {
        self.gpu().submit(|enc| {
            enc.encoder().clear_buffer(buf, 0, None);
            Ok(())
        })
    }
}

impl WgpuBackend {
    /// The whole weight, dequantized on the GPU: f32 `[rows, cols]`, resident.
    pub fn dequantize_4bit_resident(&self, w: &GpuPacked4bit) -> Result<GpuTensor> {
        const OP: &str = "dequantize_4bit_resident";
        let n = w.rows * w.cols;
        // The kernel writes whole vec4s; rounding up to whole u32 words of codes (8 values) covers them.
        let y = self.output(OP, vec![w.rows, w.cols], DType::F32, n.div_ceil(8) * 8)?;
        if n == 0 {
            return Ok(y);
        }
        let gpu = self.gpu();
        let bufs = [
            (1, &w.packed.buffer),
            (2, &w.absmax.buffer),
            (3, &w.table),
            (4, &y.buffer),
        ];
        gpu.submit(|enc| kernels::encode_dequantize(gpu, enc, 4, n, w.blocksize, None, &bufs))?;
        Ok(y)
    }

    /// `y = W x` with W and x (f32, `cols` values in any shape) already on the GPU; y stays there (f32,
    /// `[rows]`).
    pub fn gemv_4bit_resident(&self, x: &GpuTensor, w: &GpuPacked4bit) -> Result<GpuTensor> {
        const OP: &str = "gemv_4bit_resident";
        let bad = || {
            Error::shape(
                OP,
                format!("x must be f32 [{}], got {} {:?}", w.cols, x.dtype, x.shape),
            )
        };
        if x.dtype != DType::F32 || x.checked_bytes() != Some(w.cols * 4) {
            return Err(bad());
        }
        if x.buffer.size() < (w.cols * 4) as u64 {
            return Err(bad());
        }
        self.linear_4bit(OP, x, 1, vec![w.rows], w, None)
    }

    /// `y[batch, rows] = x[batch, cols] @ W^T` for a resident 4-bit weight: the GEMV kernels at batch 1, the
    /// tiled GEMM above. x is f32 `[batch, cols]` (or `[cols]`, giving `[rows]`); y stays on the GPU.
    pub fn matmul_4bit_resident(&self, x: &GpuTensor, w: &GpuPacked4bit) -> Result<GpuTensor> {
        const OP: &str = "matmul_4bit_resident";
        let (batch, cols) = x.rows_cols(OP, "x", &[DType::F32])?;
        if cols != w.cols {
            return Err(Error::shape(
                OP,
                format!(
                    "x has {cols} columns, the weight {} x {} takes {}",
                    w.rows, w.cols, w.cols
                ),
            ));
        }
        self.linear_4bit(OP, x, batch, x.out_shape(batch, w.rows), w, None)
    }

    /// Records the 4-bit linear layer for a checked x of `batch` rows of `w.cols`, with an optional f32 bias
    /// `[rows]`.
    pub(crate) fn linear_4bit(
        &self,
        op: &'static str,
        x: &GpuTensor,
        batch: usize,
        shape: Vec<usize>,
        w: &GpuPacked4bit,
        bias: Option<&wgpu::Buffer>,
    ) -> Result<GpuTensor> {
        let (rows, cols) = (w.rows, w.cols);
        u32_len(op, batch * cols)?;
        check_binding(self.gpu(), op, batch * cols * 4)?;
        let y = self.output(op, shape, DType::F32, batch * rows)?;
        if batch * rows == 0 {
            return Ok(y);
        }
        // No columns: y is all zeros.
        if cols == 0 {
            self.clear(&y.buffer)?;
            return Ok(y);
        }
        let gpu = self.gpu();
        let (bias_buf, has_bias) = match bias {
            Some(b) => (b, 1),
            None => (gpu.unused_binding(), 0),
        };
        let path = gemv_rows::pick_linear_path(batch, cols, w.blocksize);
        gpu.submit(|enc| {
            if path != LinearPath::Gemm {
                let bufs = [
                    (1, &w.packed.buffer),
                    (2, &w.absmax.buffer),
                    (3, &w.table),
                    (4, &x.buffer),
                    (5, bias_buf),
                    (6, &y.buffer),
                ];
                let piece = RowPiece {
                    r0: 0,
                    r1: rows,
                    first_word: 0,
                };
                if path == LinearPath::Gemv {
                    return kernels::encode_gemv_4bit(
                        gpu,
                        enc,
                        piece,
                        cols,
                        w.blocksize,
                        has_bias,
                        &bufs,
                        None,
                        None,
                    );
                }
                // 2-32 rows: each weight word read once per pass of up to 8 activation rows.
                for b0 in (0..batch).step_by(gemv_rows::ROWS_PER_PASS) {
                    let (bs, b) = (w.blocksize, has_bias == 1);
                    gemv_rows::encode(gpu, enc, piece, rows, cols, bs, batch, b0, b, &bufs)?;
                }
                Ok(())
            } else {
                let bufs = [
                    (1, &x.buffer),
                    (2, &w.packed.buffer),
                    (3, &w.absmax.buffer),
                    (4, &w.table),
                    (5, bias_buf),
                    (6, &y.buffer),
                ];
                let log2_bs = w.blocksize.trailing_zeros();
                let kind = GemmKind::FourBit;
                kernels::encode_gemm(gpu, enc, kind, batch, rows, cols, has_bias, log2_bs, &bufs)
            }
        })?;
        Ok(y)
    }

    /// `y[m, n] = x[m, k] @ w[n, k]^T` on resident f32 tensors; y stays on the GPU.
    pub fn matmul_resident(&self, x: &GpuTensor, w: &GpuTensor) -> Result<GpuTensor> {
        self.linear_f32("matmul_resident", x, w, None)
    }

    /// `y = x @ w^T (+ bias)` for f32 x `[m, k]`, w `[n, k]`, bias `[n]`.
    pub(crate) fn linear_f32(
        &self,
        op: &'static str,
        x: &GpuTensor,
        w: &GpuTensor,
        bias: Option<&wgpu::Buffer>,
    ) -> Result<GpuTensor> {
        let (m, k) = x.rows_cols(op, "x", &[DType::F32])?;
        let (n, k2) = w.rows_cols(op, "w", &[DType::F32])?;
        if k != k2 || x.shape.len() != 2 || w.shape.len() != 2 {
            return Err(Error::shape(
                op,
                format!(
                    "need f32 x [m, k] and w [n, k], got {:?} and {:?}",
                    x.shape, w.shape
                ),
            ));
        }
        u32_len(op, (m * k).max(n * k))?;
        check_binding(self.gpu(), op, (m * k).max(n * k) * 4)?;
        let y = self.output(op, vec![m, n], DType::F32, m * n)?;
        if m * n == 0 {
            return Ok(y);
        }
        let gpu = self.gpu();
        let (bias_buf, has_bias) = match bias {
            Some(b) => (b, 1),
            None => (gpu.unused_binding(), 0),
        };
        let bufs = [
            (1, &x.buffer),
            (2, &w.buffer),
            (5, bias_buf),
            (6, &y.buffer),
        ];
        let kind = GemmKind::DenseF32;
        gpu.submit(|enc| kernels::encode_gemm(gpu, enc, kind, m, n, k, has_bias, 0, &bufs))?;
        Ok(y)
    }

    /// RMSNorm over the last dimension: `y = x / sqrt(mean(x^2) + eps) * weight`, x f32 `[rows, cols]` (or
    /// `[cols]`), weight f32 `[cols]`; y has x's shape and stays on the GPU.
    pub fn rms_norm_resident(
        &self,
        x: &GpuTensor,
        weight: &GpuTensor,
        eps: f32,
    ) -> Result<GpuTensor> {
        const OP: &str = "rms_norm_resident";
        let (rows, cols) = x.rows_cols(OP, "x", &[DType::F32])?;
        let (wr, wc) = weight.rows_cols(OP, "weight", &[DType::F32])?;
        if weight.shape.len() != 1 || (wr, wc) != (1, cols) {
            return Err(Error::shape(
                OP,
                format!(
                    "weight must be f32 [{cols}] for x {:?}, got {:?}",
                    x.shape, weight.shape
                ),
            ));
        }
        self.rows_float(OP, x, rows, cols, Some(weight), eps)
    }

    /// Softmax over the last dimension of x f32 `[rows, cols]` (or `[cols]`); y has x's shape and stays on the
    /// GPU.
    pub fn softmax_resident(&self, x: &GpuTensor) -> Result<GpuTensor> {
        const OP: &str = "softmax_resident";
        let (rows, cols) = x.rows_cols(OP, "x", &[DType::F32])?;
        self.rows_float(OP, x, rows, cols, None, 0.0)
    }

    fn rows_float(
        &self,
        op: &'static str,
        x: &GpuTensor,
        rows: usize,
        cols: usize,
        weight: Option<&GpuTensor>,
        eps: f32,
    ) -> Result<GpuTensor> {
        let y = self.output(op, x.shape.clone(), DType::F32, rows * cols)?;
        if rows * cols == 0 {
            return Ok(y);
        }
        let gpu = self.gpu();
        let wbuf = match weight {
            Some(w) => &w.buffer,
            None => gpu.unused_binding(),
        };
        let bufs = [(1, &x.buffer), (2, wbuf), (3, &y.buffer)];
        let rms = weight.is_some();
        gpu.submit(|enc| kernels::encode_rows_float(gpu, enc, rows, cols, rms, eps, &bufs))?;
        Ok(y)
    }

    /// BitNet b1.58 linear layer on the GPU: x (f32, f16 or bf16 `[batch, cols]`, or `[cols]` giving `[rows]`)
    /// is quantized per row exactly as `ternary_act_quant` does, multiplied with the ternary weight in exact
    /// i32, then scaled: `y = f32(acc) / (x_scale * weight_scale)`, f32 `[batch, rows]`, resident.
    ///
    /// Exactness: the result is bit-identical to the CPU's `ternary_act_quant` + `ternary_matmul` (no bias).
    /// The scaling runs on the GPU as a correctly rounded float32 conversion, product and division done on
    /// integer bit patterns (not WGSL's `/`, which allows 2.5 ulp, nor a multiplication by a reciprocal, which
    /// rounds twice), with subnormals kept. Only NaN results (a row of x with an infinity, times 0) differ in
    /// payload and sign: they are the quiet NaN `0x7fc00000`.
    pub fn ternary_linear_resident(
        &self,
        x: &GpuTensor,
        w: &GpuPackedTernary,
    ) -> Result<GpuTensor> {
        self.ternary_linear_bias_resident(x, w, None)
    }

    /// [`Self::ternary_linear_resident`] plus an f32 bias `[rows]`, added with one correctly rounded f32
    /// addition (the CPU's `acc / (x_scale * weight_scale) + bias`, bit for bit).
    pub fn ternary_linear_bias_resident(
        &self,
        x: &GpuTensor,
        w: &GpuPackedTernary,
        bias: Option<&GpuTensor>,
    ) -> Result<GpuTensor> {
        const OP: &str = "ternary_linear_resident";
        let (batch, cols) = x.rows_cols(OP, "x", &[DType::F32, DType::F16, DType::BF16])?;
        if cols != w.cols {
            return Err(Error::shape(
                OP,
                format!(
                    "x has {cols} columns, the ternary weight {} x {} takes {}",
                    w.rows, w.cols, w.cols
                ),
            ));
        }
        let rows = w.rows;
        if let Some(b) = bias
            && (b.dtype != DType::F32 || b.shape.iter().product::<usize>() != rows)
        {
            return Err(Error::shape(
                OP,
                format!(
                    "the bias is {:?} {:?}, the layer takes f32 [{rows}]",
                    b.dtype, b.shape
                ),
            ));
        }
        u32_len(OP, batch * cols)?;
        check_binding(self.gpu(), OP, batch * cols * x.dtype.size_in_bytes())?;
        let y = self.output(OP, x.out_shape(batch, rows), DType::F32, batch * rows)?;
        if batch * rows == 0 {
            return Ok(y);
        }
        let gpu = self.gpu();
        let q = gpu.pooled((batch * cols) as u64)?;
        let x_scale = gpu.pooled((batch * 4) as u64)?;
        let acc = gpu.pooled((batch * rows * 4) as u64)?;
        gpu.submit(|enc| {
            kernels::encode_ternary_act_quant(
                gpu, enc, x.dtype, batch, cols, &x.buffer, &q, &x_scale,
            )?;
            // Without columns every accumulator is 0.
            if cols == 0 {
                enc.encoder().clear_buffer(&acc, 0, None);
            } else {
                kernels::encode_ternary_matmul(
                    gpu,
                    enc,
                    batch,
                    rows,
                    cols,
                    &q,
                    &w.packed.buffer,
                    &acc,
                    None,
                )?;
            }
            kernels::encode_ternary_rescale(
                gpu,
                enc,
                batch,
                rows,
                w.weight_scale,
                &acc,
                &x_scale,
                bias.map(|b| &b.buffer),
                &y.buffer,
            )
        })?;
        // Recorded: the temporaries can serve later ops (pool.rs says why that is safe).
        for b in [q, x_scale, acc] {
            gpu.recycle(b);
        }
        Ok(y)
    }

    /// The GPU's exact BitNet scaling `f32(acc) / (x_scale[b] * weight_scale)` on host data, `acc` being
    /// `[x_scale.len(), rows]` (tests compare it with the CPU's division on arbitrary bit patterns).
    #[doc(hidden)]
    pub fn ternary_rescale(
        &self,
        acc: &[i32],
        x_scale: &[f32],
        weight_scale: f32,
        rows: usize,
    ) -> Result<Vec<f32>> {
        kernels::ternary_rescale(self.gpu(), acc, x_scale, weight_scale, rows)
    }

    /// `int8_mm_dequant` entirely on the GPU, as `linear_8bit` runs it (`c` is `[row_stats.len(),
    /// col_stats.len()]`); tests compare it with the CPU's fused multiply-add on arbitrary bit patterns.
    #[doc(hidden)]
    pub fn int8_mm_dequant_on_device(
        &self,
        c: &[i32],
        row_stats: &[f32],
        col_stats: &[f32],
        bias: Option<&[half::f16]>,
    ) -> Result<Vec<half::f16>> {
        kernels::int8_mm_dequant_exact(self.gpu(), c, row_stats, col_stats, bias)
    }
}
