//! cuBLAS for the large products: `Y = X W^T` with f16/bf16/f32 operands, f32 accumulation and an f32
//! result (the caller adds the bias and rounds once). Loaded at run time like the driver; without
//! libcublas the backend keeps its own GEMM kernels.

use super::context::{Cuda, guarded};
use crate::Result;
use crate::capability::DeviceError;
use crate::tensor::DType;
use cudarc::cublas::sys::{
    cublasComputeType_t, cublasGemmAlgo_t, cublasHandle_t, cublasOperation_t, cudaDataType,
};
use std::sync::Mutex;

/// A cuBLAS handle bound to the device's stream; calls are serialised (a handle is not thread-safe).
pub struct Blas {
    handle: Mutex<cublasHandle_t>,
}

// SAFETY: the handle is only used under the mutex, on the context it was created in.
unsafe impl Send for Blas {}
unsafe impl Sync for Blas {}

impl Blas {
    /// A handle on `cuda`'s stream, or `None` when libcublas cannot be loaded or initialised, or when
    /// `LOWBIT_CUDA_BLAS=0` asks for lowbit's own GEMM kernels (how their tests reach them on a machine that
    /// has cuBLAS).
    pub fn open(cuda: &Cuda) -> Option<Blas> {
        if std::env::var("LOWBIT_CUDA_BLAS").as_deref() == Ok("0") {
            tracing::info!("LOWBIT_CUDA_BLAS=0: large CUDA products use lowbit's own GEMM kernels");
            return None;
        }
        // SAFETY: only probes whether the shared library can be opened.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            tracing::info!("cuBLAS not found: large CUDA products use lowbit's own GEMM kernels");
            return None;
        }
        let made = guarded(|| -> std::result::Result<cublasHandle_t, String> {
            cuda.ctx.bind_to_thread().map_err(|e| e.to_string())?;
            let h = cudarc::cublas::result::create_handle().map_err(|e| e.to_string())?;
            // SAFETY: `h` was just created and the stream belongs to the bound context.
            unsafe { cudarc::cublas::result::set_stream(h, cuda.stream.cu_stream() as _) }
                .map_err(|e| e.to_string())?;
            Ok(h)
        });
        match made {
            Ok(Ok(h)) => Some(Blas {
                handle: Mutex::new(h),
            }),
            Ok(Err(e)) | Err(e) => {
                tracing::warn!("cuBLAS could not start ({e}): using lowbit's own GEMM kernels");
                None
            }
        }
    }

    /// `y[m, n] = x[m, k] @ w[n, k]^T`, both operands of `dtype`, row-major, accumulated in f32 and written
    /// in `out`: f32, or `dtype` itself (each sum rounded once, to nearest even).
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_nt(
        &self,
        cuda: &Cuda,
        x: u64,
        w: u64,
        dtype: DType,
        y: u64,
        (m, n, k): (usize, usize, usize),
        out: DType,
    ) -> Result<()> {
        let ty = |d: DType| match d {
            DType::F16 => cudaDataType::CUDA_R_16F,
            DType::BF16 => cudaDataType::CUDA_R_16BF,
            _ => cudaDataType::CUDA_R_32F,
        };
        debug_assert!(
            out == DType::F32 || out == dtype,
            "cuBLAS writes f32 or the operands' dtype"
        );
        let (alpha, beta) = (1.0f32, 0.0f32);
        let scalars = ((&alpha as *const f32).cast(), (&beta as *const f32).cast());
        let types = (ty(dtype), ty(out), cublasComputeType_t::CUBLAS_COMPUTE_32F);
        self.gemm_ex_nt(cuda, "matmul", (x, w, y), (m, n, k), scalars, types)
    }

    /// `c[m, n] (i32) = a[m, k] @ b[n, k]^T` on int8 operands, row-major: exact, like the int8 kernels
    /// (bitsandbytes' `int8_linear_matmul` is this cuBLASLt product). cuBLAS's integer kernels want k and
    /// n multiples of 4 (the caller checks); a shape it declines is an error the caller can route around.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_i8_nt(
        &self,
        cuda: &Cuda,
        a: u64,
        b: u64,
        c: u64,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<()> {
        let (alpha, beta) = (1i32, 0i32);
        let scalars = ((&alpha as *const i32).cast(), (&beta as *const i32).cast());
        let types = (
            cudaDataType::CUDA_R_8I,
            cudaDataType::CUDA_R_32I,
            cublasComputeType_t::CUBLAS_COMPUTE_32I,
        );
        self.gemm_ex_nt(
            cuda,
            "int8_linear_matmul",
            (a, b, c),
            (m, n, k),
            scalars,
            types,
        )
    }

    /// Row-major `Y[m, n] = X[m, k] W[n, k]^T` through `cublasGemmEx`: `ops` = (X, W, Y) addresses,
    /// `scalars` = host pointers to alpha and beta of the compute type, `types` = (operand type, result
    /// type, compute type).
    fn gemm_ex_nt(
        &self,
        cuda: &Cuda,
        op: &'static str,
        (x, w, y): (u64, u64, u64),
        (m, n, k): (usize, usize, usize),
        (alpha, beta): (*const std::ffi::c_void, *const std::ffi::c_void),
        (ty, out_ty, compute): (cudaDataType, cudaDataType, cublasComputeType_t),
    ) -> Result<()> {
        let dim = |v: usize| {
            i32::try_from(v).map_err(|_| crate::Error::InvalidArgument {
                op,
                detail: format!("dimension {v} exceeds cuBLAS's 32-bit range"),
            })
        };
        let (mi, ni, ki) = (dim(m)?, dim(n)?, dim(k)?);
        let h = self.handle.lock().unwrap_or_else(|p| p.into_inner());
        cuda.ctx.bind_to_thread().map_err(|e| cuda.error(op, e))?;
        // Row-major Y = X W^T is column-major Y^T = W X^T: A = W (k x n, transposed), B = X (k x m).
        // SAFETY: the three addresses are live allocations of this context holding m*k, n*k and m*n
        // elements (checked by the op layer and the allocations of the callers); alpha and beta point to
        // host scalars of the compute type (the handle's default pointer mode) that outlive the call.
        let r = unsafe {
            cudarc::cublas::result::gemm_ex(
                *h,
                cublasOperation_t::CUBLAS_OP_T,
                cublasOperation_t::CUBLAS_OP_N,
                ni,
                mi,
                ki,
                alpha,
                w as *const _,
                ty,
                ki,
                x as *const _,
                ty,
                ki,
                beta,
                y as *mut _,
                out_ty,
                ni,
                compute,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        };
        r.map_err(|e| {
            crate::Error::Device(DeviceError::failed(&*cuda.id, op, format!("cuBLAS: {e}")))
        })
    }
}
