//! Device-resident tensors: a buffer plus shape and dtype, so weights stay on the GPU between ops.

use super::WgpuBackend;
use crate::Result;
use crate::tensor::DType;

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
}

impl WgpuBackend {
    /// Copies host bytes (little-endian, `dtype` elements) to a new device tensor.
    pub fn upload(&self, bytes: &[u8], shape: Vec<usize>, dtype: DType) -> GpuTensor {
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
}

/// A packed NF4/FP4 weight resident on the GPU (codes, float32 absmax, its table).
pub struct GpuPacked4bit {
    pub packed: GpuTensor,
    pub absmax: GpuTensor,
    table: wgpu::Buffer,
    pub blocksize: usize,
    pub rows: usize,
    pub cols: usize,
}

impl WgpuBackend {
    /// Uploads a packed 4-bit weight once, for repeated [`WgpuBackend::gemv_4bit_resident`] calls.
    pub fn upload_4bit(&self, w: &crate::backend::Packed4bit) -> Result<GpuPacked4bit> {
        if w.packed.len() as u64 > self.gpu().max_binding() {
            return Err(super::context::gpu_err(format!(
                "a resident 4-bit weight must fit one storage binding ({} bytes); this one has {}",
                self.gpu().max_binding(),
                w.packed.len()
            )));
        }
        Ok(GpuPacked4bit {
            packed: self.upload(w.packed, vec![w.packed.len()], DType::U8),
            absmax: self.upload(
                bytemuck::cast_slice(w.absmax),
                vec![w.absmax.len()],
                DType::F32,
            ),
            table: self
                .gpu()
                .upload(bytemuck::cast_slice(w.quant_type.dequant_table())),
            blocksize: w.blocksize,
            rows: w.rows,
            cols: w.cols,
        })
    }

    /// `y = W x` with W and x (f32, `[cols]`) already on the GPU; y stays there (f32, `[rows]`).
    pub fn gemv_4bit_resident(&self, x: &GpuTensor, w: &GpuPacked4bit) -> Result<GpuTensor> {
        if x.dtype != DType::F32 || x.numel() != w.cols {
            return Err(crate::Error::shape(
                "gemv_4bit_resident",
                format!("x must be f32 [{}], got {} {:?}", w.cols, x.dtype, x.shape),
            ));
        }
        let gpu = self.gpu();
        let y = self.empty(vec![w.rows], DType::F32);
        let bias = gpu.output(4);
        let bufs = [
            (1, &w.packed.buffer),
            (2, &w.absmax.buffer),
            (3, &w.table),
            (4, &x.buffer),
            (5, &bias),
            (6, &y.buffer),
        ];
        let piece = super::kernels::RowPiece {
            r0: 0,
            r1: w.rows,
            first_word: 0,
        };
        gpu.run(|enc| {
            super::kernels::encode_gemv_4bit(
                gpu,
                enc,
                piece,
                w.cols,
                w.blocksize,
                0,
                &bufs,
                None,
                None,
            )
        })?;
        Ok(y)
    }

    /// `y[m, n] = x[m, k] @ w[n, k]^T` on resident f32 tensors; y stays on the GPU.
    pub fn matmul_resident(&self, x: &GpuTensor, w: &GpuTensor) -> Result<GpuTensor> {
        let (m, k, n) = match (&x.shape[..], &w.shape[..]) {
            ([m, k], [n, k2]) if k == k2 && x.dtype == DType::F32 && w.dtype == DType::F32 => {
                (*m, *k, *n)
            }
            _ => {
                return Err(crate::Error::shape(
                    "matmul_resident",
                    format!(
                        "need f32 x [m, k] and w [n, k], got {:?} and {:?}",
                        x.shape, w.shape
                    ),
                ));
            }
        };
        let gpu = self.gpu();
        let y = self.empty(vec![m, n], DType::F32);
        let bias = gpu.output(4);
        let params = [m as u32, n as u32, k as u32, 0, 0, 0, 0, 0];
        let bufs = [(1, &x.buffer), (2, &w.buffer), (5, &bias), (6, &y.buffer)];
        let shader = super::shaders::Shader::Gemm(super::shaders::GemmKind::DenseF32);
        gpu.run(|enc| {
            gpu.encode(
                enc,
                &shader,
                params,
                &bufs,
                super::kernels::gemm_grid(m, n),
                None,
            )
        })?;
        Ok(y)
    }
}
