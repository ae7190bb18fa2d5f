//! Dense f16/f32 GEMM through Metal Performance Shaders (`MPSMatrixMultiplication`) on the Metal device wgpu
//! opened, for macOS: `WgpuBackend`'s dense `matmul` runs here on a Metal device, and the WGSL GEMM everywhere
//! else or when MPS fails. Unverified on hardware: this module type-checks for aarch64-apple-darwin but has
//! not yet run on a Mac.
//!
//! wgpu's hal interop exposes the `MTLDevice` but not a buffer's `MTLBuffer`, so operands go into
//! shared-storage Metal buffers of their own (on Apple Silicon's unified memory that is one host copy, no
//! transfer) and run on a command queue of their own on the same device.

use crate::capability::DeviceError;
use crate::tensor::DType;
use crate::{Error, Result};
use objc2::AnyThread;
use objc2::rc::Retained;
use objc2::runtime::ProtocolObject;
use objc2_metal::{
    MTLBuffer, MTLCommandBuffer, MTLCommandBufferError, MTLCommandBufferStatus, MTLCommandQueue,
    MTLDevice, MTLResourceOptions,
};
use objc2_metal_performance_shaders::{
    MPSDataType, MPSMatrix, MPSMatrixDescriptor, MPSMatrixMultiplication,
};
use std::ffi::c_void;
use std::ptr::NonNull;

fn mps_err(detail: impl Into<String>) -> Error {
    Error::invalid("mps", detail)
}

/// The typed error for a command buffer that did not complete: out of memory (the runtime splits or falls
/// back) for Metal's out-of-memory code, else an operation failure; `code` is the NSError code, if any.
fn command_buffer_error(
    status: MTLCommandBufferStatus,
    code: Option<isize>,
    detail: String,
    bytes: u64,
) -> Error {
    let device = "metal".to_string();
    let op = "mps matmul".to_string();
    if code == Some(MTLCommandBufferError::OutOfMemory.0 as isize) {
        return Error::Device(DeviceError::OutOfMemory {
            device,
            op,
            needed: bytes,
            available: None,
        });
    }
    Error::Device(DeviceError::OperationFailed {
        device,
        op,
        reason: format!("command buffer ended with status {status:?}: {detail}"),
    })
}

/// MPSDataType for a float dtype. Values from Apple's MPSCoreTypes.h through objc2-metal-performance-shaders:
/// Float32 = 0x10000000 | 32, Float16 = 0x10000000 | 16 (checked in the unit test below).
pub fn mps_data_type(dtype: DType) -> Option<MPSDataType> {
    match dtype {
        DType::F32 => Some(MPSDataType::Float32),
        DType::F16 => Some(MPSDataType::Float16),
        _ => None,
    }
}

/// An MPS GEMM runner on one Metal device.
pub struct MpsGemm {
    device: Retained<ProtocolObject<dyn MTLDevice>>,
    queue: Retained<ProtocolObject<dyn MTLCommandQueue>>,
}

impl MpsGemm {
    /// Uses the Metal device behind a wgpu device; `None` if that device is not a Metal one.
    pub fn from_wgpu(device: &wgpu::Device) -> Option<MpsGemm> {
        // SAFETY: the raw device is only retained and used for new buffers and a new queue; wgpu's own
        // resources are not touched.
        let hal = unsafe { device.as_hal::<wgpu::hal::api::Metal>() }?;
        let device: Retained<ProtocolObject<dyn MTLDevice>> = hal.raw_device().clone();
        let queue = device.newCommandQueue()?;
        Some(MpsGemm { device, queue })
    }

    /// Uses the Metal device of a wgpu backend (macOS).
    pub fn from_backend(backend: &super::WgpuBackend) -> Option<MpsGemm> {
        Self::from_wgpu(&backend.gpu().device)
    }

    fn buffer(&self, bytes: &[u8]) -> Result<Retained<ProtocolObject<dyn MTLBuffer>>> {
        let len = bytes.len().max(4);
        let pad;
        let src: &[u8] = if bytes.len() < len {
            pad = [0u8; 4];
            &pad
        } else {
            bytes
        };
        let ptr = NonNull::new(src.as_ptr() as *mut c_void).ok_or_else(|| mps_err("null input"))?;
        // SAFETY: `ptr` points to `len` readable bytes; Metal copies them into the new buffer.
        unsafe {
            self.device.newBufferWithBytes_length_options(
                ptr,
                len,
                MTLResourceOptions::StorageModeShared,
            )
        }
        .ok_or_else(|| mps_err(format!("cannot allocate a {len}-byte Metal buffer")))
    }

    fn matrix(
        buf: &ProtocolObject<dyn MTLBuffer>,
        rows: usize,
        cols: usize,
        dt: MPSDataType,
        esize: usize,
    ) -> Retained<MPSMatrix> {
        // SAFETY: the descriptor matches the buffer's size (rows * cols * esize bytes, row-major, packed).
        unsafe {
            let desc = MPSMatrixDescriptor::matrixDescriptorWithRows_columns_rowBytes_dataType(
                rows,
                cols,
                cols * esize,
                dt,
            );
            MPSMatrix::initWithBuffer_descriptor(MPSMatrix::alloc(), buf, &desc)
        }
    }

    /// `y[m, n] = x[m, k] @ w[n, k]^T` on raw little-endian f32 or f16 data; returns y's raw bytes.
    pub fn matmul(
        &self,
        x: &[u8],
        w: &[u8],
        m: usize,
        n: usize,
        k: usize,
        dtype: DType,
    ) -> Result<Vec<u8>> {
        let dt = mps_data_type(dtype)
            .ok_or_else(|| mps_err(format!("MPS GEMM takes f32 or f16, not {dtype}")))?;
        let esize = dtype.size_in_bytes();
        if x.len() != m * k * esize || w.len() != n * k * esize {
            return Err(mps_err("operand sizes do not match m, n, k"));
        }
        let xb = self.buffer(x)?;
        let wb = self.buffer(w)?;
        let yb = self.buffer(&vec![0u8; m * n * esize])?;
        let (mx, mw, my) = (
            Self::matrix(&xb, m, k, dt, esize),
            Self::matrix(&wb, n, k, dt, esize),
            Self::matrix(&yb, m, n, dt, esize),
        );
        let cb = self
            .queue
            .commandBuffer()
            .ok_or_else(|| mps_err("cannot create a Metal command buffer"))?;
        // SAFETY: all three matrices are alive until the command buffer completes (we wait below).
        unsafe {
            let mm = MPSMatrixMultiplication::initWithDevice_transposeLeft_transposeRight_resultRows_resultColumns_interiorColumns_alpha_beta(
                MPSMatrixMultiplication::alloc(),
                &self.device,
                false,
                true,
                m,
                n,
                k,
                1.0,
                0.0,
            );
            mm.encodeToCommandBuffer_leftMatrix_rightMatrix_resultMatrix(&cb, &mx, &mw, &my);
        }
        cb.commit();
        cb.waitUntilCompleted();
        // A failed command buffer (out of memory, page fault, timeout, ...) leaves y unwritten.
        let status = cb.status();
        if status != MTLCommandBufferStatus::Completed {
            let (code, detail) = match cb.error() {
                Some(e) => (Some(e.code()), e.localizedDescription().to_string()),
                None => (None, "no error reported".to_string()),
            };
            let bytes = (x.len() + w.len() + m * n * esize) as u64;
            return Err(command_buffer_error(status, code, detail, bytes));
        }
        let len = m * n * esize;
        // SAFETY: a shared-storage buffer's contents are host-visible once the GPU work completed.
        let out = unsafe { std::slice::from_raw_parts(yb.contents().as_ptr() as *const u8, len) };
        Ok(out.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_type_constants_match_apple_headers() {
        assert_eq!(mps_data_type(DType::F32).unwrap().0, 0x1000_0000 | 32);
        assert_eq!(mps_data_type(DType::F16).unwrap().0, 0x1000_0000 | 16);
    }
}
