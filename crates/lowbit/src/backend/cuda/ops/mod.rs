//! The kernels behind the backend's ops, on device allocations: each function queues its launches on the
//! stream and returns the output allocation without waiting. Shapes were validated by the op layer. One file
//! per kernel family, as `kernels/` (quantizers, linear layers, LLM.int8 and BitNet, model ops); the launch
//! helpers below serve them all.

mod host_cost;
mod int8;
mod kernel_cost;
mod linear;
mod model;
mod quant;

use super::context::{Arg, Cuda};
use super::storage::{CudaStorage, dtype_code};
use crate::Result;
use crate::format::FourBitType;
use crate::tensor::DType;
use std::sync::Arc;

pub use int8::TernaryWeight;
pub use kernel_cost::KernelCost;

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
/// first, as bitsandbytes does) where cuBLAS is present; below it the warp-per-row kernel reads the weight
/// once. Measured on an H200 (NF4, f16, docs/PERFORMANCE.md): with the pair-table word kernel of 2026-12-03,
/// 8 rows take 26-189 us against 31-317 us for dequantize + cuBLAS at 4096x4096 .. 8192x28672; 16 rows (two
/// passes of 8) would take about twice the 8-row time, more than cuBLAS's 31-320 us. 4-bit weights under
/// f16/bf16 activations take the tensor-core kernel up to 32 rows before this route (ops/linear.rs).
pub const BLAS_MIN_ROWS: usize = 9;

/// Which kernel a float or 4-bit linear layer runs for its activation rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinearRoute {
    /// The warp-per-row kernels: each weight byte read once per pass of activation rows.
    Rows,
    /// One cuBLAS product (a 4-bit weight dequantized first).
    Blas,
    /// lowbit's tiled GEMM (no cuBLAS, more than [`ROWS_MAX`] rows).
    Tiled,
}

/// The route for `m` activation rows, `blas` saying whether cuBLAS is present: the crossover points
/// [`BLAS_MIN_ROWS`] and [`ROWS_MAX`] in one place (a cuBLAS call that declines the shape falls through to
/// the other two).
pub fn linear_route(m: usize, blas: bool) -> LinearRoute {
    if m >= BLAS_MIN_ROWS && blas {
        LinearRoute::Blas
    } else if m <= ROWS_MAX {
        LinearRoute::Rows
    } else {
        LinearRoute::Tiled
    }
}

fn p(b: &CudaStorage) -> Arg {
    Arg::Ptr(b.addr())
}
fn opt(b: Option<&Buf>) -> Arg {
    Arg::Ptr(b.map_or(0, |b| b.addr()))
}

/// A linear kernel's bias, or the residual riding in its bias slot: the buffer and its element type. The
/// kernels read it as stored and widen it exactly, so a half-precision residual needs no f32 copy.
#[derive(Clone, Copy)]
pub struct Bias<'a> {
    pub buf: &'a CudaStorage,
    pub dtype: DType,
}

fn bias_ptr(b: Option<Bias>) -> Arg {
    Arg::Ptr(b.map_or(0, |b| b.buf.addr()))
}
fn bias_dt(b: Option<Bias>) -> Arg {
    dt(b.map_or(DType::F32, |b| b.dtype))
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
/// Mean GPU seconds per call of `calls` calls of `f` queued on `c`'s stream, from CUDA events recorded
/// before and after them (the benchmark hooks' clock).
fn gpu_seconds_per_call(c: &Cuda, calls: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    use cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT;
    let err = |e| c.error("event", e);
    let e0 = c.stream.record_event(Some(CU_EVENT_DEFAULT)).map_err(err)?;
    for _ in 0..calls {
        f()?;
    }
    let e1 = c.stream.record_event(Some(CU_EVENT_DEFAULT)).map_err(err)?;
    Ok(e0.elapsed_ms(&e1).map_err(err)? as f64 / 1e3 / calls as f64)
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

#[cfg(test)]
mod route_tests {
    use super::*;

    #[test]
    fn rows_below_eight_take_the_row_kernels_and_batches_cublas() {
        for m in 1..BLAS_MIN_ROWS {
            assert_eq!(linear_route(m, true), LinearRoute::Rows, "{m} rows");
        }
        for m in [BLAS_MIN_ROWS, 16, ROWS_MAX, 33, 512] {
            assert_eq!(linear_route(m, true), LinearRoute::Blas, "{m} rows");
        }
        // Without cuBLAS: the row kernels up to ROWS_MAX, then the tiled GEMM.
        for m in 1..=ROWS_MAX {
            assert_eq!(linear_route(m, false), LinearRoute::Rows, "{m} rows");
        }
        assert_eq!(linear_route(ROWS_MAX + 1, false), LinearRoute::Tiled);
    }
}
