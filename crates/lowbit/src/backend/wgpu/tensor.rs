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
